"""RouteManager against the real kernel, inside a throw-away node namespace."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from felix_like.netlink import open_iproute
from felix_like.plumbing import wire_pod
from felix_like.routes import (
    PROTO_L3FABRIC,
    PROTO_L3FABRIC_BGP,
    Route,
    RouteManager,
    register_rt_protos,
    render_routes,
)

NetnsFactory = Callable[[str], str]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def routes(ns: str, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(sh("ip", "-j", "-n", ns, *args, "route", "show")
                                           or "[]")
    return out


def by_dst(ns: str, *args: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in routes(ns, *args)}


@pytest.fixture
def node(netns: NetnsFactory) -> str:
    """A node namespace with an uplink 10.99.0.1/24 (and fd99::1/64) to a ToR namespace,
    a pod-like veth ``fabaaa``, and no default route."""
    name, tor = netns("node"), netns("tor")
    sh("ip", "-n", name, "link", "add", "up0", "type", "veth", "peer", "name", "down0",
       "netns", tor)
    sh("ip", "-n", name, "link", "add", "fabaaa", "type", "veth", "peer", "name", "fabaab")
    for dev in ("up0", "fabaaa", "fabaab"):
        sh("ip", "-n", name, "link", "set", dev, "up")
    sh("ip", "-n", tor, "link", "set", "down0", "up")
    sh("ip", "-n", name, "addr", "add", "10.99.0.1/24", "dev", "up0")
    sh("ip", "-n", name, "addr", "add", "fd99::1/64", "dev", "up0", "nodad")
    return name


@pytest.fixture
def ipr(node: str) -> Iterator[Any]:
    handle = open_iproute(node)
    try:
        yield handle
    finally:
        handle.close()


DESIRED = render_routes(
    [("10.244.1.5/26", "fabaaa")],
    ["10.244.1.0/26", "fd00:244:1::/122"],
    {"10.244.2.0/26": ("10.99.0.2", "10.99.0.3"), "10.244.3.0/26": ("10.99.0.2",),
     "fd00:244:2::/122": ("fd99::2", "fd99::3")},
)


class RouteMonitor:
    """``ip monitor route`` in a namespace: did anything change the routing table?"""

    def __init__(self, ns: str, out: Path) -> None:
        self.out = out
        self._f = out.open("w")
        self.proc = subprocess.Popen(["ip", "-n", ns, "monitor", "route"], stdout=self._f,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def stop(self) -> str:
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait()
        self._f.close()
        return self.out.read_text()


def test_programs_local_blackhole_and_ecmp_routes(node: str, ipr: Any) -> None:
    m = RouteManager(ipr)
    m.set_desired(DESIRED)
    res = m.apply()
    assert not res.failed and len(res.added) == len(DESIRED)
    v4 = by_dst(node)
    assert v4["10.244.1.5"]["dev"] == "fabaaa" and v4["10.244.1.5"]["scope"] == "link"
    assert v4["10.244.1.0/26"]["type"] == "blackhole"
    assert sorted(h["gateway"] for h in v4["10.244.2.0/26"]["nexthops"]) == [
        "10.99.0.2", "10.99.0.3"]
    assert v4["10.244.3.0/26"]["gateway"] == "10.99.0.2"
    v6 = by_dst(node, "-6")
    assert v6["fd00:244:1::/122"]["type"] == "blackhole"
    assert sorted(h["gateway"] for h in v6["fd00:244:2::/122"]["nexthops"]) == [
        "fd99::2", "fd99::3"]
    # what a packet would do, by the kernel's own lookup: an unused address of the block
    # is dropped (a blackhole lookup answers EINVAL), a learned prefix goes to the ToR
    lookup = subprocess.run(["ip", "-n", node, "route", "get", "10.244.1.9"],
                            capture_output=True, text=True)
    assert lookup.returncode != 0 and "Invalid argument" in lookup.stderr
    got = json.loads(sh("ip", "-j", "-n", node, "route", "get", "10.244.3.1"))[0]
    assert got["gateway"] == "10.99.0.2" and got["dev"] == "up0"
    assert m.apply().changes == 0


def test_restart_adopts_everything_without_a_single_netlink_change(
        node: str, ipr: Any, tmp_path: Path) -> None:
    first = RouteManager(ipr)
    first.set_desired(DESIRED)
    first.apply()
    before = routes(node) + routes(node, "-6")

    monitor = RouteMonitor(node, tmp_path / "monitor.txt")
    with_restart = open_iproute(node)
    try:
        second = RouteManager(with_restart)  # a new agent over existing routes
        second.set_desired(DESIRED)
        second.mark_in_sync()
        res = second.apply()
    finally:
        with_restart.close()
        seen = monitor.stop()
    assert res.changes == 0 and len(res.adopted) == len(DESIRED) and not res.failed
    assert seen == ""
    assert routes(node) + routes(node, "-6") == before

    # positive control: the monitor does see changes
    monitor = RouteMonitor(node, tmp_path / "control.txt")
    sh("ip", "-n", node, "route", "add", "blackhole", "192.0.2.0/24")
    assert "192.0.2.0/24" in monitor.stop()


def test_stale_removed_only_after_in_sync_and_foreign_routes_untouched(
        node: str, ipr: Any) -> None:
    RouteManager(ipr).apply()  # nothing
    sh("ip", "-n", node, "route", "add", "blackhole", "10.244.9.0/26", "proto",
       str(PROTO_L3FABRIC))
    sh("ip", "-n", node, "route", "add", "10.244.8.0/26", "via", "10.99.0.2", "proto",
       str(PROTO_L3FABRIC_BGP))
    sh("ip", "-n", node, "route", "add", "10.55.0.0/24", "via", "10.99.0.2")  # static
    sh("ip", "-n", node, "route", "add", "blackhole", "10.244.3.0/26")  # static, on a wanted dst
    foreign_before = {d: r for d, r in by_dst(node).items()
                      if r.get("protocol") not in ("l3fabric", "l3fabric-bgp", "80", "81")}

    m = RouteManager(ipr)
    m.set_desired(DESIRED)
    res = m.apply()
    assert res.kept_stale == 2 and not res.removed
    assert {"10.244.9.0/26", "10.244.8.0/26"} <= set(by_dst(node))
    assert [r.dst for r in res.failed] == ["10.244.3.0/26"]  # taken by a static route

    m.mark_in_sync()
    res = m.apply()
    assert {r.dst for r in res.removed} == {"10.244.9.0/26", "10.244.8.0/26"}
    now = by_dst(node)
    assert "10.244.9.0/26" not in now and "10.244.8.0/26" not in now
    for dst, r in foreign_before.items():
        assert now[dst] == r

    m.set_desired(set())
    m.apply()
    left = by_dst(node)
    assert set(left) == set(foreign_before)
    assert by_dst(node, "-6").keys().isdisjoint({"fd00:244:1::/122", "fd00:244:2::/122"})


def test_differing_route_is_replaced_in_place(node: str, ipr: Any) -> None:
    sh("ip", "-n", node, "route", "add", "10.244.2.0/26", "via", "10.99.0.4", "proto",
       str(PROTO_L3FABRIC_BGP))
    m = RouteManager(ipr)
    m.set_desired({Route("10.244.2.0/26", "bgp", via=("10.99.0.2", "10.99.0.3"),
                         proto=PROTO_L3FABRIC_BGP)})
    res = m.apply()
    assert [r.dst for r in res.replaced] == ["10.244.2.0/26"]
    r = by_dst(node)["10.244.2.0/26"]
    assert sorted(h["gateway"] for h in r["nexthops"]) == ["10.99.0.2", "10.99.0.3"]


def test_pod_route_from_cni_is_adopted(node: str, ipr: Any, netns: NetnsFactory,
                                       tmp_path: Path) -> None:
    pod = netns("pod")
    m = RouteManager(ipr)
    m.apply()  # dumped before the pod existed
    w = wire_pod(node, f"/var/run/netns/{pod}", "eth0", "fabpod00000001",
                 [ipaddress.ip_interface("10.244.1.7/32")], 1400)
    monitor = RouteMonitor(node, tmp_path / "m.txt")
    m.set_desired(render_routes([("10.244.1.7", w.host_if)], [], {}))
    res = m.apply()
    assert res.changes == 0 and not res.failed and [r.dst for r in res.adopted] == [
        "10.244.1.7/32"]
    assert monitor.stop() == ""


def test_missing_device_waits_alone_and_is_retried_when_it_appears(node: str,
                                                                   ipr: Any) -> None:
    m = RouteManager(ipr)
    m.set_desired({Route("10.244.1.6/32", "local", dev="fablater", proto=PROTO_L3FABRIC),
                   Route("10.244.1.0/26", "blackhole", proto=PROTO_L3FABRIC)})
    res = m.apply()
    assert [r.dst for r in res.no_interface] == ["10.244.1.6/32"] and not res.failed
    assert "10.244.1.0/26" in by_dst(node)
    sh("ip", "-n", node, "link", "add", "fablater", "up", "type", "veth", "peer", "name",
       "fablatep")
    assert m.link_appeared("fablater")  # the agent's RTM_NEWLINK
    res = m.apply()
    assert [r.dst for r in res.added] == ["10.244.1.6/32"]
    assert by_dst(node)["10.244.1.6"]["dev"] == "fablater"


def test_rt_protos_names_show_in_ip_route(node: str, ipr: Any) -> None:
    register_rt_protos()
    register_rt_protos()
    m = RouteManager(ipr)
    m.set_desired(DESIRED)
    m.apply()
    protos = {r["dst"]: r.get("protocol") for r in routes(node)}
    assert protos["10.244.1.0/26"] == "l3fabric"
    assert protos["10.244.3.0/26"] == "l3fabric-bgp"
