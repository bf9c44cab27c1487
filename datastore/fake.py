"""An in-memory etcd with revisions, for unit tests (STYLE rule 8): `FakeDatastore`.

It is a `Datastore` (a subclass, so code typed against `Datastore` accepts it) that
interprets what it is given the way etcd v3 does:

- one global revision, incremented once per write transaction that changed something
  (all writes of one txn share it; a read-only txn, a failed compare with an empty failure
  branch, or a delete of a missing key changes nothing and keeps the revision);
- per key ``create_revision``, ``mod_revision``, ``version`` (reset by a delete) and lease;
- compares on ``mod``/``create``/``version`` of a missing key see 0; a ``value`` compare on a
  missing key always fails (as in etcd's ``applyCompare``);
- watches replay history from ``start_revision`` and then follow new writes; a start
  revision below the compaction point raises `CompactedError`; events of one revision are
  delivered together, in the txn's order;
- leases with TTLs against an injected clock (``now``); expiry deletes the attached keys in
  one revision, checked on every call (or at once with `expire_due_leases`).

Test controls (not part of `Datastore`): `set_available` (every call raises
`UnavailableError` while down, and live watches break), `break_watches` (live watch
streams end with `UnavailableError`, as when the member they stream from dies),
`fail_next` (the next n calls raise a given error), `history` (the event log), and
`snapshot` (the current content as ``{key: value}``).

Not modelled: several members, leader changes, physical compaction timing, watch
progress notifications, request size limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from datastore.client import (
    KV,
    CompactedError,
    Compare,
    DatastoreError,
    Delete,
    EtcdConfig,
    Get,
    NotFoundError,
    Op,
    Page,
    Put,
    Range,
    TxnResult,
    UnavailableError,
    WatchEvent,
)
from datastore.client import Datastore as _Datastore

log = logging.getLogger(__name__)


@dataclass
class _Lease:
    id: int
    ttl: int
    expires_at: float


class _Broken:
    """Marker put into a watch queue: the stream ends with ``error``."""

    def __init__(self, error: DatastoreError) -> None:
        self.error = error


class FakeDatastore(_Datastore):
    """In-memory, single-process etcd. See the module docstring for what is faithful."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        # Deliberately no super().__init__(): there is no gRPC client behind this one.
        self.config = EtcdConfig(endpoints=("fake://memory",))
        self._now = now
        self._data: dict[str, KV] = {}
        self._rev = 1  # etcd starts at revision 1 with an empty store
        self._compacted = 0
        self._history: list[WatchEvent] = []
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent | _Broken]]] = []
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self._available = True
        self._fail: list[DatastoreError] = []
        self.closed = False

    # -- test controls ------------------------------------------------------------------

    def set_available(self, up: bool) -> None:
        """While down, every call raises `UnavailableError`; going down breaks watches."""
        self._available = up
        if not up:
            self.break_watches("fake etcd is down")

    def break_watches(self, reason: str = "watch stream broken") -> None:
        """End every live watch with `UnavailableError` (the member streaming it died)."""
        for _, q in self._watchers:
            q.put_nowait(_Broken(UnavailableError(reason)))
        self._watchers.clear()

    def fail_next(self, n: int = 1, error: DatastoreError | None = None) -> None:
        """The next ``n`` calls raise ``error`` (default `UnavailableError`)."""
        self._fail.extend([error or UnavailableError("injected failure")] * n)

    @property
    def history(self) -> list[WatchEvent]:
        """Every event still held (those at or after the compaction revision)."""
        return list(self._history)

    def snapshot(self) -> dict[str, bytes]:
        return {k: kv.value for k, kv in sorted(self._data.items())}

    @property
    def compacted_revision(self) -> int:
        return self._compacted

    def expire_due_leases(self) -> None:
        now = self._now()
        due = [lid for lid, lease in self._leases.items() if lease.expires_at <= now]
        for lid in due:
            self._drop_lease(lid)

    # -- plumbing -----------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise DatastoreError("datastore is closed")
        if not self._available:
            raise UnavailableError("fake etcd is down")
        if self._fail:
            raise self._fail.pop(0)
        self.expire_due_leases()

    def _drop_lease(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        keys = sorted(k for k, kv in self._data.items() if kv.lease == lease_id)
        if keys:
            self._commit([Delete(k) for k in keys])

    def _commit(self, ops: Sequence[Op]
                ) -> tuple[int, list[KV | None], list[tuple[KV, ...]]]:
        """Apply ops atomically; bump the revision once if anything changed."""
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise DatastoreError("etcd error NOT_FOUND: requested lease not found")
        rev = self._rev + 1
        events: list[WatchEvent] = []
        gets: list[KV | None] = []
        ranges: list[tuple[KV, ...]] = []
        for op in ops:
            if isinstance(op, Range):
                ranges.append(tuple(replace(kv, value=b"") if op.keys_only else kv
                                    for k, kv in sorted(self._data.items())
                                    if k.startswith(op.prefix)))
            elif isinstance(op, Get):
                gets.append(self._data.get(op.key))
            elif isinstance(op, Put):
                old = self._data.get(op.key)
                kv = KV(op.key, bytes(op.value),
                        create_revision=old.create_revision if old else rev,
                        mod_revision=rev, version=(old.version if old else 0) + 1,
                        lease=op.lease or 0)
                self._data[op.key] = kv
                events.append(WatchEvent("put", kv))
            else:
                old = self._data.pop(op.key, None)
                if old is not None:
                    events.append(WatchEvent(
                        "delete", KV(op.key, b"", 0, rev, 0, 0)))
        if events:
            self._rev = rev
            self._history.extend(events)
            for prefix, q in self._watchers:
                for ev in events:
                    if ev.kv.key.startswith(prefix):
                        q.put_nowait(ev)
        return self._rev, gets, ranges

    def _compare(self, c: Compare) -> bool:
        kv = self._data.get(c.key)
        if c.target == "value":
            if kv is None:
                return False  # etcd: a value compare on a missing key always fails
            actual: int | bytes = kv.value
        elif c.target == "mod":
            actual = kv.mod_revision if kv else 0
        elif c.target == "create":
            actual = kv.create_revision if kv else 0
        else:
            actual = kv.version if kv else 0
        want = c.value
        if isinstance(actual, bytes) != isinstance(want, bytes):
            raise DatastoreError(f"compare of {c.target} with {type(want).__name__}")
        match c.op:
            case "==":
                return actual == want
            case "!=":
                return actual != want
            case "<":
                return actual < want  # type: ignore[operator]
            case ">":
                return actual > want  # type: ignore[operator]
        raise DatastoreError(f"bad compare op {c.op!r}")

    # -- Datastore interface --------------------------------------------------------------

    async def close(self) -> None:
        self.closed = True
        self.break_watches("datastore closed")

    async def get(self, key: str) -> KV | None:
        self._check()
        return self._data.get(key)

    async def get_at(self, key: str, revision: int) -> KV | None:
        """``key`` at ``revision``, replayed from the held history (as etcd's MVCC)."""
        self._check()
        if revision < self._compacted:
            raise CompactedError(self._compacted)
        if revision > self._rev:
            raise DatastoreError("etcd error OUT_OF_RANGE: required revision is a future "
                                 "revision")
        found: KV | None = None
        for ev in self._history:
            if ev.revision > revision:
                break
            if ev.kv.key == key:
                found = ev.kv if ev.type == "put" else None
        return found

    async def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        self._check()
        kvs = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
        if keys_only:
            kvs = [replace(kv, value=b"") for kv in kvs]
        return kvs, self._rev

    async def list_page(self, prefix: str, start: str = "", revision: int = 0,
                        limit: int = 0) -> Page:
        """As etcd's paginated range: a past ``revision`` is replayed from the held
        history (as `get_at`, a key last written before the compaction point and again
        after ``revision`` is missing from it)."""
        self._check()
        if revision and revision < self._compacted:
            raise CompactedError(self._compacted)
        if revision > self._rev:
            raise DatastoreError("etcd error OUT_OF_RANGE: required revision is a future "
                                 "revision")
        at = revision or self._rev
        state = dict(self._data)
        undone = {ev.kv.key for ev in self._history if ev.revision > at}
        for key in undone:  # written after ``at``: replay its history up to ``at``
            state.pop(key, None)
        for ev in self._history:
            if ev.revision > at:
                break
            if ev.kv.key in undone:
                if ev.type == "put":
                    state[ev.kv.key] = ev.kv
                else:
                    state.pop(ev.kv.key, None)
        first = start or prefix
        kvs = [kv for k, kv in sorted(state.items()) if k.startswith(prefix) and k >= first]
        more = bool(limit) and len(kvs) > limit
        return Page(kvs[:limit] if limit else kvs, at, more)

    async def revision(self) -> int:
        self._check()
        return self._rev

    # put/create/update/delete are Datastore's own, built on txn() below.

    async def delete_prefix(self, prefix: str) -> None:
        self._check()
        self._commit([Delete(k) for k in sorted(self._data) if k.startswith(prefix)])

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        self._check()
        ok = all(self._compare(c) for c in compare)
        rev, gets, ranges = self._commit(success if ok else failure)
        return TxnResult(ok, rev, tuple(gets), tuple(ranges))

    async def grant_lease(self, ttl: int) -> int:
        self._check()
        self._next_lease += 1
        lid = self._next_lease
        self._leases[lid] = _Lease(lid, ttl, self._now() + ttl)
        return lid

    async def refresh_lease(self, lease_id: int) -> None:
        self._check()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise NotFoundError(f"lease {lease_id:x} not found (expired or revoked)")
        lease.expires_at = self._now() + lease.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        self._check()
        if lease_id not in self._leases:
            raise NotFoundError(f"lease {lease_id:x} not found (expired or revoked)")
        self._drop_lease(lease_id)

    async def compact(self, revision: int) -> None:
        self._check()
        if revision <= self._compacted:
            raise CompactedError(self._compacted)
        if revision > self._rev:
            raise DatastoreError("etcd error OUT_OF_RANGE: required revision is a future "
                                 "revision")
        self._compacted = revision
        self._history = [ev for ev in self._history if ev.revision >= revision]

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        self._check()
        if start_revision < self._compacted:
            raise CompactedError(self._compacted)
        q: asyncio.Queue[WatchEvent | _Broken] = asyncio.Queue()
        for ev in self._history:
            if ev.revision >= start_revision and ev.kv.key.startswith(prefix):
                q.put_nowait(ev)
        entry = (prefix, q)
        self._watchers.append(entry)
        try:
            while True:
                item = await q.get()
                if isinstance(item, _Broken):
                    raise item.error
                yield item
        finally:
            if entry in self._watchers:
                self._watchers.remove(entry)
