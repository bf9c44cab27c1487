"""Kernel routes owned by l3fabric: render them (pure) and converge the kernel to them.

What is owned: every route in the main table (IPv4 and IPv6) whose protocol is
``PROTO_L3FABRIC`` (80: local pod /32s and block blackholes) or ``PROTO_L3FABRIC_BGP``
(81: prefixes learned over BGP). Routes of any other protocol (kernel, static, bird,
dhcp, ...) are never replaced or deleted, even when they sit on a prefix we want; such
a collision is reported as a failed route and retried.

Invariant of :class:`RouteManager` (STYLE rules 2-4): after ``apply()`` returns with no
failures, the owned routes in the kernel equal the desired set — except that, until
``mark_in_sync()`` has been called (the first datastore snapshot is complete), owned
routes that are not desired are left alone, so that an agent restart with a partial
view never cuts existing pods off. The kernel is dumped once at start (and on
``resync()``); after that deltas are computed against our own record. Nothing is ever
flushed.

Failure mode: a route that cannot be programmed (unreachable gateway, foreign route in
the way) is logged, counted in ``ApplyResult.failed`` and retried on the next
``apply()``; the others still go in. A pod route whose interface does not exist (a stale
endpoint whose veth is gone) is not a failure: it waits in ``waiting`` and is tried again
only after ``link_appeared`` names its interface (or a ``resync``), not on every apply.
The kernel deletes routes on its own when a link goes down (IPv4 without a notification):
``reread`` and ``forget`` bring the record back in line, and the next apply restores them.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

#: Local pod routes and block blackholes. Free in iproute2's reserved list (186-192 are
#: bgp/isis/ospf/rip/eigrp, 12 is bird, 42 babel, 99 openr).
PROTO_L3FABRIC = 80
#: Routes learned over BGP and installed by the agent.
PROTO_L3FABRIC_BGP = 81
OWNED_PROTOS = frozenset({PROTO_L3FABRIC, PROTO_L3FABRIC_BGP})

# The kernel's numbers, as rtnetlink carries them (the calculation imports this module's
# values and renderer, and with them no socket module).
AF_INET = 2
AF_INET6 = 10
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
ESRCH = 3
EEXIST = 17
ENODEV = 19

RT_PROTOS_CONF = "/etc/iproute2/rt_protos.d/l3fabric.conf"

RouteKind = Literal["local", "blackhole", "bgp"]


def _canonical_net(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


@dataclass(frozen=True)
class Route:
    """One route we own. ``dst`` is a canonical CIDR; ``via`` is sorted (ECMP order is
    irrelevant) and empty for local and blackhole routes; ``dev`` is set only for local.
    A link-local IPv6 next hop carries its interface as a scope (``fe80::1%eth1``): the
    kernel refuses such a gateway without one."""

    dst: str
    kind: RouteKind
    dev: str | None = None
    via: tuple[str, ...] = ()
    proto: int = PROTO_L3FABRIC

    def __post_init__(self) -> None:
        object.__setattr__(self, "dst", _canonical_net(self.dst))
        object.__setattr__(
            self, "via", tuple(sorted(str(ipaddress.ip_address(v)) for v in self.via))
        )
        if self.kind == "local" and (not self.dev or self.via):
            raise ValueError(f"local route {self.dst} needs a dev and no nexthops")
        if self.kind == "blackhole" and (self.dev or self.via):
            raise ValueError(f"blackhole route {self.dst} takes no dev or nexthops")
        if self.kind == "bgp" and not self.via:
            raise ValueError(f"bgp route {self.dst} needs at least one nexthop")

    @property
    def family(self) -> int:
        return AF_INET6 if ":" in self.dst else AF_INET

    def __str__(self) -> str:
        """As ``ip route`` shows it (log lines, the readiness reason)."""
        if self.kind == "local":
            return f"{self.dst} dev {self.dev} proto {self.proto}"
        if self.kind == "blackhole":
            return f"blackhole {self.dst} proto {self.proto}"
        return f"{self.dst} via {','.join(self.via)} proto {self.proto}"


def render_routes(
    local_endpoints: Iterable[tuple[str, str]],
    blocks: Iterable[str],
    learned: Mapping[str, tuple[str, ...]],
) -> set[Route]:
    """The routes a node needs (docs/architecture.md §5), as data.

    - each local endpoint address (``"10.0.0.5"`` or ``"10.0.0.5/26"``: the host part is
      what counts) → ``<ip>/32 dev <host_if>`` (``/128`` for IPv6);
    - each block the node owns → ``blackhole <block>``;
    - each learned prefix → ``<prefix> via <nexthops>`` (ECMP when several).

    On a prefix collision a local route beats a block blackhole, which beats a learned
    route (the node never imports its own blocks, but a bad peer could send them). Two
    endpoints claiming one address: the lowest host interface name wins, deterministically.
    """
    routes: dict[str, Route] = {}
    for prefix, nexthops in sorted(learned.items()):
        if nexthops:
            r = _learned_route(prefix, tuple(nexthops))
            routes[r.dst] = r
    for block in sorted(blocks):
        r = _blackhole_route(block)
        routes[r.dst] = r
    for addr, host_if in sorted(local_endpoints, reverse=True):
        r = _local_route(addr, host_if)
        routes[r.dst] = r
    return set(routes.values())


# The agent renders every route on every apply (each pod ADD and DEL), so each is parsed
# and validated once (Route is immutable), which keeps a render with 1,000 learned prefixes
# near 1 ms (docs/performance.md). The caches are bounded like the routes (max-prefix is 10,000 per
# peer by default); past that they only cost the parse again.

@functools.lru_cache(maxsize=16384)
def _local_route(addr: str, host_if: str) -> Route:
    """A pod's /32 (or /128)."""
    ip = ipaddress.ip_interface(addr).ip
    return Route(f"{ip}/{ip.max_prefixlen}", "local", dev=host_if, proto=PROTO_L3FABRIC)


@functools.lru_cache(maxsize=16384)
def _learned_route(prefix: str, nexthops: tuple[str, ...]) -> Route:
    return Route(prefix, "bgp", via=nexthops, proto=PROTO_L3FABRIC_BGP)


@functools.lru_cache(maxsize=4096)
def _blackhole_route(block: str) -> Route:
    return Route(block, "blackhole", proto=PROTO_L3FABRIC)


def register_rt_protos(path: str = RT_PROTOS_CONF) -> bool:
    """Name our protocol numbers for ``ip route`` (idempotent). Returns True if written."""
    content = (
        "# written by l3fabric: route protocols it owns\n"
        f"{PROTO_L3FABRIC}\tl3fabric\n"
        f"{PROTO_L3FABRIC_BGP}\tl3fabric-bgp\n"
    )
    try:
        with open(path) as f:
            if f.read() == content:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(content)
    os.replace(tmp, path)
    return True


class NetlinkHandle(Protocol):
    """The part of pyroute2's ``IPRoute`` the route manager uses (a fake implements it too).

    ``route("dump", family=, table=)`` yields rtmsg-like objects (``msg["dst_len"]``,
    ``msg.get_attr("RTA_DST")``, ...); ``get_links()`` yields ifinfmsg-like objects.
    """

    def route(self, command: str, **kwargs: Any) -> Any: ...

    def get_links(self, *argv: Any, **kwargs: Any) -> Any: ...


class PodRouteRefused(RuntimeError):
    """A pod's address could not be routed to its veth (another route holds it): its CNI
    ADD fails as a wiring failure (102), as when the wiring adds the route itself."""


class PodRouteWriter(Protocol):
    """A lighter netlink client for the request a pod ADD makes (`felix_like.netlink.Rtnl`:
    a raw socket, where a pyroute2 request runs an event loop of its own): the new veth's
    index and the add of the pod's route. Optional; without it ``NetlinkHandle`` does it."""

    def link_index(self, name: str) -> int | None: ...

    def add_route(self, family: int, dst: str, dst_len: int, *, oif: int, table: int,
                  proto: int, scope: int) -> None: ...


@dataclass(frozen=True)
class ApplyResult:
    added: tuple[Route, ...] = ()
    removed: tuple[Route, ...] = ()
    replaced: tuple[Route, ...] = ()
    adopted: tuple[Route, ...] = ()
    failed: tuple[Route, ...] = ()
    #: owned routes not desired, kept because we are not in sync yet.
    kept_stale: int = 0
    #: local routes whose interface does not exist: waiting for it, not failed.
    no_interface: tuple[Route, ...] = ()
    #: the first failure's message ("route add ... failed: ...").
    error: str = ""

    @property
    def changes(self) -> int:
        return len(self.added) + len(self.removed) + len(self.replaced)


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    return exc.errno if isinstance(exc, OSError) else None


@dataclass
class _Pass:
    added: list[Route] = field(default_factory=list)
    removed: list[Route] = field(default_factory=list)
    replaced: list[Route] = field(default_factory=list)
    adopted: list[Route] = field(default_factory=list)
    failed: list[Route] = field(default_factory=list)
    kept_stale: int = 0
    no_interface: list[Route] = field(default_factory=list)
    error: str = ""

    def fail(self, r: Route, message: str) -> None:
        log.warning("%s", message)
        self.failed.append(r)
        self.error = self.error or message


def _no_interface(r: Route, exc: BaseException) -> bool:
    """Whether ``r`` failed only because its interface is missing (gone before we asked,
    or between our link read and the kernel's answer)."""
    return r.kind == "local" and (isinstance(exc, LookupError) or _error_code(exc) == ENODEV)


class RouteManager:
    """Converges the owned routes of one network namespace to a desired set.

    Owner: the node agent (one per node namespace); it is the only writer of routes of
    our protocols there, pods' /32s included: the CNI handler reports a pod it wired,
    and the apply that report runs adds the pod's route before ADD answers. A blockSize
    32 (128) block's blackhole at a pod's own prefix is replaced by the pod's route, as
    :func:`render_routes` prefers it: both are ours.

    Not thread-safe; the handle is a sync pyroute2 ``IPRoute`` used from one thread.
    """

    def __init__(self, ipr: NetlinkHandle, now: Callable[[], float] = time.monotonic,
                 pods: PodRouteWriter | None = None) -> None:
        self._ipr = ipr
        self._pods = pods
        self._now = now
        self._desired: dict[str, Route] = {}
        # What we believe is in the kernel, by dst. None: unknown, dump before diffing.
        self._programmed: dict[str, Route] | None = None
        self._in_sync = False
        # Desired local routes whose interface was missing at the last try, by dst.
        self._waiting: dict[str, Route] = {}
        # The interface index each local route of the record goes through, where known: a
        # veth deleted and made again under its name has a new index, and only routes
        # through the deleted one went with it.
        self._oif: dict[str, int] = {}
        self.last_dump_at: float | None = None
        self.last_apply_at: float | None = None

    # -- commands ------------------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    def mark_in_sync(self) -> None:
        """The desired set is now complete: from the next apply() stale routes go."""
        self._in_sync = True

    def set_desired(self, routes: Iterable[Route]) -> None:
        desired: dict[str, Route] = {}
        for r in routes:
            if r.proto not in OWNED_PROTOS:
                raise ValueError(f"route {r.dst} has protocol {r.proto}, not one we own")
            if r.dst in desired and desired[r.dst] != r:
                raise ValueError(f"two desired routes for {r.dst}: {desired[r.dst]} and {r}")
            desired[r.dst] = r
        self._desired = desired

    def resync(self) -> None:
        """Forget our record; the next apply() re-reads the kernel and tries the routes
        waiting for an interface once more (periodic resync)."""
        self._programmed = None
        self._waiting = {}

    def reread(self) -> None:
        """Take the kernel's owned routes as our record now: a link came up, and the kernel
        may have deleted routes through it while it was down (IPv4 sends no RTM_DELROUTE
        for those). Unlike `resync`, the record is never empty in between."""
        self._programmed = self._dump(_LinkIndex(self._ipr))

    def forget(self, dsts: Iterable[str]) -> list[Route]:
        """The kernel reported these destinations deleted: drop from our record the ones we
        still want, so the next apply() puts them back; return those.

        The others are echoes of our own deletes (apply() deletes only routes it no longer
        wants) or of the CNI handler's, which runs after the endpoint is gone: ignoring
        them keeps a delete from ever causing another apply."""
        if self._programmed is None:
            return []
        gone = []
        for dst in dsts:
            want = self._desired.get(dst)
            if want is not None and self._programmed.get(dst) == want:
                del self._programmed[dst]
                gone.append(want)
        return gone

    def link_appeared(self, name: str) -> bool:
        """Interface ``name`` exists now: the routes waiting for it are tried at the next
        apply(). Whether any was waiting."""
        found = [dst for dst, r in self._waiting.items() if r.dev == name]
        for dst in found:
            del self._waiting[dst]
        return bool(found)

    def link_gone(self, name: str, index: int | None = None) -> bool:
        """Interface ``name`` (of ``index``, when known) was deleted and the kernel deleted
        every route through it (IPv4 without a notification): drop them from our record,
        so that the next apply() finds the ones still desired missing (and waiting for the
        interface). Whether any of them is desired.

        A route the record has through another interface of that name stays: a pod's veth
        replaced under its name (a repeated ADD) whose deletion is reported after an
        apply routed the pod through the new one."""
        if self._programmed is None:
            return False
        found = [dst for dst, r in self._programmed.items() if r.dev == name
                 and (index is None or self._oif.get(dst, index) == index)]
        for dst in found:
            del self._programmed[dst]
        return any(dst in self._desired for dst in found)

    def retry_waiting(self) -> bool:
        """Try every route waiting for an interface at the next apply(); whether any was."""
        found = bool(self._waiting)
        self._waiting.clear()
        return found

    @property
    def waiting(self) -> Mapping[str, Route]:
        """Desired local routes whose interface does not exist, by dst."""
        return dict(self._waiting)

    @property
    def programmed(self) -> Mapping[str, Route]:
        return dict(self._programmed or {})

    def apply(self) -> ApplyResult:
        """Converge once. Safe to call again at any time; a converged state costs nothing."""
        links = _LinkIndex(self._ipr)
        if self._programmed is None:
            self._programmed = self._dump(links)
            first = True
        else:
            first = False
        programmed = self._programmed
        p = _Pass()
        self._waiting = {dst: r for dst, r in self._waiting.items()
                         if self._desired.get(dst) == r}

        for dst, want in sorted(self._desired.items()):
            have = programmed.get(dst)
            if have == want:
                if first:
                    p.adopted.append(want)
                continue
            if dst in self._waiting:  # its interface is still missing
                p.no_interface.append(want)
                continue
            self._oif.pop(dst, None)
            try:
                if have is None:
                    {"added": p.added, "replaced": p.replaced,
                     "adopted": p.adopted}[self._add(want, links)].append(want)
                else:
                    self._program("replace", want, links)
                    p.replaced.append(want)
                programmed[dst] = want
            except Exception as exc:  # one bad route must not stop the rest
                if _no_interface(want, exc):
                    self._waiting[dst] = want
                    p.no_interface.append(want)
                    continue
                p.fail(want, f"route {'add' if have is None else 'replace'} {want} "
                             f"failed: {exc}")

        for dst, have in sorted(programmed.items()):
            if dst in self._desired:
                continue
            if not self._in_sync:
                p.kept_stale += 1
                continue
            try:
                # scope NOWHERE = "any scope", as iproute2 sends: with pyroute2's
                # default (universe) the kernel would not match a scope-link route.
                self._ipr.route("del", family=have.family, dst=have.dst, proto=have.proto,
                                table=RT_TABLE_MAIN, scope=RT_SCOPE_NOWHERE)
            except Exception as exc:
                if _error_code(exc) != ESRCH:  # already gone: fine
                    p.fail(have, f"route del {have} failed: {exc}")
                    continue
            del programmed[dst]
            self._oif.pop(dst, None)
            p.removed.append(have)

        self.last_apply_at = self._now()
        if p.added or p.removed or p.replaced or p.failed:
            log.info("routes applied: added=%d removed=%d replaced=%d failed=%d adopted=%d",
                     len(p.added), len(p.removed), len(p.replaced), len(p.failed),
                     len(p.adopted))
        return ApplyResult(tuple(p.added), tuple(p.removed), tuple(p.replaced),
                           tuple(p.adopted), tuple(p.failed), p.kept_stale,
                           tuple(p.no_interface), p.error)

    def is_programmed(self, r: Route) -> bool:
        """Whether ``r`` is in the kernel as far as our record knows (after an apply)."""
        return self._programmed is not None and self._programmed.get(r.dst) == r

    # -- netlink -------------------------------------------------------------------

    def _add(self, r: Route, links: _LinkIndex) -> str:
        """Add ``r``; returns "added", or "adopted"/"replaced" when an owned route was there.

        Race: a route of our protocols appeared after our dump (the previous agent of the
        node, still stopping, or a hand-made one), so "add" meets EEXIST although our
        record says absent. Look at what is there: identical and owned -> adopt; owned but
        different -> replace; foreign -> fail (never touch other protocols' routes).
        """
        try:
            self._program("add", r, links)
            return "added"
        except Exception as exc:
            if _error_code(exc) != EEXIST:
                raise
            there = self._find_kernel_route(r, links)
            if there is None:
                raise RuntimeError(
                    f"{r.dst} is taken by a route of another protocol; not touching it"
                ) from exc
            if there != r:
                self._program("replace", r, links)
                return "replaced"
            return "adopted"

    def _find_kernel_route(self, r: Route, links: _LinkIndex) -> Route | None:
        for msg in self._ipr.route("dump", family=r.family, table=RT_TABLE_MAIN):
            found = route_from_msg(msg, links.name)
            if found is not None and found.dst == r.dst:
                return found
        return None

    def _program(self, command: str, r: Route, links: _LinkIndex) -> None:
        kw: dict[str, Any] = {
            "family": r.family, "dst": r.dst, "proto": r.proto, "table": RT_TABLE_MAIN,
        }
        if r.kind == "local" and command == "add" and self._pods is not None:
            assert r.dev is not None
            oif = self._pods.link_index(r.dev)
            if oif is None:
                raise LookupError(f"no interface {r.dev}")
            host, _, plen = r.dst.partition("/")
            self._pods.add_route(r.family, host, int(plen), oif=oif, table=RT_TABLE_MAIN,
                                 proto=r.proto, scope=RT_SCOPE_LINK)
            self._oif[r.dst] = oif
            return
        oif = None
        if r.kind == "local":
            assert r.dev is not None
            oif = links.index(r.dev)
            kw.update(oif=oif, scope=RT_SCOPE_LINK, type=RTN_UNICAST)
        elif r.kind == "blackhole":
            kw.update(type=RTN_BLACKHOLE)
        elif len(r.via) == 1:
            kw.update(_nexthop(r.via[0], links), type=RTN_UNICAST)
        else:
            kw.update(multipath=[_nexthop(g, links) for g in r.via], type=RTN_UNICAST)
        self._ipr.route(command, **kw)
        if oif is not None:
            self._oif[r.dst] = oif

    def _dump(self, links: _LinkIndex) -> dict[str, Route]:
        found: dict[str, Route] = {}
        self._oif = {}
        for family in (AF_INET, AF_INET6):
            for msg in self._ipr.route("dump", family=family, table=RT_TABLE_MAIN):
                r = route_from_msg(msg, links.name)
                if r is None:
                    continue
                if r.dst in found:
                    # Two owned routes on one prefix (different metrics): keep the first in
                    # our record; the kernel lookup uses the lowest metric, dumped first.
                    log.warning("duplicate owned route for %s ignored: %s", r.dst, r)
                    continue
                found[r.dst] = r
                oif = msg.get_attr("RTA_OIF")
                if r.kind == "local" and oif is not None:
                    self._oif[r.dst] = int(oif)
        self.last_dump_at = self._now()
        log.debug("dumped %d owned routes", len(found))
        return found


