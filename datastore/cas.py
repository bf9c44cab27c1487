"""Compare-and-swap writes and the bounded retry loop around them (STYLE rule 5).

Every write that must not race compares a revision: ``create_revision == 0`` to create,
``mod_revision == rev`` to update or delete what was read. A lost compare raises
`ConflictError`; the caller re-reads, recomputes and tries again, a bounded number of
times, through `cas_retry`.

Failure modes:
- Two writers race on one key: exactly one compare wins, the other gets `ConflictError`
  and (inside `cas_retry`) re-reads the winner's value and recomputes on top of it.
- A write times out (`UnavailableError`) but was in fact committed by etcd. Retrying a
  *blind* write could then apply it twice; `cas_retry` only re-runs ``fn``, which must
  re-read before writing, so the re-run sees the committed value (a create finds the key
  present, an update finds a new ``mod_revision``) and does not double-apply.
- Persistent contention: after ``attempts`` lost compares `cas_retry` raises one
  `ConflictError` that names the attempt count and the last conflict.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from datastore.client import Compare, ConflictError, Datastore, Delete, Put, UnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]
Rand = Callable[[], float]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt ``n`` (0-based) waits about
    ``min(maximum, initial * multiplier**n)``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter)`` so that racing writers do not retry in lock step."""

    initial: float = 0.005
    maximum: float = 0.25
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: Rand = random.random) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt))
        return max(0.0, base * (1.0 - self.jitter + 2.0 * self.jitter * rand()))


CONFLICT_BACKOFF = Backoff()
UNAVAILABLE_BACKOFF = Backoff(initial=0.1, maximum=2.0)


async def create_if_absent(ds: Datastore, key: str, value: bytes,
                           lease: int | None = None) -> bool:
    """Create ``key`` unless it exists. True if this call created it, False if it existed.

    One transaction (``create_revision == 0``), so two concurrent callers can never both
    get True.
    """
    res = await ds.txn([Compare(key, "create", "==", 0)], [Put(key, value, lease)], [])
    return res.succeeded


async def update_if_revision(ds: Datastore, key: str, value: bytes, rev: int,
                             lease: int | None = None) -> int:
    """Replace ``key`` if its ``mod_revision`` is still ``rev``; returns the new revision.

    Raises `ConflictError` if the key changed or vanished since ``rev`` was read.
    """
    res = await ds.txn([Compare(key, "mod", "==", rev)], [Put(key, value, lease)], [])
    if not res.succeeded:
        raise ConflictError(f"{key} changed since revision {rev}")
    return res.revision


async def delete_if_revision(ds: Datastore, key: str, rev: int) -> int:
    """Delete ``key`` if its ``mod_revision`` is still ``rev``; returns the new revision.

    Raises `ConflictError` if the key changed or is already gone.
    """
    res = await ds.txn([Compare(key, "mod", "==", rev)], [Delete(key)], [])
    if not res.succeeded:
        raise ConflictError(f"{key} changed or vanished since revision {rev}")
    return res.revision


async def cas_retry(
    fn: Callable[[], Awaitable[T]],
    attempts: int = 10,
    backoff: Backoff = CONFLICT_BACKOFF,
    *,
    unavailable_retries: int = 0,
    unavailable_backoff: Backoff = UNAVAILABLE_BACKOFF,
    sleep: Sleep = asyncio.sleep,
    rand: Rand = random.random,
) -> T:
    """Run ``fn`` until it returns, re-running it on `ConflictError` (at most ``attempts``
    runs in all) and on `UnavailableError` (at most ``unavailable_retries`` extra runs).

    ``fn`` must do the whole read-compute-compare-write cycle itself, so that each run
    recomputes from fresh data. Every other exception propagates at once. When the
    conflict budget is spent, raises `ConflictError` naming the number of attempts; when
    the unavailable budget is spent, the last `UnavailableError` propagates.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    conflicts = 0
    unavailable = 0
    while True:
        try:
            return await fn()
        except ConflictError as e:
            conflicts += 1
            if conflicts >= attempts:
                raise ConflictError(
                    f"gave up after {attempts} conflicting attempts: {e}") from e
            delay = backoff.delay(conflicts - 1, rand)
            log.debug("cas conflict %d/%d (%s); retrying in %.3fs", conflicts, attempts, e,
                      delay)
        except UnavailableError as e:
            if unavailable >= unavailable_retries:
                raise
            unavailable += 1
            delay = unavailable_backoff.delay(unavailable - 1, rand)
            log.info("etcd unavailable (%s); retry %d/%d in %.2fs", e, unavailable,
                     unavailable_retries, delay)
        await sleep(delay)
