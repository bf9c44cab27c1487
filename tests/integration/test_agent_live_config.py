"""Configuration written with ``etcdctl`` while the real ``fabric-agent`` runs, and
operator actions on its allocations, seen through the real CNI shim.

The tests in ``test_agent.py`` mostly write configuration before the agent starts; these
change it afterwards (pools, reservations, IPAMConfig), or act on what the agent handed
out (``fabricctl ipam release``, ``ipam check --fix``, an agent restart between a pod's
ADD and DEL), and check what the next CNI call answers and what the node's kernel holds.
Fixtures (``netns``, ``etcd``, the ``node`` agent with pool ``p1``) remove everything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.fabric import Fabric, Node
from integration import test_agent
from integration.test_agent import POOL, cni, etcdctl

from datastore.embedded import EmbeddedEtcd

node = test_agent.node  # the fixture: pool p1 in etcd, then agent n1 in a node namespace


def put(etcd: EmbeddedEtcd, key: str, obj: dict[str, Any]) -> None:
    etcdctl(etcd, "put", "/l3fabric/v1/" + key, json.dumps(obj))


def address(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def add_requesting(fab: Fabric, name: str, ip: str) -> tuple[int, dict[str, Any]]:
    """ADD of pod ``name`` on n1 asking for ``ip`` (``IP=`` in CNI_ARGS): exit code, answer."""
    pending = fab.spawn_pod("n1", name, ip)
    assert pending.proc.stdout is not None
    out = pending.proc.stdout.read()  # its stdin is closed already
    return pending.proc.wait(60), json.loads(out)


def fabric_of(node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd,
              tmp_path: Path) -> Fabric:
    fab = Fabric(netns, etcd, tmp_path)
    fab.nodes[node.name] = node
    return fab


def test_a_pools_block_size_changed_at_run_time_hands_out_no_address_twice(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """blockSize 26 -> 28 while the node owns 10.244.0.0/26: asking for the address a
    running pod holds is refused as in use (101), and no /28 overlapping the /26 is made
    (it once was: the requested address was looked up in a /28 that did not exist, which
    was claimed, and handed the address out a second time)."""
    fab = fabric_of(node, netns, etcd, tmp_path)
    held = address(cni(node, "ADD", "ca", netns("a"), "a"))
    put(etcd, "config/ippools/p1", {**POOL, "spec": {**POOL["spec"], "blockSize": 28}})
    code, answer = add_requesting(fab, "b", held)
    assert (code, answer["code"]) == (1, 101), answer
    assert held in answer["details"]
    blocks = etcdctl(etcd, "get", "--prefix", "--keys-only", "/l3fabric/v1/ipam/blocks/")
    assert blocks.split() == ["/l3fabric/v1/ipam/blocks/10.244.0.0-26"], blocks

