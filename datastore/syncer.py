"""Snapshot-then-watch of one etcd prefix, as networking-calico does it (STYLE rule 2).

Owns: the decoded view of one prefix, or of the chosen sub-prefixes of it
(`Syncer.current`: last good value per key), the keys whose latest raw value is invalid
(`Syncer.errors`), and the revision that view is at (`Syncer.revision`, the newest one
applied; each sub-prefix's own is in `Syncer.applied`). The consumer gets a stream of
typed `SyncEvent`s from `events()`.

The algorithm:

1. Snapshot: every sub-prefix read in pages of ``page_size`` keys, all at the revision R
   of the first page, so that no response has to hold the whole cluster (the channel
   takes 64 MiB, some 140,000 endpoints). If R is compacted before the last page, the
   snapshot starts again at a new R. Diff it against `current` (by each key's
   ``mod_revision``, then by decoded value) and emit `Update` for what is new or changed,
   `Deleted` for keys that vanished, then `InSync(R)`. The first snapshot finds everything
   new; a later one (after compaction, or the periodic resync) emits only differences.
2. Watch each sub-prefix from R+1, one etcd watch each (all on the channel's one
   stream): etcd filters, so writes to keys nobody here reads (every node's NodeStatus,
   the IPAM handles) never reach this process. Each event moves its sub-prefix's
   revision forward. Events keep etcd's order within a sub-prefix, not across them (as
   networking-calico's per-resource watchers). One watch per sub-prefix, rather than one
   of the whole prefix filtered here, because the filtered one still receives and
   parses every write: under 100 NodeStatus writes/s it cost the process 4.6 % of a core
   against 5.7 % for mirroring everything and 0.1 % for the watches of the sub-prefixes
   (bench.datastore.bench_syncer).
3. A watch breaks (`UnavailableError`: the member we streamed from died, or etcd went
   away): emit ``ConnectionState(up=False)``, back off, probe etcd, emit
   ``ConnectionState(up=True)`` and watch each sub-prefix again from its own revision + 1.
   etcd keeps history until compaction, so nothing is lost and nothing is seen twice (a
   quiet sub-prefix resumes from an old revision: compacted meanwhile, that is step 4). A
   member that dies or restarts breaks the stream at once; a member that hangs (SIGSTOP,
   partition) is only noticed by the channel's gRPC keepalive (10 s + 5 s, see
   `datastore.client`).
4. The watch raises `CompactedError` (we were away longer than the history is kept):
   back to 1, a full snapshot and diff. Deletes that happened in the gap come out as
   `Deleted` (with the snapshot's revision, the real one being unknowable).
5. With ``resync_interval`` set, step 1 also runs periodically (jittered by ±20 %), as a
   safety net against bugs anywhere on the path.

Invalid values (the decoder raised `ValueError`, typically a value written by hand with
etcdctl) never replace a good one: the syncer emits `ConfigError`, records it in `errors`,
and `current` keeps the last good value; no `Update` or `Deleted` is emitted for it. A
later valid value clears the error with a normal `Update`; a delete clears it with
`Deleted` (also for a key that never had a good value, so that status reporting can drop
the error).

Steppable (STYLE rule 9): `resync()` runs step 1 and returns its events, `apply()` turns
one `WatchEvent` into events; `events()` is only the loop around them. Time (``now``),
sleeping (``sleep``) and jitter (``rand``) are injected, so a unit test against
`datastore.fake.FakeDatastore` never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from datastore.cas import Backoff
from datastore.client import (
    KV,
    CompactedError,
    Datastore,
    DatastoreError,
    Page,
    UnavailableError,
    WatchEvent,
)

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None
    return trim


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a page is decoded: its values are acyclic and
    live as long as their keys, and a snapshot growing the heap by millions of objects
    would otherwise run full collections that walk all of them, again and again (some
    20 % of the CPU of decoding a 1,000-node cluster)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@functools.cache
def freeze_heap_once() -> None:
    """For the owner of the process, after its first snapshot: what the snapshot made lives
    as long as the keys, so the cyclic GC's full collections need not walk it again
    (~0.2-0.7 s each at 1,000 nodes x 50 pods, landing on whatever runs, a pod's ADD
    included). Once per process: each freeze keeps whatever garbage cycles exist at that
    moment alive for good."""
    gc.freeze()


def release_free_heap() -> None:
    """Hand the heap a snapshot freed back to the system: glibc keeps freed small blocks in
    its arenas, so without this a process keeps the RSS of its largest snapshot (some
    10 MiB at 1,000 nodes x 50 pods). A no-op without glibc's ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

