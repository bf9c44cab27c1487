"""The syncer against the in-memory FakeDatastore: ordering, recovery, invalid values.

Nothing here sleeps: time and sleeping go through `FakeClock`, and each test pulls the
exact events it expects (plus a sentinel write to prove that nothing extra came).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from datastore.client import Compare, Delete, Page, Put
from datastore.fake import FakeDatastore
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


class FakeClock:
    """now() and sleep() for the syncer. In auto mode a sleep advances time at once (and
    runs the actions scheduled up to then); otherwise it waits for `advance`."""

    def __init__(self, auto: bool = True) -> None:
        self.t = 0.0
        self.auto = auto
        self.sleeps: list[float] = []
        self._actions: list[tuple[float, Callable[[], None]]] = []
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    def at(self, t: float, action: Callable[[], None]) -> None:
        self._actions.append((t, action))

    def advance(self, d: float) -> None:
        self.t += d
        for item in [a for a in self._actions if a[0] <= self.t]:
            self._actions.remove(item)
            item[1]()
        for w in [w for w in self._waiters if w[0] <= self.t]:
            self._waiters.remove(w)
            if not w[1].done():
                w[1].set_result(None)

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        if self.auto:
            self.advance(d)
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self.t + d, fut))
        await fut


def decode(key: str, raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg}") from e
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def j(**kw: Any) -> bytes:
    return json.dumps(kw).encode()


def make(fake: FakeDatastore, clock: FakeClock | None = None,
         **kw: Any) -> tuple[Syncer[dict[str, Any]], AsyncIterator[SyncEvent[dict[str, Any]]]]:
    clock = clock or FakeClock()
    s: Syncer[dict[str, Any]] = Syncer(fake, P, decode, now=clock.now, sleep=clock.sleep,
                                       rand=lambda: 0.5, **kw)
    return s, s.events()


async def take(it: AsyncIterator[SyncEvent[Any]], n: int) -> list[SyncEvent[Any]]:
    return [await asyncio.wait_for(anext(it), 2) for _ in range(n)]


async def until(it: AsyncIterator[SyncEvent[Any]],
                pred: Callable[[SyncEvent[Any]], bool]) -> list[SyncEvent[Any]]:
    """Every event up to and including the first one matching ``pred``."""
    out: list[SyncEvent[Any]] = []
    for _ in range(10_000):
        ev = await asyncio.wait_for(anext(it), 2)
        out.append(ev)
        if pred(ev):
            return out
    raise AssertionError("predicate never matched")


async def sentinel(fake: FakeDatastore, it: AsyncIterator[SyncEvent[Any]],
                   n: int = 0) -> list[SyncEvent[Any]]:
    """Write a marker key and return every event before its Update (proves no extras)."""
    key = P + f"zz-sentinel-{n}"
    await fake.put(key, j(n=n))
    evs = await until(it, lambda e: isinstance(e, Update) and e.key == key)
    return evs[:-1]


def content(fake: FakeDatastore) -> dict[str, Any]:
    out = {}
    for k, v in fake.snapshot().items():
        with contextlib.suppress(ValueError):
            out[k] = decode(k, v)
    return out


async def test_snapshot_then_watch_in_order() -> None:
    fake = FakeDatastore()
    await fake.put(P + "b", j(v=2))
    await fake.put(P + "a", j(v=1))
    await fake.put("/other/x", j(v=9))
    s, it = make(fake)
    evs = await take(it, 4)
    r = await fake.revision()
    assert evs == [ConnectionState(True, f"snapshot at revision {r}"),
                   Update(P + "a", {"v": 1}, 3), Update(P + "b", {"v": 2}, 2), InSync(r)]
    assert s.in_sync and s.revision == r

    await fake.put(P + "a", j(v=10))
    await fake.delete(P + "b")
    await fake.delete(P + "never-existed")  # no revision, no event
    await fake.txn([Compare(P + "c", "create", "==", 0)],
                   [Put(P + "c", j(v=3)), Put(P + "d", j(v=4))])
    evs = await take(it, 4)
    assert evs == [Update(P + "a", {"v": 10}, r + 1), Deleted(P + "b", r + 2),
                   Update(P + "c", {"v": 3}, r + 3), Update(P + "d", {"v": 4}, r + 3)]
    assert s.current == {P + "a": {"v": 10}, P + "c": {"v": 3}, P + "d": {"v": 4}}
    assert await sentinel(fake, it) == []
    await it.aclose()  # type: ignore[attr-defined]


async def test_an_update_says_whether_the_decoded_value_changed() -> None:
    """A key rewritten with equal content (or a change its decoder drops) still gives an
    Update - watchers see every write - but marked ``changed=False``."""
    fake = FakeDatastore()
    await fake.put(P + "a", j(v=1))
    _, it = make(fake)
    await until(it, lambda e: isinstance(e, InSync))
    await fake.put(P + "a", j(v=1))  # same content
    await fake.put(P + "a", b'{"v": 1}')  # same decoded value, other bytes
    await fake.put(P + "a", j(v=2))
    await fake.put(P + "b", j(v=2))  # a new key
    evs = await take(it, 4)
    assert [(e.key, e.value, e.changed) for e in evs if isinstance(e, Update)] == [
        (P + "a", {"v": 1}, False), (P + "a", {"v": 1}, False), (P + "a", {"v": 2}, True),
        (P + "b", {"v": 2}, True)]
    await it.aclose()  # type: ignore[attr-defined]


async def test_an_own_write_is_applied_at_once_and_its_echo_changes_nothing() -> None:
    """`observe_write`: the writer's own committed write is an event now; the watch's echo
    of it is an unchanged Update; a revision the watch has already brought is ignored,
    and an older event still on its way is replaced by the echo, as in etcd."""
    fake = FakeDatastore()
    await fake.put(P + "a", j(v=1))
    s, it = make(fake)
    await until(it, lambda e: isinstance(e, InSync))

    res = await fake.txn([], [Put(P + "a", j(v=2)), Put(P + "n", j(v=5))])
    assert s.observe_write(P + "a", j(v=2), res.revision) == [
        Update(P + "a", {"v": 2}, res.revision)]
    assert s.observe_write(P + "n", j(v=5), res.revision) == [
        Update(P + "n", {"v": 5}, res.revision)]
    assert s.current == {P + "a": {"v": 2}, P + "n": {"v": 5}}
    assert s.observe_write(P + "a", j(v=2), res.revision) == []  # told twice: once
    assert s.observe_write("/other/x", j(v=1), res.revision + 1) == []  # not mirrored
    echoes = await take(it, 2)
    assert [(e.key, e.changed) for e in echoes if isinstance(e, Update)] == [
        (P + "a", False), (P + "n", False)]

    # The watch is past this revision already: nothing (the mirror holds the newer one).
    await fake.put(P + "a", j(v=3))
    await take(it, 1)
    assert s.observe_write(P + "a", j(v=2), res.revision) == []
    assert s.current[P + "a"] == {"v": 3}

    # Someone else's write, not yet watched, then ours: ours now, theirs when it comes,
    # ours again at its echo.
    await fake.put(P + "a", j(v=4))
    res = await fake.txn([], [Delete(P + "n"), Put(P + "a", j(v=6))])
    assert s.observe_write(P + "n", None, res.revision) == [Deleted(P + "n", res.revision)]
    assert s.observe_write(P + "a", j(v=6), res.revision) == [
        Update(P + "a", {"v": 6}, res.revision)]
    evs = await take(it, 2)  # the delete's echo finds nothing left to delete
    assert [(e.key, e.value) for e in evs if isinstance(e, Update)] == [
        (P + "a", {"v": 4}), (P + "a", {"v": 6})]
    assert s.current == {P + "a": {"v": 6}}
    assert await sentinel(fake, it) == []
    await it.aclose()  # type: ignore[attr-defined]


async def test_invalid_value_keeps_last_good_and_clears() -> None:
    fake = FakeDatastore()
    await fake.put(P + "pool", j(cidr="10.0.0.0/16"))
    await fake.put(P + "bad", b"{not json")
    s, it = make(fake)
    evs = await until(it, lambda e: isinstance(e, InSync))
    assert ConfigError(P + "bad", "not JSON: Expecting property name enclosed in double "
                       "quotes", 3) in evs
    assert P + "bad" not in s.current and P + "bad" in s.errors

    rev = await fake.put(P + "pool", b"{not json")
    assert await take(it, 1) == [ConfigError(P + "pool", s.errors[P + "pool"], rev)]
    assert s.current[P + "pool"] == {"cidr": "10.0.0.0/16"}  # last good value stays
    rev = await fake.put(P + "pool", b"[1, 2]")
    assert await take(it, 1) == [ConfigError(P + "pool", "not a JSON object", rev)]
    rev = await fake.put(P + "pool", j(cidr="10.1.0.0/16"))
    assert await take(it, 1) == [Update(P + "pool", {"cidr": "10.1.0.0/16"}, rev)]
    assert P + "pool" not in s.errors

    # A delete of a key that only ever had invalid values clears its error.
    rev = await fake.put(P + "bad", b"{still not json")
    assert isinstance((await take(it, 1))[0], ConfigError)
    rev = (await fake.txn([], [Put(P + "x", j())])).revision
    await take(it, 1)
    await fake.delete(P + "bad")
    assert await take(it, 1) == [Deleted(P + "bad", rev + 1)]
    assert s.errors == {}
    await it.aclose()  # type: ignore[attr-defined]


async def test_decoder_bug_is_a_config_error_not_a_crash() -> None:
    fake = FakeDatastore()
    await fake.put(P + "k", j(v=1))

    def broken(key: str, raw: bytes) -> dict[str, Any]:
        return {"v": json.loads(raw)["missing"]}

    clock = FakeClock()
    s: Syncer[dict[str, Any]] = Syncer(fake, P, broken, now=clock.now, sleep=clock.sleep)
    it = s.events()
    evs = await take(it, 3)
    assert isinstance(evs[1], ConfigError) and "KeyError" in evs[1].error
    await it.aclose()  # type: ignore[attr-defined]


async def test_broken_watch_rewatches_without_loss_or_duplicate() -> None:
    fake = FakeDatastore()
    await fake.put(P + "a", j(v=0))
    clock = FakeClock()
    s, it = make(fake, clock)
    await until(it, lambda e: isinstance(e, InSync))
    await fake.put(P + "a", j(v=1))
    assert await take(it, 1) == [Update(P + "a", {"v": 1}, 3)]

    # The member dies; it is down for a while; writes land meanwhile (elsewhere).
    fake.set_available(False)
    clock.at(1.0, lambda: fake.set_available(True))
    writes: list[int] = []

    def write_during_gap() -> None:
        fake._available = True  # write "through another member"
        for i in range(2, 5):
            fake._commit([Put(P + "a", j(v=i))])
            writes.append(fake._rev)
        fake._commit([Put(P + "gone", j())])
        fake._commit([Put(P + "gone", j()), Put(P + "b", j())])  # one revision, two keys
        fake._available = False

    clock.at(0.5, write_during_gap)
    evs = await until(it, lambda e: isinstance(e, Update) and e.key == P + "b")
    assert evs[0] == ConnectionState(False, "watch broken: fake etcd is down")
    assert evs[1].__class__ is ConnectionState and evs[1].up  # type: ignore[union-attr]
    assert [e for e in evs if isinstance(e, Update) and e.key == P + "a"] == [
        Update(P + "a", {"v": i}, rev) for i, rev in zip(range(2, 5), writes, strict=True)]
    assert [e.key for e in evs if isinstance(e, Update)][-2:] == [P + "gone", P + "b"]
    assert await sentinel(fake, it) == []
    assert s.resyncs == 1  # no full resync was needed
    assert clock.sleeps and all(d <= 5.0 for d in clock.sleeps)
    await it.aclose()  # type: ignore[attr-defined]


async def test_compaction_during_gap_resyncs_with_only_differences() -> None:
    fake = FakeDatastore()
    for k in "abcd":
        await fake.put(P + k, j(v=k))
    clock = FakeClock()
    s, it = make(fake, clock)
    await until(it, lambda e: isinstance(e, InSync))

    fake.set_available(False)

    async def gap() -> None:
        fake.set_available(True)
        await fake.put(P + "a", j(v="A"))      # changed
        await fake.put(P + "b", j(v="b"))      # re-written, same content
        await fake.delete(P + "c")             # deleted in the gap
        await fake.put(P + "e", j(v="e"))      # new
        await fake.put(P + "e2", j(v="e2"))
        await fake.delete(P + "e2")            # born and died in the gap: never seen
        await fake.put(P + "f", b"{not json")  # new and invalid
        await fake.compact(await fake.revision())

    clock.at(1.0, lambda: asyncio.ensure_future(gap()))
    evs = await until(it, lambda e: isinstance(e, InSync))
    r = await fake.revision()
    body = [e for e in evs if not isinstance(e, ConnectionState)]
    assert body == [Update(P + "a", {"v": "A"}, r - 6),
                    Update(P + "e", {"v": "e"}, r - 3),
                    ConfigError(P + "f", s.errors[P + "f"], r),
                    Deleted(P + "c", r),
                    InSync(r)]
    assert s.current == content(fake)
    assert s.resyncs == 2
    assert await sentinel(fake, it) == []
    await it.aclose()  # type: ignore[attr-defined]


async def test_initial_snapshot_retries_until_etcd_answers() -> None:
    fake = FakeDatastore()
    await fake.put(P + "a", j())
    fake.set_available(False)
    clock = FakeClock()
    clock.at(3.0, lambda: fake.set_available(True))
    _s, it = make(fake, clock)
    evs = await until(it, lambda e: isinstance(e, InSync))
    assert evs[0] == ConnectionState(False, "snapshot failed: fake etcd is down")
    assert isinstance(evs[1], ConnectionState) and evs[1].up
    assert evs[2] == Update(P + "a", {}, 2)
    assert clock.t >= 3.0 and len(clock.sleeps) >= 3
    # Backoff grows, bounded by the maximum.
    assert clock.sleeps == sorted(clock.sleeps)
    await it.aclose()  # type: ignore[attr-defined]


async def test_periodic_resync_with_jitter_emits_nothing_when_unchanged() -> None:
    fake = FakeDatastore()
    await fake.put(P + "a", j(v=1))
    await fake.put(P + "bad", b"{")
    clock = FakeClock(auto=False)
    s, it = make(fake, clock, resync_interval=60.0)
    await until(it, lambda e: isinstance(e, InSync))
    await fake.put(P + "a", j(v=2))
    assert await take(it, 1) == [Update(P + "a", {"v": 2}, 4)]

    pending = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0)
    clock.advance(59.0)  # rand=0.5 -> exactly the interval: not yet
    await asyncio.sleep(0)
    assert not pending.done()
    clock.advance(1.0)
    ev = await asyncio.wait_for(pending, 2)
    assert ev == InSync(4)  # the invalid key is not reported again, nothing changed
    assert s.resyncs == 2
    assert await sentinel(fake, it) == []
    await it.aclose()  # type: ignore[attr-defined]


async def test_consumer_close_cancels_the_watch() -> None:
    fake = FakeDatastore()
    _s, it = make(fake, FakeClock(auto=False), resync_interval=10.0)
    await until(it, lambda e: isinstance(e, InSync))
    t = asyncio.ensure_future(anext(it))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(fake._watchers) == 1
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    await it.aclose()  # type: ignore[attr-defined]
    assert fake._watchers == []


# Sub-prefixes of P the random history mirrors in its second run (the sentinel's included).
SOME = ("a", "c", "e", "g", "q", "zz")


@pytest.mark.parametrize("prefixes", [None, SOME], ids=["whole", "sub-prefixes"])
@pytest.mark.parametrize("seed", range(8))
async def test_random_history_with_faults_converges(
        seed: int, prefixes: tuple[str, ...] | None) -> None:
    """Random writes, invalid values, broken watches and compactions: the syncer's view
    always ends equal to the store (the mirrored part of it), and watch-delivered
    revisions never go backwards within one sub-prefix."""
    rnd = random.Random(seed)
    fake = FakeDatastore()
    clock = FakeClock()
    s, it = make(fake, clock, prefixes=prefixes, page_size=2)
    mirrored: Callable[[str], bool] = (
        (lambda k: True) if prefixes is None
        else (lambda k: k[len(P):].startswith(prefixes)))  # type: ignore[arg-type]
    await until(it, lambda e: isinstance(e, InSync))
    last: dict[str, int] = {}
    for step in range(60):
        action = rnd.random()
        key = P + rnd.choice("abcdefg")
        if action < 0.55:
            await fake.put(key, j(v=step) if rnd.random() < 0.85 else b"{bad")
        elif action < 0.75:
            await fake.delete(key)
        elif action < 0.85:
            fake.break_watches()
        elif action < 0.92:
            fake.set_available(False)

            async def back() -> None:
                fake.set_available(True)
                await fake.put(P + "q", j(v=rnd.random()))
                if rnd.random() < 0.5:
                    await fake.compact(await fake.revision())

            clock.at(clock.t + 0.5, lambda: asyncio.ensure_future(back()))
            await until(it, lambda e: isinstance(e, ConnectionState) and e.up)
        else:
            await fake.compact(await fake.revision())
        for ev in await sentinel(fake, it, step):
            if isinstance(ev, Update | ConfigError):
                assert mirrored(ev.key)
                sub = ev.key[:len(P) + 1]
                assert ev.revision >= last.get(sub, 0) or s.resyncs > 1
                last[sub] = ev.revision
        # Valid keys match the store; keys whose raw value is invalid are in errors and
        # keep whatever good value they had; vanished keys are gone from both maps.
        raw = {k: v for k, v in fake.snapshot().items() if mirrored(k)}
        valid = {k: v for k, v in content(fake).items() if mirrored(k)}
        assert {k: v for k, v in s.current.items() if k in valid} == valid
        assert set(s.errors) == set(raw) - set(valid)
        assert set(s.current) <= set(raw)
    await it.aclose()  # type: ignore[attr-defined]


ROOT = "/l3fabric/v1/"


class BetweenPages(FakeDatastore):
    """Runs ``after_page`` after each snapshot page it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.after_page: Callable[[], Awaitable[None]] | None = None
        self.pages = 0

    async def list_page(self, prefix: str, start: str = "", revision: int = 0,
                        limit: int = 0) -> Page:
        page = await super().list_page(prefix, start, revision, limit)
        self.pages += 1
        if self.after_page is not None:
            await self.after_page()
        return page


