"""PolicyManager: the policy applier the agent drives (level-triggered, STYLE rule 3).

The agent hands it its `felix_like.state.ClusterState` (``set_state``; tools and tests may
hand a plain mapping of key -> decoded value) and calls
``apply()`` after every change and before answering each CNI ADD; ``apply()`` updates
the desired ruleset incrementally (pure, :mod:`incremental`: only what changed since the
last apply is recomputed; the result equals :func:`ruleset.calculate` of the whole state) and
converges the kernel through the chosen backend in one atomic batch. Calling it again with
no change sends nothing. ``resync()`` (periodic) also drops the calculation's caches, so a
full recalculation from the complete state follows.

Owned: table ``inet l3fabric`` (nftables) or the ``fab-*`` chains and ``fab-*`` ipsets
(iptables) in the manager's namespace. Host addresses (traffic from them to a pod is always
allowed) are this namespace's own addresses, read once at start and on ``resync()``, plus
the Node resource's BGP address.

Connection tracking: replies and established flows are accepted before any policy runs,
so a flow outlives the endpoint it was allowed for. When a local endpoint goes away (or
its address moves to another endpoint or interface), and when any node's endpoint gives
up an address, ``apply()`` deletes, after the new rules are in force, every conntrack
entry of the namespace with that address at either end (Calico's Felix does it for local
endpoints): a new pod given the address is reached only by flows its own policy, and
its peers' egress policies, allow. A relabelled pod keeps its flows (established
connections survive a policy change, by design).

Failure mode: a failed apply raises (the backend's error) and leaves the previous state in
the kernel; the agent marks itself dirty and retries. A pod whose chains are not yet
programmed is unreachable (its interface is unknown to the dispatch maps: fail closed).
A failed conntrack deletion is logged and does not fail the apply (the rules are in force).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from felix_like.policy import hostep, natout
from felix_like.policy.host_backend import HostEndpointManager
from felix_like.policy.incremental import IncrementalCalculation
from felix_like.policy.nat_backend import NatManager
from felix_like.policy.ruleset import Ruleset
from felix_like.state import ClusterState

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


def forget_flows(netns: str | None, nets: Iterable[str]) -> int:
    """Delete every conntrack entry of ``netns`` whose original or reply tuple has an
    address in one of ``nets`` (CIDRs) at either end; returns how many were deleted.

    A single IPv4 address is looked up with the kernel's dump filters (Linux 5.8 and
    later; pyroute2 checks each answer again, so an older kernel returns the same,
    slower): a filtered dump per end and direction costs about what the matches cost.
    IPv6 addresses (the kernel's IPv6 filter is inverted, see `felix_like.conntrack`)
    and wider networks take one full dump per family, matched by `felix_like.conntrack`
    without pyroute2's parsing (which takes ~10 s for 20,000 entries)."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    from felix_like import conntrack
    from felix_like.netlink import run_in_netns

    wanted = [ipaddress.ip_network(n, strict=False) for n in nets]

    def filtered_v4(ips: list[str]) -> int:
        ct = Conntrack(nfgen_family=socket.AF_INET)
        try:
            found: dict[Any, Any] = {}  # by conntrack id: an entry can match several dumps
            for ip in ips:
                for side in ("tuple_orig", "tuple_reply"):
                    for end in ("saddr", "daddr"):
                        for e in ct.dump_entries(**{side: NFCTAttrTuple(socket.AF_INET,
                                                                        **{end: ip})}):
                            found.setdefault(e.id if e.id is not None else repr(e.tuple_orig),
                                             e)
            deleted = 0
            for e in found.values():
                try:
                    ct.delete(e)
                    deleted += 1
                except Exception as exc:  # gone meanwhile (ENOENT)
                    log.debug("conntrack delete %s: %s", e, exc)
            return deleted
        finally:
            ct.close()

    def run() -> int:
        hosts_v4 = [str(n.network_address) for n in wanted
                    if n.version == 4 and n.num_addresses == 1]
        deleted = filtered_v4(hosts_v4) if hosts_v4 else 0
        wide_v4 = [n for n in wanted if n.version == 4 and n.num_addresses > 1]
        if wide_v4:
            deleted += conntrack.forget(None, socket.AF_INET, wide_v4)
        v6 = [n for n in wanted if n.version == 6]
        if v6:
            deleted += conntrack.forget(None, socket.AF_INET6, v6)
        return deleted

    return run_in_netns(netns, run)


def gone_addresses(before: Ruleset | None, after: Ruleset) -> set[str]:
    """Addresses (CIDRs) of the local endpoints of ``before`` that are not the same
    endpoint's on the same interface in ``after``: their flows belong to nobody now."""
    if before is None:
        return set()
    gone: set[str] = set()
    for iface, ep in before.endpoints.items():
        now = after.endpoints.get(iface)
        if now is ep:
            continue
        kept = set(now.addresses) if now is not None and now.key == ep.key else set()
        gone.update(a for a in ep.addresses if a not in kept)
    return gone


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
                 impl: Backend | None = None,
                 forget: Callable[[str | None, Iterable[str]], int] | None = None,
                 nat: NatManager | None = None,
                 hosts: HostEndpointManager | None = None,
                 log_allowed: bool = False) -> None:
        self.backend_name = backend
        self.netns = netns
        self.node = node
        self.backend = impl or make_backend(backend, netns)
        # Outgoing NAT rides on the same backend and apply (felix_like.policy.natout).
        self.nat = nat if nat is not None or impl is not None else NatManager(backend, netns)
        # And so does host endpoint policy (felix_like.policy.hostep).
        self.hosts = hosts if hosts is not None or impl is not None else HostEndpointManager(
            backend, netns)
        # The node's host plan, kept between applies (the pods changed since the last one).
        self.host_planner = hostep.HostPlanner(node)
        self.forget_flows = forget or forget_flows
        self._fixed_hosts = list(host_addresses) if host_addresses is not None else None
        self.host_addresses = self._read_hosts()
        self.state: ClusterState | Mapping[str, Any] = {}
        self.ruleset: Ruleset | None = None
        # Addresses of local endpoints removed before this manager saw them programmed
        # (deleted while the agent restarted, before its first apply): their flows go at
        # the next apply that succeeds (`forget_addresses`).
        self._also_gone: set[str] = set()
        self.calc = IncrementalCalculation(node, log_allowed)  # flow-log allowed ones too
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

    def set_state(self, state: ClusterState | Mapping[str, Any]) -> None:
        """The cluster state, or a mapping (etcd key -> model object); kept by reference
        until apply."""
        self.state = state

    def calculate(self) -> Ruleset:
        """The desired ruleset of the current state (updates the incremental cache)."""
        if isinstance(self.state, ClusterState):
            return self.calc.update_from(self.state, self.host_addresses)
        return self.calc.update(self.state, self.host_addresses)

    def apply(self) -> None:
        """Converge the dataplane to the current state (idempotent)."""
        t0 = time.perf_counter()
        rs = self.calculate()
        self.last_calc_seconds = time.perf_counter() - t0
        self.last_commands = self.backend.apply(rs)
        if self.nat is not None:
            self.nat.apply(natout.plan_of_state(self.state, self.host_addresses))
        if self.hosts is not None:
            self.hosts.apply(hostep.plan_of_state(self.state, self.node, self.host_planner))
        # Local endpoints that went, and any endpoint's address released anywhere: a
        # remote pod's flow through this node (a local client's egress) must not reach
        # the next pod given that address either.
        gone = self._take_gone(rs)
        self.ruleset = rs
        if gone:
            try:
                n = self.forget_flows(self.netns, gone)
                log.debug("policy: %d conntrack entries of %s deleted", n, sorted(gone))
            except Exception as e:  # the rules are in force; stale flows are the leftover
                log.warning("policy: cannot delete conntrack entries of %s: %s",
                            sorted(gone), e)
        self.applies += 1
        self.last_apply_seconds = time.perf_counter() - t0
        if self.last_commands:
            log.debug("policy: %d commands for %d endpoints, %d chains, %d sets in %.1f ms",
                      self.last_commands, len(rs.endpoints), len(rs.chains), len(rs.sets),
                      self.last_apply_seconds * 1000)

    def forget_pending_flows(self, state_complete: bool = True) -> int:
        """Delete now the flows the next apply would delete, without applying (the agent
        is stopping). A pod deleted just before the stop, whose apply failed (a stop
        signal kills the backend's child processes with the agent), must not leave its
        flows to the next process, which never knows the pod was there. The rules stay
        as they are; the next process's first apply is a full converge.
        ``state_complete``: False when the state is not a complete snapshot; then only
        the addresses named to `forget_addresses` go, not those missing from the state."""
        after = self.calculate() if state_complete and self.ruleset is not None else None
        gone = self._take_gone(after)
        return self.forget_flows(self.netns, gone) if gone else 0

    def _take_gone(self, after: Ruleset | None) -> set[str]:
        """The addresses whose flows go, taken once: the local endpoints of the last
        ruleset that ``after`` no longer has (None: not compared), the addresses released
        anywhere, and those named to `forget_addresses`."""
        gone = self.calc.take_released() | self._also_gone
        self._also_gone = set()
        if after is not None:
            gone |= gone_addresses(self.ruleset, after)
        return gone

    def forget_addresses(self, nets: Iterable[str]) -> None:
        """The flows of these addresses (CIDRs of a local endpoint that is gone) are
        deleted at the next apply, whatever this manager saw of the endpoint."""
        self._also_gone.update(nets)

    def resync(self) -> None:
        """Re-read host addresses and make the next apply a full converge of the kernel
        (periodic: what was changed behind our back is put right). The calculation keeps
        its caches (a property test holds it to the full calculation); `recalculate`
        drops them."""
        self.host_addresses = self._read_hosts()
        self.backend.forget()
        if self.nat is not None:
            self.nat.forget()
        if self.hosts is not None:
            self.hosts.forget()

    def recalculate(self) -> None:
        """Make the next apply calculate the ruleset from the complete state (after a
        fresh etcd snapshot: seconds of CPU at 1,000 nodes, so not every resync)."""
        self.calc.reset()
        self.host_planner = hostep.HostPlanner(self.node)

    def cleanup(self) -> None:
        """Remove everything this manager's backend owns in the namespace."""
        if self.nat is not None:  # first: its ipsets are in use until its rules go
            self.nat.cleanup()
        if self.hosts is not None:
            self.hosts.cleanup()
        self.backend.cleanup()
        self.ruleset = None
