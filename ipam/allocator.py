"""The block allocator of one node: claims blocks, hands out addresses, borrows, releases.

Owns: this node's cache of its confirmed blocks (``cidr -> KV``), of other blocks it has
seen and of the handles it wrote. etcd is the truth; every write compares the cached
``mod_revision`` (or ``create_revision == 0``), and a lost compare refreshes the cache from
the ``Get``s in the same transaction's failure branch, so a conflict costs no extra read.

Common case of `IpamClient.auto_assign`: ONE etcd transaction - compare the block's cached
revision and the handle's absence, put the block and the handle. Calico needs two writes
(block, then handle); a crash between them leaks. Here the two cannot disagree.

Claiming a block (Calico's three steps; each is idempotent, so a retry after an ambiguous
timeout or a crash resumes instead of duplicating):

1. ``ipam/affinities/<node>/<cidr>`` = pending (create only if absent);
2. create the block with ``affinity: node:<node>`` (create only if absent). A lost race
   against another node means that node owns it: delete our pending affinity, next cidr;
3. pending -> confirmed (compare the pending revision).

Pending affinities are never used for allocation. A node that crashed between the steps
finds its pending affinities at the next allocation and finishes (or abandons) the claim;
``ipam check --fix`` cleans up after nodes that never come back.

Races, by name:

* two processes of one node allocate from the same block: one compare wins, the loser's
  failure branch returns the new block, it re-plans (bounded by ``max_attempts``);
* a timeout on a transaction that committed: the retry finds the handle already present
  and returns its addresses (`auto_assign` is idempotent per handle), so nothing leaks;
* a stale release (slow CNI DEL after the address was re-assigned): the handle record
  carries each address's sequence number and the block refuses a release whose sequence
  no longer matches.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import netaddr

from datastore import keys
from datastore.client import (
    KV,
    Compare,
    Datastore,
    Delete,
    Get,
    Op,
    Put,
    Range,
    TxnResult,
    UnavailableError,
)
from ipam import hooks
from ipam.affinity import CONFIRMED, PENDING, PENDING_DELETION, affinity_value, parse_affinity
from ipam.block import (
    AllocationAttrs,
    Block,
    BlockFormatError,
    affinity_of,
    block_cidr_for,
    block_count,
    iter_block_cidrs,
    reserved_ordinals,
)
from ipam.model import (
    AddressInUseError,
    AddressNotInPoolError,
    AddressReservedError,
    Assignment,
    HandleEntry,
    HandleRecord,
    IpamConflictError,
    IpamError,
    IpamInputs,
    IpamUnavailableError,
    PoolExhaustedError,
    PoolInUseError,
    PoolSpec,
    pools_text,
)
from ipam.sources import CachedInputs, InputsProvider, load_pools

log = logging.getLogger(__name__)

# How long an allocation keeps retrying lost block CAS races (beyond max_attempts).
CONFLICT_BUDGET = 10.0

T = TypeVar("T")

_HANDLE_CACHE_MAX = 10_000

# Claim the next block in the background once this node's blocks of a family have fewer
# than 1/AHEAD_FRACTION of a block free, blocks of at least AHEAD_MIN_BLOCK addresses only,
# and only while the pool has at least AHEAD_MIN_FREE_BLOCKS unclaimed blocks (small pools
# are left to claims on demand and borrowing, as before).
AHEAD_FRACTION = 4
AHEAD_MIN_BLOCK = 16
AHEAD_MIN_FREE_BLOCKS = 16

# Set inside the claim-ahead task: its requests are counted apart from the allocations'.
_in_background: contextvars.ContextVar[bool] = contextvars.ContextVar(
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


@dataclass
class _Plan:
    """Working copies of the blocks one transaction will write."""

    blocks: dict[str, tuple[KV | None, Block]] = field(default_factory=dict)
    entries: list[HandleEntry] = field(default_factory=list)


class IpamClient:
    """The allocator of one node. Not thread-safe; one per asyncio program and node."""

    def __init__(self, ds: Datastore, node: str, *, now: Callable[[], float] = time.time,
                 inputs: InputsProvider | None = None, max_attempts: int = 25,
                 unavailable_budget: float = 20.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 claim_ahead: bool = True) -> None:
        if not node:
            raise ValueError("node name is empty")
        self._ds = ds
        self.node = node
        self._now = now
        self._cached_inputs = CachedInputs(ds, node) if inputs is None else None
        self._inputs: InputsProvider = inputs or self._cached_inputs  # type: ignore[assignment]
        self._max_attempts = max_attempts
        self._unavailable_budget = unavailable_budget
        self._sleep = sleep
        self.stats = IpamStats()
        self._affine: dict[str, KV] | None = None  # confirmed blocks of this node
        self._affinity_count = 0  # this node's affinities in any state, at the last read
        # Every block's cidr and mod_revision, at the last `_load_affinities(refresh=True)`.
        self._block_heads: dict[str, int] = {}
        self._others: dict[str, KV] = {}  # blocks of other nodes (or none) seen lately
        self._handles: dict[str, KV] = {}
        self._reserved_cache: dict[tuple[str, tuple[str, ...]], frozenset[int]] = {}
        # Decoded blocks by cidr, tagged with the mod_revision they were decoded at: in the
        # steady state a block is decoded never (we cache what we wrote) or once per change.
        self._decoded: dict[str, tuple[int, Block]] = {}
        # `_eligible`'s block orders for the inputs object they were computed with, newest
        # first: (version, the cidrs they order, the order).
        self._eligible_memo: tuple[IpamInputs, list[tuple[int, frozenset[str],
                                                          list[str]]]] | None = None
        # How many blocks at the head of an `_eligible` order are known full: (the affine
        # dict and order it was found in, `_affine_gen` then, the count). A node fills its
        # blocks in order, so without it every allocation would look at every full block.
        # Only a change of a cached block can free room in one; each bumps `_affine_gen`,
        # except this node's own committed allocations, which only take room away.
        self._full_head: tuple[Mapping[str, KV], list[str], int, int] | None = None
        self._affine_gen = 0
        # Claims are serialised: one ahead of need (a background task) or on demand.
        self._claim_ahead = claim_ahead
        self._claim_lock = asyncio.Lock()
        self._ahead_task: asyncio.Task[None] | None = None
        # Per pool, the block index fresh claims start at, once this node lost a race
        # for a block (`_claim_fresh`); absent: the pool's first free block.
        self._claim_cursor: dict[str, int] = {}

    @property
    def affinity(self) -> str:
        return affinity_of(self.node)

    @property
    def config_requests(self) -> int:
        """etcd requests made to read configuration (pools, IPAMConfig, reservations)."""
        return self._cached_inputs.requests if self._cached_inputs is not None else 0

    def invalidate(self) -> None:
        """Forget cached configuration and blocks (the next call re-reads them)."""
        if self._cached_inputs is not None:
            self._cached_inputs.invalidate()
        self._affine = None
        self._others.clear()
        self._handles.clear()

    # -- counted etcd access -------------------------------------------------------------

    def _count_request(self) -> None:
        if _in_background.get():
            self.stats.background_round_trips += 1
        else:
            self.stats.round_trips += 1

    async def _txn(self, compare: Sequence[Compare], success: Sequence[Op],
                   failure: Sequence[Op] = ()) -> TxnResult:
        self._count_request()
        return await self._ds.txn(compare, success, failure)

    async def _get(self, key: str) -> KV | None:
        self._count_request()
        return await self._ds.get(key)

    async def _list(self, prefix: str) -> list[KV]:
        self._count_request()
        kvs, _ = await self._ds.list(prefix)
        return kvs

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn``; on `UnavailableError` retry with backoff for ``unavailable_budget`` s.

        Every IPAM operation is safe to re-run after an ambiguous failure (see module doc).
        """
        deadline = time.monotonic() + self._unavailable_budget
        delay = 0.05
        while True:
            try:
                return await fn()
            except UnavailableError as e:
                if time.monotonic() + delay > deadline:
                    raise IpamUnavailableError(
                        f"{what}: etcd unavailable for {self._unavailable_budget:.0f}s: {e}"
                    ) from e
                self.stats.unavailable_retries += 1
                log.info("ipam: %s: etcd unavailable, retrying in %.2fs: %s", what, delay, e)
                await self._sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- caches ------------------------------------------------------------------------

    def _block(self, cidr: str, kv: KV) -> Block | None:
        """The decoded block of ``kv`` (shared: copy before changing), None if corrupt."""
        got = self._decoded.get(cidr)
        if got is not None and got[0] == kv.mod_revision:
            return got[1]
        try:
            blk = Block.from_json(kv.value)
        except BlockFormatError as e:
            log.warning("ipam: block %s is corrupt, not using it: %s", cidr, e)
            return None
        self._decoded[cidr] = (kv.mod_revision, blk)
        return blk

    def _remember(self, kv: KV | None, cidr: str, *, fills: bool = False) -> None:
        """Put a block just read or written into the right cache (or drop it if gone).

        ``fills``: ``kv`` is this node's own write of an allocation (the block only lost
        free addresses), so blocks known full stay full (see ``_full_head``)."""
        if not fills:
            self._affine_gen += 1
        affine = self._affine if self._affine is not None else {}
        blk = None if kv is None else self._block(cidr, kv)
        if kv is None or blk is None:
            affine.pop(cidr, None)
            self._others.pop(cidr, None)
            self._decoded.pop(cidr, None)
            return
        if blk.affinity == self.affinity and cidr in affine:
            affine[cidr] = kv
        else:
            affine.pop(cidr, None)
            self._others[cidr] = kv

    def _remember_handle(self, handle: str, kv: KV | None) -> None:
        if kv is None:
            self._handles.pop(handle, None)
            return
        if len(self._handles) >= _HANDLE_CACHE_MAX:
            self._handles.clear()
        self._handles[handle] = kv

    def _reserved(self, cidr: str, inputs: IpamInputs) -> frozenset[int]:
        key = (cidr, inputs.reservations)
        got = self._reserved_cache.get(key)
        if got is None:
            if len(self._reserved_cache) > 4096:
                self._reserved_cache.clear()
            got = reserved_ordinals(cidr, inputs.reserved_set()) if inputs.reservations \
                else frozenset()
            self._reserved_cache[key] = got
        return got

    async def _load_affinities(self, inputs: IpamInputs, *,
                               refresh: bool = False) -> dict[str, KV]:
        """Re-read this node's affinities: confirmed blocks into the cache, pending resumed.

        ``refresh``: check the cached blocks too. A claim needs it: another client (``ipam
        release``, ``check --fix``) may have freed addresses in them, and no write of ours
        would fail its compare to tell us. The affinities then come in one request with a
        keys-only list of every block (`_block_heads`): its revisions tell which cached
        blocks changed - only those are read again, so a node with many full blocks does
        not re-read them all on every claim - and it is the set of taken blocks a fresh
        claim needs."""
        heads: dict[str, int] | None = None
        if refresh:
            res = await self._txn([], [Range(keys.ipam_affinities_of(self.node)),
                                       Range(keys.full(keys.IPAM_BLOCKS), keys_only=True)])
            kvs: Sequence[KV] = res.ranges[0]
            heads = {keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1]): kv.mod_revision
                     for kv in res.ranges[1]}
            self._block_heads = heads
        else:
            kvs = await self._list(keys.ipam_affinities_of(self.node))
        self._affinity_count = len(kvs)
        confirmed: list[str] = []
        pending: list[tuple[str, KV]] = []
        for kv in kvs:
            cidr = keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1])
            state = parse_affinity(kv.value).state
            if state == CONFIRMED:
                confirmed.append(cidr)
            elif state == PENDING:
                pending.append((cidr, kv))
        # Without ``refresh``, blocks already cached stay as they are: if they changed, the
        # next write's compare fails and its failure branch refreshes them; only new ones
        # are read.
        cached = self._affine or {}
        if heads is not None:
            cached = {c: kv for c, kv in cached.items() if heads.get(c) == kv.mod_revision}
        fetch = [c for c in confirmed if c not in cached]
        got: Sequence[KV | None]
        if heads is not None:
            got = (await self._txn([], [Get(keys.ipam_block(c)) for c in fetch])).gets \
                if fetch else ()
        else:
            got = await asyncio.gather(*(self._get(keys.ipam_block(c)) for c in fetch))
        fetched = dict(zip(fetch, got, strict=True))
        affine: dict[str, KV] = {}
        for cidr in confirmed:
            bkv = cached.get(cidr) or fetched.get(cidr)
            if bkv is None:
                log.warning("ipam: confirmed affinity %s of %s has no block (ipam check)",
                            cidr, self.node)
                continue
            blk = self._block(cidr, bkv)
            if blk is not None and blk.affinity == self.affinity:
                affine[cidr] = bkv
                self._others.pop(cidr, None)
        self._affine = affine
        for cidr, akv in pending:
            # A claim of ours that crashed (or a sibling process's claim in flight: the
            # steps are idempotent, so finishing it twice is harmless).
            pool = inputs.pool_of(cidr)
            usable = pool is not None and not pool.disabled \
                and pool.node_selector(inputs.node_labels)
            await self._finish_claim(cidr, akv, create=usable)
        return self._affine

    async def _ensure_affine(self, inputs: IpamInputs) -> dict[str, KV]:
        if self._affine is None:
            return await self._load_affinities(inputs)
        return self._affine

    # -- claiming ----------------------------------------------------------------------

    async def _claim(self, cidr: str, adopt: KV | None = None) -> bool:
        """Claim ``cidr`` for this node (steps 1-3). False if another node has it."""
        akey = keys.ipam_affinity(self.node, cidr)
        res = await self._txn([Compare(akey, "create", "==", 0)],
                              [Put(akey, affinity_value(PENDING, self._now()))], [Get(akey)])
        if res.succeeded:
            akv = KV(akey, b"", res.revision, res.revision, 1)
        else:
            existing = res.gets[0]
            if existing is None:
                return False  # deleted in between; let the caller pick again
            akv = existing
            state = parse_affinity(existing.value).state
            if state == PENDING_DELETION:
                return False
        hooks.reached("after_pending_affinity")
        self.stats.claims += 1
        return await self._finish_claim(cidr, akv, create=True, adopt=adopt)

    async def _finish_claim(self, cidr: str, akv: KV, *, create: bool,
                            adopt: KV | None = None) -> bool:
        """Steps 2 and 3 for a pending (or confirmed) affinity ``akv`` of this node."""
        akey, bkey = akv.key, keys.ipam_block(cidr)
        if adopt is None:
            if create:
                blk = Block.new(cidr, self.affinity)
                value = blk.to_json()
                res = await self._txn([Compare(bkey, "create", "==", 0)], [Put(bkey, value)],
                                      [Get(bkey)])
                bkv = KV(bkey, value, res.revision, res.revision, 1) if res.succeeded \
                    else res.gets[0]
            else:
                bkv = await self._get(bkey)
        else:
            bkv = adopt
        if bkv is None:
            # Not allowed to create (pool gone or disabled): abandon the pending claim.
            await self._drop_affinity(akv)
            return False
        try:
            blk = Block.from_json(bkv.value)
        except BlockFormatError as e:
            log.warning("ipam: cannot claim %s, its block is corrupt: %s", cidr, e)
            await self._drop_affinity(akv)
            return False
        if blk.affinity is None and create:
            # An orphaned block (its node was removed): adopt it.
            blk.affinity = self.affinity
            value = blk.to_json()
            res = await self._txn([Compare(bkey, "mod", "==", bkv.mod_revision)],
                                  [Put(bkey, value)], [Get(bkey)])
            if res.succeeded:
                bkv = KV(bkey, value, bkv.create_revision, res.revision, bkv.version + 1)
            else:
                got = res.gets[0]
                if got is None or Block.from_json(got.value).affinity != self.affinity:
                    await self._drop_affinity(akv)
                    return False
                bkv = got
        elif blk.affinity != self.affinity:
            await self._drop_affinity(akv)  # another node won the race for this block
            return False
        hooks.reached("after_block_create")
        hooks.reached("before_confirm")
        if parse_affinity(akv.value).state != CONFIRMED:
            res = await self._txn([Compare(akey, "mod", "==", akv.mod_revision)],
                                  [Put(akey, affinity_value(CONFIRMED, self._now()))],
                                  [Get(akey)])
            if not res.succeeded:
                got = res.gets[0]
                if got is None or parse_affinity(got.value).state != CONFIRMED:
                    return False  # released (node removal) or changed under us
        if self._affine is None:
            self._affine = {}
        self._affine[cidr] = bkv
        self._affine_gen += 1
        self._others.pop(cidr, None)
        log.info("ipam: node %s claimed block %s", self.node, cidr)
        return True

    async def _drop_affinity(self, akv: KV) -> None:
        await self._txn([Compare(akv.key, "mod", "==", akv.mod_revision)], [Delete(akv.key)])

    async def _block_cidrs(self) -> list[str]:
        """Every block's cidr (a keys-only list: one request, no values)."""
        self._count_request()
        kvs, _ = await self._ds.list(keys.full(keys.IPAM_BLOCKS), keys_only=True)
        return [keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1]) for kv in kvs]

    async def _all_blocks(self) -> dict[str, KV]:
        kvs = await self._list(keys.full(keys.IPAM_BLOCKS))
        out: dict[str, KV] = {}
        for kv in kvs:
            cidr = keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1])
            out[cidr] = kv
            self._remember(kv, cidr)
        return out

    async def _claim_one(self, inputs: IpamInputs, version: int, plan: _Plan,
                         why: list[str], *, ahead: bool = False) -> bool:
        """Get one more affine block with room for ``version``. False (and why) if none.

        ``ahead``: the background claim made before this node's blocks run out (see
        `_maybe_claim_ahead`). It claims only a fresh block, only while the node is still
        short of room, never under ``maxBlocksPerHost`` and only in a pool with blocks to
        spare, so it never takes a block another node would otherwise have got.
        Claims are serialised by a lock: an allocation that needs a block while a claim ahead
        is in flight waits for it and then finds its block in `_load_affinities`.
        """
        async with self._claim_lock:
            return await self._claim_one_locked(inputs, version, plan, why, ahead)

    async def _claim_one_locked(self, inputs: IpamInputs, version: int, plan: _Plan,
                                why: list[str], ahead: bool) -> bool:
        # A sibling may have claimed one, another client freed addresses in ours.
        affine = await self._load_affinities(inputs, refresh=True)
        if ahead:
            if not self._short_of_room(affine, inputs, version):
                return False
        elif self._plan_room(affine, inputs, version, plan):
            return True
        pools = inputs.usable_pools(version)
        if not pools:
            why.append(f"no enabled IPv{version} pool selects node {self.node}")
            return False
        cfg = inputs.config
        if ahead and cfg.max_blocks_per_host:
            return False
        if cfg.max_blocks_per_host and self._affinity_count >= cfg.max_blocks_per_host:
            why.append(f"node {self.node} has reached maxBlocksPerHost="
                       f"{cfg.max_blocks_per_host}")
            return False
        # Which blocks exist is all a fresh claim needs: the keys-only list read with the
        # affinities (the values of every block in the cluster would grow with it), and
        # the blocks a pending claim of ours just finished. Orphans to adopt need values:
        # read them only when no fresh block could be claimed.
        existing = set(self._block_heads) | set(affine)
        blocks: dict[str, KV] | None = None
        for pool in pools:
            if ahead and not self._has_blocks_to_spare(pool, existing):
                continue
            block_addresses = 1 << ((32 if pool.version == 4 else 128) - pool.block_size)

            taken = overlaps_existing(existing, pool.block_size, pool.version)

            def skip(c: str, size: int = block_addresses,
                     taken: Callable[[str], bool] = taken) -> bool:
                return taken(c) or len(self._reserved(c, inputs)) >= size
            if await self._claim_fresh(pool, skip, existing):
                if ahead:
                    self.stats.claims_ahead += 1
                return True
            if ahead:
                continue
            if blocks is None:
                blocks = await self._all_blocks() if existing else {}
            for cidr, kv in sorted(blocks.items()):
                if pool.contains(cidr) and (b := self._block(cidr, kv)) is not None \
                        and b.affinity is None \
                        and await self._claim(cidr, adopt=kv):
                    return True
        why.append(f"every block of pools [{pools_text(pools)}] is claimed")
        return False

    async def _claim_fresh(self, pool: PoolSpec, skip: Callable[[str], bool],
                           existing: set[str]) -> bool:
        """Claim a block of ``pool`` that no node has yet (at most 16 tries).

        A node walks the pool from its first free block, unless it lost a race: when
        several nodes claim at the same moment (a cluster booting, nodes filling up at the
        same rate) they all pick the same lowest free block, and all but one would lose
        again on the next one, each loss costing three requests. So a node that lost
        moves on to a random block of the pool and claims from there on (Calico starts
        every claim at a random block). A single node's blocks stay in address order.
        """
        count = block_count(pool.cidr, pool.block_size)
        for _ in range(16):
            start = self._claim_cursor.get(pool.name, 0)
            cidr = next(iter(iter_block_cidrs(pool.cidr, pool.block_size, skip, start)), None)
            if cidr is None:
                return False  # every block of the pool is taken
            if await self._claim(cidr):
                if pool.name in self._claim_cursor:  # carry on after this block
                    net = netaddr.IPNetwork(cidr)
                    self._claim_cursor[pool.name] = \
                        (int(net.first) - int(pool.network.first)) // int(net.size) + 1
                return True
            existing.add(cidr)
            self._claim_cursor[pool.name] = random.randrange(count)
        return False

    @staticmethod
    def _has_blocks_to_spare(pool: PoolSpec, existing: Iterable[str]) -> bool:
        total = block_count(pool.cidr, pool.block_size)
        taken = sum(1 for c in existing if pool.contains(c))
        return total - taken >= AHEAD_MIN_FREE_BLOCKS

    # -- claiming ahead of need ----------------------------------------------------------

    def _short_of_room(self, blocks: Mapping[str, KV], inputs: IpamInputs,
                       version: int) -> bool:
        """True when this node has blocks of ``version`` (of AHEAD_MIN_BLOCK addresses or
        more) and fewer than 1/AHEAD_FRACTION of a block is free in them. No blocks at all
        is not "short": the first block is claimed on demand."""
        free = size = 0
        for cidr in reversed(self._eligible_order(blocks, inputs, version)):
            blk = self._block(cidr, blocks[cidr])
            if blk is None:
                continue
            size = max(size, blk.size)
            free += len(blk.unallocated)
            if size >= AHEAD_MIN_BLOCK and free >= size // AHEAD_FRACTION:
                return False
        return size >= AHEAD_MIN_BLOCK and free < size // AHEAD_FRACTION

    def _maybe_claim_ahead(self, inputs: IpamInputs, versions: Iterable[int]) -> None:
        """After an allocation: if the node is short of room, claim the next block in a
        background task, so that claim's four requests are not on an allocation's path.

        Failure modes: the task fails or is cancelled (shutdown) - the next allocation
        that needs a block claims on demand, and a claim cut short between its steps is
        finished by `_load_affinities` like a crashed one.
        """
        if not self._claim_ahead or (self._ahead_task is not None
                                     and not self._ahead_task.done()):
            return
        affine = self._affine or {}
        for version in versions:
            if self._short_of_room(affine, inputs, version):
                self._ahead_task = asyncio.get_running_loop().create_task(
                    self._run_claim_ahead(inputs, version))
                return

    async def _run_claim_ahead(self, inputs: IpamInputs, version: int) -> None:
        _in_background.set(True)  # this task's context only
        try:
            await self._claim_one(inputs, version, _Plan(), [], ahead=True)
        except Exception as e:  # any failure: the on-demand claim is the fallback
            log.warning("ipam: claiming an IPv%d block ahead for %s failed (the next "
                        "allocation that needs one claims it): %s", version, self.node, e)

    async def aclose(self) -> None:
        """Wait for a claim ahead still in flight (call before closing the datastore)."""
        task, self._ahead_task = self._ahead_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    def _plan_room(self, blocks: Mapping[str, KV], inputs: IpamInputs, version: int,
                   plan: _Plan) -> bool:
        now, cooldown = self._now(), inputs.config.release_cooldown
        for cidr, kv in self._eligible(blocks, inputs, version):
            blk = plan.blocks[cidr][1] if cidr in plan.blocks else self._block(cidr, kv)
            if blk is not None and any(
                    blk.address(o) not in inputs.in_use
                    for o in blk.free_ordinals(now=now, cooldown=cooldown,
                                               reserved=self._reserved(cidr, inputs))):
                return True
        return False

    # -- planning ----------------------------------------------------------------------

    def _eligible(self, blocks: Mapping[str, KV], inputs: IpamInputs,
                  version: int) -> list[tuple[str, KV]]:
        """``blocks`` of usable pools of ``version``, by pool name then address."""
        return [(c, blocks[c]) for c in self._eligible_order(blocks, inputs, version)]

    def _eligible_order(self, blocks: Mapping[str, KV], inputs: IpamInputs,
                        version: int) -> list[str]:
        """The cidrs of `_eligible` (shared: do not change the list).

        On every allocation (twice), so the order is memoised per (inputs, version, set of
        cidrs): the blocks' values change with each write, their order does not. A lookup
        compares the cidrs with the dict's keys in place instead of building a set of them.
        """
        memo = self._eligible_memo
        if memo is None or memo[0] is not inputs:
            memo = self._eligible_memo = (inputs, [])
        order = None
        for v, cidrs, o in memo[1]:
            if v == version and len(cidrs) == len(blocks) and blocks.keys() == cidrs:
                order = o
                break
        if order is None:
            usable = {p.name for p in inputs.usable_pools(version)}
            found: list[tuple[tuple[str, int], str]] = []
            for cidr, kv in blocks.items():
                pool = inputs.pool_of(cidr)
                if pool is not None and pool.name in usable:
                    blk = self._block(cidr, kv)
                    found.append(((pool.name, blk.first if blk else 0), cidr))
            order = [c for _, c in sorted(found)]
            memo[1].insert(0, (version, frozenset(blocks), order))
            del memo[1][16:]
        return order

    def _take_affine(self, plan: _Plan, affine: Mapping[str, KV], n: int,
                     attrs: AllocationAttrs, inputs: IpamInputs, version: int) -> int:
        """`_take` from this node's blocks of ``version``, after those known to be full."""
        order = self._eligible_order(affine, inputs, version)
        head = self._full_head
        i = head[3] if head is not None and head[0] is affine and head[1] is order \
            and head[2] == self._affine_gen else 0
        while i < len(order):
            cidr = order[i]
            kv = affine[cidr]
            shared = self._block(cidr, kv)
            # Full means no free ordinal at all: cooling or reserved ones are free later.
            if shared is not None and shared.unallocated:
                break
            i += 1
        self._full_head = (affine, order, self._affine_gen, i)
        return self._take(plan, [(c, affine[c]) for c in order[i:]], n, attrs, inputs)

    def _take(self, plan: _Plan, candidates: Iterable[tuple[str, KV]], n: int,
              attrs: AllocationAttrs, inputs: IpamInputs) -> int:
        """Assign up to ``n`` addresses from ``candidates`` into ``plan``; how many taken."""
        taken = 0
        now, cooldown = self._now(), inputs.config.release_cooldown
        for cidr, kv in candidates:
            if taken >= n:
                break
            if cidr in plan.blocks:
                base = plan.blocks[cidr][1]
            else:
                shared = self._block(cidr, kv)
                if shared is None or not shared.unallocated:
                    continue
                base = shared
            reserved = self._reserved(cidr, inputs)
            while True:
                blk = base.copy()
                ords = blk.assign(n - taken, attrs, now=now, cooldown=cooldown,
                                  reserved=reserved)
                # Free in the block but still a workload's (released by an operator while
                # its pod runs): pick again without them.
                clash = frozenset(o for o in ords if blk.address(o) in inputs.in_use)
                if not clash:
                    break
                reserved |= clash
            if not ords:
                continue
            if cooldown > 0:
                blk.expire_cooldowns(now, cooldown)
            plan.blocks[cidr] = (kv, blk)
            plan.entries.extend(HandleEntry(cidr, o, blk.sequence[o], blk.address(o))
                                for o in ords)
            taken += len(ords)
        return taken

    def _assignments(self, handle: str, entries: Iterable[HandleEntry]) -> list[Assignment]:
        affine = self._affine or {}
        return [Assignment(address=e.address, prefix_len=int(e.block.rpartition("/")[2]),
                           block=e.block, borrowed=e.block not in affine, seq=e.seq,
                           handle=handle) for e in entries]

    async def _commit(self, plan: _Plan, handle: str, handle_kv: KV | None,
                      record: HandleRecord | None, *, fills: bool = False
                      ) -> tuple[bool, KV | None]:
        """One transaction: every planned block and the handle record (None = delete).

        Returns (committed, the handle's KV now). On a lost compare, caches are refreshed
        from the failure branch's Gets. ``fills``: the plan only assigned addresses.
        """
        hkey = keys.ipam_handle(handle)
        cmps: list[Compare] = []
        succ: list[Op] = []
        fail: list[Op] = []
        values: dict[str, tuple[str, bytes]] = {}
        for cidr, (kv, blk) in plan.blocks.items():
            bkey = keys.ipam_block(cidr)
            cmps.append(Compare(bkey, "mod", "==", kv.mod_revision if kv else 0))
            value = blk.to_json()
            values[cidr] = (bkey, value)
            succ.append(Put(bkey, value))
            fail.append(Get(bkey))
        if handle_kv is None:
            cmps.append(Compare(hkey, "create", "==", 0))
        else:
            cmps.append(Compare(hkey, "mod", "==", handle_kv.mod_revision))
        hvalue = record.to_json() if record is not None and record.entries else None
        succ.append(Put(hkey, hvalue) if hvalue is not None else Delete(hkey))
        fail.append(Get(hkey))
        res = await self._txn(cmps, succ, fail)
        if res.succeeded:
            self.stats.block_writes += len(values)
            self.stats.block_bytes += sum(len(v) for _, v in values.values())
            for cidr, (kv, blk) in plan.blocks.items():
                bkey, value = values[cidr]
                new = KV(bkey, value, kv.create_revision if kv else res.revision,
                         res.revision, (kv.version if kv else 0) + 1)
                self._decoded[cidr] = (res.revision, blk)  # what we wrote is the block now
                self._remember(new, cidr, fills=fills)
            new_h = None if hvalue is None else KV(
                hkey, hvalue, handle_kv.create_revision if handle_kv else res.revision,
                res.revision, (handle_kv.version if handle_kv else 0) + 1)
            self._remember_handle(handle, new_h)
            return True, new_h
        self.stats.conflicts += 1
        for cidr, got in zip(plan.blocks, res.gets[:-1], strict=True):
            self._remember(got, cidr)
        self._remember_handle(handle, res.gets[-1])
        return False, res.gets[-1]

    # -- public API: assignment --------------------------------------------------------

    async def auto_assign(self, handle: str, *, namespace: str, pod: str, num_v4: int = 1,
                          num_v6: int = 0, attrs: Mapping[str, str] | None = None
                          ) -> list[Assignment]:
        """Addresses for ``handle``: ``num_v4`` IPv4 and ``num_v6`` IPv6.

        Idempotent per handle: if the handle already holds addresses, they count toward the
        request and are returned (a CNI ADD retried after a timeout gets the same IPs).
        """
        if not handle:
            raise ValueError("handle is empty")
        if num_v4 < 0 or num_v6 < 0 or num_v4 + num_v6 == 0:
            raise ValueError("ask for at least one address")
        self.stats.assign_calls += 1
        return await self._retrying(
            f"assigning addresses to {handle}",
            lambda: self._auto_assign(handle, namespace, pod, {4: num_v4, 6: num_v6},
                                      dict(attrs or {})))

    async def _auto_assign(self, handle: str, namespace: str, pod: str, want: dict[int, int],
                           extra: dict[str, str]) -> list[Assignment]:
        handle_kv = self._handles.get(handle)
        verified = False  # handle_kv read from etcd by this call
        # Attempts are bounded by count AND time: a block is one CAS unit, so a second
        # allocator writing the same block in a tight loop (two processes of one node) can
        # win many rounds in a row; the loser keeps trying, backing off, for a while.
        deadline = time.monotonic() + CONFLICT_BUDGET
        _attempt = 0
        while _attempt < self._max_attempts or time.monotonic() < deadline:
            _attempt += 1
            inputs = await self._inputs()
            affine = await self._ensure_affine(inputs)
            record = HandleRecord.from_json(handle_kv.value) if handle_kv else \
                HandleRecord(handle, ())
            have = {4: 0, 6: 0}
            for e in record.entries:
                have[6 if ":" in e.address else 4] += 1
            attrs = AllocationAttrs(handle=handle, namespace=namespace, pod=pod,
                                    node=self.node, time=self._now(), extra=extra)
            plan = _Plan()
            borrowed = 0
            for version in (4, 6):
                n = want[version] - have[version]
                if n <= 0:
                    continue
                n -= self._take_affine(plan, affine, n, attrs, inputs, version)
                why: list[str] = []
                claims = 0
                while n > 0 and claims < 8 and await self._claim_one(inputs, version, plan,
                                                                     why):
                    claims += 1
                    affine = self._affine or {}
                    n -= self._take_affine(plan, affine, n, attrs, inputs, version)
                if n > 0 and not inputs.config.strict_affinity:
                    others = await self._all_blocks()
                    # Never a block of ours that is not confirmed (a pending claim).
                    cands = [(c, kv) for c, kv in self._eligible(others, inputs, version)
                             if c not in (self._affine or {})
                             and (b := self._block(c, kv)) is not None
                             and b.affinity != self.affinity]
                    got = self._take(plan, cands, n, attrs, inputs)
                    borrowed += got
                    n -= got
                if n > 0:
                    raise self._exhausted(inputs, version, why)
            if not plan.blocks:  # already satisfied, by the record as this client knows it
                if handle_kv is not None and not verified:
                    # Another client (fabricctl ipam release, check --fix) may have freed
                    # its addresses since: read it once before answering from it.
                    verified = True
                    fresh = await self._get(keys.ipam_handle(handle))
                    if fresh is None or fresh.mod_revision != handle_kv.mod_revision:
                        self._remember_handle(handle, fresh)
                        handle_kv = fresh
                        continue
                return self._assignments(handle, record.entries)
            new_record = HandleRecord(handle, record.entries + tuple(plan.entries))
            hooks.reached("before_alloc_txn")
            ok, handle_kv = await self._commit(plan, handle, handle_kv, new_record,
                                               fills=True)
            if ok:
                hooks.reached("after_alloc_txn")
                self.stats.allocations += len(plan.entries)
                self.stats.borrowed += borrowed
                self._maybe_claim_ahead(inputs, (v for v in (4, 6) if want[v]))
                return self._assignments(handle, new_record.entries)
            # Lost the block to another allocator. Race: two allocators of one node (or
            # a borrower) re-read and pick the same next free address again and again;
            # a short jittered pause breaks the lockstep so the loser cannot starve.
            await self._sleep(random.uniform(0, min(0.02, 0.001 * 2 ** min(_attempt, 8))))
        raise IpamConflictError(
            f"assigning addresses to {handle}: blocks kept changing under us "
            f"({_attempt} attempts over {CONFLICT_BUDGET:.0f} s)")

    def _exhausted(self, inputs: IpamInputs, version: int, why: list[str]) -> IpamError:
        pools = inputs.usable_pools(version)
        reasons = "; ".join(dict.fromkeys(why)) or "the node's blocks are full"
        if inputs.config.strict_affinity:
            tail = "strictAffinity is set, so addresses are not borrowed from other nodes' blocks"
        else:
            tail = "no block of another node has a free address to borrow"
        return PoolExhaustedError(
            f"no free IPv{version} address for node {self.node} in pools "
            f"[{pools_text(pools)}]: {reasons}; {tail}")

    async def assign_ip(self, address: str, handle: str, *, namespace: str, pod: str,
                        attrs: Mapping[str, str] | None = None) -> Assignment:
        """Assign exactly ``address`` to ``handle`` (a requested IP), or say why not."""
        try:
            ip = netaddr.IPAddress(address)
        except (netaddr.AddrFormatError, ValueError) as e:
            raise AddressNotInPoolError(f"{address} is not an IP address") from e
        self.stats.assign_calls += 1
        return await self._retrying(
            f"assigning {address} to {handle}",
            lambda: self._assign_ip(str(ip), handle, namespace, pod, dict(attrs or {})))

    async def _assign_ip(self, address: str, handle: str, namespace: str, pod: str,
                         extra: dict[str, str]) -> Assignment:
        handle_kv = self._handles.get(handle)
        # Attempts are bounded by count AND time: a block is one CAS unit, so a second
        # allocator writing the same block in a tight loop (two processes of one node) can
        # win many rounds in a row; the loser keeps trying, backing off, for a while.
        deadline = time.monotonic() + CONFLICT_BUDGET
        _attempt = 0
        while _attempt < self._max_attempts or time.monotonic() < deadline:
            _attempt += 1
            inputs = await self._inputs()
            pool = inputs.pool_of(address)
            if pool is None or pool.disabled:
                enabled = [p for p in inputs.pools if not p.disabled]
                raise AddressNotInPoolError(
                    f"{address} is outside every enabled IP pool "
                    f"(enabled: {pools_text(enabled)})")
            if inputs.is_reserved(address):
                raise AddressReservedError(f"{address} is reserved by an IPReservation")
            cidr = block_cidr_for(address, pool.cidr, pool.block_size)
            affine = await self._ensure_affine(inputs)
            kv = affine.get(cidr) or self._others.get(cidr)
            if kv is None:
                kv = await self._get(keys.ipam_block(cidr))
                if kv is None:
                    # A block of another size may hold it (the pool's blockSize changed
                    # while blocks existed): use that one, never one overlapping it.
                    existing = set(await self._block_cidrs())
                    ip = netaddr.IPAddress(address)
                    holder = next((c for c in existing
                                   if c != cidr and ip in netaddr.IPNetwork(c)), None)
                    if holder is None:
                        if overlaps_existing(existing, pool.block_size, pool.version)(cidr):
                            raise IpamError(
                                f"{address}: its block {cidr} (blockSize "
                                f"{pool.block_size} of pool {pool.name}) would overlap "
                                f"blocks of another size; request an address inside one")
                        # Nobody owns this block yet: claim it for this node.
                        async with self._claim_lock:
                            await self._claim(cidr)
                        continue
                    cidr, kv = holder, await self._get(keys.ipam_block(holder))
                    if kv is None:
                        continue  # deleted meanwhile: decide again
                self._remember(kv, cidr)
            shared = self._block(cidr, kv)
            if shared is None:
                raise IpamError(f"{address}: block {cidr} is corrupt (run ipam check)")
            blk = shared.copy()
            o = blk.ordinal(address)
            held = blk.attrs(o)
            if held is None and address in inputs.in_use:
                raise AddressInUseError(
                    f"{address} is in use by a workload endpoint (free in block {cidr}: "
                    f"released while its pod runs?)")
            if held is not None:
                if held.handle == handle:
                    return self._assignments(handle, [HandleEntry(
                        cidr, o, blk.sequence[o], address)])[0]
                raise AddressInUseError(
                    f"{address} is in use (handle {held.handle}, pod "
                    f"{held.namespace}/{held.pod} on node {held.node})")
            record = HandleRecord.from_json(handle_kv.value) if handle_kv else \
                HandleRecord(handle, ())
            blk.assign_ordinal(o, AllocationAttrs(handle, namespace, pod, self.node,
                                                  self._now(), extra))
            entry = HandleEntry(cidr, o, blk.sequence[o], address)
            plan = _Plan({cidr: (kv, blk)}, [entry])
            hooks.reached("before_alloc_txn")
            ok, handle_kv = await self._commit(plan, handle, handle_kv,
                                               HandleRecord(handle, (*record.entries, entry)),
                                               fills=True)
            if ok:
                hooks.reached("after_alloc_txn")
                self.stats.allocations += 1
                return self._assignments(handle, [entry])[0]
        raise IpamConflictError(f"assigning {address}: block kept changing "
                                f"({self._max_attempts} attempts)")

    # -- public API: release -----------------------------------------------------------

    async def _block_kvs(self, cidrs: Iterable[str]) -> dict[str, KV | None]:
        affine = self._affine or {}
        out: dict[str, KV | None] = {}
        missing = []
        for c in cidrs:
            kv = affine.get(c) or self._others.get(c)
            if kv is None:
                missing.append(c)
            else:
                out[c] = kv
        got = await asyncio.gather(*(self._get(keys.ipam_block(c)) for c in missing))
        for c, kv in zip(missing, got, strict=True):
            out[c] = kv
            if kv is not None:
                self._remember(kv, c)
        return out

    async def release_by_handle(self, handle: str) -> int:
        """Release every address of ``handle``; how many were freed (unknown handle: 0)."""
        return await self._retrying(f"releasing {handle}", lambda: self._release_handle(handle))

    async def _release_handle(self, handle: str) -> int:
        hkv = self._handles.get(handle) or await self._get(keys.ipam_handle(handle))
        for _attempt in range(self._max_attempts):
            if hkv is None:
                return 0
            try:
                record = HandleRecord.from_json(hkv.value)
            except ValueError:
                record = HandleRecord(handle, ())
            kvs = await self._block_kvs(record.blocks())
            plan = _Plan()
            freed = 0
            for e in record.entries:
                kv = kvs.get(e.block)
                if kv is None:
                    continue
                if e.block not in plan.blocks:
                    shared = self._block(e.block, kv)
                    if shared is None:
                        continue
                    plan.blocks[e.block] = (kv, shared.copy())
                if plan.blocks[e.block][1].release(e.ordinal, handle=handle, seq=e.seq,
                                                   now=self._now()):
                    freed += 1
            ok, hkv = await self._commit(plan, handle, hkv, None)
            if ok:
                hooks.reached("after_release_txn")
                self.stats.releases += freed
                return freed
        raise IpamConflictError(f"releasing {handle}: blocks kept changing "
                                f"({self._max_attempts} attempts)")

    async def release_ips(self, addresses: Iterable[str], *,
                          seqs: Mapping[str, int] | None = None) -> list[str]:
        """Release addresses whoever holds them; the ones actually freed are returned.

        With ``seqs`` an address is only freed while its sequence number still matches.
        """
        addrs = [str(netaddr.IPAddress(a)) for a in addresses]
        seqs = {str(netaddr.IPAddress(k)): v for k, v in (seqs or {}).items()}
        out: list[str] = []
        for a in addrs:
            if await self._release_one(a, seqs.get(a)):
                out.append(a)
        return out

    async def _release_one(self, address: str, seq: int | None) -> bool:
        return await self._retrying(f"releasing {address}",
                                    lambda: self._release_ip(address, seq))

    async def _find_block(self, address: str) -> str | None:
        inputs = await self._inputs()
        pool = inputs.pool_of(address)
        if pool is not None:
            cidr = block_cidr_for(address, pool.cidr, pool.block_size)
            kvs = await self._block_kvs([cidr])
            if kvs.get(cidr) is not None:
                return cidr
        ip = netaddr.IPAddress(address)
        for cidr in await self._all_blocks():
            if ip in netaddr.IPNetwork(cidr):
                return cidr
        return None

    async def _release_ip(self, address: str, seq: int | None) -> bool:
        cidr = await self._find_block(address)
        if cidr is None:
            return False
        for _attempt in range(self._max_attempts):
            kv = (await self._block_kvs([cidr]))[cidr]
            shared = None if kv is None else self._block(cidr, kv)
            if kv is None or shared is None:
                return False
            blk = shared.copy()
            o = blk.ordinal(address)
            held = blk.attrs(o)
            if held is None:
                return False
            handle = held.handle
            hkv = self._handles.get(handle) or await self._get(keys.ipam_handle(handle))
            record = HandleRecord.from_json(hkv.value) if hkv else HandleRecord(handle, ())
            if not blk.release(o, seq=seq, now=self._now()):
                return False
            ok, _ = await self._commit(_Plan({cidr: (kv, blk)}), handle, hkv,
                                       record.without(cidr, o))
            if ok:
                self.stats.releases += 1
                return True
        raise IpamConflictError(f"releasing {address}: block kept changing")

    # -- public API: queries and node removal ------------------------------------------

    async def affine_blocks(self) -> list[str]:
        """The blocks this node owns (confirmed affinity), in address order."""
        async def run() -> list[str]:
            kvs = await self._list(keys.ipam_affinities_of(self.node))
            out = [keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1]) for kv in kvs
                   if parse_affinity(kv.value).state == CONFIRMED]
            return sorted(out, key=lambda c: (netaddr.IPNetwork(c).version,
                                              int(netaddr.IPNetwork(c).first)))
        return await self._retrying("listing affine blocks", run)

    async def borrowed_addresses(self) -> list[str]:
        """Addresses this node holds inside blocks it does not own (advertised as /32, /128)."""
        async def run() -> list[str]:
            out: list[netaddr.IPAddress] = []
            for cidr, kv in (await self._all_blocks()).items():
                blk = self._block(cidr, kv)
                if blk is None:
                    continue
                if blk.affinity == self.affinity:
                    continue
                out.extend(netaddr.IPAddress(blk.address(o)) for o, at in blk.allocated()
                           if at.node == self.node)
            return [str(a) for a in sorted(out, key=lambda a: (a.version, int(a)))]
        return await self._retrying("listing borrowed addresses", run)

    async def release_node(self, node: str) -> NodeRelease:
        return await self._retrying(f"releasing node {node}",
                                    lambda: release_node(self._ds, node, now=self._now))


