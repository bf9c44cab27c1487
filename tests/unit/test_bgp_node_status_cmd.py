"""fabricctl node status: one record per node from its Node, its NodeStatus (and lease) and
IPAM's blocks; the node and BGP peer tables (no etcd)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from datastore import keys, model
from datastore.client import KV, Datastore
from datastore.fake import FakeDatastore
from fabricctl import cli, node_cmd
from fabricctl.node_cmd import health, healthy, node_rows, rows
from ipam.block import AllocationAttrs, Block, affinity_of
from ipam.report import node_usage
from ipam.snapshot import build_snapshot


def status(name: str, peers: list[dict[str, Any]], **body: Any) -> model.NodeStatus:
    st = model.parse_document({
        "apiVersion": model.API_VERSION, "kind": "NodeStatus", "metadata": {"name": name},
        "status": {"bgp": {"peers": peers}, **body}})
    assert isinstance(st, model.NodeStatus)
    return st


def test_rows_from_node_status() -> None:
    st = status("n1", [
        {"peerIP": "10.99.1.2", "state": "Established", "type": "node", "asNumber": 65000,
         "since": "2024-01-01T00:00:00+00:00", "prefixesIn": 3, "prefixesOut": 2},
        {"peerIP": "10.99.1.6", "state": "Established", "type": "node", "asNumber": 65000,
         "since": "2024-01-01T01:00:00+00:00", "prefixesIn": 50, "maxPrefixes": 50,
         "prefixesOut": 2, "info": "max-prefix 50 reached: 70 announcements dropped"}])
    now = datetime(2024, 1, 1, 1, 2, 3, tzinfo=UTC)
    # MAX PFX after PFX IN; empty for a status written by an agent that did not report it.
    assert rows(health(["n1"], {"n1": (st, 7)}, {}), now) == [
        ["n1", "10.99.1.2", "node", 65000, "Established", "1h02m03s", 3, None, 2, ""],
        ["n1", "10.99.1.6", "node", 65000, "Established", "2m03s", 50, 50, 2,
         "max-prefix 50 reached: 70 announcements dropped"]]


def block(cidr: str, node: str | None, holders: list[str]) -> Block:
    b = Block.new(cidr, None if node is None else affinity_of(node))
    for i, h in enumerate(holders):
        b.assign_ordinal(i, AllocationAttrs(handle=f"h-{cidr}-{i}", node=h))
    return b


def test_node_usage_counts_blocks_and_addresses_borrowed_included() -> None:
    blocks = [block("10.0.0.0/26", "n1", ["n1", "n1", "n2"]), block("10.0.0.64/26", "n2", []),
              block("10.0.1.0/26", None, ["n3"])]
    kvs = [KV(keys.ipam_block(b.cidr), b.to_json(), 1, 1, 1) for b in blocks]
    usage = node_usage(build_snapshot(kvs, 1))
    assert usage == {
        "n1": {"blocks": ["10.0.0.0/26"], "addresses": 2, "borrowed": 0},
        "n2": {"blocks": ["10.0.0.64/26"], "addresses": 1, "borrowed": 1},
        "n3": {"blocks": [], "addresses": 1, "borrowed": 1},
    }


def test_every_node_is_listed_alive_down_or_unknown() -> None:
    alive = status("n1", [{"peerIP": "10.0.0.2", "state": "Established"},
                          {"peerIP": "10.0.0.3", "state": "Active"}],
                   inSync=True, version="1.2.3", errors=["config/ippools/p: bad"])
    by_hand = status("n3", [])
    orphan = status("gone", [])
    records = health(["n1", "n2", "n3"],
                     {"n1": (alive, 0x10), "n3": (by_hand, 0), "gone": (orphan, 0x11)},
                     {"n2": {"blocks": ["10.0.0.64/26"], "addresses": 4, "borrowed": 0}})
    assert [r["node"] for r in records] == ["gone", "n1", "n2", "n3"]
    assert node_rows(records) == [
        # A status whose Node was deleted.
        ["gone (no Node)", "up", "", "", 0, 0, "none", 0],
        ["n1", "up", "yes", "1.2.3", 0, 0, "1/2", 1],
        # No status: the agent is gone (its lease expired); IPAM still says what it holds.
        ["n2", "down", "", "", 1, 4, "", ""],
        # Written without a lease: liveness cannot be told.
        ["n3", "unknown", "", "", 0, 0, "none", 0],
    ]
    # Only an agent up and in sync is healthy (the exit status of node status).
    assert [r["node"] for r in records if healthy(r)] == ["n1"]


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeDatastore:
    ds = FakeDatastore()

    async def fill() -> None:
        for name in ("n1", "n2"):
            node = model.parse_document({
                "apiVersion": model.API_VERSION, "kind": "Node", "metadata": {"name": name},
                "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}}})
            await ds.put(model.key_for(node), model.encode(node))
        lease = await ds.grant_lease(30)
        st = status("n1", [{"peerIP": "10.0.0.2", "state": "Established", "asNumber": 64512}],
                    inSync=True, version="9.9", errors=["config/ippools/p: bad blockSize"])
        await ds.put(keys.node_status("n1"), model.encode(st), lease=lease)
        b = block("10.0.0.0/26", "n2", ["n2"])
        await ds.put(keys.ipam_block(b.cidr), b.to_json())

    asyncio.run(fill())

    def fake_run(_args: Any, fn: Callable[[Datastore], Awaitable[Any]]) -> Any:
        return asyncio.run(fn(ds))

    monkeypatch.setattr(node_cmd, "run", fake_run)
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    monkeypatch.setenv("L3FABRIC_CONFIG", str(empty))
    return ds


def test_status_table_lists_a_node_without_agent_as_down(
        store: FakeDatastore, capsys: pytest.CaptureFixture[str]) -> None:
    # n2 is down: the exit status says the fabric is not healthy (the table is printed)
    assert cli.main(["node", "status"]) == node_cmd.EXIT_UNHEALTHY
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NODE", "AGENT", "IN", "SYNC", "VERSION", "BLOCKS", "ADDRESSES",
                              "BGP", "UP", "ERRORS"]
    assert out[1].split() == ["n1", "up", "yes", "9.9", "0", "0", "1/1", "1"]
    assert out[2].split() == ["n2", "down", "1", "1"]
    assert out[4].split()[:5] == ["NODE", "PEER", "ADDRESS", "PEER", "TYPE"]
    assert out[5].split()[:2] == ["n1", "10.0.0.2"]
    assert "n1: config/ippools/p: bad blockSize" in out
    assert out[-1].startswith("down (no NodeStatus") and out[-1].endswith(": n2")


def test_status_of_one_node_json_and_a_missing_node(
        store: FakeDatastore, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["node", "status", "n2", "-o", "json"]) == node_cmd.EXIT_UNHEALTHY
    rec = json.loads(capsys.readouterr().out)
    assert rec["node"] == "n2" and rec["agent"] == "down"
    assert rec["blocks"] == ["10.0.0.0/26"] and rec["addresses"] == 1 and rec["peers"] == []
    assert cli.main(["node", "status", "ghost"]) == 1
    assert "does not exist" in capsys.readouterr().err
    # n1 alone is up and in sync: 0, its config errors notwithstanding
    assert cli.main(["node", "status", "n1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["n1", "up", "yes"]
