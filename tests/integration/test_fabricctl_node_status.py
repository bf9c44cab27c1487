"""``fabricctl node status`` against a real etcd and real agents on a LAN (full mesh):
an alive node with its sync, blocks, addresses and BGP peers; a Node that never ran an
agent listed as down; an agent killed shows down once its NodeStatus lease expires (a
short ``--status-ttl``), still listed with what IPAM holds for it. The exit status is 0 only
when every node listed is up and in sync, 3 otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.exabgp import wait_for
from helpers.fabric import API, Fabric, lan

from datastore.embedded import EmbeddedEtcd

FABRICCTL = str(Path(sys.executable).with_name("fabricctl"))


UNHEALTHY = 3  # node status's exit status when a node listed is down or not in sync


def fabricctl(etcd: EmbeddedEtcd, *args: str, code: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("L3FABRIC_", "ETCDCTL_"))}
    env.update(L3FABRIC_ETCD_ENDPOINTS=etcd.endpoint, L3FABRIC_CONFIG="/dev/null")
    r = subprocess.run([FABRICCTL, *args], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == code, r.stderr
    return r.stdout


def status(etcd: EmbeddedEtcd) -> dict[str, dict[str, Any]]:
    """Every node's record; n3 never runs an agent, so the exit status says unhealthy."""
    return {r["node"]: r for r in json.loads(fabricctl(etcd, "node", "status", "-o", "json",
                                                       code=UNHEALTHY))}


@pytest.fixture
def fabric(netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> Iterator[Fabric]:
    fab = Fabric(netns, etcd, tmp_path)
    try:
        lan(fab, 2)
        for n in fab.nodes.values():
            n.args = ("--status-ttl", "3")
        fab.pool("p", "10.244.0.0/16")
        # A Node whose agent never ran (its address on the LAN, nobody behind it).
        fab.put("nodes/n3", {"apiVersion": API, "kind": "Node", "metadata": {"name": "n3"},
                             "spec": {"bgp": {"ipv4Address": "10.0.0.3/24"}}})
        fab.start_agents()
        yield fab
    finally:
        fab.close()


def test_node_status_shows_alive_nodes_peers_and_a_killed_agent_as_down(
        fabric: Fabric, etcd: EmbeddedEtcd) -> None:
    fabric.add_pod("n1", "a")
    fabric.add_pod("n2", "b")
    block = fabric.nodes["n1"].claimed_block()

    def healthy() -> dict[str, dict[str, Any]] | None:
        st = status(etcd)
        peers = {p["peerIP"]: p for p in st["n1"]["peers"]}
        ok = (st["n1"]["inSync"] and st["n2"]["inSync"]
              and peers.get("10.0.0.2", {}).get("state") == "Established"
              and st["n1"]["addresses"] == 1)
        return st if ok else None

    st = wait_for(healthy, 30, "n1 in sync with its session to n2 up and its pod counted",
                  0.5, fabric.diagnostics)
    n1 = st["n1"]
    assert n1["agent"] == "up" and n1["errors"] == [] and n1["version"]
    assert n1["blocks"] == [block]
    # The mesh peers with every Node: n3's session cannot come up, and says so.
    assert {p["peerIP"] for p in n1["peers"]} == {"10.0.0.2", "10.0.0.3"}
    assert next(p for p in n1["peers"] if p["peerIP"] == "10.0.0.3")["state"] != "Established"
    assert st["n2"]["agent"] == "up"
    assert st["n3"]["agent"] == "down" and st["n3"]["peers"] == []

    table = fabricctl(etcd, "node", "status", code=UNHEALTHY).splitlines()
    assert table[0].split()[:3] == ["NODE", "AGENT", "IN"]
    rows = {line.split()[0]: line.split() for line in table[1:4]}
    assert rows["n1"][:3] == ["n1", "up", "yes"] and rows["n1"][4:7] == ["1", "1", "1/2"]
    assert rows["n3"][:2] == ["n3", "down"]
    peers = table.index(next(line for line in table if line.startswith("NODE  ") and
                             "PEER ADDRESS" in line))
    assert any(line.split()[:2] == ["n1", "10.0.0.2"] and "Established" in line
               for line in table[peers + 1:])
    # n1 alone is up and in sync: a script asking about it gets 0.
    assert fabricctl(etcd, "node", "status", "n1").splitlines()[1].split()[:3] == [
        "n1", "up", "yes"]

    # The agent of n2 dies (its ExaBGP lives on): once its lease expires, n2 is down, still
    # listed, with the block IPAM holds for it.
    n2_block = fabric.nodes["n2"].claimed_block()
    assert st["n2"]["blocks"] == [n2_block]
    fabric.nodes["n2"].kill()
    st = wait_for(lambda: (s := status(etcd))["n2"]["agent"] == "down" and s, 30,
                  "n2 shown down after its lease expired", 0.5)
    assert st["n2"]["blocks"] == [n2_block] and st["n2"]["addresses"] == 1
    assert st["n2"]["peers"] == []
    assert st["n1"]["agent"] == "up"
    one = fabricctl(etcd, "node", "status", "n2", code=UNHEALTHY).splitlines()
    assert one[1].split()[:2] == ["n2", "down"]
    assert one[-1].startswith("down (no NodeStatus") and one[-1].endswith(": n2")