T = TypeVar("T")

# At most this many earlier versions are read to find a malformed key's last good value.
HISTORY_STEPS = 20

RECONNECT_BACKOFF = Backoff(initial=0.05, maximum=5.0, multiplier=2.0, jitter=0.3)

# Keys per range request of a snapshot: ~2 MiB at ~435 bytes a key.
PAGE_SIZE = 5000

# A snapshot whose revision is compacted before its last page is started again this many
# times before the failure is reported (and retried with backoff like any other).
SNAPSHOT_ATTEMPTS = 5


# -- events ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Update(Generic[T]):
    """``key`` now has the (valid, decoded) ``value``, as of ``revision``.

    ``changed`` is False when the key held an equal decoded value already (a value
    rewritten with the same content, or a change the decoder does not keep): a consumer
    whose output depends only on the decoded values may skip it.
    """

    key: str
    value: T
    revision: int
    changed: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class Deleted:
    """``key`` is gone (as of ``revision``; after a resync, the snapshot's revision)."""

    key: str
    revision: int


@dataclass(frozen=True)
class InSync:
    """A full snapshot at ``revision`` has been delivered; everything before is complete."""

    revision: int


@dataclass(frozen=True)
class ConfigError:
    """The value written to ``key`` at ``revision`` is invalid; the last good one stays."""

    key: str
    error: str
    revision: int


@dataclass(frozen=True)
class ConnectionState:
    """The syncer lost (``up=False``) or regained (``up=True``) its link to etcd."""

    up: bool
    reason: str


SyncEvent = Update[T] | Deleted | InSync | ConfigError | ConnectionState


