"""A BGPPeer's ``maxPrefixes`` against a real flood, through the real agent.

BIRD, as the node's top-of-rack router, announces 120 /32s inside the pool; the node's
BGPPeer for it says ``maxPrefixes: 50``. The real ``fabric-agent`` (with its ExaBGP) runs
in the node's namespace and reads everything from the test's etcd, as it would in a
cluster. What a user sees is checked: the routes in the node namespace's kernel FIB, the
NodeStatus the agent writes (and ``fabricctl node status``), the metrics. Then the limit is
changed in etcd while everything runs: raised, the missing prefixes come without a session
reset; lowered below what is held, what is held stays and new prefixes are refused.

Modelled on ``tests/faults/test_faults_bgp.py::test_prefix_flood_is_bounded_filtered_and_
logged`` (20,006 prefixes at the default limit of 10,000, against a bare speaker).
Everything runs in namespaces the test made; the agent (and its ExaBGP) and BIRD are
stopped also on failure, then the ``netns`` fixture deletes the namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.bird import Bird, BirdPeer
from helpers.exabgp import bird_available
from helpers.fabric import API, BIN, Fabric, Node, link, wait_for

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.skipif(not bird_available(), reason="BIRD 2 is not installed")

POOL = "10.244.0.0/16"
TOR_IP, NODE_IP = "10.99.1.2", "10.99.1.1"
TOR_AS, NODE_AS = 65000, 65001
LIMIT = 50
FLOOD = 120


def flood(n: int, start: str = "10.244.16.0") -> list[str]:
    base = int(ipaddress.ip_address(start))
    return [f"{ipaddress.ip_address(base + i)}/32" for i in range(n)]


class Lab:
    """One node (real agent) peering with one BIRD ToR that floods ``FLOOD`` prefixes."""

    def __init__(self, fab: Fabric, node: Node, bird: Bird) -> None:
        self.fab, self.node, self.bird = fab, node, bird

    def set_limit(self, limit: int | None) -> None:
        spec: dict[str, Any] = {"peerIP": TOR_IP, "asNumber": TOR_AS, "node": "n1"}
        if limit is not None:
            spec["maxPrefixes"] = limit
        self.fab.put("config/bgppeers/tor-n1", {"apiVersion": API, "kind": "BGPPeer",
                                                "metadata": {"name": "tor-n1"}, "spec": spec})

    def fib(self) -> dict[str, str]:
        """BGP routes (proto 81, l3fabric-bgp) in the node namespace's kernel FIB."""
        return self.node.routes("81")

    def peer(self) -> dict[str, Any]:
        st = self.fab.get("status/nodes/n1") or {}
        for p in (st.get("status") or {}).get("bgp", {}).get("peers", []):
            if p.get("peerIP") == TOR_IP:
                return dict(p)
        return {}

    def dropped(self) -> int:
        m = re.search(r"(\d+) announcements dropped", self.peer().get("info", ""))
        return int(m.group(1)) if m else 0

    def diagnostics(self) -> str:
        return f"{self.fab.diagnostics()}\npeer status {self.peer()}"

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(pred, timeout, what, 0.2, self.diagnostics)

    def settled_fib(self, quiet: float = 2.0, timeout: float = 30) -> dict[str, str]:
        """The FIB once it has not changed for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last, since = self.fib(), time.monotonic()
        while time.monotonic() - since < quiet:
            assert time.monotonic() < deadline, f"FIB still changing\n{self.diagnostics()}"
            time.sleep(0.25)
            now = self.fib()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def fabricctl(self, *args: str) -> str:
        env = dict(os.environ, L3FABRIC_ETCD_ENDPOINTS=self.fab.etcd.endpoint)
        r = subprocess.run([str(BIN / "fabricctl"), *args], capture_output=True, text=True,
                           env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture
def lab(netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> Iterator[Lab]:
    fab = Fabric(netns, etcd, tmp_path)
    try:
        fab.pool("p1", POOL)
        fab.bgp_config(nodeToNodeMesh=False, holdTime=9)
        tor = netns("tor")
        ns = fab.node_ns("n1")
        link(tor, f"{TOR_IP}/30", ns, f"{NODE_IP}/30")
        node = fab.add_node("n1", ns, f"{NODE_IP}/30", asn=NODE_AS)
        bird = fab.tors["tor"] = Bird(tor, tmp_path / "tor", "10.99.0.254", TOR_AS,
                                      peers=[BirdPeer("n1", NODE_IP, NODE_AS, TOR_IP)],
                                      statics=flood(FLOOD), name="tor")
        lab = Lab(fab, node, bird)
        lab.set_limit(LIMIT)
        fab.start_tors()
        fab.start_agents()
        yield lab
    finally:
        fab.close()  # the agent and, with --cleanup, its ExaBGP; then BIRD


def test_peer_max_prefixes_bounds_the_fib_and_changes_at_run_time(lab: Lab) -> None:
    bird, flooded = lab.bird, set(flood(FLOOD))
    lab.wait(lambda: bird.established("n1"), 30, "session with the flooding ToR")
    t0 = time.monotonic()
    lab.wait(lambda: len(lab.fib()) >= LIMIT, 30, f"{LIMIT} BGP routes in the node's FIB")
    took = time.monotonic() - t0
    fib = lab.settled_fib()
    print(f"flood of {FLOOD} at maxPrefixes {LIMIT}: {len(fib)} routes in the FIB "
          f"{took:.1f}s after BIRD showed the session Established")
    # Exactly the limit, all from that peer, all from the flood.
    assert len(fib) == LIMIT, sorted(fib)[:5]
    assert set(fib) <= flooded
    assert all(f"via {TOR_IP}" in line for line in fib.values()), fib
    # The node status shows the limit and that it was reached, once the rest of the flood
    # has been refused (at least once: a route refresh, say at the relay's attach, would
    # have BIRD send it all again).
    lab.wait(lambda: lab.dropped() >= FLOOD - LIMIT, 20,
             f"status showing {FLOOD - LIMIT} announcements dropped")
    p = lab.peer()
    assert p["state"] == "Established" and p["prefixesIn"] == LIMIT
    assert p["maxPrefixes"] == LIMIT
    assert re.fullmatch(rf"max-prefix {LIMIT} reached: \d+ announcements dropped", p["info"]), p
    table = lab.fabricctl("node", "status", "n1").splitlines()
    peers = next(i for i, line in enumerate(table) if "PEER ADDRESS" in line)
    assert "MAX PFX" in table[peers]
    row = table[peers + 1].split()
    assert row[:2] == ["n1", TOR_IP] and row[6:9] == [str(LIMIT), str(LIMIT), "0"], table
    assert f"max-prefix {LIMIT} reached" in table[peers + 1]
    assert json.loads(lab.fabricctl("node", "status", "n1", "-o", "json"))["peers"][0][
        "maxPrefixes"] == LIMIT
    code, metrics = lab.node.http("/metrics")
    assert code == 200
    assert f'l3fabric_bgp_max_prefixes{{peer="{TOR_IP}"}} {float(LIMIT)}' in metrics
    m = re.search(rf'^l3fabric_bgp_prefixes_dropped_total{{peer="{TOR_IP}"}} (\S+)$', metrics, re.M)
    assert m is not None and float(m.group(1)) >= FLOOD - LIMIT, metrics

    # Raised while running: no session reset; the peer is asked for a route refresh and the
    # prefixes it was refused come now, up to the new limit.
    session = bird.session_id("n1")
    assert session, "no TCP connection for the established session"
    raised = 80
    t1 = time.monotonic()
    lab.set_limit(raised)
    lab.wait(lambda: len(lab.fib()) >= raised, 20, f"{raised} routes after the raise")
    took = time.monotonic() - t1
    fib = lab.settled_fib()
    print(f"maxPrefixes raised to {raised}: {len(fib)} routes in the FIB {took:.1f}s "
          "after the write, the session kept")
    assert len(fib) == raised and set(fib) <= flooded
    assert bird.session_id("n1") == session and bird.established("n1"), "session was reset"
    lab.wait(lambda: lab.peer().get("maxPrefixes") == raised
             and lab.peer().get("prefixesIn") == raised, 15, "status with the raised limit")

    # Lowered below what is held: everything held stays, new prefixes are refused.
    lowered = 30
    lab.set_limit(lowered)
    lab.wait(lambda: lab.peer().get("maxPrefixes") == lowered, 15,
             "status with the lowered limit")
    before = lab.dropped()
    assert f", {raised} held (kept when the limit was lowered)" in lab.peer()["info"]
    more = flood(10, "10.244.200.0")
    bird.statics = [*bird.statics, *more]
    bird.reconfigure()
    lab.wait(lambda: lab.dropped() >= before + len(more), 20,
             "the new announcements refused at the lowered limit")
    fib = lab.settled_fib()
    assert len(fib) == raised and not set(more) & set(fib), sorted(set(fib) - flooded)
    p = lab.peer()
    assert (p["prefixesIn"], p["maxPrefixes"]) == (raised, lowered)
    assert p["info"].startswith(f"max-prefix {lowered} reached: "), p
    assert bird.session_id("n1") == session, "session was reset"
