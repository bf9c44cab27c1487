"""What a node announces (DESIGN §5), computed from the agent's mirror of etcd. Pure.

- every block affine to the node with a *confirmed* affinity → its prefix;
- every address the node holds inside a block whose affinity is not this node (a
  borrowed address) → a /32 (/128 for IPv6).

The inputs are what ``felix_like.calc.decode_value`` puts in the mirror: affinities as
``calc.Affinity`` (anything with ``node``, ``cidr``, ``state``) under
``ipam/affinities/<node>/``, and blocks as `BlockSummary` under ``ipam/blocks/`` (the agent's
decoder calls `decode_block`, which keeps only what export needs, so that the mirror does
not hold every allocation's attributes). Because the agent recomputes on every datastore
event, an export change goes out as soon as IPAM changes: no timer.

Also here: the import filter's inputs (`pool_cidrs`) from the same mirror.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datastore import keys, model
from ipam.block import Block, node_of_affinity

CONFIRMED = "confirmed"


@dataclass(frozen=True)
class BlockSummary:
    """The part of an IPAM block that export needs: its owner and who holds which address."""

    cidr: str
    node: str | None  # the affinity's node; None for an orphaned block
    holders: tuple[tuple[str, str], ...]  # (address, node) for addresses held by other nodes


def decode_block(value: bytes | str) -> BlockSummary:
    """Decode an ``ipam/blocks/...`` value (raises `ipam.block.BlockFormatError`)."""
    blk = Block.from_json(value)
    owner = node_of_affinity(blk.affinity)
    holders = tuple((blk.address(o), at.node) for o, at in blk.allocated()
                    if at.node and at.node != owner)
    return BlockSummary(cidr=blk.cidr, node=owner, holders=holders)


def _host(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    return f"{ip}/{ip.max_prefixlen}"


def confirmed_blocks(node: str, state: Mapping[str, Any]) -> set[str]:
    prefix = keys.ipam_affinities_of(node)
    out: set[str] = set()
    for k, v in state.items():
        if k.startswith(prefix) and getattr(v, "state", None) == CONFIRMED:
            out.add(str(ipaddress.ip_network(v.cidr, strict=False)))
    return out


def borrowed_addresses(node: str, state: Mapping[str, Any]) -> set[str]:
    blocks_prefix = keys.full(keys.IPAM_BLOCKS)
    out: set[str] = set()
    for k, v in state.items():
        if k.startswith(blocks_prefix) and isinstance(v, BlockSummary) and v.node != node:
            out.update(_host(addr) for addr, holder in v.holders if holder == node)
    return out


def export_prefixes(node: str, state: Mapping[str, Any]) -> set[str]:
    """Everything ``node`` announces: its confirmed blocks and its borrowed addresses."""
    return confirmed_blocks(node, state) | borrowed_addresses(node, state)


def pool_cidrs(state: Mapping[str, Any]) -> list[str]:
    """Every pool's CIDR, disabled or not: ``disabled`` stops new addresses, while the
    pods that hold addresses in the pool must stay reachable from the other nodes (and
    disabling the pool is the first step before deleting it)."""
    prefix = keys.full(keys.IPPOOLS)
    return sorted(str(v.spec.cidr) for k, v in state.items()
                  if k.startswith(prefix) and isinstance(v, model.IPPool))