def overlaps_existing(existing: set[str], block_size: int,
                      version: int) -> Callable[[str], bool]:
    """Whether a block cidr of ``block_size`` and ``version`` overlaps a block in ``existing``
    (read at each call, so cidrs added later of the same size count).

    Blocks of another size exist when a pool's blockSize was changed while it had blocks
    (etcd takes any valid value); a block overlapping them would hand out their addresses
    a second time. Without such blocks this is a set lookup."""
    bigger: set[int] = set()  # prefix lengths of existing blocks that may contain one
    inside: set[str] = set()  # candidates that contain an existing smaller block
    for c in existing:
        net, _, plen = c.rpartition("/")
        if (":" in net) != (version == 6) or int(plen) == block_size:
            continue
        if int(plen) < block_size:
            bigger.add(int(plen))
        else:
            inside.add(str(netaddr.IPNetwork(f"{net}/{block_size}").cidr))
    if not bigger and not inside:
        return existing.__contains__

    def overlaps(cidr: str) -> bool:
        if cidr in existing or cidr in inside:
            return True
        net = cidr.rpartition("/")[0]
        return any(str(netaddr.IPNetwork(f"{net}/{p}").cidr) in existing for p in bigger)
    return overlaps


@dataclass(frozen=True)
class NodeRelease:
    deleted_blocks: tuple[str, ...]  # empty blocks removed
    orphaned_blocks: tuple[str, ...]  # blocks with allocations left, now without affinity
    still_allocated: tuple[str, ...]  # their addresses: `ipam check` reports them


