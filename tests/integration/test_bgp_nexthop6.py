"""A learned IPv6 route whose only next hop is link-local is installed on the interface of
the session it came on, and carries traffic.

Lab: a node running the real agent, and a peer namespace running a bare ExaBGP that
announces, over the IPv4 session (MP-BGP), ``fd44::40/122`` with next hop ``fe80::1``
alone (as FRR does while its global address is not ready) and ``fd44::80/122`` with
``fd99::1``, a global one. Expected: the node installs the first ``via fe80::1 dev up1``
(``up1`` holds the session's local address; the kernel refuses a link-local gateway
without a device, which would leave the route out) and the second via ``fd99::1``; the node
reaches an address of each prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.exabgp import EXABGP, wait_for
from helpers.fabric import Node
from helpers.procs import stop_all
from helpers.tor_rack import bgp_routes, put, sh

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

PEER_CONF = """
neighbor 10.97.0.2 {
  router-id 10.97.0.1;
  local-address 10.97.0.1;
  local-as 65000;
  peer-as 65100;
  hold-time 9;
  listen 179;
  family { ipv4 unicast; ipv6 unicast; }
  static {
    route fd44::40/122 next-hop fe80::1;
    route fd44::80/122 next-hop fd99::1;
  }
}
"""


def test_a_link_local_next_hop_is_installed_on_the_sessions_interface(
        netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    node_ns, peer_ns = netns("n1"), netns("peer")
    sh("ip", "-n", peer_ns, "link", "add", "down1", "type", "veth", "peer", "name", "up1",
       "netns", node_ns)
    for ns, dev, host in ((peer_ns, "down1", 1), (node_ns, "up1", 2)):
        sh("ip", "-n", ns, "addr", "add", f"10.97.0.{host}/30", "dev", dev)
        sh("ip", "-n", ns, "addr", "add", f"fd99::{host}/64", "dev", dev, "nodad")
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", peer_ns, "addr", "add", "fe80::1/64", "dev", "down1", "nodad")
    for addr in ("fd44::41/128", "fd44::81/128"):  # what the node pings behind the peer
        sh("ip", "-n", peer_ns, "addr", "add", addr, "dev", "lo")
    put(etcd, "nodes/n1", "Node", "n1", {"bgp": {
        "ipv4Address": "10.97.0.2/30", "ipv6Address": "fd99::2/64", "asNumber": 65100}})
    put(etcd, "config/bgppeers/peer", "BGPPeer", "peer",
        {"peerIP": "10.97.0.1", "asNumber": 65000, "node": "n1"})
    put(etcd, "config/bgp/default", "BGPConfiguration", "default",
        {"asNumber": 64512, "holdTime": 9, "nodeToNodeMesh": False})
    put(etcd, "config/ippools/v4", "IPPool", "v4", {"cidr": "10.244.0.0/16", "blockSize": 26})
    put(etcd, "config/ippools/v6", "IPPool", "v6", {"cidr": "fd44::/48", "blockSize": 122})

    conf = tmp_path / "peer.conf"
    conf.write_text(PEER_CONF)
    (tmp_path / "root" / "etc" / "exabgp").mkdir(parents=True)
    env = dict(os.environ, EXABGP_ROOT=str(tmp_path / "root"), **{
        "exabgp.daemon.user": "root", "exabgp.daemon.drop": "false",
        "exabgp.daemon.daemonize": "false", "exabgp.log.destination": "stdout",
        "exabgp.api.pipename": f"l3fabric-test-peer-{os.getpid()}"})
    with open(tmp_path / "peer.log", "wb") as log:
        peer = subprocess.Popen(["ip", "netns", "exec", peer_ns, EXABGP, "server", str(conf)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    node = Node("n1", node_ns, "10.97.0.2/30", tmp_path / "n1")
    try:
        node.start(etcd)

        def both() -> bool:
            routes = bgp_routes(node_ns, "-6")
            return {"fd44::40/122", "fd44::80/122"} <= set(routes)

        wait_for(both, 30, "both IPv6 routes in the node's FIB", 0.2,
                 lambda: str(bgp_routes(node_ns, "-6")) + node.log_tail()
                 + (tmp_path / "peer.log").read_text()[-2000:])
        routes = bgp_routes(node_ns, "-6")
        assert "via fe80::1 dev up1 " in routes["fd44::40/122"], routes
        assert "via fd99::1 dev up1 " in routes["fd44::80/122"], routes
        for dst in ("fd44::41", "fd44::81"):
            r = subprocess.run(["ip", "netns", "exec", node_ns, "ping", "-n", "-c", "2", "-i",
                                "0.2", "-W", "2", dst], capture_output=True, text=True)
            assert r.returncode == 0, (dst, r.stdout, routes)
        # A restarted agent reads the route back with its device and adopts it: the
        # kernel sees no change of it (it would be replaced by an equal one otherwise).
        monitor = subprocess.Popen(["ip", "-n", node_ns, "-6", "monitor", "route"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            offset = node.log.stat().st_size
            node.kill(signal.SIGKILL)
            node.start(etcd)
            wait_for(lambda: b"import table in sync" in node.log.read_bytes()[offset:], 10,
                     "the restarted agent in sync", 0.1, node.log_tail)
            time.sleep(1)
        finally:
            monitor.terminate()
        events = monitor.communicate(timeout=5)[0]
        assert "fd44::40/122" not in events, events
        assert bgp_routes(node_ns, "-6") == routes
    finally:
        node.cleanup()
        stop_all([peer])
