"""The WorkloadEndpoints of this node's attachments, as the CNI handler reads and writes
them: each write and delete compares the revision read, a second ADD under a pod name in
use takes the older attachment over, and the endpoints this handler wrote are kept as
written so a DEL need not read its endpoint back."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

from cni import protocol as proto
from cni.protocol import CniError, CniRequest
from datastore import keys
from datastore import model as m
from datastore.client import KV, Compare, ConflictError, Datastore, DatastoreError, Get, Put
from felix_like import plumbing
from felix_like.cni_base import (
    EndpointSink,
    HandleLocks,
    IPInterface,
    decode_wep,
    delegated,
    handle_for,
    log,
    owns_pod_routes,
    pod_name_for,
)
from felix_like.cni_delegate import exec_ipam
from felix_like.cni_ipam import CniIpam

# Bound of the cache of written endpoints (one per pod of the node; past it, reads again).
_WRITTEN_MAX: Final = 4096


class WorkloadStore:
    """The WorkloadEndpoints of node ``node``'s attachments."""

    def __init__(self, node: str, ds: Datastore, addresses: CniIpam, locks: HandleLocks, *,
                 node_netns: str | None, dataplane: EndpointSink | None) -> None:
        self.node = node
        self.ds = ds
        self.node_netns = node_netns
        self.dataplane = dataplane
        self._addresses = addresses
        self._locks = locks
        # The WorkloadEndpoints this handler wrote, as written: a DEL finds its endpoint
        # here instead of reading it back (one etcd request fewer). Its delete compares
        # the revision, so an endpoint changed or deleted since is read again.
        self._written: dict[str, tuple[KV, m.WorkloadEndpoint]] = {}

    def remember(self, key: str, kv: KV, wep: m.WorkloadEndpoint) -> None:
        """Keep the endpoint just written at ``key`` as written."""
        if len(self._written) >= _WRITTEN_MAX:
            self._written.clear()
        self._written[key] = (kv, wep)

    async def endpoint_at(self, key: str) -> tuple[KV, m.WorkloadEndpoint] | None:
        """The endpoint at ``key``: as this handler last wrote it, else read (an invalid
        one counts as absent: it is overwritten)."""
        mine = self._written.get(key)
        if mine is not None:
            return mine
        kv = await self.ds.get(key)
        wep = None if kv is None else decode_wep(kv.key, kv.value)
        return None if kv is None or wep is None else (kv, wep)

    async def put_wep(self, key: str, value: bytes, expected: KV | None,
                      container_id: str) -> int:
        """Write the endpoint at ``key`` if it is as read before (``expected``; None: absent
        or invalid); the revision written. Changed since by the same attachment (a label
        edit, say): written over. By another attachment: error 11, and the retry decides
        again (a takeover)."""
        for _ in range(5):
            cmp = Compare(key, "mod", "==", expected.mod_revision) if expected is not None \
                else Compare(key, "create", "==", 0)
            res = await self.ds.txn([cmp], [Put(key, value)], [Get(key)])
            if res.succeeded:
                return res.revision
            self._written.pop(key, None)
            expected = res.gets[0] if res.gets else None
            other = None if expected is None else decode_wep(expected.key, expected.value)
            if other is not None and other.spec.container_id != container_id:
                raise CniError(proto.ERR_TRY_AGAIN_LATER,
                               f"{keys.relative(key)} was written for container "
                               f"{other.spec.container_id} meanwhile")
        raise CniError(proto.ERR_TRY_AGAIN_LATER, f"{keys.relative(key)} keeps changing")

    async def take_over(self, req: CniRequest, key: str, kv: KV,
                        wep: m.WorkloadEndpoint) -> None:
        """Remove the attachment that has endpoint ``key`` now (another container of the
        same pod name): endpoint, veth (and so its peer in the older sandbox), routes,
        addresses. Under that attachment's lock, so its own DEL, if it comes, runs before
        or after, never beside. What is already gone is fine."""
        s = wep.spec
        network = await self._network_of(req.network_name, s)
        old = handle_for(network or req.network_name, s.container_id, s.endpoint)
        hosts = [ipaddress.ip_interface(str(n)) for n in s.ip_networks]
        host_routes = not owns_pod_routes(self.dataplane)
        log.info("ADD %s: takes over %s from %s (same pod name)", req.container_id,
                 keys.relative(key), old)
        async with self._locks.hold(old):
            if self.dataplane is not None:
                try:
                    await self.dataplane.endpoint_removed(key)
                except Exception as e:
                    log.warning("takeover of %s: dataplane: %s", old, e)
            await self.delete_wep(key, s.container_id, kv)
            if s.host_interface:
                await asyncio.to_thread(plumbing.unwire_pod, self.node_netns,
                                        s.host_interface, hosts, host_routes=host_routes)
            if network is None:
                log.warning("takeover of %s: its network is unknown (veth %s has no alias); "
                            "its addresses are left to GC", keys.relative(key),
                            s.host_interface)
            elif delegated(req):
                await exec_ipam(replace(req, container_id=s.container_id,
                                        ifname=s.endpoint, netns=""), "DEL")
            else:
                await self._addresses.release(old)

    async def _network_of(self, network: str, spec: m.WorkloadEndpointSpec) -> str | None:
        """The network of an endpoint's attachment: ``network`` when its veth name says
        so, else what the veth's alias says (None when neither)."""
        if spec.host_interface == plumbing.host_veth_name(network, spec.container_id,
                                                          spec.endpoint):
            return network
        if not spec.host_interface:
            return None
        veths = await asyncio.to_thread(plumbing.host_veths, self.node_netns)
        found = veths.get(spec.host_interface)
        return found.network if found is not None else None

    def workload(self, req: CniRequest, namespace: str, pod: str, host_if: str,
                 hosts: Sequence[IPInterface], mac: str) -> m.WorkloadEndpoint:
        body: dict[str, Any] = {
            "node": self.node,
            "namespace": namespace,
            "pod": pod,
            "endpoint": req.ifname,
            "containerID": req.container_id,
            "ipNetworks": [str(a.network) for a in hosts],
            "hostInterface": host_if,
        }
        if mac:
            body["mac"] = mac
        if req.labels:
            body["labels"] = dict(req.labels)
        if req.ports:
            body["ports"] = [{"name": p.name, "port": p.port, "protocol": p.protocol}
                             for p in req.ports]
        obj = {"apiVersion": m.API_VERSION, "kind": "WorkloadEndpoint",
               "metadata": {"name": m.WorkloadEndpoint.make_name(pod, req.ifname),
                            "namespace": namespace},
               "spec": body}
        try:
            return m.WorkloadEndpoint.from_dict(obj)
        except m.ValidationError as e:
            raise CniError(proto.ERR_INVALID_ENV,
                           "pod namespace, name or interface cannot name a workload endpoint",
                           f"K8S_POD_NAMESPACE/K8S_POD_NAME/CNI_IFNAME: {e}") from e

    async def find_wep(self, req: CniRequest, host_if: str,
                       problems: list[str]) -> tuple[str, m.WorkloadEndpoint | None]:
        """The WorkloadEndpoint of this attachment: at the key ADD derived from CNI_ARGS,
        else (a DEL with other CNI_ARGS than its ADD) found by containerID and endpoint."""
        key, wep, _ = await self.find_wep_kv(req, host_if, problems)
        return key, wep

    async def find_wep_kv(self, req: CniRequest, host_if: str, problems: list[str],
                          written: bool = False
                           ) -> tuple[str, m.WorkloadEndpoint | None, KV | None]:
        """:meth:`find_wep`, with the KV it was read from (None when not found).

        ``written``: an endpoint this handler wrote counts without reading it back (for
        DEL, whose delete compares the revision; CHECK reads what etcd holds)."""
        key = keys.workload(self.node, req.pod_namespace, pod_name_for(req), req.ifname)
        mine = self._written.get(key) if written else None
        if mine is not None and mine[1].spec.container_id == req.container_id:
            return key, mine[1], mine[0]
        try:
            kv = await self.ds.get(key)
            wep = None if kv is None else decode_wep(kv.key, kv.value)
            if wep is not None and wep.spec.container_id == req.container_id:
                return key, wep, kv
            kvs, _ = await self.ds.list(keys.workloads_of(self.node))
        except DatastoreError as e:
            problems.append(f"reading workload endpoints: {e}")
            return key, None, None
        for kv in kvs:
            w = decode_wep(kv.key, kv.value)
            if (w is not None and w.spec.container_id == req.container_id
                    and w.spec.endpoint == req.ifname and w.spec.host_interface == host_if):
                return kv.key, w, kv
        return key, None, None

    async def read_wep(self, key: str) -> m.WorkloadEndpoint | None:
        kv = await self.ds.get(key)
        return None if kv is None else decode_wep(kv.key, kv.value)

    async def delete_wep(self, key: str, container_id: str, known: KV | None = None) -> bool:
        """Delete the endpoint at ``key`` if it still belongs to ``container_id``.

        ``known``: the endpoint's KV as just read or written, already found to belong to
        ``container_id`` (saves a read and a decode; the delete compares its revision, so
        a change since is noticed and decided again)."""
        self._written.pop(key, None)
        for attempt in range(5):
            kv = known if attempt == 0 and known is not None else await self.ds.get(key)
            if kv is None:
                return False
            if kv is not known:
                w = decode_wep(kv.key, kv.value)
                if w is not None and w.spec.container_id != container_id:
                    return False  # a newer container of the same pod owns it now
            try:
                return await self.ds.delete(key, mod_revision=kv.mod_revision)
            except ConflictError:
                continue  # changed under us: re-read and decide again
        return False