async def test_paged_snapshot_of_sub_prefixes_is_one_revision_then_watched() -> None:
    fake = BetweenPages()
    for i in range(10):
        for sub in ("config/", "status/", "workloads/"):
            await fake.put(ROOT + f"{sub}k{i}", j(i=i))
    before = {k: decode(k, v) for k, v in fake.snapshot().items() if "/status/" not in k}
    n = 0

    async def churn() -> None:  # an update, a create, a delete and a status rewrite
        nonlocal n
        n += 1
        await fake.put(ROOT + f"config/k{n % 10}", j(i=-n))
        await fake.put(ROOT + f"workloads/new{n}", j(i=n))
        await fake.delete(ROOT + f"workloads/k{n % 10}")
        await fake.put(ROOT + f"status/k{n % 10}", j(i=-n))

    fake.after_page = churn
    clock = FakeClock()
    s: Syncer[dict[str, Any]] = Syncer(fake, ROOT, decode, prefixes=("workloads/", "config/"),
                                       page_size=3, now=clock.now, sleep=clock.sleep)
    it = s.events()
    evs = await until(it, lambda e: isinstance(e, InSync))
    fake.after_page = None
    assert fake.pages == 8 and n == 8  # 4 pages of each sub-prefix, churn after each
    r = 1 + 30  # the first page's revision: the 30 writes before the snapshot
    assert evs[-1] == InSync(r) and s.revision == r
    assert {e.key: e.value for e in evs if isinstance(e, Update)} == before
    assert s.applied == {ROOT + "config/": r, ROOT + "workloads/": r}
    # The watch replays every change since, in order within each sub-prefix, and
    # nothing under status/.
    later = await take(it, 3 * 8)
    assert all("/status/" not in e.key for e in later)  # type: ignore[union-attr]
    assert sorted(e.revision for e in later) == [  # type: ignore[union-attr]
        r + 4 * (c - 1) + k for c in range(1, 9) for k in (1, 2, 3)]
    for sub in ("/config/", "/workloads/"):
        revs = [e.revision for e in later if sub in e.key]  # type: ignore[union-attr]
        assert revs == sorted(revs)
    last = r + 4 * 8  # the eighth churn's status rewrite
    await fake.put(ROOT + "status/k0", j())
    await fake.put(ROOT + "config/zz", j())
    assert await take(it, 1) == [Update(ROOT + "config/zz", {}, last + 2)]
    assert s.current == {k: decode(k, v) for k, v in fake.snapshot().items()
                         if "/status/" not in k}
    await it.aclose()  # type: ignore[attr-defined]


