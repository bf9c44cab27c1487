"""The l3fabric release this code is: one answer for ``--version``, ``fabricctl version`` and
the version each agent reports in its NodeStatus.

Owned here: where the number comes from. It is the installed distribution's version
(``pyproject.toml``'s ``version``, as pip recorded it), so a wheel, an editable install
and a Debian package built from the tree all agree without a second copy to keep in step.
Code run from a source tree that was never installed reports ``0+unknown`` rather than
failing: a version is information, never a reason to refuse to start.
"""

from __future__ import annotations

import functools
from importlib import metadata

DISTRIBUTION = "l3fabric"
UNKNOWN = "0+unknown"


@functools.cache
def l3fabric_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN
