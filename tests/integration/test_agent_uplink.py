"""An uplink addressed after the agent started carries its BGP session at once.

A node's session to a peer is sourced from the node's address on the peer's subnet
(`bgp.config.local_address_for`). Lab: a node namespace with the agent (its BGP address on
a dummy interface) and a ToR namespace running BIRD, joined by a veth whose node end has no
address yet; a BGPPeer names the ToR. The session cannot come up: the node has no address
on that link. Then the operator adds one, as networkd does when a second NIC comes up late.
The agent must see the new address and re-source the session from it within seconds, not
at its periodic resync (a minute): until then ExaBGP keeps connecting from the BGP
address, which the ToR refuses.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.bird import Bird, BirdPeer
from helpers.fabric import Node

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

TOR_AS, NODE_AS = 65000, 64512


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def put(etcd: EmbeddedEtcd, key: str, kind: str, name: str, spec: dict[str, object]) -> None:
    obj = {"apiVersion": "l3fabric.io/v1", "kind": kind, "metadata": {"name": name},
           "spec": spec}
    sh("etcdctl", "--endpoints", etcd.endpoint, "put", f"/l3fabric/v1/{key}", json.dumps(obj))


@pytest.fixture
def uplink_lab(netns: Callable[[str], str], etcd: EmbeddedEtcd,
               tmp_path: Path) -> Iterator[tuple[Node, Bird]]:
    if shutil.which("bird") is None:
        pytest.fail("bird is not installed: run `make setup` (Debian package bird2)")
    node_ns, tor_ns = netns("node"), netns("tor")
    # The BGP address on a link of its own (no dummy module in every container).
    sh("ip", "-n", node_ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    sh("ip", "-n", node_ns, "addr", "add", "10.99.1.1/30", "dev", "d0")
    sh("ip", "-n", node_ns, "link", "set", "d0", "up")
    sh("ip", "-n", tor_ns, "link", "add", "down1", "type", "veth", "peer", "name", "up1",
       "netns", node_ns)
    sh("ip", "-n", tor_ns, "addr", "add", "10.98.0.1/30", "dev", "down1")
    sh("ip", "-n", tor_ns, "link", "set", "down1", "up")
    sh("ip", "-n", node_ns, "link", "set", "up1", "up")  # no address on the node's end yet
    put(etcd, "config/bgp/default", "BGPConfiguration", "default",
        {"asNumber": NODE_AS, "holdTime": 9})
    put(etcd, "config/bgppeers/tor", "BGPPeer", "tor",
        {"peerIP": "10.98.0.1", "asNumber": TOR_AS, "node": "n1"})
    tor = Bird(tor_ns, tmp_path / "tor", "10.98.0.1", TOR_AS,
               peers=[BirdPeer("n1", "10.98.0.2", NODE_AS, "10.98.0.1")])
    tor.start()
    node = Node("n1", node_ns, "10.99.1.1/30", tmp_path / "n1")
    try:
        node.start(etcd)
        yield node, tor
    finally:
        node.kill(signal.SIGTERM)
        tor.stop()


def test_uplink_addressed_after_start_carries_the_session(
        uplink_lab: tuple[Node, Bird]) -> None:
    node, tor = uplink_lab
    conf = node.workdir / "bgp-n1" / "exabgp.conf"
    deadline = time.monotonic() + 20
    while "neighbor 10.98.0.1" not in (conf.read_text() if conf.exists() else ""):
        assert time.monotonic() < deadline, "the BGPPeer never reached ExaBGP's config"
        time.sleep(0.2)
    time.sleep(3)  # BIRD retries every second: nothing it could connect to
    assert not tor.established("n1"), tor.protocol("n1")

    sh("ip", "-n", node.ns, "addr", "add", "10.98.0.2/30", "dev", "up1")
    t0 = time.monotonic()
    while not tor.established("n1"):
        assert time.monotonic() - t0 < 25, (
            f"no session over the new uplink: {tor.protocol('n1')}\n{conf.read_text()}\n"
            f"{node.log_tail()}")
        time.sleep(0.2)
    print(f"session up {time.monotonic() - t0:.1f} s after the uplink got its address")
    assert "local-address 10.98.0.2" in conf.read_text()
    assert "interface addresses now: 10.98.0.2/30, 10.99.1.1/30" in node.log.read_text()