async def test_snapshot_compacted_between_pages_starts_again() -> None:
    fake = BetweenPages()
    for i in range(5):
        await fake.put(P + f"k{i}", j(i=i))

    async def compact_first() -> None:
        if fake.pages == 1:
            await fake.put(P + "k0", j(i=-1))
            await fake.compact(await fake.revision())

    fake.after_page = compact_first
    s, it = make(fake, page_size=2)
    evs = await until(it, lambda e: isinstance(e, InSync))
    assert fake.pages == 1 + 3
    assert evs[0] == ConnectionState(True, "snapshot at revision 7")  # never "down"
    assert s.current == content(fake) and s.current[P + "k0"] == {"i": -1}
    await it.aclose()  # type: ignore[attr-defined]


async def test_a_restarted_snapshot_deletes_what_went_between_its_attempts() -> None:
    """Pages are diffed as they arrive: the events of an attempt cut short by compaction
    stay, and a key seen then but deleted before the next attempt comes out as Deleted."""
    fake = BetweenPages()
    for i in range(6):
        await fake.put(P + f"k{i}", j(i=i))

    async def compact_first() -> None:
        if fake.pages == 1:
            await fake.delete(P + "k0")
            await fake.put(P + "k5", j(i=-5))
            await fake.compact(await fake.revision())

    fake.after_page = compact_first
    s, it = make(fake, page_size=2)
    evs = await until(it, lambda e: isinstance(e, InSync))
    seen: dict[str, Any] = {}
    for ev in evs:
        if isinstance(ev, Update):
            seen[ev.key] = ev.value
        elif isinstance(ev, Deleted):
            seen.pop(ev.key, None)
    assert Deleted(P + "k0", evs[-1].revision) in evs  # type: ignore[attr-defined]
    assert seen == s.current == content(fake)
    assert P + "k0" not in seen and seen[P + "k5"] == {"i": -5}
    await it.aclose()  # type: ignore[attr-defined]