class Syncer(Generic[T]):
    """Keeps a decoded mirror of ``prefix`` and streams its changes. See the module doc.

    One consumer per syncer: `events()` must not be iterated twice at the same time.
    """

    def __init__(
        self,
        ds: Datastore,
        prefix: str,
        decode: Callable[[str, bytes], T],
        *,
        prefixes: Sequence[str] | None = None,
        page_size: int = PAGE_SIZE,
        resync_interval: float | None = None,
        backoff: Backoff = RECONNECT_BACKOFF,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.ds = ds
        self.prefix = prefix
        # The sub-prefixes mirrored (absolute keys), none inside another: an event is
        # applied under exactly one of them.
        self.prefixes = tuple(sorted(prefix + p for p in prefixes)) \
            if prefixes is not None else (prefix,)
        for a, b in zip(self.prefixes, self.prefixes[1:], strict=False):
            if b.startswith(a):
                raise ValueError(f"sub-prefix {b!r} lies inside {a!r}")
        self.page_size = page_size
        self.decode = decode
        self.resync_interval = resync_interval
        self.backoff = backoff
        self._now = now
        self._sleep = sleep
        self._rand = rand
        self.current: dict[str, T] = {}
        self.errors: dict[str, str] = {}
        # mod_revision of the latest raw value seen per key (valid or not): lets a resync
        # skip decoding keys that did not change.
        self._mod: dict[str, int] = {}
        self.revision = 0  # the newest revision applied (snapshot or event)
        # Per sub-prefix: every event of it up to this revision has been applied.
        self.applied: dict[str, int] = dict.fromkeys(self.prefixes, 0)
        self.in_sync = False  # the first snapshot is complete (monotonic)
        self.connected: bool | None = None  # None until the first answer from etcd
        self.resyncs = 0
        self._watch_start: dict[str, int] = dict.fromkeys(self.prefixes, 0)
        self._undelivered: list[SyncEvent[T]] = []  # see `resync`
        self._next_resync: float | None = None

    # -- steps (pure bookkeeping plus one list()) ------------------------------------------

    async def resync(self) -> list[SyncEvent[T]]:
        """Step 1: snapshot, diff against `current`, and end with `InSync`.

        Each page is decoded and diffed as it arrives, while the next one is read
        (`pages`), so the raw values of the whole prefix are never held at once: a
        1,000-node cluster's ~50,000 endpoints are some 25 MiB of JSON, read in the time
        their decoding takes anyway. A snapshot started over after a compaction keeps the
        events of the pages already diffed (a key changed since comes again, later, with
        its new value) and counts as seen only the keys of the last attempt, so what was
        deleted in between still comes out as `Deleted`.
        """
        # The events of an attempt that failed part-way (etcd went away between pages):
        # the mirror already holds their values, so the next attempt finds those keys
        # unchanged and would not emit them again; they are delivered with its events.
        out, self._undelivered = self._undelivered, []
        seen: set[str] = set()
        rev, attempt = 0, 0
        try:
            async for kvs, page_rev, n in self.pages():
                rev = page_rev
                if n != attempt:
                    attempt = n
                    seen.clear()
                with _gc_paused():
                    diffs = [(kv, ev) for kv in kvs
                             if (ev := self._diff(kv, seen)) is not None]
                for kv, ev in diffs:
                    if isinstance(ev, ConfigError) and ev.key not in self.current:
                        out.extend(await self._last_good(kv))
                    out.append(ev)
        except BaseException:
            self._undelivered = out
            raise
        out.extend(self._end_snapshot(seen, rev))
        release_free_heap()
        return out

    async def snapshot(self) -> tuple[list[KV], int]:
        """Every key under the sub-prefixes at one revision, read page by page."""
        kvs: list[KV] = []
        rev, attempt = 0, 0
        async for page, page_rev, n in self.pages():
            rev = page_rev
            if n != attempt:
                attempt = n
                kvs.clear()
            kvs.extend(page)
        return kvs, rev

    async def pages(self) -> AsyncIterator[tuple[list[KV], int, int]]:
        """The snapshot's pages, in key order per sub-prefix, all at the revision R of the
        first page, as (keys, R, attempt): the next page is already asked for while the
        caller works on this one. If R is compacted before the last page, the snapshot
        starts over at a new R (``attempt`` grows by one); after `SNAPSHOT_ATTEMPTS`
        the `CompactedError` is raised."""
        for attempt in range(1, SNAPSHOT_ATTEMPTS + 1):
            rev = 0
            ahead: asyncio.Future[Page] | None = None
            try:
                for prefix in self.prefixes:
                    page = await self.ds.list_page(prefix, "", rev, self.page_size)
                    rev = rev or page.revision
                    while True:
                        if page.more and page.kvs:
                            ahead = asyncio.ensure_future(self.ds.list_page(
                                prefix, page.kvs[-1].key + "\0", rev, self.page_size))
                        yield page.kvs, rev, attempt
                        if ahead is None:
                            break
                        page, ahead = await ahead, None
            except CompactedError as e:
                if attempt == SNAPSHOT_ATTEMPTS:
                    raise
                log.info("snapshot of %s at %d compacted before its last page (%s); "
                         "starting again", self.prefix, rev, e)
                continue
            finally:
                if ahead is not None:  # the caller stopped, or failed, before reading it
                    ahead.cancel()
                    with contextlib.suppress(BaseException):
                        await ahead
            return

    async def _last_good(self, kv: KV) -> list[SyncEvent[T]]:
        """The newest earlier value of ``kv.key`` that decodes, as an `Update`.

        Runs when a snapshot finds a malformed value and no last good one is held (the
        agent restarted, or the key is new to us): etcd keeps each key's history until
        compaction, so the value in force before the bad write can still be read. The walk
        stops at the key's create_revision (a deleted and re-created key does not inherit
        its old life), after `HISTORY_STEPS` reads, or at the compaction point; then
        nothing is in force, as before. A datastore error ends the walk the same way (the
        next snapshot does not retry it: the ConfigError still stands and is reported).
        """
        rev, why = kv.mod_revision - 1, "the key was created with it"
        for _ in range(HISTORY_STEPS):
            if rev < kv.create_revision:
                break
            try:
                old = await self.ds.get_at(kv.key, rev)
            except CompactedError:
                why = "older history is compacted"
                break
            except DatastoreError as e:
                why = f"reading history failed: {e}"
                break
            if old is None or old.create_revision != kv.create_revision:
                break
            try:
                value = self.decode(kv.key, old.value)
            except Exception:  # any undecodable value (or a decoder bug): look further back
                rev = old.mod_revision - 1
                continue
            self.current[kv.key] = value
            log.warning("%s: using its last valid value, from revision %d", kv.key,
                        old.mod_revision)
            return [Update(kv.key, value, old.mod_revision)]
        else:
            why = f"none in the last {HISTORY_STEPS} versions"
        log.warning("%s: no earlier valid value exists (%s); nothing is in force for it",
                    kv.key, why)
        return []

    def apply_snapshot(self, kvs: list[KV], rev: int) -> list[SyncEvent[T]]:
        """A whole snapshot at ``rev`` diffed at once (`resync` does it page by page)."""
        seen: set[str] = set()
        out = [ev for ev in (self._diff(kv, seen) for kv in kvs) if ev is not None]
        return out + self._end_snapshot(seen, rev)

    def _diff(self, kv: KV, seen: set[str]) -> Update[T] | ConfigError | None:
        """One key of a snapshot: its event if it is new or changed, else None."""
        seen.add(kv.key)
        if self._mod.get(kv.key) == kv.mod_revision:
            return None  # unchanged since we last saw it (valid or not)
        self._mod[kv.key] = kv.mod_revision
        old = self.current.get(kv.key, _MISSING)
        ev = self._decode(kv.key, kv.value, kv.mod_revision)
        if isinstance(ev, Update) and old is not _MISSING and old == ev.value:
            return None  # re-written with the same content: not a difference
        return ev

    def _end_snapshot(self, seen: set[str], rev: int) -> list[SyncEvent[T]]:
        """The keys held but not ``seen`` in a complete snapshot at ``rev`` are gone."""
        out: list[SyncEvent[T]] = []
        for key in sorted((self.current.keys() | self.errors.keys()) - seen):
            out.append(self._forget(key, rev))
        for key in list(self._mod):
            if key not in seen:
                del self._mod[key]
        self.revision = rev
        self.applied = dict.fromkeys(self.prefixes, rev)
        self.in_sync = True
        self.resyncs += 1
        out.append(InSync(rev))
        log.debug("snapshot of %s at %d: %d keys, %d changes", self.prefix, rev, len(seen),
                  len(out) - 1)
        return out

    def apply(self, wev: WatchEvent) -> list[SyncEvent[T]]:
        """Step 2: one watch event in, zero or one sync events out."""
        key = wev.kv.key
        prefix = self._prefix_of(key)
        if prefix is None or wev.revision < self._watch_start[prefix]:
            # Outside what we mirror, or replayed from before our watch start: already
            # applied (never seen from etcd, but cheap insurance against a duplicate
            # after a re-watch).
            return []
        self.applied[prefix] = max(self.applied[prefix], wev.revision)
        self.revision = max(self.revision, wev.revision)
        if wev.type == "delete":
            self._mod.pop(key, None)
            if key in self.current or key in self.errors:
                return [self._forget(key, wev.revision)]
            return []
        self._mod[key] = wev.revision
        return [self._decode(key, wev.kv.value, wev.revision)]

    def observe_write(self, key: str, value: bytes | None, revision: int
                      ) -> list[SyncEvent[T]]:
        """This process's own write to ``key`` (``value``, None for a delete), committed
        at ``revision``: applied now as its watch event would be, so the consumer acts on
        it without waiting for the watch to echo it. Nothing happens for a key outside
        the mirror or when the watch has already brought that revision or a later one.

        The echo, when it comes, decodes to an equal value and changes nothing. An older
        event of the same key still on its way is applied when it comes and then replaced
        by the echo (events keep their order within a sub-prefix), so the mirror ends as
        etcd does. Not the sub-prefix's ``applied`` revision: only the watch moves it.
        """
        prefix = self._prefix_of(key)
        if prefix is None or self.applied[prefix] >= revision \
                or self._mod.get(key, 0) >= revision:
            return []
        if value is None:
            self._mod.pop(key, None)
            if key in self.current or key in self.errors:
                return [self._forget(key, revision)]
            return []
        self._mod[key] = revision
        return [self._decode(key, value, revision)]

    def _prefix_of(self, key: str) -> str | None:
        for prefix in self.prefixes:
            if key.startswith(prefix):
                return prefix
        return None

    def _decode(self, key: str, raw: bytes, rev: int) -> Update[T] | ConfigError:
        try:
            value = self.decode(key, raw)
        except ValueError as e:
            msg = str(e) or type(e).__name__
        except Exception as e:  # a decoder bug must not kill the agent
            log.exception("decoder failed on %s", key)
            msg = f"{type(e).__name__}: {e}"
        else:
            self.errors.pop(key, None)
            old = self.current.get(key, _MISSING)
            self.current[key] = value
            return Update(key, value, rev, changed=old is _MISSING or old != value)
        self.errors[key] = msg
        log.warning("invalid value for %s at revision %d (keeping the last good one): %s",
                    key, rev, msg)
        return ConfigError(key, msg, rev)

    def _forget(self, key: str, rev: int) -> Deleted:
        self.current.pop(key, None)
        self.errors.pop(key, None)
        return Deleted(key, rev)

    def _set_connected(self, up: bool, reason: str) -> list[SyncEvent[T]]:
        if self.connected is up:
            return []
        self.connected = up
        (log.info if up else log.warning)("etcd %s for %s: %s",
                                          "up" if up else "down", self.prefix, reason)
        return [ConnectionState(up, reason)]

    def _schedule_resync(self) -> None:
        if self.resync_interval is None:
            self._next_resync = None
        else:
            jitter = 0.8 + 0.4 * self._rand()
            self._next_resync = self._now() + self.resync_interval * jitter

    # -- the loop ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[SyncEvent[T]]:
        """Snapshot, watch, recover, forever (until the consumer stops iterating)."""
        need_snapshot = True
        failures = 0
        while True:
            if need_snapshot:
                try:
                    batch = await self.resync()
                except DatastoreError as e:
                    for ev in self._set_connected(False, f"snapshot failed: {e}"):
                        yield ev
                    await self._sleep(self.backoff.delay(failures, self._rand))
                    failures += 1
                    continue
                for ev in self._set_connected(True, f"snapshot at revision {self.revision}"):
                    yield ev
                for ev in batch:
                    yield ev
                batch = []
                release_free_heap()  # again, once the consumer has taken every event
                need_snapshot = False
                failures = 0
                self._schedule_resync()
            try:
                async with contextlib.aclosing(self._watch()) as stream:
                    async for ev in stream:
                        yield ev
                        failures = 0
                need_snapshot = True  # the periodic resync is due
                log.debug("periodic resync of %s", self.prefix)
            except CompactedError as e:
                # Race: we were disconnected (or slow) while etcd compacted past
                # revision+1. Only a full snapshot is correct now.
                log.warning("watch of %s from %d: %s; resyncing", self.prefix,
                            self.revision + 1, e)
                need_snapshot = True
            except DatastoreError as e:
                # The member we streamed from died or etcd is unreachable. History is
                # kept until compaction: re-watch from revision+1 once etcd answers.
                for ev in self._set_connected(False, f"watch broken: {e}"):
                    yield ev
                while True:
                    await self._sleep(self.backoff.delay(failures, self._rand))
                    failures += 1
                    try:
                        await self.ds.revision()
                    except DatastoreError as probe:
                        log.debug("etcd still unavailable: %s", probe)
                        continue
                    break
                for ev in self._set_connected(True, f"re-watching from {self.revision + 1}"):
                    yield ev

    async def _watch(self) -> AsyncGenerator[SyncEvent[T], None]:
        """Watch every sub-prefix from its revision+1 until the periodic resync is due
        (then return) or a stream fails (then raise)."""
        async with contextlib.AsyncExitStack() as streams:
            reads: dict[asyncio.Future[WatchEvent], AsyncGenerator[WatchEvent, None]] = {}
            timer: asyncio.Future[None] | None = None
            try:
                for prefix in self.prefixes:
                    self._watch_start[prefix] = self.applied[prefix] + 1
                    # Datastore.watch is an async generator: close it so its finally
                    # cancels the server-side watch at once, not at garbage collection.
                    stream = await streams.enter_async_context(contextlib.aclosing(cast(
                        AsyncGenerator[WatchEvent, None],
                        self.ds.watch(prefix, self._watch_start[prefix]))))
                    reads[asyncio.ensure_future(anext(stream))] = stream
                if self._next_resync is not None:
                    timer = asyncio.ensure_future(
                        self._sleep(max(0.0, self._next_resync - self._now())))
                while True:
                    waiting: set[asyncio.Future[Any]] = set(reads)
                    if timer is not None:
                        waiting.add(timer)
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    for nxt in [f for f in reads if f in done]:
                        stream = reads.pop(nxt)
                        try:
                            wev = nxt.result()
                        except StopAsyncIteration:
                            raise UnavailableError(f"watch on {self.prefix} ended") from None
                        reads[asyncio.ensure_future(anext(stream))] = stream
                        for ev in self.apply(wev):
                            yield ev
                    if timer is not None and timer.done():
                        return  # resync due; the finally below drops the pending reads
            finally:
                for fut in (timer, *reads):
                    if fut is not None and not fut.done():
                        fut.cancel()
                        with contextlib.suppress(asyncio.CancelledError, DatastoreError):
                            await fut
                    elif fut is not None and not fut.cancelled():
                        fut.exception()  # retrieved: a second failed stream is not news


class _Missing:
    pass


_MISSING = _Missing()
