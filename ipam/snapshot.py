"""A consistent, read-only picture of everything IPAM-related in etcd, for check and show.

Owns nothing durable: `load_snapshot` reads the whole ``/l3fabric/v1/`` prefix in ONE range
request, so blocks, handles, affinities, nodes and workloads all come from the same etcd
revision (a block and its handle are always seen together, as they are written together).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import netaddr

from datastore import keys, model
from datastore.client import KV, Datastore
from ipam.affinity import AffinityState, parse_affinity
from ipam.block import Block, BlockFormatError
from ipam.inputs import pool_spec
from ipam.values import HandleRecord, PoolSpec

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    revision: int = 0
    blocks: dict[str, KV] = field(default_factory=dict)  # cidr -> KV
    parsed: dict[str, Block] = field(default_factory=dict)  # cidr -> block (valid ones)
    corrupt_blocks: dict[str, str] = field(default_factory=dict)  # cidr -> problem
    handles: dict[str, KV] = field(default_factory=dict)
    handle_records: dict[str, HandleRecord] = field(default_factory=dict)
    affinities: dict[tuple[str, str], tuple[KV, AffinityState]] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    workload_ips: set[str] = field(default_factory=set)
    workloads: dict[str, tuple[KV, model.WorkloadEndpoint]] = field(default_factory=dict)
    pools: list[PoolSpec] = field(default_factory=list)
    reservations: list[str] = field(default_factory=list)

    def pool_of(self, cidr: str) -> PoolSpec | None:
        for p in self.pools:
            if p.contains(cidr):
                return p
        return None


def build_snapshot(kvs: list[KV], revision: int) -> Snapshot:
    s = Snapshot(revision=revision)
    for kv in kvs:
        try:
            rel = keys.relative(kv.key)
        except ValueError:
            continue
        last = rel.rsplit("/", 1)[-1]
        if rel.startswith(keys.IPAM_BLOCKS):
            cidr = keys.segment_to_cidr(last)
            s.blocks[cidr] = kv
            try:
                s.parsed[cidr] = Block.from_json(kv.value)
            except BlockFormatError as e:
                s.corrupt_blocks[cidr] = str(e)
        elif rel.startswith(keys.IPAM_HANDLES):
            handle = rel[len(keys.IPAM_HANDLES):]
            s.handles[handle] = kv
            with contextlib.suppress(ValueError):
                s.handle_records[handle] = HandleRecord.from_json(kv.value)
        elif rel.startswith(keys.IPAM_AFFINITIES):
            parts = rel[len(keys.IPAM_AFFINITIES):].split("/")
            if len(parts) == 2:
                s.affinities[(parts[0], keys.segment_to_cidr(parts[1]))] = (
                    kv, parse_affinity(kv.value))
        elif rel.startswith(keys.NODES):
            s.nodes.add(rel[len(keys.NODES):])
        elif rel.startswith(keys.WORKLOADS):
            try:
                res = model.decode(kv.key, kv.value)
            except ValueError as e:
                log.warning("ipam: unreadable workload %s: %s", kv.key, e)
                continue
            if isinstance(res, model.WorkloadEndpoint):
                s.workloads[rel] = (kv, res)
                s.workload_ips.update(str(netaddr.IPNetwork(str(n)).ip)
                                      for n in res.spec.ip_networks)
        elif rel.startswith(keys.IPPOOLS):
            try:
                res = model.decode(kv.key, kv.value)
            except ValueError:
                continue
            if isinstance(res, model.IPPool):
                s.pools.append(pool_spec(res))
        elif rel.startswith(keys.IPAM_RESERVATIONS):
            try:
                res = model.decode(kv.key, kv.value)
            except ValueError:
                continue
            if isinstance(res, model.IPReservation):
                s.reservations.extend(str(c) for c in res.spec.reserved_cidrs)
    s.pools.sort(key=lambda p: p.name)
    return s


async def load_snapshot(ds: Datastore) -> Snapshot:
    kvs, revision = await ds.list(keys.PREFIX)
    return build_snapshot(kvs, revision)
