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
from collections.abc import Callable, Sequence
from typing import Any

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

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str], str], str]
NftRun = Callable[[dict[str, Any]], tuple[int, Any, str]]


class HostEndpointError(RuntimeError):
    pass


class HostEndpointManager:
    """``HostEndpointManager(backend, netns)``; ``apply(plan)``, ``forget()``, ``cleanup()``."""

    def __init__(self, backend: str, netns: str | None, *, run: Runner | None = None,
                 nft: NftRun | None = None) -> None:
        self.backend = backend
        self.netns = netns
        self._run = run
        self._nft = nft
        self.programmed: HostPlan | None = None

    def _runner(self) -> Runner:
        if self._run is None:
            from felix_like.policy.iptables import subprocess_runner

            self._run = subprocess_runner(self.netns)
        return self._run

    def _nft_run(self, cmds: list[dict[str, Any]]) -> None:
        if self._nft is None:
            import nftables

            from felix_like.netlink import run_in_netns

            ctx = run_in_netns(self.netns, nftables.Nftables)
            ctx.set_json_output(True)
            self._nft = ctx.json_cmd
        rc, _, err = self._nft({"nftables": cmds})
        if rc != 0:
            raise HostEndpointError(f"nft: host endpoint transaction failed: {err.strip()}")

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

    def forget(self) -> None:
        """Trust nothing we think we programmed: the next apply programs the plan again."""
        self.programmed = None

    def cleanup(self) -> None:
        """Remove everything this applier owns (agent --cleanup). Missing state is fine."""
        if self.backend == "nftables":
            self._nft_run(nft_commands(HostPlan()))
        else:
            self._apply_iptables(HostPlan())
        self.programmed = None
