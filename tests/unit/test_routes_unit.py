"""RouteManager against a fake kernel routing table that interprets netlink route calls."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from felix_like.routes import (
    PROTO_L3FABRIC,
    PROTO_L3FABRIC_BGP,
    RTN_BLACKHOLE,
    Route,
    RouteManager,
    register_rt_protos,
    render_routes,
)

PROTO_STATIC = 4
PROTO_KERNEL = 2


class Msg(dict[str, Any]):
    """Enough of pyroute2's nlmsg: header fields by key, attributes by get_attr."""

    def __init__(self, fields: dict[str, Any], attrs: dict[str, Any]) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


@dataclass
class KRoute:
    family: int
    dst: str
    proto: int
    type: int
    oif: int | None = None
    gateways: tuple[str, ...] = ()
    scope: int = 0


@dataclass
class FakeKernel:
    """Main table keyed by dst; links by name; gateways reachable only inside `onlink`."""

    links: dict[str, int] = field(default_factory=lambda: {"lo": 1, "eth0": 2})
    onlink: tuple[str, ...] = ("10.99.0.", "fd99::")
    table: dict[str, KRoute] = field(default_factory=dict)
    dumps: int = 0
    changes: int = 0

    # -- the NetlinkHandle protocol ----------------------------------------------------

    def get_links(self, *argv: Any, **kwargs: Any) -> list[Msg]:
        return [Msg({"index": i}, {"IFLA_IFNAME": n}) for n, i in self.links.items()]

    def route(self, command: str, **kw: Any) -> list[Msg]:
        if command == "dump":
            self.dumps += 1
            return [self._msg(r) for r in self.table.values() if r.family == kw["family"]]
        dst = kw["dst"]
        if command == "del":
            have = self.table.get(dst)
            # like fib_table_delete: proto must match if given; scope unless NOWHERE (255)
            if (have is None or ("proto" in kw and kw["proto"] != have.proto)
                    or kw.get("scope", 0) not in (255, have.scope)):
                raise NetlinkError(3, "No such process")
            del self.table[dst]
            self.changes += 1
            return []
        new = self._interpret(kw)
        if command == "add" and dst in self.table:
            raise NetlinkError(17, "File exists")
        if command == "replace" and dst not in self.table:
            raise NetlinkError(2, "No such file or directory")  # we only replace what exists
        self.table[dst] = new
        self.changes += 1
        return []

    # -- helpers -------------------------------------------------------------------

    def _interpret(self, kw: dict[str, Any]) -> KRoute:
        gws: tuple[str, ...] = ()
        if "gateway" in kw:
            gws = (kw["gateway"],)
        elif "multipath" in kw:
            gws = tuple(nh["gateway"] for nh in kw["multipath"])
        for gw in gws:
            if not gw.startswith(self.onlink):
                raise NetlinkError(101, "Network is unreachable")
        oif = kw.get("oif")
        if oif is not None and oif not in self.links.values():
            raise NetlinkError(19, "No such device")
        return KRoute(kw["family"], kw["dst"], kw.get("proto", PROTO_STATIC),
                      kw.get("type", 1), oif, gws, kw.get("scope", 0))

    def _msg(self, r: KRoute) -> Msg:
        addr, plen = r.dst.split("/")
        attrs: dict[str, Any] = {"RTA_TABLE": 254, "RTA_DST": addr}
        if r.oif is not None:
            attrs["RTA_OIF"] = r.oif
        if len(r.gateways) == 1:
            attrs["RTA_GATEWAY"] = r.gateways[0]
        elif r.gateways:
            attrs["RTA_MULTIPATH"] = [Msg({}, {"RTA_GATEWAY": g}) for g in r.gateways]
        return Msg({"family": r.family, "dst_len": int(plen), "proto": r.proto,
                    "type": r.type, "table": 254}, attrs)

    def put(self, dst: str, proto: int, *, oif: int | None = None,
            gateways: tuple[str, ...] = (), rtype: int = 1) -> None:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        scope = 253 if oif is not None and not gateways else 0
        self.table[dst] = KRoute(family, dst, proto, rtype, oif, gateways, scope)

    def forwards(self, ip: str) -> str:
        """Where a packet to ``ip`` goes: longest match, as text (the user-visible answer)."""
        import ipaddress
        best: tuple[int, KRoute] | None = None
        for r in self.table.values():
            net = ipaddress.ip_network(r.dst)
            if ipaddress.ip_address(ip) in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, r)
        if best is None:
            return "unreachable"
        r = best[1]
        if r.type == RTN_BLACKHOLE:
            return "drop"
        if r.gateways:
            return "via " + ",".join(sorted(r.gateways))
        names = {i: n for n, i in self.links.items()}
        return f"dev {names[r.oif]}" if r.oif is not None else "?"