async def release_node(ds: Datastore, node: str, *,
                       now: Callable[[], float] = time.time) -> NodeRelease:
    """Node removal: mark each affinity pendingDeletion, then delete or orphan its block.

    An empty block is deleted together with the affinity (one transaction); a block that
    still has allocations loses its affinity (so another node may adopt it) and its
    addresses are left for `ipam check` to report. Idempotent; a crash after marking
    leaves pendingDeletion affinities that the next call or ``check --fix`` finishes.
    """
    kvs, _ = await ds.list(keys.ipam_affinities_of(node))
    deleted: list[str] = []
    orphaned: list[str] = []
    still: list[str] = []
    for akv in kvs:
        cidr = keys.segment_to_cidr(akv.key.rsplit("/", 1)[-1])
        res = await ds.txn([Compare(akv.key, "mod", "==", akv.mod_revision)],
                           [Put(akv.key, affinity_value(PENDING_DELETION, now()))])
        if not res.succeeded:
            cur = await ds.get(akv.key)
            if cur is None:
                continue
        hooks.reached("after_pending_deletion")
        outcome = await finish_block_release(ds, node, cidr)
        if outcome == "deleted":
            deleted.append(cidr)
        elif outcome is not None:
            orphaned.append(cidr)
            still.extend(outcome)
    return NodeRelease(tuple(deleted), tuple(orphaned), tuple(still))


