"""Removing a node from the cluster: everything l3fabric holds for it in etcd.

Owned here: the order. The node's agent must be stopped first (``fabric-agent --cleanup``
on the node withdraws its routes and stops its BGP speaker); otherwise it would register
its Node again. Then, each step idempotent so a failed removal can simply be re-run:

1. its WorkloadEndpoints (``workloads/<node>/``): policy sets and peers forget its pods;
2. the addresses its pods hold, by handle (found from the allocation attributes, which
   name the node): no address stays allocated to a pod that cannot exist any more;
3. its affinities and now-empty blocks (`release_node`): the blocks' routes are withdrawn
   everywhere and the space goes back to the pools;
4. its NodeStatus and its Node.
"""

from __future__ import annotations

from dataclasses import dataclass

from datastore import keys
from datastore.client import Datastore
from ipam.allocator import IpamClient, release_node
from ipam.inputs import EtcdInputs
from ipam.snapshot import load_snapshot


@dataclass(frozen=True)
class NodeRemoval:
    endpoints: int
    handles: int
    addresses: int
    deleted_blocks: tuple[str, ...]
    orphaned_blocks: tuple[str, ...]
    node_existed: bool

    def __str__(self) -> str:
        return (f"{self.endpoints} workload endpoint(s) deleted, {self.addresses} address(es) "
                f"of {self.handles} handle(s) released, {len(self.deleted_blocks)} block(s) "
                f"released" + (f", {len(self.orphaned_blocks)} block(s) still in use left "
                               f"without affinity" if self.orphaned_blocks else ""))


async def remove_node(ds: Datastore, node: str) -> NodeRemoval:
    weps, _ = await ds.list(keys.workloads_of(node), keys_only=True)
    for kv in weps:
        await ds.delete(kv.key)

    snap = await load_snapshot(ds)
    handles = sorted({attrs.handle for blk in snap.parsed.values()
                      for _, attrs in blk.allocated() if attrs.node == node})
    ipam = IpamClient(ds, node, claim_ahead=False, inputs=EtcdInputs(ds, node))
    released = 0
    try:
        for h in handles:
            released += await ipam.release_by_handle(h)
    finally:
        await ipam.aclose()

    rel = await release_node(ds, node)
    await ds.delete(keys.node_status(node))
    existed = await ds.delete(keys.node(node))
    return NodeRemoval(len(weps), len(handles), released, rel.deleted_blocks,
                       rel.orphaned_blocks, existed)
