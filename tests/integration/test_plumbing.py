"""Pod wiring in throw-away namespaces: a "node" namespace and pod namespaces, real packets.

Forwarding is only ever enabled inside the test's node namespace, which has no route
out of the machine.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from felix_like.netlink import read_sysctl
from felix_like.plumbing import (
    GATEWAY_V4,
    GATEWAY_V6,
    HOST_MAC,
    PlumbingError,
    check_pod,
    detect_uplink_mtu,
    host_veth_name,
    unwire_pod,
    wire_pod,
)
from felix_like.routes import PROTO_L3FABRIC

NetnsFactory = Callable[[str], str]


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def ipj(ns: str, *args: str) -> Any:
    return json.loads(sh("ip", "-j", "-n", ns, *args).stdout or "[]")


def ping(ns: str, dst: str) -> bool:
    flag = "-6" if ":" in dst else "-4"
    return sh("ip", "netns", "exec", ns, "ping", flag, "-c1", "-W1", dst,
              check=False).returncode == 0


def addrs(*cidrs: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    return [ipaddress.ip_interface(c) for c in cidrs]


def links(ns: str) -> list[str]:
    return [link["ifname"] for link in ipj(ns, "link")]


@pytest.fixture
def node(netns: NetnsFactory) -> Iterator[str]:
    name = netns("node")
    # Only inside the test's node namespace, which has no way out.
    sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    yield name


def wire(node: str, pod: str, cid: str, *cidrs: str, mtu: int = 1400,
         ifname: str = "eth0") -> Any:
    return wire_pod(node, f"/var/run/netns/{pod}", ifname, host_veth_name("net", cid, ifname),
                    addrs(*cidrs), mtu)


def test_host_veth_name() -> None:
    name = host_veth_name("l3fabric", "abc123", "eth0")
    assert name.startswith("fab") and len(name) == 14
    assert name == host_veth_name("l3fabric", "abc123", "eth0")
    assert name != host_veth_name("l3fabric", "abc123", "eth1")
    int(name[3:], 16)


def test_two_pods_on_one_node_ping_each_other(node: str, netns: NetnsFactory) -> None:
    a, b = netns("poda"), netns("podb")
    wire(node, a, "ca", "10.244.0.2/26", "fd00:244::2/122")
    wire(node, b, "cb", "10.244.0.3/26", "fd00:244::3/122")
    assert ping(a, "10.244.0.3")
    assert ping(b, "10.244.0.2")
    deadline = time.monotonic() + 3  # IPv6: the host side's NDP for the pod address
    while not ping(a, "fd00:244::3") and time.monotonic() < deadline:
        pass
    assert ping(a, "fd00:244::3")
    assert ping(b, "fd00:244::2")


def test_pod_and_host_side_look_like_calico(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod")
    w = wire(node, pod, "c1", "10.244.0.5/26", mtu=1380)
    host_if = host_veth_name("net", "c1", "eth0")
    assert w.host_if == host_if

    # pod: exactly its /32 on eth0, lo up, default via 169.254.1.1 onlink, the neighbour
    eth0 = ipj(pod, "addr", "show", "dev", "eth0")[0]
    assert eth0["mtu"] == 1380 and "UP" in eth0["flags"]
    assert eth0["address"] == w.container_mac
    v4 = [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"]
    assert v4 == [("10.244.0.5", 32)]
    assert "UP" in ipj(pod, "link", "show", "lo")[0]["flags"]
    routes = ipj(pod, "route")
    assert [(r["dst"], r.get("gateway"), r["dev"], "onlink" in r["flags"]) for r in routes] == [
        ("default", GATEWAY_V4, "eth0", True)]
    neigh = [n for n in ipj(pod, "neigh") if n["dst"] == GATEWAY_V4]
    assert neigh[0]["lladdr"] == HOST_MAC and "PERMANENT" in neigh[0]["state"]

    # host: MAC, no address, MTU, sysctls, the /32 route with our protocol
    host = ipj(node, "addr", "show", "dev", host_if)[0]
    assert host["address"] == HOST_MAC and host["mtu"] == 1380
    assert [a for a in host["addr_info"] if a["family"] == "inet"] == []
    assert read_sysctl(node, f"net.ipv4.conf.{host_if}.proxy_arp") == "1"
    assert read_sysctl(node, f"net.ipv4.neigh.{host_if}.proxy_delay") == "0"
    assert read_sysctl(node, f"net.ipv4.conf.{host_if}.forwarding") == "1"
    hr = ipj(node, "route", "show", "10.244.0.5/32")
    assert hr[0]["dev"] == host_if and hr[0]["scope"] == "link"
    assert hr[0]["protocol"] in ("l3fabric", str(PROTO_L3FABRIC))
    assert check_pod(node, f"/var/run/netns/{pod}", "eth0", host_if, w.addresses) == []


def test_ipv6_side(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod6")
    w = wire(node, pod, "c6", "fd00:244::7/122")
    host_if = w.host_if
    assert read_sysctl(node, f"net.ipv6.conf.{host_if}.proxy_ndp") == "1"
    assert read_sysctl(node, f"net.ipv6.conf.{host_if}.forwarding") == "1"
    routes = ipj(pod, "-6", "route", "show", "default")
    assert routes[0]["gateway"] == GATEWAY_V6 and routes[0]["dev"] == "eth0"
    hr = ipj(node, "-6", "route", "show", "fd00:244::7/128")
    assert hr[0]["dev"] == host_if
    # the host side really has the link-local address pods use as their gateway
    ll = [a["local"] for a in ipj(node, "-6", "addr", "show", "dev", host_if)[0]["addr_info"]]
    assert GATEWAY_V6 in ll


def test_unwire_removes_veth_and_route_and_is_idempotent(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod")
    w = wire(node, pod, "c1", "10.244.0.5/32")
    assert unwire_pod(node, w.host_if, w.addresses) is True
    assert w.host_if not in links(node)
    assert ipj(node, "route", "show", "10.244.0.5/32") == []
    assert "eth0" not in links(pod)
    assert unwire_pod(node, w.host_if, w.addresses) is False


def test_unwire_leaves_the_route_of_a_pod_that_reused_the_address(
        node: str, netns: NetnsFactory) -> None:
    a, b = netns("poda"), netns("podb")
    wa = wire(node, a, "ca", "10.244.0.5/32")
    unwire_pod(node, wa.host_if, wa.addresses)
    wb = wire(node, b, "cb", "10.244.0.5/32")
    unwire_pod(node, wa.host_if, wa.addresses)  # a late, repeated DEL for pod A
    assert ipj(node, "route", "show", "10.244.0.5/32")[0]["dev"] == wb.host_if


def fabs(ns: str) -> list[str]:
    return [name for name in links(ns) if name.startswith("fab")]


def test_ifname_taken_in_pod_leaves_nothing_behind(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod")
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    with pytest.raises(PlumbingError, match="eth0 already exists in the pod"):
        wire(node, pod, "c1", "10.244.0.5/32")
    assert fabs(node) == []
    assert ipj(node, "route", "show", "10.244.0.5/32") == []
    assert sorted(links(pod)) == ["eth0", "lo", "other"]  # theirs, untouched


def test_address_already_routed_leaves_nothing_behind(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod")
    sh("ip", "-n", node, "route", "add", "blackhole", "10.244.0.5/32")
    with pytest.raises(PlumbingError, match="already routed"):
        wire(node, pod, "c1", "10.244.0.5/32")
    assert fabs(node) == []
    assert links(pod) == ["lo"]
    r = ipj(node, "route", "show", "10.244.0.5/32")
    assert r[0]["type"] == "blackhole" and r[0].get("protocol") != "l3fabric"


def test_missing_pod_namespace_is_a_plumbing_error(node: str) -> None:
    with pytest.raises(PlumbingError):
        wire_pod(node, "/var/run/netns/fabt-does-not-exist", "eth0", "fabnope0000000",
                 addrs("10.244.0.5/32"), 1400)
    assert fabs(node) == []


def test_leftover_veth_of_the_same_container_is_replaced(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod")
    host_if = host_veth_name("net", "c1", "eth0")
    sh("ip", "-n", node, "link", "add", host_if, "type", "veth", "peer", "name", "junk")
    w = wire(node, pod, "c1", "10.244.0.5/32")
    assert fabs(node) == [host_if] and "junk" not in links(node)
    assert ipj(node, "route", "show", "10.244.0.5/32")[0]["dev"] == w.host_if


def test_pod_namespace_given_as_proc_path(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod")
    proc = subprocess.Popen(["ip", "netns", "exec", pod, "sleep", "30"])
    try:
        path = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # wait for the exec into the namespace
            if sh("readlink", path).stdout == sh("readlink", "/proc/self/ns/net").stdout:
                time.sleep(0.01)
                continue
            break
        w = wire_pod(node, path, "eth0", "fabproc0000000", addrs("10.244.0.9/32"), 1400)
        assert "eth0" in links(pod)
        assert check_pod(node, path, "eth0", w.host_if, w.addresses) == []
    finally:
        proc.kill()
        proc.wait()


def test_check_pod_reports_each_missing_piece(node: str, netns: NetnsFactory) -> None:
    pod = netns("pod")
    w = wire(node, pod, "c1", "10.244.0.5/32")
    path = f"/var/run/netns/{pod}"

    def problems() -> list[str]:
        return check_pod(node, path, "eth0", w.host_if, w.addresses)

    assert problems() == []
    sh("ip", "-n", node, "route", "del", "10.244.0.5/32")
    assert problems() == [f"host route 10.244.0.5/32 dev {w.host_if} missing"]
    sh("ip", "-n", pod, "route", "del", "default")
    assert "IPv4 default route via 169.254.1.1 missing in the pod" in problems()
    sh("ip", "-n", pod, "neigh", "del", GATEWAY_V4, "dev", "eth0")
    assert any("permanent neighbour" in p for p in problems())
    sh("ip", "-n", pod, "addr", "del", "10.244.0.5/32", "dev", "eth0")
    assert "address 10.244.0.5/32 missing on eth0" in problems()
    assert len(problems()) == 4
    sh("ip", "-n", node, "link", "del", w.host_if)
    assert problems() == [f"host interface {w.host_if} missing",
                          f"host route 10.244.0.5/32 dev {w.host_if} missing",
                          "interface eth0 missing in the pod"]


def test_mtu_zero_takes_the_uplink_mtu(node: str, netns: NetnsFactory) -> None:
    tor, pod = netns("tor"), netns("pod")
    assert detect_uplink_mtu(node) == 1500  # only lo
    sh("ip", "-n", node, "link", "add", "up0", "mtu", "9000", "type", "veth", "peer", "name",
       "down0", "netns", tor)
    sh("ip", "-n", node, "link", "add", "big0", "mtu", "9100", "type", "veth", "peer", "name",
       "big1")
    assert detect_uplink_mtu(node) == 1500  # nothing up yet
    sh("ip", "-n", node, "link", "set", "up0", "up")
    sh("ip", "-n", node, "link", "set", "big0", "up")
    assert detect_uplink_mtu(node) == 9100  # highest MTU of the up interfaces
    # a default route inside the node namespace, towards the test's ToR namespace
    sh("ip", "-n", node, "addr", "add", "10.99.0.1/30", "dev", "up0")
    sh("ip", "-n", node, "route", "add", "default", "via", "10.99.0.2", "dev", "up0", "onlink")
    assert detect_uplink_mtu(node) == 9000
    w = wire(node, pod, "c1", "10.244.0.5/32", mtu=0)
    assert w.mtu == 9000
    assert ipj(pod, "link", "show", "eth0")[0]["mtu"] == 9000


def test_unwire_reports_the_routes_gone_while_the_veth_is_still_there(
        node: str, netns: NetnsFactory) -> None:
    """The CNI handler frees the address on this signal, while the kernel is still
    deleting the veth: by then no route to the address may remain."""
    pod = netns("pod")
    w = wire(node, pod, "c1", "10.244.0.5/32", "fd00:244::5/128")
    seen: list[tuple[list[Any], list[Any], bool]] = []

    def on_routes_removed() -> None:
        seen.append((ipj(node, "route", "show", "10.244.0.5/32"),
                     ipj(node, "-6", "route", "show", "fd00:244::5/128"),
                     w.host_if in links(node)))

    assert unwire_pod(node, w.host_if, w.addresses, on_routes_removed=on_routes_removed)
    assert seen == [([], [], True)]
    assert w.host_if not in links(node)
    # No veth: nothing to signal (the caller waits for the return instead).
    assert not unwire_pod(node, w.host_if, w.addresses, on_routes_removed=on_routes_removed)
    assert len(seen) == 1


def test_short_namespace_jobs_run_where_they_are_told(node: str, netns: NetnsFactory) -> None:
    other = netns("other")  # ip_forward stays 0 here; the node fixture set it to 1
    for _ in range(3):  # alternating: the shared thread must move every time
        assert read_sysctl(node, "net.ipv4.ip_forward") == "1"
        assert read_sysctl(other, "net.ipv4.ip_forward") == "0"
        assert read_sysctl(f"/var/run/netns/{other}", "net.ipv4.ip_forward") == "0"
    with pytest.raises(FileNotFoundError):
        read_sysctl("fabt-does-not-exist", "net.ipv4.ip_forward")
    assert read_sysctl(node, "net.ipv4.ip_forward") == "1"