def local(ip: str, dev: str) -> Route:
    return Route(ip, "local", dev=dev, proto=PROTO_L3FABRIC)


def blackhole(cidr: str) -> Route:
    return Route(cidr, "blackhole", proto=PROTO_L3FABRIC)


def bgp(cidr: str, *via: str) -> Route:
    return Route(cidr, "bgp", via=via, proto=PROTO_L3FABRIC_BGP)


# -- render_routes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "blocks", "learned", "expected"),
    [
        ([("10.244.1.5/26", "fabaaa")], [], {}, {local("10.244.1.5/32", "fabaaa")}),
        ([("fd00:1::5", "fabbbb")], [], {}, {local("fd00:1::5/128", "fabbbb")}),
        ([], ["10.244.1.0/26"], {}, {blackhole("10.244.1.0/26")}),
        ([], [], {"10.244.2.0/26": ("10.99.0.3", "10.99.0.2")},
         {bgp("10.244.2.0/26", "10.99.0.2", "10.99.0.3")}),
        ([], [], {"10.244.2.0/26": ()}, set()),
        # a learned copy of our own block loses to the blackhole; a local /32 beats BGP
        ([("10.244.1.5", "fabaaa")], ["10.244.1.0/26"],
         {"10.244.1.0/26": ("10.99.0.2",), "10.244.1.5/32": ("10.99.0.2",)},
         {blackhole("10.244.1.0/26"), local("10.244.1.5/32", "fabaaa")}),
        # two endpoints on one address: lowest interface name, whatever the input order
        ([("10.244.1.5", "fabzzz"), ("10.244.1.5", "fabaaa")], [], {},
         {local("10.244.1.5/32", "fabaaa")}),
    ],
)
def test_render_routes(endpoints: list[tuple[str, str]], blocks: list[str],
                       learned: dict[str, tuple[str, ...]], expected: set[Route]) -> None:
    assert render_routes(endpoints, blocks, learned) == expected


def test_route_value_is_canonical_and_validated() -> None:
    assert bgp("10.244.2.0/26", "10.99.0.3", "10.99.0.2") == bgp("10.244.2.0/26", "10.99.0.2",
                                                                 "10.99.0.3")
    assert Route("fd00:0::1/128", "local", dev="x").dst == "fd00::1/128"
    with pytest.raises(ValueError):
        Route("10.0.0.0/26", "blackhole", dev="x")
    with pytest.raises(ValueError):
        Route("10.0.0.0/26", "bgp")
    with pytest.raises(ValueError):
        Route("10.0.0.1/32", "local")


# -- RouteManager ---------------------------------------------------------------------


def manager(kernel: FakeKernel) -> RouteManager:
    return RouteManager(kernel, now=lambda: 42.0)


def test_first_apply_programs_everything_and_traffic_goes_where_expected() -> None:
    k = FakeKernel(links={"lo": 1, "eth0": 2, "fabaaa": 7})
    m = manager(k)
    m.set_desired({local("10.244.1.5/32", "fabaaa"), blackhole("10.244.1.0/26"),
                   bgp("10.244.2.0/26", "10.99.0.2", "10.99.0.3"),
                   bgp("fd00:2::/122", "fd99::2")})
    res = m.apply()
    assert len(res.added) == 4 and not res.failed
    assert k.forwards("10.244.1.5") == "dev fabaaa"
    assert k.forwards("10.244.1.6") == "drop"
    assert k.forwards("10.244.2.9") == "via 10.99.0.2,10.99.0.3"
    assert k.forwards("fd00:2::1") == "via fd99::2"
    # level-triggered: again is a no-op, and no new dump
    dumps, changes = k.dumps, k.changes
    assert m.apply().changes == 0
    assert (k.dumps, k.changes) == (dumps, changes)


