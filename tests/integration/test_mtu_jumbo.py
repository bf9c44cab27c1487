"""Jumbo frames end to end: 9000-byte fabric links, pods wired with ``mtu: 0`` use them.

Lab: two node namespaces joined by a veth with MTU 9000 (their "uplink"; nodes have no
default route, as in the lab, so detection takes the highest MTU of their links), one pod
on each, static routes between the nodes' pod prefixes, forwarding on inside the node
namespaces only. A don't-fragment ping of 8972 bytes (9000 - 20 IP - 8 ICMP) crosses
pod -> node -> node -> pod; 8973 does not fit.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable

from felix_like.plumbing import detect_uplink_mtu, host_veth_name, unwire_pod, wire_pod


def sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def ok(*cmd: str) -> str:
    r = sh(*cmd)
    assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r.stdout


def link_mtu(ns: str, dev: str) -> int:
    return int(json.loads(ok("ip", "-n", ns, "-j", "link", "show", dev))[0]["mtu"])


def test_pods_use_9000_byte_links_end_to_end(netns: Callable[[str], str]) -> None:
    n1, n2 = netns("jn1"), netns("jn2")
    p1, p2 = netns("jp1"), netns("jp2")
    ok("ip", "-n", n1, "link", "add", "up0", "mtu", "9000", "type", "veth", "peer", "name",
       "up0", "netns", n2, "mtu", "9000")
    for ns, me, other, pods in ((n1, "10.98.0.1", "10.98.0.2", "10.244.2.0/26"),
                                (n2, "10.98.0.2", "10.98.0.1", "10.244.1.0/26")):
        ok("ip", "-n", ns, "addr", "add", f"{me}/30", "dev", "up0")
        ok("ip", "-n", ns, "link", "set", "up0", "up")
        ok("ip", "-n", ns, "route", "add", pods, "via", other)
        ok("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert detect_uplink_mtu(n1) == 9000

    wired: list[tuple[str, str, list[ipaddress.IPv4Interface]]] = []
    for node, pod, ip in ((n1, p1, "10.244.1.5"), (n2, p2, "10.244.2.5")):
        host_if = host_veth_name("l3fabric", pod, "eth0")
        addrs = [ipaddress.IPv4Interface(f"{ip}/32")]
        w = wire_pod(node, f"/var/run/netns/{pod}", "eth0", host_if, addrs, mtu=0)
        wired.append((node, host_if, addrs))
        assert w.mtu == 9000
        assert link_mtu(pod, "eth0") == 9000
        assert link_mtu(node, host_if) == 9000
    try:
        big = sh("ip", "netns", "exec", p1, "ping", "-M", "do", "-s", "8972", "-c", "2",
                 "-W", "2", "10.244.2.5")
        assert big.returncode == 0, big.stdout + big.stderr
        assert "2 received" in big.stdout
        too_big = sh("ip", "netns", "exec", p1, "ping", "-M", "do", "-s", "8973", "-c", "1",
                     "-W", "2", "10.244.2.5")
        assert too_big.returncode != 0
        assert "mtu=9000" in too_big.stdout + too_big.stderr  # refused at the pod's eth0

        # An explicit MTU in the network config wins over detection.
        p3 = netns("jp3")
        small_if = host_veth_name("l3fabric", p3, "eth0")
        addrs = [ipaddress.IPv4Interface("10.244.1.6/32")]
        w = wire_pod(n1, f"/var/run/netns/{p3}", "eth0", small_if, addrs, mtu=1400)
        wired.append((n1, small_if, addrs))
        assert w.mtu == 1400 and link_mtu(p3, "eth0") == 1400
        r = sh("ip", "netns", "exec", p3, "ping", "-M", "do", "-s", "1372", "-c", "1", "-W",
               "2", "10.244.2.5")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for node, host_if, addrs in wired:
            unwire_pod(node, host_if, addrs)
