"""Which addresses an allocation takes: the planning half of the allocator, no I/O.

Owned here: `Plan`, the working copies of the blocks one transaction will write and the
handle entries it adds, and `BlockPlanner`, which orders a node's blocks (pool name, then
address), skips those known to be full, and assigns addresses into a plan: never a
reserved ordinal, an address in its release cool-down, or an address a workload endpoint
still uses. Blocks are read through the `BlockCache` and never changed there; a plan
holds copies, and only a committed transaction makes them the cache's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from datastore.kv import KV
from ipam.block import AllocationAttrs, Block
from ipam.blockcache import BlockCache
from ipam.values import HandleEntry, IpamInputs, span


@dataclass
class Plan:
    """Working copies of the blocks one transaction will write."""

    blocks: dict[str, tuple[KV | None, Block]] = field(default_factory=dict)
    entries: list[HandleEntry] = field(default_factory=list)


class BlockPlanner:
    """Plans allocations from the blocks in a `BlockCache`; holds only memos of orders."""

    def __init__(self, cache: BlockCache, now: Callable[[], float]) -> None:
        self._cache = cache
        self._now = now
        # `eligible`'s block orders for the inputs object they were computed with, newest
        # first: (version, the cidrs they order, the order).
        self._eligible_memo: tuple[IpamInputs, list[tuple[int, frozenset[str],
                                                          list[str]]]] | None = None
        # How many blocks at the head of an `eligible` order are known full: (the affine
        # dict and order it was found in, the cache's generation then, the count). A node
        # fills its blocks in order, so without it every allocation would look at every
        # full block. Only a change of a cached block can free room in one; each bumps the
        # cache's generation, except this node's own committed allocations, which only
        # take room away.
        self._full_head: tuple[Mapping[str, KV], list[str], int, int] | None = None
        # `room_order`'s order of every known block: (the inputs it was computed with, the
        # version, the blocks it orders, the order).
        self._room_memo: tuple[IpamInputs, int, frozenset[str], list[str]] | None = None

    def has_room(self, blocks: Mapping[str, KV], inputs: IpamInputs, version: int,
                 plan: Plan) -> bool:
        """Whether ``blocks`` (as ``plan`` left them) have an address ``inputs`` allow."""
        now, cooldown = self._now(), inputs.config.release_cooldown
        for cidr, kv in self.eligible(blocks, inputs, version):
            blk = plan.blocks[cidr][1] if cidr in plan.blocks else self._cache.block(cidr, kv)
            if blk is not None and any(
                    blk.address(o) not in inputs.in_use
                    for o in blk.free_ordinals(now=now, cooldown=cooldown,
                                               reserved=self._cache.reserved(cidr, inputs))):
                return True
        return False

    def eligible(self, blocks: Mapping[str, KV], inputs: IpamInputs,
                 version: int) -> list[tuple[str, KV]]:
        """``blocks`` of usable pools of ``version``, by pool name then address."""
        return [(c, blocks[c]) for c in self.eligible_order(blocks, inputs, version)]

    def eligible_order(self, blocks: Mapping[str, KV], inputs: IpamInputs,
                       version: int) -> list[str]:
        """The cidrs of `eligible` (shared: do not change the list).

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
                    blk = self._cache.block(cidr, kv)
                    found.append(((pool.name, blk.first if blk else 0), cidr))
            order = [c for _, c in sorted(found)]
            memo[1].insert(0, (version, frozenset(blocks), order))
            del memo[1][16:]
        return order

    def room_order(self, room: Mapping[str, int], inputs: IpamInputs,
                   version: int) -> list[str]:
        """The cidrs of ``room`` (free addresses by block) in usable pools of ``version``,
        in `eligible`'s order (pool name, then address), those with room only.

        The order of every block is kept while the pools, the node's labels and the set
        of blocks stay the same (an agent makes new inputs after every change it sees)."""
        memo = self._room_memo
        if memo is None or memo[1] != version or len(memo[2]) != len(room) \
                or (memo[0] is not inputs and (memo[0].pools != inputs.pools
                                               or memo[0].node_labels != inputs.node_labels)) \
                or room.keys() != memo[2]:
            usable = {p.name for p in inputs.usable_pools(version)}
            found: list[tuple[tuple[str, int], str]] = []
            for cidr in room:
                pool = inputs.pool_of(cidr)
                if pool is not None and pool.name in usable:
                    found.append(((pool.name, span(cidr)[1]), cidr))
            memo = self._room_memo = (inputs, version, frozenset(room),
                                      [c for _, c in sorted(found)])
        return [c for c in memo[3] if room.get(c)]

    def take_affine(self, plan: Plan, affine: Mapping[str, KV], n: int,
                    attrs: AllocationAttrs, inputs: IpamInputs, version: int) -> int:
        """`take` from this node's blocks of ``version``, after those known to be full."""
        order = self.eligible_order(affine, inputs, version)
        head = self._full_head
        generation = self._cache.generation
        i = head[3] if head is not None and head[0] is affine and head[1] is order \
            and head[2] == generation else 0
        while i < len(order):
            cidr = order[i]
            kv = affine[cidr]
            shared = self._cache.block(cidr, kv)
            # Full means no free ordinal at all: cooling or reserved ones are free later.
            if shared is not None and shared.unallocated:
                break
            i += 1
        self._full_head = (affine, order, generation, i)
        return self.take(plan, [(c, affine[c]) for c in order[i:]], n, attrs, inputs)

    def take(self, plan: Plan, candidates: Iterable[tuple[str, KV]], n: int,
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
                shared = self._cache.block(cidr, kv)
                if shared is None or not shared.unallocated:
                    continue
                base = shared
            reserved = self._cache.reserved(cidr, inputs)
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