def test_restart_adopts_identical_routes_without_touching_them() -> None:
    k = FakeKernel(links={"lo": 1, "eth0": 2, "fabaaa": 7})
    k.put("10.244.1.5/32", PROTO_L3FABRIC, oif=7)
    k.put("10.244.1.0/26", PROTO_L3FABRIC, rtype=RTN_BLACKHOLE)
    k.put("10.244.2.0/26", PROTO_L3FABRIC_BGP, gateways=("10.99.0.3", "10.99.0.2"))
    m = manager(k)
    m.set_desired({local("10.244.1.5/32", "fabaaa"), blackhole("10.244.1.0/26"),
                   bgp("10.244.2.0/26", "10.99.0.2", "10.99.0.3")})
    m.mark_in_sync()
    res = m.apply()
    assert res.changes == 0 and len(res.adopted) == 3
    assert k.changes == 0


def test_differing_owned_route_is_replaced() -> None:
    k = FakeKernel()
    k.put("10.244.2.0/26", PROTO_L3FABRIC_BGP, gateways=("10.99.0.2",))
    m = manager(k)
    m.set_desired({bgp("10.244.2.0/26", "10.99.0.2", "10.99.0.4")})
    res = m.apply()
    assert [r.dst for r in res.replaced] == ["10.244.2.0/26"]
    assert k.forwards("10.244.2.1") == "via 10.99.0.2,10.99.0.4"


def test_stale_routes_stay_until_in_sync_then_go() -> None:
    k = FakeKernel(links={"lo": 1, "fabold": 5})
    k.put("10.244.1.9/32", PROTO_L3FABRIC, oif=5)  # scope link: a del must match any scope
    k.put("10.244.9.0/26", PROTO_L3FABRIC, rtype=RTN_BLACKHOLE)
    k.put("10.244.8.0/26", PROTO_L3FABRIC_BGP, gateways=("10.99.0.2",))
    m = manager(k)
    m.set_desired(set())
    res = m.apply()
    assert res.kept_stale == 3 and not res.removed
    assert k.forwards("10.244.8.1") == "via 10.99.0.2"  # traffic kept across a restart
    m.mark_in_sync()
    res = m.apply()
    assert {r.dst for r in res.removed} == {"10.244.9.0/26", "10.244.8.0/26",
                                            "10.244.1.9/32"}
    assert k.table == {}


def test_foreign_routes_are_never_touched() -> None:
    k = FakeKernel()
    k.put("10.244.1.0/26", PROTO_STATIC, gateways=("10.99.0.9",))  # collides with a block
    k.put("10.99.0.0/24", PROTO_KERNEL, oif=2)
    before = dict(k.table)
    m = manager(k)
    m.set_desired({blackhole("10.244.1.0/26"), blackhole("10.244.3.0/26")})
    m.mark_in_sync()
    res = m.apply()
    assert [r.dst for r in res.failed] == ["10.244.1.0/26"]
    assert [r.dst for r in res.added] == ["10.244.3.0/26"]
    assert k.table["10.244.1.0/26"] == before["10.244.1.0/26"]
    assert k.table["10.99.0.0/24"] == before["10.99.0.0/24"]
    m.set_desired(set())
    m.apply()
    assert set(k.table) == {"10.244.1.0/26", "10.99.0.0/24"}


def test_one_failure_does_not_stop_the_others_and_is_retried() -> None:
    k = FakeKernel()
    m = manager(k)
    m.set_desired({local("10.244.1.5/32", "fabnew"),       # device not there yet
                   bgp("10.244.5.0/26", "192.0.2.1"),        # gateway unreachable
                   blackhole("10.244.1.0/26")})
    res = m.apply()
    assert [r.dst for r in res.failed] == ["10.244.5.0/26"]
    assert [r.dst for r in res.no_interface] == ["10.244.1.5/32"]
    assert res.error.startswith("route add 10.244.5.0/26") and "unreachable" in res.error
    assert [r.dst for r in res.added] == ["10.244.1.0/26"]
    k.links["fabnew"] = 9
    assert m.link_appeared("fabnew")
    res = m.apply()
    assert [r.dst for r in res.added] == ["10.244.1.5/32"]
    assert [r.dst for r in res.failed] == ["10.244.5.0/26"]
    assert k.forwards("10.244.1.5") == "dev fabnew"


def test_a_route_without_its_interface_waits_for_the_link_not_for_the_next_apply() -> None:
    """A stale endpoint's veth is gone: its route is not a failure, and it is not tried
    again (a link dump and a log line each time) on every apply until the link appears."""
    k = FakeKernel()
    m = manager(k)
    m.set_desired({local("10.244.1.5/32", "fabgone"), blackhole("10.244.1.0/26")})
    m.mark_in_sync()
    res = m.apply()
    assert not res.failed and [r.dst for r in res.no_interface] == ["10.244.1.5/32"]
    assert m.waiting == {"10.244.1.5/32": local("10.244.1.5/32", "fabgone")}
    calls = []
    k_get_links = k.get_links
    k.get_links = lambda *a, **kw: calls.append(1) or k_get_links()  # type: ignore[method-assign]
    for _ in range(3):
        res = m.apply()
        assert not res.failed and [r.dst for r in res.no_interface] == ["10.244.1.5/32"]
    assert calls == [], "the missing interface was looked up again"
    assert not m.link_appeared("fabother")
    k.links["fabgone"] = 9
    assert m.link_appeared("fabgone")
    res = m.apply()
    assert [r.dst for r in res.added] == ["10.244.1.5/32"] and not res.no_interface
    assert k.forwards("10.244.1.5") == "dev fabgone"
    # An endpoint that goes stops waiting; a resync tries the waiting ones once more.
    m.set_desired({local("10.244.1.6/32", "fabgone2")})
    assert [r.dst for r in m.apply().no_interface] == ["10.244.1.6/32"]
    k.links["fabgone2"] = 10
    m.resync()
    assert [r.dst for r in m.apply().added] == ["10.244.1.6/32"]
    m.set_desired({local("10.244.1.7/32", "fabgone3")})
    m.apply()
    m.set_desired(set())
    m.apply()
    assert m.waiting == {}


def test_routes_through_a_deleted_link_leave_the_record_and_wait_for_it() -> None:
    k = FakeKernel(links={"lo": 1, "fabaaa": 7})
    m = manager(k)
    m.set_desired({local("10.244.1.5/32", "fabaaa"), blackhole("10.244.1.0/26")})
    m.mark_in_sync()
    m.apply()
    del k.links["fabaaa"]
    del k.table["10.244.1.5/32"]  # the kernel took it with the link, silently
    assert not m.link_gone("fabother")
    assert not m.link_gone("fabaaa", 6)  # another link of that name went: not this route's
    assert m.link_gone("fabaaa", 7)
    res = m.apply()
    assert [r.dst for r in res.no_interface] == ["10.244.1.5/32"] and not res.failed
    assert m.programmed.keys() == {"10.244.1.0/26"}


def test_routes_the_kernel_dropped_with_a_link_are_restored_after_a_reread() -> None:
    """A link that goes down takes its IPv4 routes with it and sends no RTM_DELROUTE: our
    record still lists them, so only a re-read of the kernel (on the link's RTM_NEWLINK)
    lets the next apply put them back."""
    k = FakeKernel()
    m = manager(k)
    m.set_desired({bgp("10.244.5.0/26", "10.99.0.2"), blackhole("10.244.1.0/26")})
    m.mark_in_sync()
    m.apply()
    del k.table["10.244.5.0/26"]  # the link went down and up
    assert m.apply().changes == 0 and k.forwards("10.244.5.1") == "unreachable"
    m.reread()
    assert m.programmed.keys() == {"10.244.1.0/26"}  # never empty in between
    assert [r.dst for r in m.apply().added] == ["10.244.5.0/26"]
    assert k.forwards("10.244.5.1") == "via 10.99.0.2"


def test_a_deleted_route_we_want_is_forgotten_and_restored_our_own_deletes_are_not() -> None:
    k = FakeKernel()
    m = manager(k)
    m.set_desired({bgp("10.244.5.0/26", "10.99.0.2"), blackhole("10.244.1.0/26"),
                   blackhole("10.244.2.0/26")})
    m.mark_in_sync()
    m.apply()
    m.set_desired({bgp("10.244.5.0/26", "10.99.0.2"), blackhole("10.244.1.0/26")})
    assert [r.dst for r in m.apply().removed] == ["10.244.2.0/26"]
    del k.table["10.244.5.0/26"]  # deleted by hand: the kernel reports it
    gone = m.forget({"10.244.5.0/26", "10.244.2.0/26", "10.9.9.0/24"})
    assert [r.dst for r in gone] == ["10.244.5.0/26"]  # our own delete's echo is ignored
    res = m.apply()
    assert [r.dst for r in res.added] == ["10.244.5.0/26"] and not res.removed
    assert m.forget(set()) == [] and m.apply().changes == 0


