"""Datastore against a real etcd: reads, CAS writes, txns, leases, typed failures."""

from __future__ import annotations

import asyncio
import time

import pytest

from datastore.cas import create_if_absent, delete_if_revision, update_if_revision
from datastore.client import (
    CompactedError,
    Compare,
    ConflictError,
    Datastore,
    Delete,
    EtcdConfig,
    Get,
    NotFoundError,
    Put,
    Range,
    TxnResult,
    UnavailableError,
)
from datastore.embedded import EmbeddedEtcd, free_port
from datastore.fake import FakeDatastore

P = "/l3fabric/v1/test/"


def connect(etcd: EmbeddedEtcd, timeout: float = 2.0) -> Datastore:
    return Datastore(EtcdConfig.from_strings(etcd.endpoint, timeout=timeout))


async def test_get_put_create_update_delete(etcd: EmbeddedEtcd) -> None:
    async with connect(etcd) as ds:
        assert await ds.get(P + "a") is None
        r1 = await ds.put(P + "a", b"1")
        kv = await ds.get(P + "a")
        assert kv is not None and kv.value == b"1" and kv.mod_revision == r1
        assert kv.create_revision == r1 and kv.version == 1

        with pytest.raises(ConflictError):
            await ds.create(P + "a", b"2")
        assert await create_if_absent(ds, P + "a", b"2") is False
        assert await create_if_absent(ds, P + "b", b"2") is True

        r2 = await ds.update(P + "a", b"3", r1)
        with pytest.raises(ConflictError):
            await ds.update(P + "a", b"4", r1)
        with pytest.raises(ConflictError):
            await update_if_revision(ds, P + "a", b"4", r1)
        r3 = await update_if_revision(ds, P + "a", b"5", r2)

        with pytest.raises(ConflictError):
            await ds.delete(P + "a", mod_revision=r2)
        with pytest.raises(ConflictError):
            await delete_if_revision(ds, P + "a", r2)
        await delete_if_revision(ds, P + "a", r3)
        assert await ds.get(P + "a") is None
        assert await ds.delete(P + "a") is False
        assert await ds.delete(P + "b") is True


async def test_txn_with_gets_and_list_revision(etcd: EmbeddedEtcd) -> None:
    async with connect(etcd) as ds:
        await ds.put(P + "x", b"x")
        res = await ds.txn([Compare(P + "x", "value", "==", b"x")],
                           [Get(P + "x"), Put(P + "y", b"y"), Get(P + "y"), Get(P + "none")],
                           [Get(P + "x")])
        assert res.succeeded
        assert [g.value if g else None for g in res.gets] == [b"x", b"y", None]
        res = await ds.txn([Compare(P + "x", "version", ">", 5)], [Delete(P + "x")],
                           [Get(P + "x"), Get(P + "y")])
        assert not res.succeeded and [g.key for g in res.gets if g] == [P + "x", P + "y"]

        kvs, rev = await ds.list(P)
        assert [kv.key for kv in kvs] == [P + "x", P + "y"]
        assert rev == await ds.revision() == res.revision
        keys, _ = await ds.list(P, keys_only=True)
        assert [kv.value for kv in keys] == [b"", b""]
        await ds.delete_prefix(P)
        assert (await ds.list(P))[0] == []


async def test_ranges_in_a_txn_and_the_fake_agrees(
        etcd: EmbeddedEtcd) -> None:
    """What the IPAM claim reads in one request: a prefix, and every key of another prefix
    without values; in either branch, beside writes and Gets."""
    async def run(ds: Datastore) -> list[TxnResult]:
        await ds.put(P + "a/1", b"one")
        await ds.put(P + "a/2", b"two")
        await ds.put(P + "b/1", b"three")
        await ds.put(P + "ab", b"not under a/")
        ops = [Range(P + "a/"), Put(P + "a/3", b"x"), Range(P + "b/", keys_only=True),
               Get(P + "a/1"), Get(P + "none"),
               Range(P + "none/")]
        won = await ds.txn([], ops, [])
        lost = await ds.txn([Compare(P + "a/1", "version", ">", 9)], [], ops)
        return [won, lost]

    async with connect(etcd) as real:
        got = await run(real)
        await real.delete_prefix(P)
    fake = await run(FakeDatastore())
    for res in got:
        a, b, empty = res.ranges
        assert [(kv.key, kv.value) for kv in a][:2] == [(P + "a/1", b"one"), (P + "a/2", b"two")]
        assert [(kv.key, kv.value) for kv in b] == [(P + "b/1", b"")] and empty == ()
        head, none = res.gets
        assert head is not None and none is None
        assert (head.key, head.value, head.version) == (P + "a/1", b"one", 1)
    assert [kv.key for kv in got[0].ranges[0]] == [P + "a/1", P + "a/2"]  # read before put
    assert [kv.key for kv in got[1].ranges[0]] == [P + "a/1", P + "a/2", P + "a/3"]
    # The fake answers alike (revisions differ: the real store holds other keys).
    def shape(results: list[TxnResult]) -> list[object]:
        return [(r.succeeded, [[(kv.key, kv.value, kv.version) for kv in rng]
                               for rng in r.ranges],
                 [(g.key, g.value, g.version) if g else None for g in r.gets])
                for r in results]
    assert shape(got) == shape(fake)


