"""The node agent's composition root: datastore syncer -> calculation -> dataplane managers.

Owns, for one node: the syncer of ``/l3fabric/v1/`` and the `ClusterState` its events
feed (what the calculation reads), the RouteManager of the node's namespace, the IPAM
client, the CNI socket, the health/metrics endpoint and the node's NodeStatus (kept under
a lease, so a dead agent's status expires).

Event flow (level-triggered, STYLE rules 2 and 3): every datastore event that changes the
cluster state marks the dataplane dirty; one applier task recomputes the desired routes
from the state's indexes of this node and converges the kernel to them, coalescing
bursts. Stale routes are removed only once the
first snapshot is complete (``in sync``), so an agent restart never drops a running pod's
route. The CNI handler tells the agent about a pod it just wired *before* answering ADD,
through `endpoint_added`, so a pod's dataplane state never waits for the etcd round trip;
the apply that call runs is where the route manager, the one writer of our routes, adds
the pod's /32.
The kernel's notifications (links, IPv4 addresses, routes of our protocols; one rtnetlink
socket, `_watch_netlink`) mark the dataplane dirty too: routes the kernel dropped with a
link that went down are restored as it comes up, not at the next periodic resync.

Failure modes: etcd unreachable — the syncer retries with backoff, the dataplane keeps its
last state, CNI ADD fails with code 11 from the handler; a bad value in etcd — counted in
``l3fabric_config_errors_total`` (and ``l3fabric_config_values_invalid`` while it stays
bad), logged once, listed in NodeStatus, last good value kept;
a local endpoint whose host veth is gone (stale) — logged once, counted in
``l3fabric_endpoints_without_interface``, listed in NodeStatus, its route programmed when
the interface appears; readiness is not held back by it. Until ready, ``/readyz`` names the
start-up step it waits for and that step's last error (`felix_like.metrics.Readiness`).

A little over 600 lines, kept whole: the `Agent` is one thing, the wiring of the parts
above and the tasks that run them. Each part's logic lives in its own module
(`kernel_events`, `node_status`, `routes`, `policy.manager`, `bgp.controller`, the CNI
handler); what is left here is which event reaches which part, in which order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bgp.controller import BgpController
from cni.protocol import ERR_TRY_AGAIN_LATER, CniError, error_json, requested_version
from datastore import keys, model
from datastore.client import (
    Datastore,
    DatastoreError,
    EtcdConfig,
    UnavailableError,
)
from datastore.kv import Delete, Op, Put
from datastore.schema import ensure_schema
from datastore.syncer import (
    ConfigError,
    ConnectionState,
    Deleted,
    InSync,
    Syncer,
    Update,
    freeze_heap_once,
)
from datastore.version import l3fabric_version
from felix_like import calc
from felix_like.kernel_events import (
    KernelChanges,
    detect_node_ip,
    interface_addresses,
    link_states,
    watch_kernel,
)
from felix_like.metrics import HealthServer, Metrics
from felix_like.netlink import Rtnl, open_iproute
from felix_like.node_status import keep_node_status, register_node
from felix_like.policy.flowlog import FlowLogger, start_flow_log
from felix_like.policy.flowlog import tail as flowlog_tail
from felix_like.policy.manager import PolicyManager
from felix_like.policy.stats import PolicyCounterCollector, counter_reader
from felix_like.routes import (
    ApplyResult,
    PodRouteRefused,
    Route,
    RouteManager,
    register_rt_protos,
)
from felix_like.sdnotify import SystemdNotifier, keep_alive
from felix_like.state import ClusterState, decode_value
from ipam.values import IpamInputs

log = logging.getLogger(__name__)

T = TypeVar("T")

# The sub-prefixes the syncer mirrors: what the calculation reads (`state.consumed`).
# Every node's NodeStatus and the IPAM handles (read from etcd when needed) stay out.
WATCHED = (keys.IPPOOLS, keys.BGP_CONFIGS, keys.BGP_PEERS, keys.NODES, keys.NAMESPACES,
           keys.POLICIES, keys.GLOBAL_POLICIES, keys.STAGED_POLICIES,
           keys.STAGED_GLOBAL_POLICIES, keys.WORKLOADS, keys.IPAM_BLOCKS,
           keys.IPAM_AFFINITIES, keys.IPAM_RESERVATIONS, keys.IPAM_CONFIG,
           keys.FELIX_CONFIGS, keys.HOST_ENDPOINTS)


class _Unopened:
    """Stands in for the netlink handle until run() opens it in the netlink thread."""

    def route(self, command: str, **kwargs: Any) -> Any:
        raise RuntimeError("netlink handle not opened yet")

    def get_links(self, *argv: Any, **kwargs: Any) -> Any:
        raise RuntimeError("netlink handle not opened yet")

DEFAULT_SOCKET = "/run/l3fabric/agent.sock"


@dataclass(frozen=True)
class AgentConfig:
    node: str
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    socket: str = DEFAULT_SOCKET
    metrics_addr: str = "127.0.0.1:9091"
    policy_backend: str = "nftables"
    flow_log_allowed: bool = False  # flow-log allowed new connections, not only denied
    node_ip: str | None = None  # CIDR form (10.77.1.1/30) for registering the Node
    node_ip6: str | None = None  # CIDR form (fd99::1/64): the Node's bgp.ipv6Address
    netns: str | None = None  # dataplane namespace; None: the agent's own
    resync_interval: float = 60.0  # re-read the kernel and converge it
    # A fresh etcd snapshot, then a policy calculation from scratch: the safety nets of
    # the watches and of the incremental calculation. Every agent reads the whole cluster
    # then (~26 MiB at 1,000 nodes), which etcd serves to each of them: not every minute.
    snapshot_interval: float = 1800.0
    status_interval: float = 10.0
    status_ttl: int = 30


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Agent:
    #: The CNI handler leaves pods' host routes to the route manager (`endpoint_added`).
    owns_pod_routes = True

    def __init__(self, cfg: AgentConfig, ds: Datastore | None = None,
                 now: Callable[[], float] = time.time,
                 notifier: SystemdNotifier | None = None) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.ds = ds or Datastore(cfg.etcd)
        self.now = now
        self.notifier = notifier or SystemdNotifier()  # no $NOTIFY_SOCKET: sends nothing
        self.metrics = Metrics()
        host, port = _split_addr(cfg.metrics_addr)
        self.health = HealthServer(self.metrics, host, port)
        # pyroute2's sync handles run their own event loop, so they cannot be created or
        # used on ours: every netlink call of the agent goes through this one thread.
        self._netlink = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self.ipr: Any = None
        self._pod_routes: Rtnl | None = None
        self.routes: RouteManager = RouteManager(_Unopened())
        self.policy: PolicyManager | None = None  # made in the netlink thread by run()
        self.flows: FlowLogger | None = None  # the flow log's reader, from run()
        self._synced = asyncio.Event()
        self._inputs: IpamInputs | None = None
        self._inputs_gen = -1
        self.syncer: Syncer[Any] = Syncer(self.ds, keys.PREFIX, decode_value,
                                          prefixes=WATCHED,
                                          resync_interval=cfg.snapshot_interval)
        # What the calculation reads: fed by the syncer's events and by the endpoints the
        # CNI handler reports before etcd's watch echoes them (the echo then changes nothing).
        self.cluster = ClusterState()
        self._dirty = asyncio.Event()
        self._gone_addresses: set[str] = set()  # of removed local endpoints, for the policy
        self._route_error = ""  # the last apply's first refused route, if any
        # Routes the kernel refused are tried again after a pause that doubles (0.5 s to
        # 30 s) while they keep failing; any event in between applies at once, as always.
        self._route_retry: asyncio.TimerHandle | None = None
        self._route_backoff = 0.0
        self._status_dirty = asyncio.Event()
        self._last_status: tuple[Any, ...] = ()
        self.readiness = self.health.readiness
        self.etcd_down_reason = ""  # the syncer's last word on a lost connection
        # Local endpoints (relative key -> host interface) whose interface does not exist.
        self.without_interface: dict[str, str] = {}
        self._apply_lock = asyncio.Lock()
        self._apply_requests = 0  # apply() calls so far
        self._applied_through = 0  # every call up to this one was served by a finished apply
        self.learned: dict[str, tuple[str, ...]] = {}  # BGP-learned prefixes -> nexthops
        self.config_errors: dict[str, str] = {}
        self.metrics.config_values_invalid.set_function(lambda: len(self.config_errors))
        self.cni_server: Any = None
        self.handler: Any = None
        self.ipam: Any = None
        # ExaBGP's files beside the CNI socket: one directory per node and socket dir.
        base = Path(cfg.socket).parent
        self.bgp = BgpController(self.node, netns=cfg.netns,
                                 socket_path=str(base / f"bgp-{self.node}.sock"),
                                 workdir=base / f"bgp-{self.node}", metrics=self.metrics,
                                 on_change=self._dirty.set)

    # -- EndpointSink (called by the CNI handler) ----------------------------------------

    async def endpoint_added(self, key: str, wep: model.WorkloadEndpoint) -> None:
        # A pod is only handed back to the runtime with its policy in force, and policy
        # is only programmed from a complete snapshot: wait for it (a fresh agent).
        try:
            await asyncio.wait_for(self._synced.wait(), 15)
        except TimeoutError:
            raise RuntimeError("the datastore snapshot is not complete yet") from None
        self.cluster.put(key, wep)
        await self.apply()
        # The route manager programmed the pod's routes in that apply (it is their one
        # writer): the ADD answers only with them in the kernel, as with its policy.
        for r in calc.desired_routes(self.node, ClusterState.of({key: wep})):
            if r.kind == "local" and not self.routes.is_programmed(r):
                raise PodRouteRefused(
                    f"{r.dst.split('/')[0]} is already routed on this node (route {r}: "
                    f"{self._route_error or 'another endpoint holds its address'})")

    async def endpoint_removed(self, key: str, addresses: Iterable[str] = ()) -> None:
        # Its flows go at the next policy apply, also when this process never programmed
        # it (a DEL just after a restart, before the first apply; ``addresses``: what the
        # handler read of it, when the snapshot has not brought it yet).
        self._gone_addresses.update(addresses)
        old = self.cluster.values.get(key)
        if isinstance(old, model.WorkloadEndpoint):
            self._gone_addresses.update(str(n) for n in old.spec.ip_networks)
        self.cluster.remove(key)
        await self.apply()

    # -- dataplane -----------------------------------------------------------------------

    async def apply(self) -> None:
        """Recompute desired state from the cluster state and converge the kernel once.

        Applies run one at a time, and the callers queued behind a running one share the
        next: an apply that starts after a caller asked sees everything that caller
        changed before asking, so it serves all of them (8 ADDs in parallel wait for two
        or three applies, not eight in a row). A failed apply serves nobody else: each
        waiter then runs its own.
        """
        self._apply_requests += 1
        ticket = self._apply_requests
        async with self._apply_lock:
            if self._applied_through >= ticket:
                return
            start = self._apply_requests
            await self._apply_locked()
            self._applied_through = start

    async def _apply_locked(self) -> None:
        t0 = time.monotonic()
        st = self.cluster
        learned: dict[str, tuple[str, ...]] = {}
        if self.syncer.in_sync:  # a partial snapshot would withdraw our blocks
            await self.bgp.on_state(st)
            learned = self.bgp.learned
        if not self.bgp.in_sync:
            # Until the import table is complete again (after a restart, before the
            # route refresh answers), keep the BGP routes already in the kernel.
            learned = {r.dst: r.via for r in self.routes.programmed.values()
                       if r.kind == "bgp"} | learned
        self.learned = learned
        desired = calc.desired_routes(self.node, st, learned)
        self.routes.set_desired(desired)
        res = await self._in_netlink(self.routes.apply)
        self._route_error = res.error
        self.metrics.apply_latency.labels("routes").observe(time.monotonic() - t0)
        was_ready = self.readiness.ready
        if self.syncer.in_sync:
            if not res.failed:
                self.readiness.done("routes")
            elif not self.readiness.is_done("routes"):
                self.readiness.failed("routes", f"{len(res.failed)} route(s) refused; "
                                                f"first: {res.error}")
        await self._apply_policy(st)
        if res.failed:
            self.metrics.route_errors.inc(len(res.failed))
            self._retry_routes_later()
        else:
            self._route_backoff = 0.0
        self._report_missing_interfaces(st, res)
        kinds: dict[str, int] = {"local": 0, "blackhole": 0, "bgp": 0}
        for r in self.routes.programmed.values():
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        for kind, n in kinds.items():
            self.metrics.routes_programmed.labels(kind).set(n)
        blocks = st.confirmed_blocks(self.node)
        summary = (tuple(blocks), tuple(sorted(kinds.items())), self.syncer.in_sync,
                   tuple(sorted(self.config_errors)), tuple(self.bgp.max_prefixes.items()),
                   tuple(sorted(self.without_interface.items())))
        if summary != self._last_status:  # report changes now, not at the next tick
            self._last_status = summary
            self._status_dirty.set()
        self.metrics.blocks_owned.set(len(blocks))
        self.metrics.addresses_in_use.set(sum(
            len(w.spec.ip_networks) for w in st.endpoints_of(self.node).values()
            if w.spec.host_interface))
        if self.readiness.ready and not was_ready:
            log.info("agent ready: in sync and dataplane programmed")
            self.notifier.ready(self.readiness.reason())  # Type=notify; STATUS=ready

    def _report_missing_interfaces(self, st: ClusterState, res: ApplyResult) -> None:
        """Report the local endpoints whose host interface does not exist (a pod gone
        while its endpoint stayed in etcd): one log line when one goes missing and one when
        it is resolved, the gauge, NodeStatus. Their routes do not hold readiness back and
        are not retried in a loop: the route manager tries them again when the interface
        appears (`_watch_netlink`)."""
        devs = {r.dev for r in res.no_interface}
        if not devs and not self.without_interface:
            return
        missing: dict[str, str] = {}
        for k, v in st.endpoints_of(self.node).items():
            if v.spec.host_interface and v.spec.host_interface in devs:
                missing[keys.relative(k)] = v.spec.host_interface
        for name, dev in sorted(missing.items() - self.without_interface.items()):
            log.warning("endpoint %s: its host interface %s does not exist; its routes "
                        "wait for it (a stale endpoint?)", name, dev)
        for name, dev in sorted(self.without_interface.items() - missing.items()):
            log.info("endpoint %s: no longer waiting for interface %s", name, dev)
        self.without_interface = missing
        self.metrics.endpoints_without_interface.set(len(missing))

    def _retry_routes_later(self) -> None:
        """Apply again after the backoff: a refused route (a gateway not on a link yet, a
        device that is gone) is retried, but not in a tight loop of full applies and log
        lines (~250 a second for as long as the route keeps failing)."""
        if self._route_retry is not None:
            return  # one is already due
        self._route_backoff = min(30.0, max(0.5, self._route_backoff * 2))

        def due() -> None:
            self._route_retry = None
            self._dirty.set()

        self._route_retry = asyncio.get_running_loop().call_later(self._route_backoff, due)

    async def _forget_pending_flows(self) -> None:
        """At the stop, after the last CNI call: the flows of local pods deleted since the
        last policy apply that succeeded go now, not at an apply this process will not
        run (the next process never knows those pods)."""
        policy = self.policy
        if policy is None:
            return
        gone, self._gone_addresses = self._gone_addresses, set()
        complete = self.syncer.in_sync  # the state the last apply handed the policy

        def forget() -> int:
            policy.forget_addresses(gone)
            return policy.forget_pending_flows(complete)

        try:
            n = await asyncio.wait_for(self._in_netlink(forget), 10)
            if n:
                log.info("stopping: %d conntrack entries of deleted pods deleted", n)
        except Exception as e:
            log.warning("stopping: cannot delete the flows of deleted pods: %s", e)

    async def _apply_policy(self, st: ClusterState) -> bool:
        """Converge the policy dataplane; only from a complete snapshot (the first apply
        after a start rewrites every chain, so a partial one would cut running pods)."""
        if self.policy is None or not self.syncer.in_sync:
            return False
        t0 = time.monotonic()
        policy = self.policy
        policy.set_state(st)
        gone, self._gone_addresses = self._gone_addresses, set()

        def apply() -> None:
            if gone:
                policy.forget_addresses(gone)  # kept by the manager until an apply succeeds
            policy.apply()

        try:
            await self._in_netlink(apply)
        except Exception as e:  # the kernel keeps the previous ruleset; retry
            log.error("policy apply failed (previous rules stay in force): %s", e)
            self.metrics.policy_apply_failures.inc()
            if not self.readiness.is_done("policy"):
                self.readiness.failed("policy", str(e))
            self._dirty.set()
            return False
        self.metrics.apply_latency.labels("policy").observe(time.monotonic() - t0)
        self.readiness.done("policy")
        return True

    async def _applier(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.sleep(0.005)  # coalesce a burst of events into one apply
            try:
                await self.apply()
            except Exception:
                log.exception("dataplane apply failed; retrying")
                await asyncio.sleep(1)
                self._dirty.set()

    async def _periodic_resync(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval * (0.9 + 0.2 * random.random()))
            await self._in_netlink(self.routes.resync)
            await self._refresh_local_addresses()
            if self.policy is not None:
                policy = self.policy
                await self._in_netlink(policy.resync)
            self._dirty.set()

    async def _refresh_local_addresses(self) -> None:
        addrs = await self._in_netlink(lambda: interface_addresses(self.ipr))
        if addrs != self.bgp.interfaces:
            log.info("interface addresses now: %s", ", ".join(addrs) or "none")
            self.bgp.interfaces = addrs
            self._dirty.set()  # sessions source from the address on their peer's subnet

    async def _watch_netlink(self) -> None:
        """Follow the kernel's link, address and route notifications (one rtnetlink socket)
        and bring the dataplane back at once, instead of at the next periodic resync:

        - an IPv4 address added or removed: read the node's addresses again (each BGP
          session is sourced from the address on its peer's subnet, so an uplink addressed
          late must carry its session now);
        - a link other than a pod's veth comes up (administratively, or its carrier): the
          kernel deleted the routes through it when it went down, for IPv4 without any
          RTM_DELROUTE, so the route manager re-reads the kernel and the apply restores
          them (a short flap with the BGP session kept loses no learned route for long);
        - a route of ours that we still want is deleted (by the kernel or by hand): the
          route manager forgets it and the apply puts it back. Echoes of our own deletes
          are for routes we no longer want, so they cause nothing;
        - a pod veth appears whose endpoint's routes wait for it: they are tried now;
        - a pod veth is deleted (not by a DEL, which removes its endpoint first): its
          routes went with it, silently for IPv4; the apply finds them missing and its
          endpoint is reported as without interface at once.

        A burst (a flap brings a dozen messages) is handled once. If the socket overflowed
        (ENOBUFS: notifications lost) everything is read again (`watch_kernel`).
        """
        await watch_kernel(self.cfg.netns,
                           lambda: self._in_netlink(lambda: link_states(self.ipr)),
                           self._refresh_local_addresses, self._follow_kernel)

    async def _follow_kernel(self, ch: KernelChanges) -> None:
        """Bring the route manager's record in line with what the kernel did (in the
        netlink thread, ordered with the applies) and apply if that changed anything."""
        appeared = ch.appeared if self.without_interface else set()
        if not (ch.came_up or ch.deleted or ch.everything or appeared or ch.vanished):
            return
        routes = self.routes

        def update() -> tuple[list[Route], bool]:
            if ch.came_up or ch.everything:
                routes.reread()
            gone = routes.forget(ch.deleted)
            changed = any([routes.link_gone(name, index) for name, index in ch.vanished])
            if ch.everything:
                return gone, routes.retry_waiting() or changed
            return gone, any([routes.link_appeared(name) for name in appeared]) or changed

        gone, changed = await self._in_netlink(update)
        if ch.came_up:
            log.info("link %s up: routes read again", ", ".join(ch.came_up))
        if gone:
            log.info("%d route(s) of ours deleted from the kernel (%s%s): restoring",
                     len(gone), gone[0].dst, ", ..." if len(gone) > 1 else "")
        if ch.came_up or ch.everything or gone or changed:
            self._dirty.set()

    # -- datastore -------------------------------------------------------------------------

    async def _consume(self) -> None:
        async for ev in self.syncer.events():
            if isinstance(ev, Update | Deleted):
                self.metrics.datastore_events.labels(
                    "update" if isinstance(ev, Update) else "delete").inc()
                had_error = self.config_errors.pop(ev.key, None) is not None
                if self.cluster.apply(ev) or had_error:
                    self._dirty.set()
            elif isinstance(ev, InSync):
                self.metrics.datastore_events.labels("in_sync").inc()
                self.metrics.in_sync.set(1)
                self.readiness.done("snapshot")
                self._synced.set()
                if not self.routes.in_sync:
                    self.routes.mark_in_sync()
                    log.info("datastore in sync at revision %d", ev.revision)
                    freeze_heap_once()  # what the snapshot made lives as long as the cluster
                elif self.policy is not None:
                    # A later snapshot (periodic, or after a gap the watches could not
                    # bridge): the policy is calculated from scratch at the next apply.
                    await self._in_netlink(self.policy.recalculate)
                self._dirty.set()
            elif isinstance(ev, ConfigError):
                self.metrics.config_errors.inc()
                self.config_errors[ev.key] = ev.error
                self._status_dirty.set()  # NodeStatus lists it now, not at the next tick
                log.error("config error: %s (last good value kept)", ev.error)
            elif isinstance(ev, ConnectionState):
                self.metrics.datastore_events.labels("up" if ev.up else "down").inc()
                if not ev.up:
                    log.warning("etcd connection lost: %s", ev.reason)
                    self.etcd_down_reason = f"etcd: {ev.reason}"
                    if not self.readiness.is_done("snapshot"):
                        self.readiness.failed("snapshot", self.etcd_down_reason)

    async def _in_netlink(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._netlink, fn)

    async def register_node(self) -> None:
        await register_node(self.ds, self.node, self.cfg.node_ip, self.cfg.node_ip6,
                            lambda: self._in_netlink(lambda: detect_node_ip(self.ipr)))

    def metrics_url(self) -> str:
        """Where the metrics are served, as another host reaches them (an address bound
        to every interface is named by the node's address)."""
        host = self.health.host
        if host in ("", "0.0.0.0", "::"):
            host = (self.cfg.node_ip or "127.0.0.1").split("/")[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.health.port}/metrics"

    def status_object(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for r in self.routes.programmed.values():
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        return {
            "apiVersion": model.API_VERSION, "kind": "NodeStatus",
            "metadata": {"name": self.node},
            "status": {
                "updated": datetime.fromtimestamp(self.now(), UTC).isoformat(),
                "inSync": self.syncer.in_sync,
                "version": l3fabric_version(),
                "metrics": self.metrics_url(),
                "blocks": self.cluster.confirmed_blocks(self.node),
                "programmed": {"routes": sum(kinds.values()), **kinds},
                "errors": sorted(self.config_errors.values()) + [
                    f"endpoint {name}: host interface {dev} does not exist"
                    for name, dev in sorted(self.without_interface.items())],
                "bgp": {"peers": self.bgp_peer_status()},
            },
        }

    def bgp_peer_status(self) -> list[dict[str, Any]]:
        return self.bgp.peer_status()

    async def _status_loop(self) -> None:
        """NodeStatus is written when it changes; liveness is its lease (`keep_node_status`)."""
        await keep_node_status(self.ds, keys.node_status(self.node), self.status_object,
                               self._status_dirty, ttl=self.cfg.status_ttl,
                               interval=self.cfg.status_interval)

    # -- lifecycle -------------------------------------------------------------------------

    async def _start_cni(self) -> None:
        from felix_like.cni_handler import CniHandler
        from felix_like.cni_server import CniServer
        from ipam.allocator import IpamClient

        # IPAM decides from the cluster state (last good values, no extra etcd reads)
        # and gives up quickly when etcd is away: the runtime retries on code 11.
        # What it commits goes into the cluster state at once (_ipam_committed).
        self.ipam = ipam = IpamClient(self.ds, self.node, inputs=self._ipam_inputs,
                                      unavailable_budget=3.0, on_commit=self._ipam_committed)
        self.handler = CniHandler(self.node, self.ds, ipam, node_netns=self.cfg.netns,
                                  dataplane=self, metrics=self.metrics)
        self.cni_server = CniServer(self.cfg.socket, self._serve_cni)
        await self.cni_server.start()

    def _ipam_committed(self, revision: int, ops: Sequence[Op]) -> None:
        """This node's IPAM transaction committed: its blocks and affinities go into the
        cluster state now (through the syncer, as their watch events would), so the
        apply that follows (the ADD's own, step 7 of docs/architecture.md §6) already
        exports a borrowed address or a newly confirmed block, and lays its blackhole,
        instead of one more apply after etcd's watch echoes the write."""
        changed = False
        for op in ops:
            if isinstance(op, Put | Delete):
                value = op.value if isinstance(op, Put) else None
                for ev in self.syncer.observe_write(op.key, value, revision):
                    if isinstance(ev, Update | Deleted):
                        changed = self.cluster.apply(ev) or changed
        if changed:
            self._dirty.set()

    async def _ipam_inputs(self) -> IpamInputs:
        try:
            await asyncio.wait_for(self._synced.wait(), 15)
        except TimeoutError:
            raise UnavailableError("the datastore snapshot is not complete yet") from None
        if self._inputs_gen != self.cluster.generation or self._inputs is None:
            self._inputs = calc.ipam_inputs(self.node, self.cluster)
            self._inputs_gen = self.cluster.generation
        return self._inputs

    async def _serve_cni(self, plugin: str, env: dict[str, str],
                         stdin: str) -> tuple[int, str, str]:
        """The handler, except that an ADD while etcd is known to be away fails at once
        with code 11 (try again later) instead of waiting out the datastore's retries."""
        if env.get("CNI_COMMAND") == "ADD" and self.syncer.connected is False:
            self.metrics.cni_requests.labels("ADD", "error").inc()
            err = CniError(ERR_TRY_AGAIN_LATER, "etcd is unreachable; try again later",
                           self.etcd_down_reason)
            return 1, error_json(err, requested_version(stdin)), ""
        code, out, err_text = await self.handler.handle(plugin, env, stdin)
        return code, out, err_text

    async def run(self, stop: asyncio.Event) -> None:
        register_rt_protos()
        self.ipr = await self._in_netlink(lambda: open_iproute(self.cfg.netns))
        # Pod routes go through a raw socket (`Rtnl`): the request of every pod ADD.
        self._pod_routes = await self._in_netlink(lambda: Rtnl.open(self.cfg.netns))
        self.routes = RouteManager(self.ipr, pods=self._pod_routes)
        # Read the kernel's routes now (not in sync yet: this removes nothing). apply() keeps
        # the BGP routes already installed until the import table is complete again, and
        # finds them in routes.programmed only once the kernel was dumped; without this the
        # first apply after a restart deletes every learned route until the refresh answers.
        await self._in_netlink(self.routes.apply)
        self.policy = await self._in_netlink(lambda: PolicyManager(
            self.cfg.policy_backend, self.cfg.netns, self.node,
            log_allowed=self.cfg.flow_log_allowed))
        self.metrics.registry.register(
            PolicyCounterCollector(counter_reader(self.policy.backend)))
        self.flows = start_flow_log(self.node, self.cfg.netns, Path(self.cfg.socket).parent,
                                    self.policy, self.metrics.registry)
        if self.flows is not None:
            flows_file = self.flows.path
            self.health.pages["/flows"] = lambda: flowlog_tail(flows_file)
        self.bgp.interfaces = await self._in_netlink(lambda: interface_addresses(self.ipr))
        await self.health.start()
        # WATCHDOG=1 and STATUS= for systemd (felix_like.sdnotify), from the first step on.
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(
            keep_alive(self.notifier, self.readiness.reason), name="systemd")
        ] if self.notifier.enabled else []
        try:
            while not stop.is_set():
                try:
                    # A datastore written by a newer l3fabric is refused (SchemaTooNewError
                    # ends run() with its message) rather than misread.
                    await ensure_schema(self.ds)
                    await self.register_node()
                    self.readiness.done("etcd")
                    break
                except DatastoreError as e:
                    log.warning("waiting for etcd to register the node: %s", e)
                    self.readiness.failed("etcd", str(e))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 2)
            await self._start_cni()
            await self.bgp.start()
            self.readiness.done("bgp")
            tasks += [asyncio.create_task(c, name=n) for n, c in [
                ("consume", self._consume()), ("applier", self._applier()),
                ("status", self._status_loop()), ("resync", self._periodic_resync()),
                ("netlink", self._watch_netlink())]]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            stopper.cancel()
        finally:
            self.notifier.stopping()
            if self._route_retry is not None:
                self._route_retry.cancel()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self.cni_server is not None:
                await self.cni_server.stop()
            await self._forget_pending_flows()
            if self.ipam is not None:  # a block claim in the background finishes first
                with contextlib.suppress(Exception):
                    await self.ipam.aclose()
            # ExaBGP keeps running (its own session): the ToR keeps our routes and the
            # sessions stay up across an agent restart; the next agent re-attaches.
            with contextlib.suppress(Exception):
                await self.bgp.stop(drain=False)
            await self.health.stop()
            if self.flows is not None:
                self.flows.stop()
            # NodeStatus is left to expire with its lease: a restart within the TTL keeps it.
            await self.ds.close()
            if self.ipr is not None:
                await self._in_netlink(self.ipr.close)
            if self._pod_routes is not None:
                self._pod_routes.close()
            self._netlink.shutdown(wait=False)
