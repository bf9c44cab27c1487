"""The host endpoint applier: programs the plan of `felix_like.policy.hostep` in one
network namespace, with the policy manager's backend (nftables or iptables).

Owned: table ``inet l3fabric-host`` (nftables), or the ``fabhep-*`` chains of iptables'
``filter`` table, their jumps in ``INPUT``, ``OUTPUT`` and ``FORWARD``, and the
``fabhep4-*``/``fabhep6-*`` ipsets. Level-triggered: an `apply` whose plan equals the one
last programmed sends nothing; `forget` (the periodic resync) makes the next one program
it again. A node with no host endpoint has none of these. Replacing the table or the
chains leaves conntrack alone: established connections (BGP sessions among them) go on.

Failure mode: a refused change raises and leaves the previous rules in force; the record
is not updated, so the next apply tries again.
"""

from __future__ import annotations

import logging

from felix_like.policy.hostep import (
    CHAIN_PREFIX,
    HOOKS,
    SET_PREFIX,
    HostPlan,
    ipset_script,
    ipsets,
    iptables_filter,
    nft_commands,
)
from felix_like.policy.side_tables import SideTable

log = logging.getLogger(__name__)


class HostEndpointManager(SideTable[HostPlan]):
    """``HostEndpointManager(backend, netns)``; ``apply(plan)``, ``forget()``, ``cleanup()``."""

    what = "host endpoint"

    def apply(self, plan: HostPlan) -> bool:
        """Program ``plan``; True if anything was sent."""
        if plan == self.programmed:
            return False
        if self.backend == "nftables":
            self._nft_run(nft_commands(plan))
        else:
            self._apply_iptables(plan)
        if plan.active or (self.programmed is not None and self.programmed.active):
            log.info("host endpoints: %s", ", ".join(
                f"{ep.name} ({ep.interface}: {sum(len(r) for _, r in ep.chains)} rules)"
                for ep in plan.endpoints) or "none")
        self.programmed = plan
        return True

    def _apply_iptables(self, plan: HostPlan) -> None:
        run = self._runner()
        script = ipset_script(plan)
        if script:
            run(["ipset", "restore"], script)
        for v in (4, 6):
            text = run(["iptables-save" if v == 4 else "ip6tables-save", "-t", "filter"], "")
            present = {ln[1:].split()[0] for ln in text.splitlines()
                       if ln.startswith(":" + CHAIN_PREFIX)}
            hooked = {ours for builtin, ours in HOOKS.values()
                      if f"-A {builtin} -j {ours}" in text}
            restore = iptables_filter(plan, v, present, hooked)
            if restore.strip() != "*filter\nCOMMIT":
                run(["iptables-restore" if v == 4 else "ip6tables-restore", "--noflush"],
                    restore)
        wanted = set(ipsets(plan))
        stale = [n for n in run(["ipset", "list", "-n"], "").split()
                 if n.startswith(SET_PREFIX) and n not in wanted]
        if stale:
            run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in stale))

    def cleanup(self) -> None:
        """Remove everything this applier owns (agent --cleanup). Missing state is fine."""
        if self.backend == "nftables":
            self._nft_run(nft_commands(HostPlan()))
        else:
            self._apply_iptables(HostPlan())
        self.programmed = None
