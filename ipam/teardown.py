"""Taking back what a removed node or a deleted pool holds in IPAM, from any process.

Owned here: the cluster-side releases, which no node's allocator makes for itself:
`release_node` (a node's affinities and blocks, for node removal and ``fabricctl``),
`finish_block_release` (one block of a node, also ``ipam check --fix``'s repair) and
`delete_pool`. Each step compares revisions and is idempotent, so a crash or a lost race
is finished by running it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from datastore import keys
from datastore.client import Compare, Datastore, Delete, Op, Put
from ipam import crashpoints
from ipam.affinity import PENDING_DELETION, affinity_value
from ipam.block import Block, BlockFormatError, affinity_of
from ipam.inputs import load_pools
from ipam.values import IpamConflictError, IpamError, PoolInUseError


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
        crashpoints.reached("after_pending_deletion")
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
