"""bgp.export: confirmed blocks and borrowed addresses from the agent's cluster state."""

from __future__ import annotations

from typing import Any

from bgp.export import BlockSummary, decode_block, export_prefixes, pool_cidrs
from datastore import keys, model
from felix_like.state import Affinity, ClusterState
from ipam.block import AllocationAttrs, Block, affinity_of


def pool(name: str, cidr: str, disabled: bool = False) -> model.IPPool:
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "IPPool",
                                "metadata": {"name": name},
                                "spec": {"cidr": cidr, "blockSize": 26, "disabled": disabled}})
    assert isinstance(res, model.IPPool)
    return res


def test_decode_block_keeps_other_nodes_holders_only_and_the_room_left() -> None:
    b = Block.new("10.244.1.0/26", affinity_of("n1"))
    b.assign_ordinal(1, AllocationAttrs("h1", node="n1"))
    b.assign_ordinal(5, AllocationAttrs("h2", node="n2"))
    s = decode_block(b.to_json())
    assert s == BlockSummary("10.244.1.0/26", "n1", (("10.244.1.5", "n2"),), free=62)


def test_exports_confirmed_blocks_and_borrowed_addresses() -> None:
    own = Block.new("10.244.1.0/26", affinity_of("n1"))
    other = Block.new("10.244.2.0/26", affinity_of("n2"))
    other.assign_ordinal(3, AllocationAttrs("h", node="n1"))
    other.assign_ordinal(4, AllocationAttrs("h2", node="n2"))
    state: dict[str, Any] = {
        keys.ipam_affinity("n1", "10.244.1.0/26"): Affinity("n1", "10.244.1.0/26", "confirmed"),
        keys.ipam_affinity("n1", "10.244.3.0/26"): Affinity("n1", "10.244.3.0/26", "pending"),
        keys.ipam_affinity("n2", "10.244.2.0/26"): Affinity("n2", "10.244.2.0/26", "confirmed"),
        keys.ipam_block("10.244.1.0/26"): decode_block(own.to_json()),
        keys.ipam_block("10.244.2.0/26"): decode_block(other.to_json()),
        keys.ippool("a"): pool("a", "10.244.0.0/16"),
        keys.ippool("b"): pool("b", "10.245.0.0/16", disabled=True),
    }
    assert export_prefixes("n1", ClusterState.of(state)) == {"10.244.1.0/26", "10.244.2.3/32"}
    assert export_prefixes("n2", ClusterState.of(state)) == {"10.244.2.0/26"}
    # A disabled pool still imports: its pods keep their routes to the other nodes.
    assert pool_cidrs(ClusterState.of(state)) == ["10.244.0.0/16", "10.245.0.0/16"]
    # The borrowed address is freed: its /32 goes.
    other.release(3)
    state[keys.ipam_block("10.244.2.0/26")] = decode_block(other.to_json())
    assert export_prefixes("n1", ClusterState.of(state)) == {"10.244.1.0/26"}
