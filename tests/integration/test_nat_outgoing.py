"""Outgoing NAT per pool, with real packets, on both policy backends.

Lab (`helpers.tor_rack`, `helpers.outside`): two dual-stack nodes behind a BIRD ToR
configured by ``fabricctl tor-config``, and an outside host behind the ToR with routes back
to the pod pools. A pod on n1 connects to a server on the outside host that answers with
the source address it saw, and to a server in a pod on n2.

Expected: with ``natOutgoing`` off (the default) the outside host sees the pod's
addresses; turned on at run time it sees n1's addresses (IPv4 and IPv6) from the next
connection, except for destinations in the FelixConfiguration's ``nonMasqueradeCIDRs``;
turned off again the pod's. The pod on n2, and a server on n1 itself, always see the pod's
own address.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.outside import OUT4, OUT6, add_outside_host, bird_tor, peer_server, wait_seen
from helpers.tor_rack import add_dual_stack_pod, dual_stack_rack, put, sh

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

PORT = 7777


def pools(etcd: EmbeddedEtcd, nat: bool) -> None:
    put(etcd, "config/ippools/v4", "IPPool", "v4",
        {"cidr": "10.244.0.0/16", "blockSize": 26, "natOutgoing": nat})
    put(etcd, "config/ippools/v6", "IPPool", "v6",
        {"cidr": "fd44::/48", "blockSize": 122, "natOutgoing": nat})


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_nat_outgoing_rewrites_only_traffic_leaving_the_pools(
        backend: str, netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    rack = dual_stack_rack(netns, etcd, tmp_path)
    out = add_outside_host(rack, netns)
    n1, n2 = rack.nodes
    for n in rack.nodes:
        n.args = ("--policy-backend", backend)
    with bird_tor(rack, tmp_path):
        try:
            for n in rack.nodes:
                n.start(etcd)
            a_ns, b_ns = netns("pa"), netns("pb")
            a4, a6 = add_dual_stack_pod(n1, a_ns, "a")
            b4, b6 = add_dual_stack_pod(n2, b_ns, "b")
            with peer_server(out, PORT), peer_server(b_ns, PORT), peer_server(n1.ns, PORT):
                # Off (the default): the outside sees the pod, once the ToR routes to it.
                wait_seen(a_ns, OUT4, PORT, a4, 40, n1.log_tail)
                wait_seen(a_ns, OUT6, PORT, a6, 20, n1.log_tail)
                pools(etcd, True)
                wait_seen(a_ns, OUT4, PORT, "10.98.1.2", 20, n1.log_tail)
                wait_seen(a_ns, OUT6, PORT, "fd98:1::2", 20, n1.log_tail)
                # Pod to pod is never rewritten, nor traffic to the node's own address.
                wait_seen(a_ns, b4, PORT, a4, 10)
                wait_seen(a_ns, b6, PORT, a6, 10)
                wait_seen(a_ns, "10.98.1.2", PORT, a4, 10)
                # A non-masquerade CIDR is left alone too.
                put(etcd, "config/felix/default", "FelixConfiguration", "default",
                    {"nonMasqueradeCIDRs": ["10.97.0.0/24"]})
                wait_seen(a_ns, OUT4, PORT, a4, 20, n1.log_tail)
                wait_seen(a_ns, OUT6, PORT, "fd98:1::2", 10, n1.log_tail)
                pools(etcd, False)
                wait_seen(a_ns, OUT4, PORT, a4, 20, n1.log_tail)
                wait_seen(a_ns, OUT6, PORT, a6, 20, n1.log_tail)
        finally:
            for n in rack.nodes:
                n.cleanup()
    # fabric-agent --cleanup removed the NAT rules with the rest of what it owns.
    nft = subprocess.run(["ip", "netns", "exec", n1.ns, "nft", "list", "table", "inet",
                          "l3fabric-nat"], capture_output=True, text=True)
    assert nft.returncode != 0, nft.stdout
    assert "fab-nat-post" not in sh("ip", "netns", "exec", n1.ns, "iptables-save", "-t", "nat")
    assert "fabnat-" not in sh("ip", "netns", "exec", n1.ns, "ipset", "list", "-n")
