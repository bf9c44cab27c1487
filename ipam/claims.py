"""Claiming blocks for one node: Calico's three steps, resumable, and claims ahead of need.

Claiming a block (each step is idempotent, so a retry after an ambiguous timeout or a
crash resumes instead of duplicating):

1. ``ipam/affinities/<node>/<cidr>`` = pending (create only if absent);
2. create the block with ``affinity: node:<node>`` (create only if absent). A lost race
   against another node means that node owns it: delete our pending affinity, next cidr;
3. pending -> confirmed (compare the pending revision).

Pending affinities are never used for allocation. A node that crashed between the steps
finds its pending affinities at the next allocation and finishes (or abandons) the claim
(`BlockClaims.load_affinities`); ``ipam check --fix`` cleans up after nodes that never
come back.

Owned here: which blocks this node claims and when (on demand, or in a background task
ahead of need), the order fresh claims walk a pool in, and the lock that serialises this
node's claims. The blocks themselves live in the `BlockCache`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

import netaddr

from datastore import keys
from datastore.client import KV, Compare, Delete, Get, Put, Range
from ipam import crashpoints
from ipam.affinity import CONFIRMED, PENDING, PENDING_DELETION, affinity_value, parse_affinity
from ipam.block import Block, BlockFormatError, block_count, iter_block_cidrs
from ipam.blockcache import BlockCache
from ipam.counted import CountedStore, IpamStats, in_background
from ipam.planner import BlockPlanner, Plan
from ipam.values import IpamInputs, PoolSpec, pools_text

log = logging.getLogger(__name__)

# Claim the next block in the background once this node's blocks of a family have fewer
# than 1/AHEAD_FRACTION of a block free, blocks of at least AHEAD_MIN_BLOCK addresses only,
# and only while the pool has at least AHEAD_MIN_FREE_BLOCKS unclaimed blocks (small pools
# are left to claims on demand and borrowing).
AHEAD_FRACTION = 4
AHEAD_MIN_BLOCK = 16
AHEAD_MIN_FREE_BLOCKS = 16


class BlockClaims:
    """The claims of one node. Claims are serialised: one ahead of need (a background
    task) or on demand, never two at once."""

    def __init__(self, store: CountedStore, cache: BlockCache, planner: BlockPlanner,
                 node: str, *, now: Callable[[], float], stats: IpamStats,
                 claim_ahead: bool) -> None:
        self._store = store
        self._cache = cache
        self._planner = planner
        self.node = node
        self._now = now
        self.stats = stats
        self._claim_ahead = claim_ahead
        self._lock = asyncio.Lock()
        self._ahead_task: asyncio.Task[None] | None = None
        # Per pool, the block index fresh claims start at, once this node lost a race
        # for a block (`_claim_fresh`); absent: the pool's first free block.
        self._claim_cursor: dict[str, int] = {}

    async def load_affinities(self, inputs: IpamInputs, *,
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
            res = await self._store.txn([], [Range(keys.ipam_affinities_of(self.node)),
                                             Range(keys.full(keys.IPAM_BLOCKS), keys_only=True)])
            kvs: Sequence[KV] = res.ranges[0]
            heads = {keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1]): kv.mod_revision
                     for kv in res.ranges[1]}
            self._cache.block_heads = heads
        else:
            kvs = await self._store.list(keys.ipam_affinities_of(self.node))
        self._cache.affinity_count = len(kvs)
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
        cached = self._cache.affine or {}
        if heads is not None:
            cached = {c: kv for c, kv in cached.items() if heads.get(c) == kv.mod_revision}
        fetch = [c for c in confirmed if c not in cached]
        got: Sequence[KV | None]
        if heads is not None:
            got = (await self._store.txn([], [Get(keys.ipam_block(c)) for c in fetch])).gets \
                if fetch else ()
        else:
            got = await asyncio.gather(*(self._store.get(keys.ipam_block(c)) for c in fetch))
        fetched = dict(zip(fetch, got, strict=True))
        affine: dict[str, KV] = {}
        for cidr in confirmed:
            bkv = cached.get(cidr) or fetched.get(cidr)
            if bkv is None:
                log.warning("ipam: confirmed affinity %s of %s has no block (ipam check)",
                            cidr, self.node)
                continue
            blk = self._cache.block(cidr, bkv)
            if blk is not None and blk.affinity == self._cache.affinity:
                affine[cidr] = bkv
                self._cache.others.pop(cidr, None)
        self._cache.affine = affine
        for cidr, akv in pending:
            # A claim of ours that crashed (or a sibling process's claim in flight: the
            # steps are idempotent, so finishing it twice is harmless).
            pool = inputs.pool_of(cidr)
            usable = pool is not None and not pool.disabled \
                and pool.node_selector(inputs.node_labels)
            await self._finish_claim(cidr, akv, create=usable)
        return self._cache.affine

    async def ensure_affine(self, inputs: IpamInputs) -> dict[str, KV]:
        if self._cache.affine is None:
            return await self.load_affinities(inputs)
        return self._cache.affine

    async def claim(self, cidr: str, adopt: KV | None = None) -> bool:
        """Claim ``cidr`` for this node (steps 1-3). False if another node has it."""
        akey = keys.ipam_affinity(self.node, cidr)
        res = await self._store.txn([Compare(akey, "create", "==", 0)],
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
        crashpoints.reached("after_pending_affinity")
        self.stats.claims += 1
        return await self._finish_claim(cidr, akv, create=True, adopt=adopt)

    async def _finish_claim(self, cidr: str, akv: KV, *, create: bool,
                            adopt: KV | None = None) -> bool:
        """Steps 2 and 3 for a pending (or confirmed) affinity ``akv`` of this node."""
        akey, bkey = akv.key, keys.ipam_block(cidr)
        if adopt is None:
            if create:
                blk = Block.new(cidr, self._cache.affinity)
                value = blk.to_json()
                res = await self._store.txn([Compare(bkey, "create", "==", 0)], [Put(bkey, value)],
                                            [Get(bkey)])
                bkv = KV(bkey, value, res.revision, res.revision, 1) if res.succeeded \
                    else res.gets[0]
            else:
                bkv = await self._store.get(bkey)
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
            blk.affinity = self._cache.affinity
            value = blk.to_json()
            res = await self._store.txn([Compare(bkey, "mod", "==", bkv.mod_revision)],
                                        [Put(bkey, value)], [Get(bkey)])
            if res.succeeded:
                bkv = KV(bkey, value, bkv.create_revision, res.revision, bkv.version + 1)
            else:
                got = res.gets[0]
                if got is None or Block.from_json(got.value).affinity != self._cache.affinity:
                    await self._drop_affinity(akv)
                    return False
                bkv = got
        elif blk.affinity != self._cache.affinity:
            await self._drop_affinity(akv)  # another node won the race for this block
            return False
        crashpoints.reached("after_block_create")
        crashpoints.reached("before_confirm")
        if parse_affinity(akv.value).state != CONFIRMED:
            res = await self._store.txn([Compare(akey, "mod", "==", akv.mod_revision)],
                                        [Put(akey, affinity_value(CONFIRMED, self._now()))],
                                        [Get(akey)])
            if not res.succeeded:
                got = res.gets[0]
                if got is None or parse_affinity(got.value).state != CONFIRMED:
                    return False  # released (node removal) or changed under us
        self._cache.claimed(cidr, bkv)
        log.info("ipam: node %s claimed block %s", self.node, cidr)
        return True

    async def _drop_affinity(self, akv: KV) -> None:
        await self._store.txn([Compare(akv.key, "mod", "==", akv.mod_revision)], [Delete(akv.key)])

    async def block_cidrs(self) -> list[str]:
        """Every block's cidr (a keys-only list: one request, no values)."""
        kvs = await self._store.list(keys.full(keys.IPAM_BLOCKS), keys_only=True)
        return [keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1]) for kv in kvs]

    async def _orphan_candidates(self, inputs: IpamInputs) -> dict[str, KV]:
        """Blocks that may be orphans to adopt: the ones the inputs know of (the agent's
        cluster state: a few reads, not every block of the cluster), else every block."""
        if inputs.orphans is None:
            return await self.all_blocks()
        cidrs = sorted(inputs.orphans)
        got = await asyncio.gather(*(self._store.get(keys.ipam_block(c)) for c in cidrs))
        out: dict[str, KV] = {}
        for cidr, kv in zip(cidrs, got, strict=True):
            if kv is not None:
                out[cidr] = kv
                self._cache.remember(kv, cidr)
        return out

    async def all_blocks(self) -> dict[str, KV]:
        kvs = await self._store.list(keys.full(keys.IPAM_BLOCKS))
        out: dict[str, KV] = {}
        for kv in kvs:
            cidr = keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1])
            out[cidr] = kv
            self._cache.remember(kv, cidr)
        return out

    async def claim_one(self, inputs: IpamInputs, version: int, plan: Plan,
                        why: list[str], *, ahead: bool = False) -> bool:
        """Get one more affine block with room for ``version``. False (and why) if none.

        ``ahead``: the background claim made before this node's blocks run out (see
        `maybe_claim_ahead`). It claims only a fresh block, only while the node is still
        short of room, never under ``maxBlocksPerHost`` and only in a pool with blocks to
        spare, so it never takes a block another node would otherwise have got.
        Claims are serialised by a lock: an allocation that needs a block while a claim ahead
        is in flight waits for it and then finds its block in `load_affinities`.
        """
        async with self._lock:
            return await self._claim_one_locked(inputs, version, plan, why, ahead)

    async def _claim_one_locked(self, inputs: IpamInputs, version: int, plan: Plan,
                                why: list[str], ahead: bool) -> bool:
        # A sibling may have claimed one, another client freed addresses in ours.
        affine = await self.load_affinities(inputs, refresh=True)
        if ahead:
            if not self._short_of_room(affine, inputs, version):
                return False
        elif self._planner.has_room(affine, inputs, version, plan):
            return True
        pools = inputs.usable_pools(version)
        if not pools:
            why.append(f"no enabled IPv{version} pool selects node {self.node}")
            return False
        cfg = inputs.config
        if ahead and cfg.max_blocks_per_host:
            return False
        if cfg.max_blocks_per_host and self._cache.affinity_count >= cfg.max_blocks_per_host:
            why.append(f"node {self.node} has reached maxBlocksPerHost="
                       f"{cfg.max_blocks_per_host}")
            return False
        # Which blocks exist is all a fresh claim needs: the keys-only list read with the
        # affinities (the values of every block in the cluster would grow with it), and
        # the blocks a pending claim of ours just finished. Orphans to adopt need values:
        # read them only when no fresh block could be claimed.
        existing = set(self._cache.block_heads) | set(affine)
        blocks: dict[str, KV] | None = None
        for pool in pools:
            if ahead and not self._has_blocks_to_spare(pool, existing):
                continue
            block_addresses = 1 << ((32 if pool.version == 4 else 128) - pool.block_size)

            taken = overlaps_existing(existing, pool.block_size, pool.version)

            def skip(c: str, size: int = block_addresses,
                     taken: Callable[[str], bool] = taken) -> bool:
                return taken(c) or len(self._cache.reserved(c, inputs)) >= size
            if await self._claim_fresh(pool, skip, existing):
                if ahead:
                    self.stats.claims_ahead += 1
                return True
            if ahead:
                continue
            if blocks is None:
                blocks = await self._orphan_candidates(inputs) if existing else {}
            for cidr, kv in sorted(blocks.items()):
                if pool.contains(cidr) and (b := self._cache.block(cidr, kv)) is not None \
                        and b.affinity is None \
                        and await self.claim(cidr, adopt=kv):
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
            if await self.claim(cidr):
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
        for cidr in reversed(self._planner.eligible_order(blocks, inputs, version)):
            blk = self._cache.block(cidr, blocks[cidr])
            if blk is None:
                continue
            size = max(size, blk.size)
            free += len(blk.unallocated)
            if size >= AHEAD_MIN_BLOCK and free >= size // AHEAD_FRACTION:
                return False
        return size >= AHEAD_MIN_BLOCK and free < size // AHEAD_FRACTION

    def maybe_claim_ahead(self, inputs: IpamInputs, versions: Iterable[int]) -> None:
        """After an allocation: if the node is short of room, claim the next block in a
        background task, so that claim's four requests are not on an allocation's path.

        Failure modes: the task fails or is cancelled (shutdown) - the next allocation
        that needs a block claims on demand, and a claim cut short between its steps is
        finished by `load_affinities` like a crashed one.
        """
        if not self._claim_ahead or (self._ahead_task is not None
                                     and not self._ahead_task.done()):
            return
        affine = self._cache.affine or {}
        for version in versions:
            if self._short_of_room(affine, inputs, version):
                self._ahead_task = asyncio.get_running_loop().create_task(
                    self._run_claim_ahead(inputs, version))
                return

    async def _run_claim_ahead(self, inputs: IpamInputs, version: int) -> None:
        in_background.set(True)  # this task's context only
        try:
            await self.claim_one(inputs, version, Plan(), [], ahead=True)
        except Exception as e:  # any failure: the on-demand claim is the fallback
            log.warning("ipam: claiming an IPv%d block ahead for %s failed (the next "
                        "allocation that needs one claims it): %s", version, self.node, e)

    async def aclose(self) -> None:
        """Wait for a claim ahead still in flight (call before closing the datastore)."""
        task, self._ahead_task = self._ahead_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def claim_serialised(self, cidr: str) -> bool:
        """`claim`, after any claim of this node in flight (the block of a requested
        address, which no pool walk chose)."""
        async with self._lock:
            return await self.claim(cidr)


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
