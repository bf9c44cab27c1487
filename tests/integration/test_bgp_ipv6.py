"""Dual-stack pods on two nodes reach each other over IPv6 too, under the same policy.

Lab: two node namespaces joined by one link (10.99.0.0/30 and fd99::/64), an agent in
each, the node-to-node mesh, an IPv4 and an IPv6 pool; the Nodes carry
``bgp.ipv6Address``. The IPv6 blocks travel over the IPv4 BGP session (MP-BGP) with the
node's IPv6 address as next hop (n1's Node is written by the operator, n2 registers
itself with ``--node-ip6``). Expected: each node installs the other's IPv6 block via
the other's IPv6 address, and a pod pings the pod on the other node at both of its
addresses. Before, sessions carried only ``ipv4 unicast``: IPv6 pods reached pods of their
own node only.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.exabgp import wait_for
from helpers.fabric import Node
from helpers.tor_rack import add_dual_stack_pod as add_pod
from helpers.tor_rack import bgp_routes, dual_stack_rack, put, sh

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration


def ping(src_ns: str, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-n", "-q", "-c", "2",
                           "-i", "0.2", "-W", "2", ip], capture_output=True).returncode == 0


@pytest.fixture
def two_nodes(netns: Callable[[str], str], etcd: EmbeddedEtcd,
              tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    n1_ns, n2_ns = netns("n1"), netns("n2")
    sh("ip", "-n", n1_ns, "link", "add", "e0", "type", "veth", "peer", "name", "e0",
       "netns", n2_ns)
    for i, ns in ((1, n1_ns), (2, n2_ns)):
        sh("ip", "-n", ns, "addr", "add", f"10.99.0.{i}/30", "dev", "e0")
        sh("ip", "-n", ns, "addr", "add", f"fd99::{i}/64", "dev", "e0", "nodad")
        sh("ip", "-n", ns, "link", "set", "e0", "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
    # n1 as an operator writes it; n2 registers itself (fabric-agent --node-ip6).
    put(etcd, "nodes/n1", "Node", "n1",
        {"bgp": {"ipv4Address": "10.99.0.1/30", "ipv6Address": "fd99::1/64"}})
    put(etcd, "config/bgp/default", "BGPConfiguration", "default",
        {"asNumber": 64512, "holdTime": 9})
    put(etcd, "config/ippools/v4", "IPPool", "v4", {"cidr": "10.244.0.0/16", "blockSize": 26})
    put(etcd, "config/ippools/v6", "IPPool", "v6", {"cidr": "fd44::/48", "blockSize": 122})
    nodes = (Node("n1", n1_ns, "10.99.0.1/30", tmp_path / "n1"),
             Node("n2", n2_ns, "10.99.0.2/30", tmp_path / "n2", args=("--node-ip6", "fd99::2/64")))
    try:
        for n in nodes:  # both start at once, then each must become ready
            n.spawn(etcd)
        for n in nodes:
            wait_for(n.ready, 40, f"agent {n.name} ready", 0.1, n.log_tail)
        yield nodes
    finally:
        for n in nodes:
            n.cleanup()


def test_dual_stack_pods_reach_each_other_across_nodes(
        two_nodes: tuple[Node, Node], netns: Callable[[str], str]) -> None:
    n1, n2 = two_nodes
    a_ns, b_ns = netns("pa"), netns("pb")
    a4, a6 = add_pod(n1, a_ns, "a")
    b4, b6 = add_pod(n2, b_ns, "b")
    # Each node learns the other's blocks of both families, IPv6 via the IPv6 next hop.
    deadline = time.monotonic() + 30
    while True:
        r1, r2 = bgp_routes(n1.ns, "-6"), bgp_routes(n2.ns, "-6")
        got1 = [ln for p, ln in r1.items() if p.startswith("fd44:")]
        got2 = [ln for p, ln in r2.items() if p.startswith("fd44:")]
        v4 = (any(p.startswith("10.244.") for p in bgp_routes(n1.ns, "-4"))
              and any(p.startswith("10.244.") for p in bgp_routes(n2.ns, "-4")))
        if (got1 and got2 and v4) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got1 and "via fd99::2" in got1[0], (r1, n1.log_tail())
    assert got2 and "via fd99::1" in got2[0], (r2, n2.log_tail())
    assert v4, "the IPv4 blocks must still be exchanged"
    for src, dst in ((a_ns, b6), (b_ns, a6), (a_ns, b4), (b_ns, a4)):
        assert ping(src, dst), f"{src} cannot reach {dst}"


def test_a_policy_closes_both_addresses_of_a_dual_stack_pod(
        two_nodes: tuple[Node, Node], netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """No policy hole on the second family: a GlobalNetworkPolicy that denies a pod's
    ingress from another pod closes its IPv6 address as well as its IPv4 one, and its
    other peers still reach it at both."""
    n1, n2 = two_nodes
    a_ns, c_ns, b_ns = netns("pa"), netns("pc"), netns("pb")
    add_pod(n1, a_ns, "a", {"role": "client"})
    add_pod(n1, c_ns, "c", {"role": "other"})
    b4, b6 = add_pod(n2, b_ns, "b", {"role": "db"})
    deadline = time.monotonic() + 30
    while not (ping(a_ns, b6) and ping(a_ns, b4)):
        assert time.monotonic() < deadline, "control: a never reached b"
    put(etcd, "globalpolicies/deny-client", "GlobalNetworkPolicy", "deny-client",
        {"order": 10, "selector": 'role == "db"', "types": ["Ingress"],
         "ingress": [{"action": "Deny", "source": {"selector": 'role == "client"'}},
                     {"action": "Allow"}]})
    deadline = time.monotonic() + 20
    while ping(a_ns, b4) or ping(a_ns, b6):
        assert time.monotonic() < deadline, "the policy never closed b to a"
    assert not ping(a_ns, b6) and not ping(a_ns, b4)
    assert ping(c_ns, b6) and ping(c_ns, b4), "b must stay open to c"


def test_a_dual_stack_pod_whose_egress_is_denied_still_answers_over_ipv6(
        two_nodes: tuple[Node, Node], netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """A NetworkPolicy that denies all of a pod's egress must not deny its neighbour
    discovery: the node solicits the pod's IPv6 address, and the pod answers (and
    solicits the node's) from that address. Dropped, the node never learns the pod's MAC
    and connections to the pod fail over IPv6 only (ARP is not IP: IPv4 keeps working).
    Found by the chaos soak."""
    n1, n2 = two_nodes
    a_ns, b_ns = netns("pa"), netns("pb")
    a4, _ = add_pod(n1, a_ns, "a", {"role": "client"})
    sh("etcdctl", "--endpoints", etcd.endpoint, "put", "/l3fabric/v1/policies/default/isolate-b",
       json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "isolate-b", "namespace": "default"},
                   "spec": {"podSelector": {"matchLabels": {"role": "db"}},
                            "policyTypes": ["Egress"]}}))
    b4, b6 = add_pod(n2, b_ns, "b", {"role": "db"})
    deadline = time.monotonic() + 40
    # Routes first (IPv4 only: nothing may resolve b's IPv6 address before the check)...
    while not ping(a_ns, b4):
        assert time.monotonic() < deadline, "a never reached b over IPv4 (replies are not egress)"
    while not any(p.startswith("fd44:") for p in bgp_routes(n1.ns, "-6")):
        assert time.monotonic() < deadline, "n1 never learned n2's IPv6 block"
        time.sleep(0.2)
    # ...then the policy in force on n2: b's own IPv4 egress is closed.
    while ping(b_ns, a4):
        assert time.monotonic() < deadline, "the policy never closed b's egress"
    assert ping(a_ns, b6), "a must reach b over IPv6 (the node must resolve b's address)"


def test_ipv6_blocks_cross_a_bird_tor_configured_by_tor_config(
        netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """Two nodes (one AS each) behind a BIRD 2 ToR whose configuration is what
    ``fabricctl tor-config`` prints, unedited: the sessions are IPv4, and for nodes with a
    ``bgp.ipv6Address`` they carry IPv6 too. The ToR installs each node's IPv6 block via
    that node's IPv6 address and re-advertises it with its own as next hop; each node
    installs the other's block via the ToR; the pods ping each other over IPv6."""
    rack = dual_stack_rack(netns, etcd, tmp_path)
    tor_ns, nodes = rack.tor_ns, rack.nodes
    conf = tmp_path / "bird.conf"
    conf.write_text(rack.tor_config("bird"))
    sock = tmp_path / "bird.ctl"
    bird = subprocess.Popen(["ip", "netns", "exec", tor_ns, "bird", "-f", "-c", str(conf), "-s",
                             str(sock), "-P", str(tmp_path / "bird.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for n in nodes:
            n.start(etcd)
        (a_ns, b_ns) = netns("pa"), netns("pb")
        _, a6 = add_pod(nodes[0], a_ns, "a")
        _, b6 = add_pod(nodes[1], b_ns, "b")
        deadline = time.monotonic() + 40
        while True:
            tor = {ln.split()[0]: ln for ln in sh("ip", "-6", "-n", tor_ns, "route", "show",
                                                  "proto", "bird").splitlines()}
            r1, r2 = bgp_routes(nodes[0].ns, "-6"), bgp_routes(nodes[1].ns, "-6")
            done = (sum(p.startswith("fd44:") for p in tor) == 2
                    and any("via fd98:1::1" in ln for p, ln in r1.items() if p.startswith("fd44:"))
                    and any("via fd98:2::1" in ln for p, ln in r2.items() if p.startswith("fd44:")))
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        state = subprocess.run(["birdc", "-s", str(sock), "show", "protocols"],
                               capture_output=True, text=True).stdout
        assert sorted(ln.split(" via ")[1].split()[0] for p, ln in tor.items()
                      if p.startswith("fd44:")) == ["fd98:1::2", "fd98:2::2"], (tor, state)
        routes_at_tor = subprocess.run(["birdc", "-s", str(sock), "show", "route", "all"],
                                       capture_output=True, text=True).stdout
        assert any("via fd98:1::1" in ln for p, ln in r1.items() if p.startswith("fd44:")), (
            r1, state, routes_at_tor, nodes[0].log_tail())
        assert any("via fd98:2::1" in ln for p, ln in r2.items() if p.startswith("fd44:")), (
            r2, state, routes_at_tor, nodes[1].log_tail())
        assert ping(a_ns, b6) and ping(b_ns, a6), "the pods cannot reach each other over IPv6"
    finally:
        for n in nodes:
            n.cleanup()
        bird.kill()
        bird.wait(10)