def test_nested_sub_prefixes_are_refused() -> None:
    with pytest.raises(ValueError, match="inside"):
        Syncer(FakeDatastore(), ROOT, decode, prefixes=("ipam/", "ipam/blocks/"))


def test_the_agent_watches_what_its_calculation_reads_and_no_more() -> None:
    from datastore import keys
    from felix_like.agent import WATCHED
    from felix_like.state import consumed

    s = Syncer(FakeDatastore(), keys.PREFIX, decode, prefixes=WATCHED)
    sample = [keys.ippool("p"), keys.bgp_config(), keys.bgppeer("r"), keys.node("n"),
              keys.namespace("ns"), keys.policy("ns", "p"), keys.global_policy("g"),
              keys.workload("n", "ns", "pod", "eth0"), keys.ipam_block("10.0.0.0/26"),
              keys.ipam_affinity("n", "10.0.0.0/26"), keys.ipam_reservation("r"),
              keys.ipam_config(), keys.node_status("n"), keys.ipam_handle("h"),
              keys.full(keys.SCHEMA_VERSION)]
    for key in sample:
        assert key.startswith(s.prefixes) == consumed(key), key
    assert not keys.node_status("n").startswith(s.prefixes)


async def test_a_snapshot_that_fails_part_way_still_delivers_what_it_read() -> None:
    """etcd goes away between two pages of the first snapshot: the keys of the pages
    already read are in the mirror, so the next attempt finds them unchanged; their
    events come all the same, before its InSync. (A restarted agent whose first attempt
    failed after the config/ pages never had its BGP configuration and peers.)"""
    fake = BetweenPages()
    for i in range(4):
        await fake.put(ROOT + f"config/k{i}", j(i=i))
        await fake.put(ROOT + f"workloads/k{i}", j(i=i))
    async def fail_once() -> None:
        if fake.pages == 2:
            fake.fail_next()  # the third page's read: etcd away after config/'s pages

    fake.after_page = fail_once
    clock = FakeClock()
    s: Syncer[dict[str, Any]] = Syncer(fake, ROOT, decode, prefixes=("workloads/", "config/"),
                                       page_size=2, now=clock.now, sleep=clock.sleep,
                                       rand=lambda: 0.5)
    it = s.events()
    evs = await until(it, lambda e: isinstance(e, InSync))
    assert [e.up for e in evs if isinstance(e, ConnectionState)] == [False, True]
    assert {e.key: e.value for e in evs if isinstance(e, Update)} == {
        ROOT + f"{sub}k{i}": {"i": i} for sub in ("config/", "workloads/") for i in range(4)}
    assert await sentinel(fake, it) == []
    await it.aclose()  # type: ignore[attr-defined]