def _nexthop(via: str, links: _LinkIndex) -> dict[str, Any]:
    """A gateway for netlink; ``fe80::1%eth1`` goes out of ``eth1``."""
    address, _, dev = via.partition("%")
    if dev:
        return {"gateway": address, "oif": links.index(dev)}
    return {"gateway": address}


def _scoped(gateway: str, oif: int | None, ifname: Callable[[int], str | None]) -> str:
    """A dumped gateway as `Route.via` has it: a link-local one with its interface."""
    if oif is not None and ipaddress.ip_address(gateway).is_link_local:
        dev = ifname(oif)
        if dev:
            return f"{gateway}%{dev}"
    return gateway


class _LinkIndex:
    """ifindex <-> name, read once per apply() and only if needed; a name alone is
    looked up by itself (when the handle can) until the whole table is read."""

    def __init__(self, ipr: NetlinkHandle) -> None:
        self._ipr = ipr
        self._by_name: dict[str, int] | None = None
        self._looked_up = False

    def _load(self) -> dict[str, int]:
        if self._by_name is None:
            self._by_name = {}
            for msg in self._ipr.get_links():
                self._by_name[msg.get_attr("IFLA_IFNAME")] = msg["index"]
        return self._by_name

    def index(self, name: str) -> int:
        lookup = getattr(self._ipr, "link_lookup", None)
        if self._by_name is None and lookup is not None and not self._looked_up:
            # One request for the one link (a pod's new veth, usually), not a dump of
            # every link of the node on each pod ADD; a second name reads the table.
            self._looked_up = True
            found = lookup(ifname=name)
            if not found:
                raise LookupError(f"no interface {name}")
            return int(found[0])
        idx = self._load().get(name)
        if idx is None:
            raise LookupError(f"no interface {name}")
        return idx

    def name(self, index: int) -> str | None:
        for n, i in self._load().items():
            if i == index:
                return n
        return None


