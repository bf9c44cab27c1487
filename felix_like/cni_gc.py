"""CNI GC: free every attachment of a network on this node that the runtime no longer
lists, found in etcd (endpoints, IPAM handles) and in the kernel (host veths, by the alias
that names their attachment)."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

from cni.protocol import CniRequest
from datastore import keys
from datastore.client import Datastore, DatastoreError
from felix_like import plumbing
from felix_like.cni_base import (
    EndpointSink,
    HandleLocks,
    IPInterface,
    datastore_error,
    decode_wep,
    delegated,
    handle_for,
    log,
    owns_pod_routes,
)
from felix_like.cni_delegate import exec_ipam_quiet
from felix_like.cni_ipam import CniIpam
from felix_like.workloads import WorkloadStore
from ipam.block import Block, BlockFormatError
from ipam.values import HandleRecord


@dataclass
class Leftover:
    """What GC found of one attachment to remove."""

    endpoint: tuple[str, str] | None = None  # (key, containerID)
    veths: dict[str, tuple[IPInterface, ...]] = field(default_factory=dict)



class AttachmentGc:
    """GC of node ``node``'s attachments."""

    def __init__(self, node: str, ds: Datastore, addresses: CniIpam, store: WorkloadStore,
                 locks: HandleLocks, *, node_netns: str | None,
                 dataplane: EndpointSink | None) -> None:
        self.node = node
        self.ds = ds
        self.node_netns = node_netns
        self.dataplane = dataplane
        self._addresses = addresses
        self._store = store
        self._locks = locks

    async def run(self, req: CniRequest, ipam_only: bool) -> None:
        """Free every attachment of this network on this node that the runtime no longer
        lists, wherever it is found: its endpoint in etcd, its veth in the kernel (by the
        alias that names the attachment, with or without an endpoint), its IPAM handle.
        No list: delete nothing (spec 1.1.0)."""
        if req.valid_attachments is None:
            return
        net = req.network_name
        valid = {handle_for(net, a.container_id, a.ifname)
                 for a in req.valid_attachments}
        # handle -> what of it to remove: its endpoint (key, container) and its veths
        # (name, addresses of the routes through it).
        stale: dict[str, Leftover] = {}
        veths: dict[str, plumbing.VethAttachment | None] = {}
        try:
            if not ipam_only:
                kvs, _ = await self.ds.list(keys.workloads_of(self.node))
                for kv in kvs:
                    w = decode_wep(kv.key, kv.value)
                    if w is None:
                        continue
                    s = w.spec
                    if s.host_interface != plumbing.host_veth_name(net, s.container_id,
                                                                   s.endpoint):
                        continue  # another network's endpoint
                    h = handle_for(net, s.container_id, s.endpoint)
                    if h not in valid:
                        left = stale.setdefault(h, Leftover())
                        left.endpoint = (kv.key, s.container_id)
                        left.veths[s.host_interface] = tuple(
                            ipaddress.ip_interface(str(n)) for n in s.ip_networks)
                veths = await asyncio.to_thread(plumbing.host_veths, self.node_netns)
                for name, att in veths.items():
                    if att is None or att.network != net:
                        continue  # another network's, or not known to be ours
                    h = handle_for(net, att.container_id, att.ifname)
                    if h not in valid:
                        stale.setdefault(h, Leftover()).veths.setdefault(name, ())
            unnamed = {name for name, att in veths.items() if att is None}
            for h in await self._node_handles(net):
                if h not in valid:
                    left = stale.setdefault(h, Leftover())
                    # A veth with no alias (wired by an older l3fabric): its name is the
                    # hash of the handle's parts.
                    left.veths.update((name, ()) for name in _veths_of_handle(net, h)
                                      if name in unnamed)
            freed = 0
            for h, left in sorted(stale.items()):
                # Checked and locked with no await between: an ADD or DEL of ``h`` in
                # progress keeps it; one that comes now waits for this.
                if h in self._locks.busy():
                    continue
                async with self._locks.hold(h):
                    await self._remove_leftover(h, left)
                freed += 1
        except DatastoreError as e:
            raise datastore_error("garbage-collecting attachments", e) from e
        if freed:
            log.info("GC %s: freed %d stale attachment(s)", net, freed)
        if delegated(req):
            await exec_ipam_quiet(req, "GC")

    async def _remove_leftover(self, handle: str, left: Leftover) -> None:
        """GC of one attachment: endpoint, then veths and routes, then addresses."""
        if left.endpoint is not None:
            key, container_id = left.endpoint
            if self.dataplane is not None:
                try:
                    await self.dataplane.endpoint_removed(key)
                except Exception as e:
                    log.warning("GC of %s: dataplane: %s", handle, e)
            await self._store.delete_wep(key, container_id)
        for name, hosts in sorted(left.veths.items()):
            if await asyncio.to_thread(plumbing.unwire_pod, self.node_netns, name, hosts,
                                       host_routes=not owns_pod_routes(self.dataplane)) \
                    and left.endpoint is None:
                log.info("GC of %s: removed veth %s, which had no endpoint", handle, name)
        await self._addresses.release(handle)

    async def _node_handles(self, network: str) -> list[str]:
        """Handles ``<network>.*`` whose addresses are held for this node."""
        kvs, _ = await self.ds.list(keys.ipam_handle(f"{network}."))
        blocks: dict[str, Block | None] = {}
        out = []
        for kv in kvs:
            try:
                record = HandleRecord.from_json(kv.value)
            except ValueError:
                continue
            for e in record.entries:
                if e.block not in blocks:
                    bkv = await self.ds.get(keys.ipam_block(e.block))
                    try:
                        blocks[e.block] = Block.from_json(bkv.value) if bkv else None
                    except (BlockFormatError, ValueError):
                        blocks[e.block] = None
                blk = blocks[e.block]
                attrs = blk.attrs(e.ordinal) if blk is not None else None
                if attrs is not None and attrs.handle == record.handle \
                        and attrs.node == self.node:
                    out.append(record.handle)
                    break
        return out


def _veths_of_handle(network: str, handle: str) -> list[str]:
    """The host veth names handle ``<network>.<containerID>.<ifname>`` may have: both
    parts may hold dots, so every split is a candidate."""
    rest = handle[len(network) + 1:] if handle.startswith(f"{network}.") else ""
    return [plumbing.host_veth_name(network, rest[:i], rest[i + 1:])
            for i, c in enumerate(rest) if c == "."]
