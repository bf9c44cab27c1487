"""The outgoing NAT applier: programs the plan of `felix_like.policy.natout` in one
network namespace, with the policy manager's backend (nftables or iptables).

Owned: table ``inet l3fabric-nat`` (nftables), or chain ``fab-nat-post`` of table ``nat``,
its jump in ``POSTROUTING`` and the ipsets ``fabnat-*`` (iptables). Level-triggered: each
`apply` compares the plan with the one it last programmed and does nothing when they are
equal; `forget` (the periodic resync) makes the next apply program it again, so a change
made behind our back is repaired. A flag flipped on a pool reaches the kernel in the
apply its watch event triggers: new connections follow it at once; a connection already
masqueraded keeps its mapping in conntrack until it ends.

Failure mode: a refused transaction raises and leaves the previous NAT in force; our
record is not updated, so the next apply tries again.
"""

from __future__ import annotations

import logging

from felix_like.policy.natout import (
    NAT_CHAIN,
    NAT_SET_PREFIX,
    NatPlan,
    empty_plan,
    ipset_script,
    iptables_nat,
    nft_commands,
)
from felix_like.policy.side_tables import SideTable

log = logging.getLogger(__name__)

EMPTY_PLAN = empty_plan()


class NatManager(SideTable[NatPlan]):
    """``NatManager(backend, netns)``; ``apply(plan)``, ``forget()``, ``cleanup()``."""

    what = "outgoing NAT"

    def apply(self, plan: NatPlan) -> bool:
        """Program ``plan``; True if anything was sent."""
        if plan == self.programmed:
            return False
        if self.backend == "nftables":
            self._nft_run(nft_commands(plan))
        elif plan.active:
            self._apply_iptables(plan)
        else:
            self._remove_iptables()
        if plan.active or self.programmed is not None:
            log.info("outgoing NAT: masquerading %s",
                     ", ".join(plan.v4.masquerade + plan.v6.masquerade) or "nothing")
        self.programmed = plan
        return True

    def _hooked(self, version: int) -> tuple[bool, bool]:
        """(our chain exists, POSTROUTING jumps to it)."""
        tool = "iptables-save" if version == 4 else "ip6tables-save"
        text = self._runner()([tool, "-t", "nat"], "")
        return (f":{NAT_CHAIN} " in text, f"-A POSTROUTING -j {NAT_CHAIN}" in text)

    def _apply_iptables(self, plan: NatPlan) -> None:
        run = self._runner()
        run(["ipset", "restore"], ipset_script(plan))
        for fp in plan.families:
            _, hooked = self._hooked(fp.version)
            tool = "iptables-restore" if fp.version == 4 else "ip6tables-restore"
            run([tool, "--noflush"], iptables_nat(fp, hooked))

    def _remove_iptables(self) -> None:
        run = self._runner()
        for v in (4, 6):
            present, hooked = self._hooked(v)
            if not present and not hooked:
                continue
            lines = ["*nat"]
            if hooked:
                lines.append(f"-D POSTROUTING -j {NAT_CHAIN}")
            if present:
                lines += [f":{NAT_CHAIN} - [0:0]", f"-X {NAT_CHAIN}"]
            lines.append("COMMIT")
            tool = "iptables-restore" if v == 4 else "ip6tables-restore"
            run([tool, "--noflush"], "\n".join(lines) + "\n")
        names = [n for n in run(["ipset", "list", "-n"], "").split()
                 if n.startswith(NAT_SET_PREFIX)]
        if names:
            run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in names))

    def cleanup(self) -> None:
        """Remove everything this applier owns (agent --cleanup). Missing state is fine."""
        if self.backend == "nftables":
            self._nft_run(nft_commands(EMPTY_PLAN))
        else:
            self._remove_iptables()
        self.programmed = None
