"""Names the agent owns on a node, defined once for every module that makes or reads them.

Owning the names is what lets start-up adoption, policy dispatch and ``--cleanup`` be
exact: whatever carries one is ours to create, adopt and delete, and whatever does not is
never touched. Pure: the calculation imports this, the dataplane modules too.
"""

from __future__ import annotations

from typing import Final

#: The host side of every pod's veth is ``fab`` + 11 hex characters
#: (`felix_like.plumbing.host_veth_name`). Policy dispatches on it and drops any other
#: ``fab*`` interface it does not know (fail closed); cleanup deletes every veth with it;
#: the agent leaves such interfaces out of the node's own addresses.
HOST_IF_PREFIX: Final = "fab"