def route_from_msg(msg: Any, ifname: Callable[[int], str | None]) -> Route | None:
    """An owned route from a kernel rtmsg, or None if it is not ours / not in main."""
    proto = msg["proto"]
    if proto not in OWNED_PROTOS:
        return None
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    if table != RT_TABLE_MAIN:
        return None
    family = msg["family"]
    dst_addr = msg.get_attr("RTA_DST") or ("::" if family == AF_INET6 else "0.0.0.0")
    dst = f"{dst_addr}/{msg['dst_len']}"
    if msg["type"] == RTN_BLACKHOLE:
        return Route(dst, "blackhole", proto=proto)
    multipath = msg.get_attr("RTA_MULTIPATH")
    if multipath:
        via = tuple(_scoped(nh.get_attr("RTA_GATEWAY"), nh.get("oif"), ifname)
                    for nh in multipath if nh.get_attr("RTA_GATEWAY"))
        if via:
            return Route(dst, "bgp", via=via, proto=proto)
    gateway = msg.get_attr("RTA_GATEWAY")
    if gateway:
        via = (_scoped(gateway, msg.get_attr("RTA_OIF"), ifname),)
        return Route(dst, "bgp", via=via, proto=proto)
    oif = msg.get_attr("RTA_OIF")
    dev = ifname(oif) if oif is not None else None
    if dev is None:
        # An owned route we cannot express (no dev, no gateway): record it under a
        # placeholder so that it is replaced if desired and removed if stale.
        return Route(dst, "local", dev=f"?ifindex={oif}", proto=proto)
    return Route(dst, "local", dev=dev, proto=proto)
