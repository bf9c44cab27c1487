"""PolicyManager: the policy applier the agent drives (level-triggered, STYLE rule 3).

The agent hands it the decoded mirror of ``/l3fabric/v1/`` (``set_state``) and calls
``apply()`` after every change and before answering each CNI ADD; ``apply()`` updates
the desired ruleset incrementally (pure, :mod:`incremental`: only what changed since the
last apply is recomputed; the result equals :func:`calc.calculate` of the whole state) and
converges the kernel through the chosen backend in one atomic batch. Calling it again with
no change sends nothing. ``resync()`` (periodic) also drops the calculation's caches, so a
full recalculation from the complete state follows.

Owned: table ``inet l3fabric`` (nftables) or the ``fab-*`` chains and ``fab-*`` ipsets
(iptables) in the manager's namespace. Host addresses (traffic from them to a pod is always
allowed) are this namespace's own addresses, read once at start and on ``resync()``, plus
the Node resource's BGP address.

Failure mode: a failed apply raises (the backend's error) and leaves the previous state in
the kernel; the agent marks itself dirty and retries. A pod whose chains are not yet
programmed is unreachable (its interface is unknown to the dispatch maps: fail closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from felix_like.policy.calc import Ruleset
from felix_like.policy.incremental import IncrementalCalculation

log = logging.getLogger(__name__)

BACKENDS = ("nftables", "iptables")


class Backend(Protocol):
    def apply(self, rs: Ruleset) -> int: ...

    def forget(self) -> None: ...

    def cleanup(self) -> None: ...


def namespace_addresses(netns: str | None) -> list[str]:
    """Every global address configured in ``netns`` (bare IPs)."""
    from felix_like.netlink import open_iproute

    ipr = open_iproute(netns)
    try:
        out = []
        for a in ipr.get_addr():
            if a.get("scope", 0) != 0:
                continue
            addr = a.get_attr("IFA_ADDRESS")
            if addr and not addr.startswith(("127.", "::1")):
                out.append(str(addr))
        return out
    finally:
        ipr.close()


def make_backend(backend: str, netns: str | None) -> Backend:
    if backend == "nftables":
        from felix_like.policy.nft import NftBackend

        return NftBackend(netns)
    if backend == "iptables":
        from felix_like.policy.iptables import IptablesBackend

        return IptablesBackend(netns)
    raise ValueError(f"unknown policy backend {backend!r} (use {' or '.join(BACKENDS)})")


class PolicyManager:
    """``PolicyManager(backend, netns, node)``; ``set_state``, ``apply``, ``cleanup``."""

    def __init__(self, backend: str, netns: str | None, node: str,
                 host_addresses: Iterable[str] | None = None,
                 impl: Backend | None = None) -> None:
        self.backend_name = backend
        self.netns = netns
        self.node = node
        self.backend = impl or make_backend(backend, netns)
        self._fixed_hosts = list(host_addresses) if host_addresses is not None else None
        self.host_addresses = self._read_hosts()
        self.state: Mapping[str, Any] = {}
        self.ruleset: Ruleset | None = None
        self.calc = IncrementalCalculation(node)
        self.last_apply_seconds = 0.0
        self.last_calc_seconds = 0.0
        self.last_commands = 0
        self.applies = 0

    def _read_hosts(self) -> list[str]:
        if self._fixed_hosts is not None:
            return self._fixed_hosts
        try:
            return namespace_addresses(self.netns)
        except OSError as e:
            log.warning("policy: cannot read host addresses of %s: %s", self.netns, e)
            return []

    def set_state(self, state: Mapping[str, Any]) -> None:
        """The decoded mirror (etcd key -> model object); kept by reference until apply."""
        self.state = state

    def calculate(self) -> Ruleset:
        """The desired ruleset of the current state (updates the incremental cache)."""
        return self.calc.update(self.state, self.host_addresses)

    def apply(self) -> None:
        """Converge the dataplane to the current state (idempotent)."""
        t0 = time.perf_counter()
        rs = self.calculate()
        self.last_calc_seconds = time.perf_counter() - t0
        self.last_commands = self.backend.apply(rs)
        self.ruleset = rs
        self.applies += 1
        self.last_apply_seconds = time.perf_counter() - t0
        if self.last_commands:
            log.debug("policy: %d commands for %d endpoints, %d chains, %d sets in %.1f ms",
                      self.last_commands, len(rs.endpoints), len(rs.chains), len(rs.sets),
                      self.last_apply_seconds * 1000)

    def resync(self) -> None:
        """Re-read host addresses and make the next apply a full converge (periodic)."""
        self.host_addresses = self._read_hosts()
        self.backend.forget()
        self.calc.reset()

    def cleanup(self) -> None:
        """Remove everything this manager's backend owns in the namespace."""
        self.backend.cleanup()
        self.ruleset = None
