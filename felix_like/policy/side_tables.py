"""What the appliers of the policy manager's side tables share (outgoing NAT,
`felix_like.policy.nat_backend`; host endpoints, `felix_like.policy.host_backend`): the
backend's name, the namespace, and the two ways to reach its kernel, made on first use
inside the namespace (an ``iptables``/``ipset`` runner, or a libnftables context), or
given by a test. Each applier keeps the plan it last programmed (``programmed``) and
sends nothing for an equal one; `forget` makes the next apply program it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str], str], str]
NftRun = Callable[[dict[str, Any]], tuple[int, Any, str]]
P = TypeVar("P")


class SideTableError(RuntimeError):
    """libnftables refused a side table's transaction (nothing of it was applied)."""


class SideTable(Generic[P]):
    """``SideTable(backend, netns, run=..., nft=...)``; subclasses add ``apply``."""

    what = "side table"

    def __init__(self, backend: str, netns: str | None, *, run: Runner | None = None,
                 nft: NftRun | None = None) -> None:
        self.backend = backend
        self.netns = netns
        self._run = run
        self._nft = nft
        self.programmed: P | None = None

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
            raise SideTableError(f"nft: {self.what} transaction failed: {err.strip()}")

    def forget(self) -> None:
        """Trust nothing we think we programmed: the next apply programs the plan again."""
        self.programmed = None