async def finish_block_release(ds: Datastore, node: str, cidr: str,
                               attempts: int = 10) -> str | list[str] | None:
    """Drop ``node``'s affinity to ``cidr`` and its block: "deleted", the addresses left
    allocated in the now unaffined block, or None if the block was not the node's."""
    akey, bkey = keys.ipam_affinity(node, cidr), keys.ipam_block(cidr)
    for _ in range(attempts):
        bkv = await ds.get(bkey)
        blk = None
        if bkv is not None:
            try:
                blk = Block.from_json(bkv.value)
            except BlockFormatError:
                blk = None
        if bkv is None or blk is None or blk.affinity != affinity_of(node):
            await ds.txn([], [Delete(akey)])
            return None
        if blk.is_empty():
            ops: list[Op] = [Delete(bkey), Delete(akey)]
            result: str | list[str] = "deleted"
        else:
            blk.affinity = None
            ops = [Put(bkey, blk.to_json()), Delete(akey)]
            result = [blk.address(o) for o, _ in blk.allocated()]
        res = await ds.txn([Compare(bkey, "mod", "==", bkv.mod_revision)], ops)
        if res.succeeded:
            return result
    raise IpamConflictError(f"releasing block {cidr} of node {node}: block kept changing")


async def delete_pool(ds: Datastore, name: str) -> None:
    """Delete IPPool ``name`` with its empty blocks and their affinities, in one transaction.

    Refused (`PoolInUseError`) while any block of the pool has an allocated address.
    A block claimed between our read and the transaction makes the compare fail; we retry.
    """
    pkey = keys.ippool(name)
    for _ in range(10):
        pkv = await ds.get(pkey)
        if pkv is None:
            raise IpamError(f"ippool {name} does not exist")
        pool = next((p for p in await load_pools(ds) if p.name == name), None)
        blocks, _ = await ds.list(keys.full(keys.IPAM_BLOCKS))
        affs, _ = await ds.list(keys.full(keys.IPAM_AFFINITIES))
        cmps: list[Compare] = [Compare(pkey, "mod", "==", pkv.mod_revision)]
        ops: list[Op] = []
        in_use = 0
        used_blocks = 0
        mine: list[str] = []
        for kv in blocks:
            cidr = keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1])
            if pool is None or not pool.contains(cidr):
                continue
            mine.append(cidr)
            try:
                n = Block.from_json(kv.value).in_use()
            except BlockFormatError:
                n = 1
            if n:
                in_use += n
                used_blocks += 1
            cmps.append(Compare(kv.key, "mod", "==", kv.mod_revision))
            ops.append(Delete(kv.key))
        if in_use:
            raise PoolInUseError(
                f"ippool {name} still has {in_use} allocated address(es) in {used_blocks} "
                f"block(s); disable it, release them (fabricctl ipam release / delete the "
                f"pods) and delete again")
        seg = {keys.cidr_to_segment(c) for c in mine}
        ops.extend(Delete(kv.key) for kv in affs if kv.key.rsplit("/", 1)[-1] in seg)
        ops.append(Delete(pkey))
        res = await ds.txn(cmps, ops)
        if res.succeeded:
            return
    raise IpamConflictError(f"deleting ippool {name}: its blocks kept changing")


__all__ = [
    "AddressInUseError",
    "AddressNotInPoolError",
    "AddressReservedError",
    "Assignment",
    "IpamClient",
    "IpamError",
    "IpamStats",
    "NodeRelease",
    "PoolExhaustedError",
    "PoolInUseError",
    "PoolSpec",
    "delete_pool",
    "release_node",
]