def test_route_added_behind_our_back_is_adopted_not_failed() -> None:
    # Race: the CNI handler adds the pod /32 after our dump, then the calc asks for it.
    k = FakeKernel(links={"lo": 1, "fabaaa": 7})
    m = manager(k)
    m.set_desired(set())
    m.apply()
    k.put("10.244.1.5/32", PROTO_L3FABRIC, oif=7)
    changes = k.changes
    m.set_desired({local("10.244.1.5/32", "fabaaa")})
    res = m.apply()
    assert [r.dst for r in res.adopted] == ["10.244.1.5/32"] and not res.failed
    assert k.changes == changes


def test_a_pod_route_replaces_the_blackhole_of_its_one_address_block() -> None:
    """blockSize 32: the block's blackhole is the pod's own prefix; both are ours, and the
    pod's route wins (render_routes prefers it), replacing the blackhole in place."""
    k = FakeKernel(links={"lo": 1, "fabaaa": 7})
    m = manager(k)
    m.set_desired(render_routes([], ["10.244.1.5/32"], {}))
    m.apply()
    assert k.forwards("10.244.1.5") == "drop"
    pod = local("10.244.1.5/32", "fabaaa")
    m.set_desired(render_routes([("10.244.1.5/32", "fabaaa")], ["10.244.1.5/32"], {}))
    res = m.apply()
    assert [r.dst for r in res.replaced] == ["10.244.1.5/32"] and not res.failed
    assert k.forwards("10.244.1.5") == "dev fabaaa" and m.is_programmed(pod)


def test_resync_redumps_and_repairs_drift() -> None:
    k = FakeKernel()
    m = manager(k)
    m.set_desired({blackhole("10.244.1.0/26")})
    m.mark_in_sync()
    m.apply()
    del k.table["10.244.1.0/26"]                       # someone deleted it
    k.put("10.244.7.0/26", PROTO_L3FABRIC, rtype=RTN_BLACKHOLE)  # an orphan appeared
    assert m.apply().changes == 0                      # our record believes all is fine
    m.resync()
    res = m.apply()
    assert [r.dst for r in res.added] == ["10.244.1.0/26"]
    assert [r.dst for r in res.removed] == ["10.244.7.0/26"]


def test_set_desired_rejects_foreign_protocol_and_conflicts() -> None:
    m = manager(FakeKernel())
    with pytest.raises(ValueError):
        m.set_desired({Route("10.0.0.0/24", "blackhole", proto=PROTO_STATIC)})
    with pytest.raises(ValueError):
        m.set_desired({blackhole("10.0.0.0/26"), bgp("10.0.0.0/26", "10.99.0.2")})


def test_register_rt_protos_is_idempotent(tmp_path: Any) -> None:
    path = str(tmp_path / "rt_protos.d" / "l3fabric.conf")
    assert register_rt_protos(path) is True
    assert register_rt_protos(path) is False
    with open(path) as f:
        lines = [line.split() for line in f if not line.startswith("#")]
    assert lines == [["80", "l3fabric"], ["81", "l3fabric-bgp"]]


class FakePodWriter:
    """The raw-socket writer of pod routes, over the same fake kernel."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.requests = 0

    def link_index(self, name: str) -> int | None:
        self.requests += 1
        return self.kernel.links.get(name)

    def add_route(self, family: int, dst: str, dst_len: int, *, oif: int, table: int,
                  proto: int, scope: int) -> None:
        self.requests += 1
        self.kernel.route("add", family=family, dst=f"{dst}/{dst_len}", oif=oif,
                          table=table, proto=proto, scope=scope)


def test_a_pod_route_goes_through_the_pod_writer_and_waits_for_its_veth() -> None:
    k = FakeKernel(links={"lo": 1, "fabaaa": 7})
    pods = FakePodWriter(k)
    m = RouteManager(k, now=lambda: 42.0, pods=pods)
    m.apply()
    m.set_desired({local("10.244.1.5/32", "fabaaa"), local("10.244.1.6/32", "fabbbb")})
    res = m.apply()
    assert [r.dst for r in res.added] == ["10.244.1.5/32"]
    assert [r.dst for r in res.no_interface] == ["10.244.1.6/32"] and not res.failed
    assert k.forwards("10.244.1.5") == "dev fabaaa" and pods.requests == 3
    k.links["fabbbb"] = 8
    m.link_appeared("fabbbb")
    assert [r.dst for r in m.apply().added] == ["10.244.1.6/32"]
    assert k.forwards("10.244.1.6") == "dev fabbbb"
