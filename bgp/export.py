"""What a node announces (docs/architecture.md §8), computed from the agent's `ClusterState`. Pure.

- every block affine to the node with a *confirmed* affinity → its prefix;
- every address the node holds inside a block whose affinity is not this node (a
  borrowed address) → a /32 (/128 for IPv6).

Blocks reach the state as `BlockSummary` (the agent's decoder calls `decode_block`, which
keeps only what export needs, so that the state does not hold every allocation's
attributes); the state indexes confirmed affinities and borrowed addresses by node, so
each call costs what the node holds, not what the cluster holds. Because the agent
recomputes on every datastore event, an export change goes out as soon as IPAM changes:
no timer.

Also here: the import filter's inputs (`pool_cidrs`) from the same state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipam.block import Block, node_of_affinity

if TYPE_CHECKING:  # the state imports this module for BlockSummary
    from felix_like.state import ClusterState


@dataclass(frozen=True)
class BlockSummary:
    """The part of an IPAM block that export needs: its owner and who holds which address."""

    cidr: str
    node: str | None  # the affinity's node; None for an orphaned block
    holders: tuple[tuple[str, str], ...]  # (address, node) for addresses held by other nodes
    free: int | None = None  # addresses not allocated (None: not known)


def decode_block(value: bytes | str) -> BlockSummary:
    """Decode an ``ipam/blocks/...`` value (raises `ipam.block.BlockFormatError`)."""
    blk = Block.from_json(value)
    owner = node_of_affinity(blk.affinity)
    holders = tuple((blk.address(o), at.node) for o, at in blk.allocated()
                    if at.node and at.node != owner)
    return BlockSummary(cidr=blk.cidr, node=owner, holders=holders,
                        free=len(blk.unallocated))


def confirmed_blocks(node: str, state: ClusterState) -> set[str]:
    """``node``'s confirmed blocks, as normalised prefixes."""
    return {str(ipaddress.ip_network(c, strict=False)) for c in state.confirmed_blocks(node)}


def export_prefixes(node: str, state: ClusterState) -> set[str]:
    """Everything ``node`` announces: its confirmed blocks and its borrowed addresses."""
    return confirmed_blocks(node, state) | state.borrowed_addresses(node)


def pool_cidrs(state: ClusterState) -> list[str]:
    """Every pool's CIDR, disabled or not: ``disabled`` stops new addresses, while the
    pods that hold addresses in the pool must stay reachable from the other nodes (and
    disabling the pool is the first step before deleting it)."""
    return sorted(str(p.spec.cidr) for p in state.pools.values())
