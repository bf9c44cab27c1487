"""What fabricctl prints, against an in-memory datastore: ``get`` formats and selectors,
``version`` skew warnings, ``ipam show --ip``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from datastore import keys, model
from datastore.client import KV, Datastore
from datastore.fake import FakeDatastore
from datastore.schema import encode_version
from fabricctl import cli, resources, version_cmd
from fabricctl.version_cmd import Cluster, skew_warnings
from ipam.block import AllocationAttrs, Block, affinity_of
from ipam.report import address_holder
from ipam.snapshot import build_snapshot
from ipam.values import HandleEntry, HandleRecord

NODES = [
    {"apiVersion": "l3fabric.io/v1", "kind": "Node",
     "metadata": {"name": "n1", "labels": {"rack": "r1"}},
     "spec": {"bgp": {"ipv4Address": "10.99.1.1/30", "ipv6Address": "fd99::1/64"}}},
    {"apiVersion": "l3fabric.io/v1", "kind": "Node",
     "metadata": {"name": "n2", "labels": {"rack": "r2"}},
     "spec": {"bgp": {"ipv4Address": "10.99.2.1/30"}}},
]


@pytest.fixture
def ds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeDatastore:
    """A FakeDatastore holding two Nodes, which every fabricctl command here talks to."""
    store = FakeDatastore()

    async def fill() -> None:
        for doc in NODES:
            res = model.parse_document(doc)
            await store.put(model.key_for(res), model.encode(res))

    asyncio.run(fill())

    def fake_run(_args: Any, fn: Callable[[Datastore], Awaitable[Any]]) -> Any:
        return asyncio.run(fn(store))

    monkeypatch.setattr(resources, "run", fake_run)
    monkeypatch.setattr(version_cmd, "run", fake_run)
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    monkeypatch.setenv("L3FABRIC_CONFIG", str(empty))  # never /etc
    return store


def fabricctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_get_name_wide_and_selector(ds: FakeDatastore,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert fabricctl(capsys, "get", "node", "-o", "name") == (0, "node/n1\nnode/n2\n", "")
    assert fabricctl(capsys, "get", "node", "-l", "rack in (r2,r3)", "-o", "name") == (
        0, "node/n2\n", "")
    rc, out, _ = fabricctl(capsys, "get", "node", "-o", "wide")
    assert rc == 0
    header, n1, n2 = out.splitlines()
    assert header.split() == ["NAME", "IPV4", "ASN", "RRCLUSTERID", "LABELS", "IPV6", "VALID"]
    assert "fd99::1/64" in n1 and "fd99" not in n2
    assert "IPV6" not in fabricctl(capsys, "get", "node")[1]
    # What -o name prints names a resource again.
    assert fabricctl(capsys, "get", "node/n2", "-o", "name") == (0, "node/n2\n", "")
    assert fabricctl(capsys, "get", "node/n2", "n1")[0] == 2


def test_nothing_found_is_a_message_on_stderr(ds: FakeDatastore,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert fabricctl(capsys, "get", "node", "-l", "rack=r9") == (
        0, "", "No resources found.\n")
    assert fabricctl(capsys, "get", "netpol", "-n", "prod") == (
        0, "", "No resources found in prod namespace.\n")
    # Machine formats print an empty list instead, as kubectl's do.
    assert fabricctl(capsys, "get", "bgppeer", "-o", "json") == (0, "[]\n", "")


def test_yaml_output_is_what_apply_reads(ds: FakeDatastore,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = fabricctl(capsys, "get", "node", "-o", "yaml")
    docs = list(yaml.safe_load_all(out))
    assert [model.encode(model.parse_document(d)) for d in docs] == [
        model.encode(model.parse_document(d)) for d in NODES]
    _, out, _ = fabricctl(capsys, "get", "node", "n1", "-o", "json")
    assert model.parse_document(json.loads(out)) == model.parse_document(NODES[0])


def test_version_lists_agents_and_warns(ds: FakeDatastore,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    async def status() -> None:
        await ds.put(keys.full(keys.SCHEMA_VERSION), encode_version())
        st = {"apiVersion": "l3fabric.io/v1", "kind": "NodeStatus", "metadata": {"name": "n1"},
              "status": {"version": "0.0.1"}}
        await ds.put(keys.node_status("n1"), json.dumps(st).encode())

    asyncio.run(status())
    rc, out, err = fabricctl(capsys, "version")
    assert rc == 0
    assert "Datastore schema: 1" in out
    assert [ln.split()[:2] for ln in out.splitlines() if ln.startswith("n")] == [
        ["n1", "0.0.1"], ["n2", "no"]]
    assert "node n1: the agent runs 0.0.1" in err and "n2" not in err


def test_skew_warnings() -> None:
    c = Cluster(schema=2, schema_error=None, agents={"a": "1.0", "b": None, "c": None},
                with_status=frozenset({"a", "b"}))
    assert skew_warnings("1.0", c) == [
        "the datastore has schema version 2, newer than the 1 this fabricctl understands",
        "node b: the agent reports no version (older than this fabricctl 1.0)"]
    assert skew_warnings("1.0", Cluster(1, None, {"a": "1.0"}, frozenset({"a"}))) == []


def _kv(key: str, value: bytes) -> KV:
    return KV(key, value, 1, 1, 1)


def test_address_holder() -> None:
    pool = model.parse_document({"apiVersion": "l3fabric.io/v1", "kind": "IPPool",
                                 "metadata": {"name": "p"},
                                 "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}})
    blk = Block.new("10.244.0.64/26", affinity_of("n1"))
    blk.assign_ordinal(2, AllocationAttrs("h1", "demo", "web", "n1", 1700000000.0))
    rec = HandleRecord("h1", (HandleEntry("10.244.0.64/26", 2, 0, "10.244.0.66"),))
    snap = build_snapshot([
        _kv(keys.ippool("p"), model.encode(pool)),
        _kv(keys.ipam_block("10.244.0.64/26"), blk.to_json()),
        _kv(keys.ipam_handle("h1"), rec.to_json()),
    ], 5)
    got = address_holder(snap, "10.244.0.66")
    assert {k: got[k] for k in ("allocated", "handle", "namespace", "pod", "node", "block",
                                "blockNode", "pool", "handleRecord")} == {
        "allocated": True, "handle": "h1", "namespace": "demo", "pod": "web", "node": "n1",
        "block": "10.244.0.64/26", "blockNode": "n1", "pool": "p", "handleRecord": True}
    free = address_holder(snap, "10.244.0.67")
    assert not free["allocated"] and free["block"] == "10.244.0.64/26"
    elsewhere = address_holder(snap, "10.244.9.1")
    assert elsewhere["block"] is None and elsewhere["pool"] == "p"
    assert address_holder(snap, "192.0.2.1")["pool"] is None
