"""Host endpoints: a GlobalNetworkPolicy protects a node's own address, with real packets,
on both policy backends.

Lab (`helpers.tor_rack`, `helpers.outside`): one dual-stack node behind a BIRD ToR
configured by ``fabricctl tor-config``, an outside host behind the ToR, a server on the
node itself and one in a pod of the node, each answering with the source it saw.

Expected: a HostEndpoint for every interface of the node plus a policy denying TCP 8080
to it closes the node's 8080 to the outside host, on IPv4 and IPv6; the BGP session to the
ToR stays the same TCP connection throughout (failsafe port 179, replies); the pod on the
node still answers the outside host on 8080 and still reaches it (forwarded traffic is
not the host's); a policy denying everything keeps the failsafe port 22 open; deleting the
policy opens the node's port again.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.exabgp import wait_for
from helpers.outside import (
    OUT4,
    OUT6,
    add_outside_host,
    bgp_established,
    bird_tor,
    peer_server,
    seen_source,
    wait_seen,
)
from helpers.tor_rack import add_dual_stack_pod, dual_stack_rack, put, sh

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

PORT = 8080
SSH = 22  # a failsafe port (Calico's defaults)
NODE4, NODE6 = "10.98.1.2", "fd98:1::2"


def bgp_connections(ns: str) -> set[str]:
    """The node's established TCP connections to or from port 179 (local and peer)."""
    out = sh("ip", "netns", "exec", ns, "ss", "-Htn", "state", "established",
             "( sport = :179 or dport = :179 )")
    return {" ".join(ln.split()[-2:]) for ln in out.splitlines() if ln.strip()}


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_global_policy_closes_a_port_of_the_node_and_nothing_else(
        backend: str, netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    rack = dual_stack_rack(netns, etcd, tmp_path, n=1)
    out = add_outside_host(rack, netns)
    (n1,) = rack.nodes
    n1.args = ("--policy-backend", backend)
    with bird_tor(rack, tmp_path) as sock:
        try:
            n1.start(etcd)
            a_ns = netns("pa")
            a4, a6 = add_dual_stack_pod(n1, a_ns, "a")
            with peer_server(n1.ns, PORT), peer_server(n1.ns, SSH), peer_server(a_ns, PORT), \
                    peer_server(out, PORT):
                wait_seen(out, a4, PORT, OUT4, 40, n1.log_tail)  # the ToR routes to the pod
                wait_seen(out, NODE4, PORT, OUT4, 10)
                wait_seen(out, NODE6, PORT, OUT6, 10)
                wait_for(lambda: bgp_established(sock, "n1"), 30, "BGP n1 up")
                before = bgp_connections(n1.ns)
                assert before

                sh("etcdctl", "--endpoints", etcd.endpoint, "put",
                   "/l3fabric/v1/hostendpoints/n1-all",
                   '{"apiVersion":"l3fabric.io/v1","kind":"HostEndpoint","metadata":'
                   '{"name":"n1-all","labels":{"role":"node"}},'
                   '"spec":{"node":"n1","interfaceName":"*"}}')
                put(etcd, "globalpolicies/node-8080", "GlobalNetworkPolicy", "node-8080",
                    {"order": 10, "selector": 'role == "node"', "types": ["Ingress"],
                     "ingress": [{"action": "Deny", "protocol": "TCP",
                                  "destination": {"ports": [PORT]}}]})
                for dst in (NODE4, NODE6):
                    wait_for(lambda d=dst: seen_source(out, d, PORT).startswith("error"), 20,
                             f"the node's {dst}:{PORT} closed", 0.2, n1.log_tail)
                # The pod on the node is not the host: reached and reaching as before.
                assert seen_source(out, a4, PORT) == OUT4
                assert seen_source(out, a6, PORT) == OUT6
                assert seen_source(a_ns, OUT4, PORT) == a4
                assert seen_source(a_ns, OUT6, PORT) == a6
                # BGP to the ToR: the same session, never reset (failsafe 179, replies).
                assert bgp_established(sock, "n1")
                assert bgp_connections(n1.ns) == before

                # Default-deny on the node: the failsafe ports stay open (SSH here).
                put(etcd, "globalpolicies/node-8080", "GlobalNetworkPolicy", "node-8080",
                    {"order": 10, "selector": 'role == "node"', "types": ["Ingress"],
                     "ingress": [{"action": "Deny"}]})
                wait_for(lambda: seen_source(out, NODE4, PORT).startswith("error")
                         and seen_source(out, NODE4, SSH) == OUT4, 20,
                         "deny-all but failsafe", 0.2, n1.log_tail)
                assert seen_source(out, NODE6, SSH) == OUT6
                assert seen_source(out, a4, PORT) == OUT4
                assert bgp_connections(n1.ns) == before

                sh("etcdctl", "--endpoints", etcd.endpoint, "del",
                   "/l3fabric/v1/globalpolicies/node-8080")
                wait_seen(out, NODE4, PORT, OUT4, 20, n1.log_tail)
                wait_seen(out, NODE6, PORT, OUT6, 20, n1.log_tail)
                assert bgp_connections(n1.ns) == before
        finally:
            n1.cleanup()
    nft = subprocess.run(["ip", "netns", "exec", n1.ns, "nft", "list", "table", "inet",
                          "l3fabric-host"], capture_output=True, text=True)
    assert nft.returncode != 0, nft.stdout
    assert "fabhep-" not in sh("ip", "netns", "exec", n1.ns, "iptables-save", "-t", "filter")