async def test_watch_and_compaction(etcd: EmbeddedEtcd) -> None:
    async with connect(etcd) as ds:
        r0 = await ds.revision()
        for i in range(3):
            await ds.put(P + str(i), b"v")
        await ds.delete(P + "0")
        got = []
        async for ev in ds.watch(P, r0 + 1):
            got.append((ev.type, ev.kv.key, ev.revision))
            if len(got) == 4:
                break
        assert got == [("put", P + "0", r0 + 1), ("put", P + "1", r0 + 2),
                       ("put", P + "2", r0 + 3), ("delete", P + "0", r0 + 4)]
        await ds.compact(r0 + 3)
        t0 = time.monotonic()
        with pytest.raises(CompactedError) as ei:
            async for _ in ds.watch(P, r0 + 1):
                pass
        assert ei.value.compact_revision == r0 + 3
        assert time.monotonic() - t0 < 1.0  # typed at once, not after a timeout


async def test_lease_expires_and_refresh_of_dead_lease(etcd: EmbeddedEtcd) -> None:
    async with connect(etcd) as ds:
        lease = await ds.grant_lease(1)
        await ds.put(P + "status", b"up", lease=lease)
        kv = await ds.get(P + "status")
        assert kv is not None and kv.lease == lease
        await ds.refresh_lease(lease)
        deadline = time.monotonic() + 6
        while await ds.get(P + "status") is not None:
            assert time.monotonic() < deadline, "leased key never expired"
            await asyncio.sleep(0.2)
        with pytest.raises(NotFoundError):
            await ds.refresh_lease(lease)
        lease2 = await ds.grant_lease(30)
        await ds.put(P + "s2", b"up", lease=lease2)
        await ds.revoke_lease(lease2)
        assert await ds.get(P + "s2") is None
        with pytest.raises(NotFoundError):
            await ds.revoke_lease(lease2)
        with pytest.raises(NotFoundError):
            await ds.put(P + "s3", b"up", lease=lease2)


async def test_unavailable_quickly_against_a_dead_endpoint() -> None:
    port = free_port()  # nothing listens there
    async with Datastore(EtcdConfig.from_strings(f"127.0.0.1:{port}", timeout=1.0)) as ds:
        for call in (ds.get(P + "a"), ds.put(P + "a", b"1"), ds.list(P)):
            t0 = time.monotonic()
            with pytest.raises(UnavailableError):
                await call
            assert time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        with pytest.raises(UnavailableError):
            async for _ in ds.watch(P, 1):
                pass
        assert time.monotonic() - t0 < 2.0


async def test_endpoint_forms(etcd: EmbeddedEtcd) -> None:
    port = etcd.client_port
    dead = free_port()
    for eps in (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}",
                f"127.0.0.1:{dead}, http://127.0.0.1:{port}",
                f"http://127.0.0.1:{port},127.0.0.1:{dead}"):
        async with Datastore(EtcdConfig.from_strings(eps)) as ds:
            for i in range(4):  # round robin reaches the dead one too: retried
                await ds.put(P + "ep", str(i).encode())
    cfg = EtcdConfig.from_strings(f" http://127.0.0.1:{port} ,127.0.0.2:1 ,")
    assert cfg.grpc_target() == f"ipv4:127.0.0.1:{port},127.0.0.2:1"
    assert EtcdConfig.from_strings("[::1]:2379").grpc_target() == "ipv6:[::1]:2379"
    assert EtcdConfig.from_strings("etcd.example:2379").grpc_target() == (
        "dns:///etcd.example:2379")
    assert EtcdConfig.from_strings("http://etcd").grpc_target() == "dns:///etcd:2379"
    with pytest.raises(ValueError):
        EtcdConfig.from_strings(" , ")
    # Several names: each resolved (here by a stand-in resolver, no DNS in tests) into one
    # address list of one family.
    names = {"a.example": ["10.0.0.1", "fd00::1"], "b.example": ["10.0.0.2"]}
    cfg = EtcdConfig.from_strings("a.example:1,https://b.example:2,10.0.0.3")
    assert cfg.grpc_target(lambda h, _p: names[h]) == (
        "ipv4:10.0.0.1:1,10.0.0.2:2,10.0.0.3:2379")
    with pytest.raises(ValueError, match="address family"):
        EtcdConfig.from_strings("a.example:1,[fd00::9]:2").grpc_target(lambda h, _p: ["10.0.0.1"])


async def test_endpoints_by_name(etcd: EmbeddedEtcd) -> None:
    """Host names reach etcd: one name alone, and a list with a name (localhost, which
    /etc/hosts answers) and a dead member."""
    port, dead = etcd.client_port, free_port()
    for eps in (f"http://localhost:{port}", f"localhost:{dead},http://localhost:{port}"):
        async with Datastore(EtcdConfig.from_strings(eps)) as ds:
            for i in range(3):
                await ds.put(P + "byname", str(i).encode())
            got = await ds.get(P + "byname")
            assert got is not None and got.value == b"2"
