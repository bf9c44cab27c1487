"""One node's cache of the IPAM values it read or wrote last.

Owned here: the node's confirmed blocks (``cidr -> KV``), the blocks of other nodes (or of
none) it has seen, the handles it wrote, every block decoded once per revision, and the
reserved ordinals of a block under the current reservations.

Nothing here is the truth: etcd is. Every write compares the revision cached here, so a
stale entry costs one lost compare, whose failure branch brings it up to date
(`BlockCache.remember`). Failure mode: a corrupt block value is logged and never used.
"""

from __future__ import annotations

import logging

from datastore.kv import KV
from ipam.block import Block, BlockFormatError, affinity_of, reserved_ordinals
from ipam.values import IpamInputs

log = logging.getLogger(__name__)

_HANDLE_CACHE_MAX = 10_000


class BlockCache:
    """The blocks and handles one allocator knows, with the revisions they were read at."""

    def __init__(self, node: str) -> None:
        self.affinity = affinity_of(node)
        self.affine: dict[str, KV] | None = None  # confirmed blocks of this node
        self.affinity_count = 0  # this node's affinities in any state, at the last read
        # Every block's cidr and mod_revision, at the last full re-read of the affinities.
        self.block_heads: dict[str, int] = {}
        self.others: dict[str, KV] = {}  # blocks of other nodes (or none) seen lately
        self.handles: dict[str, KV] = {}
        self._reserved: dict[tuple[str, tuple[str, ...]], frozenset[int]] = {}
        # Decoded blocks by cidr, tagged with the mod_revision they were decoded at: in the
        # steady state a block is decoded never (we cache what we wrote) or once per change.
        self._decoded: dict[str, tuple[int, Block]] = {}
        # Bumped by every change of a cached block that may free room in it: all but this
        # node's own committed allocations, which only take room away (see
        # `BlockPlanner.take_affine`, which skips the blocks known to be full).
        self.generation = 0

    def forget(self) -> None:
        """Drop the blocks and handles (the next call re-reads them)."""
        self.affine = None
        self.others.clear()
        self.handles.clear()

    def known(self, cidr: str) -> KV | None:
        """The cached block ``cidr``, this node's or another's; None if not cached."""
        return (self.affine or {}).get(cidr) or self.others.get(cidr)

    def block(self, cidr: str, kv: KV) -> Block | None:
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

    def remember(self, kv: KV | None, cidr: str, *, fills: bool = False) -> None:
        """Put a block just read or written into the right cache (or drop it if gone).

        ``fills``: ``kv`` is this node's own write of an allocation (the block only lost
        free addresses), so blocks known full stay full (see ``generation``)."""
        if not fills:
            self.generation += 1
        affine = self.affine if self.affine is not None else {}
        blk = None if kv is None else self.block(cidr, kv)
        if kv is None or blk is None:
            affine.pop(cidr, None)
            self.others.pop(cidr, None)
            self._decoded.pop(cidr, None)
            return
        if blk.affinity == self.affinity and cidr in affine:
            affine[cidr] = kv
        else:
            affine.pop(cidr, None)
            self.others[cidr] = kv

    def wrote(self, cidr: str, kv: KV, blk: Block, *, fills: bool) -> None:
        """This node committed ``blk`` as ``kv``: what it wrote is the block now."""
        self._decoded[cidr] = (kv.mod_revision, blk)
        self.remember(kv, cidr, fills=fills)

    def claimed(self, cidr: str, kv: KV) -> None:
        """This node's claim of ``cidr`` is confirmed: the block is one of its own."""
        if self.affine is None:
            self.affine = {}
        self.affine[cidr] = kv
        self.generation += 1
        self.others.pop(cidr, None)

    def remember_handle(self, handle: str, kv: KV | None) -> None:
        if kv is None:
            self.handles.pop(handle, None)
            return
        if len(self.handles) >= _HANDLE_CACHE_MAX:
            self.handles.clear()
        self.handles[handle] = kv

    def reserved(self, cidr: str, inputs: IpamInputs) -> frozenset[int]:
        """The ordinals of block ``cidr`` that the reservations in ``inputs`` cover."""
        key = (cidr, inputs.reservations)
        got = self._reserved.get(key)
        if got is None:
            if len(self._reserved) > 4096:
                self._reserved.clear()
            got = reserved_ordinals(cidr, inputs.reserved_set()) if inputs.reservations \
                else frozenset()
            self._reserved[key] = got
        return got
