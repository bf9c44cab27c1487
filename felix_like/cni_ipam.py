"""Our IPAM as the CNI handler uses it: the addresses of one attachment (ours, or the
delegated plugin's), ``l3fabric-ipam`` ADD and CHECK, and whether STATUS may say yes."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cni import protocol as proto
from cni.protocol import CniError, CniRequest
from datastore import keys
from datastore.client import Datastore, DatastoreError
from felix_like.cni_base import (
    ERR_CHECK_FAILED,
    ERR_IPAM,
    GATEWAY_V4,
    GATEWAY_V6,
    IPAddress,
    IPInterface,
    datastore_error,
    delegated,
    families,
    host_prefix,
    ipam_error,
    log,
    pod_name_for,
)
from felix_like.cni_delegate import exec_ipam, exec_ipam_quiet
from ipam.allocator import IpamClient
from ipam.block import Block, BlockFormatError, affinity_of, block_count, reserved_ordinals
from ipam.values import HandleRecord, IpamError, IpamInputs, PoolSpec


@dataclass(frozen=True)
class Addresses:
    """The addresses an ADD got, and how to give them back."""

    addresses: tuple[IPInterface, ...]  # as the IPAM answered (prefix of pool or subnet)
    delegated: bool



class CniIpam:
    """The IPAM side of the CNI calls of node ``node``."""

    def __init__(self, node: str, ds: Datastore, ipam: IpamClient,
                 now: Callable[[], float]) -> None:
        self.node = node
        self.ds = ds
        self.ipam = ipam
        self._now = now
        # Every IPAM change of this node compare-and-swaps the same block(s): run in
        # parallel they mostly lose to each other and retry (8 ADDs in flight exhausted
        # the allocator's 25 attempts). One at a time, each commits at its first try.
        self._ipam_lock = asyncio.Lock()

    async def assign(self, req: CniRequest, handle: str, namespace: str, pod: str) -> Addresses:
        if delegated(req):
            res = await exec_ipam(req, "ADD")
            parsed = proto.parse_result(res)
            if not parsed.ips:
                await exec_ipam_quiet(req, "DEL")
                raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type} returned no address")
            return Addresses(tuple(ip.address for ip in parsed.ips), delegated=True)
        try:
            if req.requested_ips:
                async with self._ipam_lock:
                    assigned = [await self.ipam.assign_ip(str(ip), handle,
                                                          namespace=namespace, pod=pod)
                                for ip in req.requested_ips]
            else:
                v4, v6 = families(req.config)
                async with self._ipam_lock:
                    assigned = await self.ipam.auto_assign(handle, namespace=namespace,
                                                           pod=pod, num_v4=v4, num_v6=v6)
        except BaseException as e:
            with contextlib.suppress(Exception):
                await self.release_quiet(handle)
            if isinstance(e, Exception):
                raise ipam_error(e) from e
            raise
        addrs = tuple(dict.fromkeys(host_prefix(ipaddress.ip_interface(a.address))
                                    for a in assigned))
        if not addrs:
            raise CniError(ERR_IPAM, f"IPAM handle {handle} holds no address after assignment")
        return Addresses(addrs, delegated=False)

    async def unassign(self, req: CniRequest, handle: str, got: Addresses) -> None:
        if got.delegated:
            await exec_ipam_quiet(req, "DEL")
        else:
            await self.release_quiet(handle)

    async def release_quiet(self, handle: str) -> int:
        async with self._ipam_lock:
            return await self.ipam.release_by_handle(handle)

    async def release(self, handle: str) -> int:
        try:
            return await self.release_quiet(handle)
        except (IpamError, DatastoreError) as e:
            raise ipam_error(e) from e

    async def handle_record(self, handle: str) -> HandleRecord | None:
        kv = await self.ds.get(keys.ipam_handle(handle))
        if kv is None:
            return None
        try:
            return HandleRecord.from_json(kv.value)
        except ValueError:
            return None

    async def ipam_add(self, req: CniRequest, handle: str) -> dict[str, Any]:
        """``l3fabric-ipam`` ADD: addresses with their pool's prefix and a gateway."""
        namespace, pod = req.pod_namespace, pod_name_for(req)
        got = await self.assign(req, handle, namespace, pod)
        try:
            ipam_cfg = req.config.get("ipam") or {}
            gw_cfg = ipam_cfg.get("gateway") if isinstance(ipam_cfg, Mapping) else None
            ips = []
            for a in got.addresses:
                pool = await self._pool_of(a.ip)
                prefix = pool.network.prefixlen if pool is not None else a.network.prefixlen
                gw = gw_cfg if isinstance(gw_cfg, str) and a.version == 4 else (
                    GATEWAY_V4 if a.version == 4 else GATEWAY_V6)
                ips.append(proto.IPConfig(address=ipaddress.ip_interface(f"{a.ip}/{prefix}"),
                                          gateway=ipaddress.ip_address(gw)))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.release_quiet(handle)
            raise
        log.info("IPAM ADD %s: %s", handle, ",".join(str(i.address) for i in ips))
        return proto.format_result(proto.IpamResult(ips=tuple(ips)), req.cni_version)

    async def _pool_of(self, ip: IPAddress) -> PoolSpec | None:
        """The pool of an address just assigned, from the inputs IPAM decided with."""
        return (await self.ipam.inputs()).pool_of(str(ip))

    async def ipam_check(self, req: CniRequest, handle: str) -> None:
        prev = req.prev_result
        assert prev is not None  # parse_request demands it for CHECK
        try:
            record = await self.handle_record(handle)
        except DatastoreError as e:
            raise datastore_error("reading the IPAM handle", e) from e
        held = {ipaddress.ip_address(e.address) for e in (record.entries if record else ())}
        missing = [str(ip.address.ip) for ip in prev.ips if ip.address.ip not in held]
        if missing:
            raise CniError(ERR_CHECK_FAILED, f"IPAM handle {handle} does not hold "
                           f"{', '.join(missing)}")

    async def status(self, req: CniRequest, ipam_only: bool) -> None:
        """Code 50 unless an ADD could succeed now: etcd answers and (with our IPAM) an
        enabled pool for this node has a free address."""
        try:
            if delegated(req) and not ipam_only:
                await self.ds.revision()
                return
            inputs = await self.ipam.current_inputs()
            v4, v6 = families(req.config)
            for version, wanted in ((4, v4), (6, v6)):
                if not wanted:
                    continue
                pools = inputs.usable_pools(version)
                if not pools:
                    raise CniError(proto.ERR_PLUGIN_NOT_AVAILABLE,
                                   f"no enabled IPv{version} pool for node {self.node}")
                if not await self._has_room(inputs, pools):
                    raise CniError(proto.ERR_PLUGIN_NOT_AVAILABLE,
                                   f"IPv{version} pools exhausted: "
                                   + ", ".join(p.describe() for p in pools))
        except DatastoreError as e:
            raise CniError(proto.ERR_PLUGIN_NOT_AVAILABLE, "etcd cannot serve requests",
                           str(e)) from e

    async def _has_room(self, inputs: IpamInputs, pools: Iterable[PoolSpec]) -> bool:
        """Whether an ADD could get an address of ``pools`` now, as the allocator decides:
        a block it may claim (maxBlocksPerHost), or a free address that is neither
        reserved nor cooling down in a block it may use (only its own and unowned ones
        under strictAffinity)."""
        kvs, _ = await self.ds.list(keys.full(keys.IPAM_BLOCKS))
        blocks = []
        for kv in kvs:
            with contextlib.suppress(BlockFormatError, ValueError):
                blocks.append(Block.from_json(kv.value))
        cfg, me = inputs.config, affinity_of(self.node)
        may_claim = not cfg.max_blocks_per_host or \
            sum(b.affinity == me for b in blocks) < cfg.max_blocks_per_host
        reserved = inputs.reserved_set()
        for p in pools:
            mine = [b for b in blocks if p.contains(b.cidr)]
            if may_claim and len(mine) < block_count(p.cidr, p.block_size):
                return True
            for b in mine:
                if cfg.strict_affinity and b.affinity != me \
                        and not (b.affinity is None and may_claim):
                    continue
                if b.free_ordinals(now=self._now(), cooldown=cfg.release_cooldown,
                                   reserved=reserved_ordinals(b.cidr, reserved)):
                    return True
        return False
