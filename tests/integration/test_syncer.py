"""The Syncer against a real etcd: ordering across snapshot and watch, a killed stream,
compaction during a disconnect, invalid values.

The syncer's sleep is a gate the test opens, so "while the syncer is disconnected" is a
fact of the test, not a timing guess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from datastore.client import Datastore, EtcdConfig, Page
from datastore.embedded import EmbeddedEtcd
from datastore.syncer import (
    ConfigError,
    ConnectionState,
    Deleted,
    InSync,
    Syncer,
    SyncEvent,
    Update,
)

P = "/l3fabric/v1/config/"

Ev = SyncEvent[dict[str, Any]]


def decode(key: str, raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)  # JSONDecodeError is a ValueError
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def j(**kw: Any) -> bytes:
    return json.dumps(kw).encode()


class Gate:
    """An injectable sleep that returns only once the test opens the gate."""

    def __init__(self, open_: bool = True) -> None:
        self.event = asyncio.Event()
        if open_:
            self.event.set()
        self.calls = 0

    async def __call__(self, _delay: float) -> None:
        self.calls += 1
        await self.event.wait()


def connect(etcd: EmbeddedEtcd) -> Datastore:
    return Datastore(EtcdConfig.from_strings(etcd.endpoint, timeout=2.0))


def kill_and_restart(etcd: EmbeddedEtcd) -> None:
    """SIGKILL the member (its streams die with it) and start it on the same data dir."""
    assert etcd.proc is not None
    os.killpg(etcd.proc.pid, signal.SIGKILL)
    etcd.proc.wait()
    etcd.proc = None
    etcd.start()


async def nxt(it: AsyncIterator[Ev], timeout: float = 10.0) -> Ev:
    return await asyncio.wait_for(anext(it), timeout)


async def until(it: AsyncIterator[Ev], pred: Any, timeout: float = 10.0) -> list[Ev]:
    out: list[Ev] = []
    deadline = time.monotonic() + timeout
    while True:
        ev = await nxt(it, max(0.1, deadline - time.monotonic()))
        out.append(ev)
        if pred(ev):
            return out


async def content(ds: Datastore) -> dict[str, dict[str, Any]]:
    kvs, _ = await ds.list(P)
    return {kv.key: decode(kv.key, kv.value) for kv in kvs}


async def test_writes_during_snapshot_are_seen_once_in_revision_order(
        etcd: EmbeddedEtcd) -> None:
    async with connect(etcd) as ds, connect(etcd) as writer_ds:
        for i in range(300):  # a snapshot big enough to take a while
            await ds.put(P + f"pre/{i:04d}", j(i=i))
        n = 400
        written: dict[str, int] = {}

        async def writer() -> None:
            for i in range(n):
                key = P + f"live/{i:04d}"
                written[key] = await writer_ds.put(key, j(i=i))

        syncer: Syncer[dict[str, Any]] = Syncer(ds, P, decode)
        it = syncer.events()
        task = asyncio.ensure_future(writer())
        try:
            await asyncio.sleep(0.02)  # let some writes race the snapshot
            evs = await until(it, lambda e: isinstance(e, InSync))
            snap_rev = evs[-1].revision  # type: ignore[union-attr]
            snap = [e for e in evs if isinstance(e, Update)]
            await task
            live_left = {k for k, r in written.items() if r > snap_rev}
            watched: list[Update[dict[str, Any]]] = []
            while live_left - {e.key for e in watched}:
                ev = await nxt(it)
                assert isinstance(ev, Update), ev
                watched.append(ev)
        finally:
            task.cancel()
            await it.aclose()  # type: ignore[attr-defined]
        live_in_snap = [e for e in snap if "/live/" in e.key]
        assert all(e.revision <= snap_rev for e in snap)
        assert all(e.revision > snap_rev for e in watched)
        revs = [e.revision for e in watched]
        assert revs == sorted(revs) and len(set(revs)) == len(revs)  # order, no duplicate
        seen = [e.key for e in live_in_snap] + [e.key for e in watched]
        assert sorted(seen) == sorted(written) and len(seen) == n  # each exactly once
        assert all(written[e.key] == e.revision for e in live_in_snap + watched)
        assert 0 < len(live_in_snap) < n, "no write raced the snapshot; test proves little"
        assert syncer.current == await content(ds)


ROOT = "/l3fabric/v1/"


class BetweenPages(Datastore):
    """A real client that runs ``after_page`` after each page of a snapshot it reads, so
    that etcd changes between the pages as a fact of the test."""

    def __init__(self, config: EtcdConfig, after_page: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self.after_page = after_page
        self.pages = 0

    async def list_page(self, prefix: str, start: str = "", revision: int = 0,
                        limit: int = 0) -> Page:
        page = await super().list_page(prefix, start, revision, limit)
        self.pages += 1
        await self.after_page()
        return page


async def test_paged_snapshot_of_sub_prefixes_with_writes_during_it(
        etcd: EmbeddedEtcd) -> None:
    """Sub-prefixes read in pages much smaller than them while keys change, are created
    and deleted: the snapshot is etcd's state at one revision, the watch follows it with
    every later write once, and the prefix left out (status churn) is never seen."""
    wanted = ("config/", "workloads/")
    written: dict[str, int] = {}  # key -> revision of its last write (0: deleted)
    step = 0

    async def writes() -> None:
        """Four writes (an update, a create, a status rewrite, a delete) per call."""
        nonlocal step
        if step < 300:
            i, step = step, step + 1
            sub = wanted[i % 2]
            key = ROOT + f"{sub}k{(i * 7) % 300:04d}"
            written[key] = await writer_ds.put(key, j(i=-i))
            written[ROOT + f"{sub}new{i:04d}"] = await writer_ds.put(
                ROOT + f"{sub}new{i:04d}", j(i=i))
            await writer_ds.put(ROOT + f"status/nodes/k{i:04d}", j(i=-i))
            gone = ROOT + f"{sub}k{(i * 11 + 5) % 300:04d}"
            if await writer_ds.delete(gone):
                written[gone] = 0

    async def writer() -> None:
        while step < 300:
            await writes()

    cfg = EtcdConfig.from_strings(etcd.endpoint, timeout=2.0)
    async with BetweenPages(cfg, writes) as ds, connect(etcd) as writer_ds:
        for i in range(300):
            for sub in (*wanted, "status/nodes/"):
                await ds.put(ROOT + f"{sub}k{i:04d}", j(i=i))
        syncer: Syncer[dict[str, Any]] = Syncer(ds, ROOT, decode, prefixes=wanted,
                                                page_size=25)
        it = syncer.events()
        try:
            evs = await until(it, lambda e: isinstance(e, InSync))
            snap_rev = evs[-1].revision  # type: ignore[union-attr]
            snap = {e.key: e.value for e in evs if isinstance(e, Update)}
            async with connect(etcd) as at:
                expected = {}
                for sub in wanted:
                    kvs = []
                    start = ""
                    while True:  # etcd's own state at snap_rev
                        page = await at.list_page(ROOT + sub, start, snap_rev, 1000)
                        kvs += page.kvs
                        if not page.more:
                            break
                        start = page.kvs[-1].key + "\0"
                    expected.update({kv.key: decode(kv.key, kv.value) for kv in kvs})
            assert snap == expected
            assert ds.pages >= 2 * 300 // 25 and step == ds.pages  # writes between pages
            task = asyncio.ensure_future(writer())  # and while the watch starts
            await task
            after = {k: r for k, r in written.items() if r > snap_rev}
            watched: list[Ev] = []
            final = await content_of(ds, wanted)
            while syncer.current != final:
                watched.append(await nxt(it))
        finally:
            await it.aclose()  # type: ignore[attr-defined]
    ups = [e for e in watched if isinstance(e, Update)]
    assert all(e.revision > snap_rev for e in ups)
    assert all("/status/" not in e.key for e in ups)  # type: ignore[union-attr]
    revs = [e.revision for e in ups]
    assert len(set(revs)) == len(revs)  # nothing doubled
    for k, r in after.items():  # nothing lost: each later write arrived with its revision
        assert [e.revision for e in ups if e.key == k][-1] == r
    assert watched, "no write came after the snapshot; the test proves little"
    assert syncer.current == final


async def test_snapshot_starts_again_when_its_revision_is_compacted(
        etcd: EmbeddedEtcd) -> None:
    async def compact_once() -> None:
        if ds.pages == 1:
            await ds.put(ROOT + "config/moved-on", j())
            await ds.compact(await ds.revision())

    ds = BetweenPages(EtcdConfig.from_strings(etcd.endpoint, timeout=2.0), compact_once)
    try:
        for i in range(60):
            await ds.put(ROOT + f"config/k{i:03d}", j(i=i))
        syncer: Syncer[dict[str, Any]] = Syncer(ds, ROOT, decode, prefixes=("config/",),
                                                page_size=25)
        it = syncer.events()
        try:
            evs = await until(it, lambda e: isinstance(e, InSync))
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        assert ds.pages > 1 + 60 // 25  # the first try's page, then a whole snapshot
        assert not [e for e in evs if isinstance(e, ConnectionState) and not e.up]
        assert syncer.current == await content_of(ds, ("config/",))
        assert len(syncer.current) == 61
    finally:
        await ds.close()


async def content_of(ds: Datastore, subs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for sub in subs:
        kvs, _ = await ds.list(ROOT + sub)
        out.update({kv.key: decode(kv.key, kv.value) for kv in kvs})
    return out


async def test_killed_stream_rewatches_without_loss_or_duplicate(etcd: EmbeddedEtcd) -> None:
    gate = Gate(open_=False)
    ds = connect(etcd)
    syncer: Syncer[dict[str, Any]] = Syncer(ds, P, decode, sleep=gate)
    it = syncer.events()
    try:
        await ds.put(P + "a", j(v=0))
        await until(it, lambda e: isinstance(e, InSync))
        r = await ds.put(P + "a", j(v=1))
        assert await nxt(it) == Update(P + "a", {"v": 1}, r)

        t0 = time.monotonic()
        kill_and_restart(etcd)
        down = await nxt(it)
        assert isinstance(down, ConnectionState) and not down.up
        # The syncer now waits (its backoff sleep); write while it is away.
        async with connect(etcd) as w:
            revs = [await w.put(P + "a", j(v=v)) for v in (2, 3)]
            revs.append(await w.put(P + "b", j(v=9)))
            revs.append(await w.delete(P + "a") and await w.revision())
        gate.event.set()
        evs = await until(it, lambda e: isinstance(e, Deleted))
        gap = time.monotonic() - t0
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await ds.close()
    assert evs == [ConnectionState(True, f"re-watching from {r + 1}"),
                   Update(P + "a", {"v": 2}, revs[0]), Update(P + "a", {"v": 3}, revs[1]),
                   Update(P + "b", {"v": 9}, revs[2]), Deleted(P + "a", revs[3])]
    assert syncer.resyncs == 1  # a re-watch, not a resync
    assert syncer.current == {P + "b": {"v": 9}}
    print(f"\nkill+restart+catch-up took {gap:.2f}s")


async def test_compaction_while_disconnected_resyncs_only_differences(
        etcd: EmbeddedEtcd) -> None:
    gate = Gate(open_=False)
    ds = connect(etcd)
    syncer: Syncer[dict[str, Any]] = Syncer(ds, P, decode, sleep=gate)
    it = syncer.events()
    try:
        for k in "abcd":
            await ds.put(P + k, j(v=k))
        first = await until(it, lambda e: isinstance(e, InSync))
        assert len([e for e in first if isinstance(e, Update)]) == 4
        r = await ds.put(P + "d", j(v="D"))  # proves the watch stream is established
        assert await nxt(it) == Update(P + "d", {"v": "D"}, r)

        kill_and_restart(etcd)
        down = await nxt(it)
        assert isinstance(down, ConnectionState) and not down.up
        async with connect(etcd) as w:
            ra = await w.put(P + "a", j(v="A"))
            await w.put(P + "b", j(v="b"))  # same content: no event expected
            await w.delete(P + "c")
            re = await w.put(P + "e", j(v="e"))
            await w.put(P + "tmp", j())
            await w.delete(P + "tmp")  # born and gone in the gap: never reported
            rev = await w.revision()
            await w.compact(rev)
        gate.event.set()
        evs = await until(it, lambda e: isinstance(e, InSync))
        assert [e for e in evs if not isinstance(e, ConnectionState)] == [
            Update(P + "a", {"v": "A"}, ra), Update(P + "e", {"v": "e"}, re),
            Deleted(P + "c", rev), InSync(rev)]
        assert syncer.resyncs == 2
        assert syncer.current == await content(ds)
        assert set(syncer.current) == {P + "a", P + "b", P + "d", P + "e"}
        # And the watch continues after the resync.
        r = await ds.put(P + "f", j())
        assert await nxt(it) == Update(P + "f", {}, r)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await ds.close()


async def test_invalid_value_keeps_last_good_until_fixed(etcd: EmbeddedEtcd) -> None:
    async with connect(etcd) as ds:
        syncer: Syncer[dict[str, Any]] = Syncer(ds, P, decode)
        it = syncer.events()
        try:
            await ds.put(P + "pool", j(cidr="10.0.0.0/16"))
            await until(it, lambda e: isinstance(e, InSync))
            r = await ds.put(P + "pool", b"{not json")
            ev = await nxt(it)
            assert isinstance(ev, ConfigError) and ev.key == P + "pool" and ev.revision == r
            assert "Expecting property name" in ev.error
            assert syncer.current[P + "pool"] == {"cidr": "10.0.0.0/16"}
            assert syncer.errors == {P + "pool": ev.error}
            r = await ds.put(P + "pool", j(cidr="10.1.0.0/16"))
            assert await nxt(it) == Update(P + "pool", {"cidr": "10.1.0.0/16"}, r)
            assert syncer.errors == {}
        finally:
            await it.aclose()  # type: ignore[attr-defined]


async def test_throughput(etcd: EmbeddedEtcd) -> None:
    """Figures for the report: snapshot of N keys, and watch throughput under
    concurrent writes (many requests in flight)."""
    n = 2000
    async with connect(etcd) as ds:
        sem = asyncio.Semaphore(64)

        async def put(i: int, tag: str) -> None:
            async with sem:
                await ds.put(P + f"{tag}/{i:05d}", j(i=i, pad="x" * 200))

        await asyncio.gather(*(put(i, "snap") for i in range(n)))
        syncer: Syncer[dict[str, Any]] = Syncer(ds, P, decode)
        it = syncer.events()
        try:
            t0 = time.monotonic()
            await until(it, lambda e: isinstance(e, InSync))
            t_snap = time.monotonic() - t0
            t0 = time.monotonic()
            writes = asyncio.ensure_future(asyncio.gather(*(put(i, "w") for i in range(n))))
            got = 0
            while got < n:
                ev = await nxt(it)
                got += isinstance(ev, Update)
            t_watch = time.monotonic() - t0
            await writes
        finally:
            await it.aclose()  # type: ignore[attr-defined]
    print(f"\nsnapshot of {n} keys: {t_snap * 1000:.0f} ms; "
          f"{n} concurrent writes seen through the watch in {t_watch:.2f}s "
          f"({n / t_watch:.0f} events/s, write-bound)")
    assert len(syncer.current) == 2 * n
