"""FakeDatastore behaves like etcd where unit tests rely on it: revisions, compares,
watches, compaction, leases."""

from __future__ import annotations

import asyncio

import pytest

from datastore.client import (
    CompactedError,
    Compare,
    ConflictError,
    Delete,
    Get,
    NotFoundError,
    Put,
    UnavailableError,
    WatchEvent,
)
from datastore.fake import FakeDatastore


async def test_revisions_and_versions() -> None:
    ds = FakeDatastore()
    assert await ds.revision() == 1
    r1 = await ds.put("/a", b"1")
    r2 = await ds.put("/a", b"2")
    assert (r1, r2) == (2, 3)
    kv = await ds.get("/a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 3, 2)
    assert await ds.delete("/missing") is False
    assert await ds.revision() == 3  # a no-op delete does not bump the revision
    res = await ds.txn([], [Get("/a")])
    assert res.revision == 3 and res.gets[0] == kv
    assert await ds.delete("/a") is True
    await ds.put("/a", b"3")
    kv = await ds.get("/a")
    assert kv is not None and (kv.create_revision, kv.version) == (5, 1)
    kvs, rev = await ds.list("/")
    assert [k.key for k in kvs] == ["/a"] and rev == 5


async def test_txn_compares_like_etcd() -> None:
    ds = FakeDatastore()
    assert not (await ds.txn([Compare("/x", "value", "==", b"")], [Put("/y", b"")])).succeeded
    assert (await ds.txn([Compare("/x", "mod", "==", 0)], [Put("/x", b"v")])).succeeded
    res = await ds.txn([Compare("/x", "value", "==", b"other")], [Delete("/x")],
                       [Get("/x"), Put("/z", b"1"), Put("/w", b"2")])
    assert not res.succeeded and res.gets[0] is not None and res.revision == 3
    with pytest.raises(ConflictError):
        await ds.create("/x", b"again")
    with pytest.raises(ConflictError):
        await ds.update("/x", b"new", 1)
    assert (await ds.txn([Compare("/x", "version", ">", 0)], [])).succeeded


async def test_watch_replays_follows_and_compacts() -> None:
    ds = FakeDatastore()
    for i in range(5):
        await ds.put(f"/p/{i}", b"x")
    await ds.put("/q", b"not watched")
    seen: list[WatchEvent] = []

    async def consume() -> None:
        async for ev in ds.watch("/p/", 4):
            seen.append(ev)
            if len(seen) == 4:
                return

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    await ds.delete("/p/0")
    await asyncio.wait_for(task, 1)
    assert [(e.type, e.kv.key, e.revision) for e in seen] == [
        ("put", "/p/2", 4), ("put", "/p/3", 5), ("put", "/p/4", 6), ("delete", "/p/0", 8)]
    await ds.compact(7)
    with pytest.raises(CompactedError):
        async for _ in ds.watch("/p/", 6):
            pass
    with pytest.raises(UnavailableError):
        it = ds.watch("/p/", 7)
        first = await anext(it)
        assert first.revision == 8
        ds.break_watches()
        await anext(it)


async def test_leases_expire_with_the_injected_clock() -> None:
    t = [0.0]
    ds = FakeDatastore(now=lambda: t[0])
    lease = await ds.grant_lease(5)
    await ds.put("/status", b"up", lease=lease)
    t[0] = 4.0
    await ds.refresh_lease(lease)
    t[0] = 8.0
    assert await ds.get("/status") is not None
    t[0] = 9.5
    assert await ds.get("/status") is None
    with pytest.raises(NotFoundError):
        await ds.refresh_lease(lease)
    with pytest.raises(Exception, match="lease not found"):
        await ds.put("/status", b"up", lease=lease)
