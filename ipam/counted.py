"""One allocator's etcd requests, counted: what an IPAM call costs in round trips.

Owned here: `IpamStats`, the allocator's counters, and `CountedStore`, the `Datastore`
requests of one allocator. Every request a call waits for is one ``round_trips``; those
of a claim made ahead of need run in a background task that sets `in_background` for its
own context only, and are counted apart (``background_round_trips``), so a benchmark
sees what an allocation waits for.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datastore.client import KV, Compare, Datastore, Op, TxnResult

#: Set inside the claim-ahead task: its requests are counted apart from the allocations'.
in_background: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ipam_in_background", default=False)


@dataclass
class IpamStats:
    """Counters for benchmarks and metrics. ``round_trips`` counts the etcd requests that
    calls waited for; ``background_round_trips`` those of claims made ahead of need."""

    round_trips: int = 0
    background_round_trips: int = 0
    claims_ahead: int = 0
    allocations: int = 0  # addresses handed out
    assign_calls: int = 0
    releases: int = 0
    conflicts: int = 0
    claims: int = 0
    borrowed: int = 0
    unavailable_retries: int = 0
    block_bytes: int = 0  # block values written by committed transactions (their size)
    block_writes: int = 0


#: Told of each committed transaction: its revision and the operations it applied.
OnCommit = Callable[[int, Sequence[Op]], None]


class CountedStore:
    """The `Datastore` requests of one allocator, each counted in its `IpamStats`.
    ``on_commit`` hears of every transaction that committed (the agent puts the blocks
    and affinities it wrote into its cluster state at once, not at the watch's echo)."""

    def __init__(self, ds: Datastore, stats: IpamStats, on_commit: OnCommit | None = None
                 ) -> None:
        self.ds = ds
        self.stats = stats
        self.on_commit = on_commit

    def _count(self) -> None:
        if in_background.get():
            self.stats.background_round_trips += 1
        else:
            self.stats.round_trips += 1

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        self._count()
        res = await self.ds.txn(compare, success, failure)
        if res.succeeded and self.on_commit is not None:
            self.on_commit(res.revision, success)
        return res

    async def get(self, key: str) -> KV | None:
        self._count()
        return await self.ds.get(key)

    async def list(self, prefix: str, *, keys_only: bool = False) -> list[KV]:
        self._count()
        kvs, _ = await self.ds.list(prefix, keys_only=keys_only)
        return kvs
