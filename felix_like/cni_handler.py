"""The agent's CNI handler: every CNI call the shims forward, for one node.

Owns, for this node and per attachment (handle ``<network>.<containerID>.<ifname>``):
the IPAM handle's addresses, the pod's veth pair and host routes (through
:mod:`cni.plumbing`), and the WorkloadEndpoint at ``workloads/<node>/<ns>.<pod>.<iface>``.

Two plugins are served:

* ``l3fabric``: the full plugin. ADD = IPAM (ours when ``ipam.type`` is ``l3fabric-ipam``
  or absent, else the named IPAM plugin exec'd from ``CNI_PATH`` with the same env and
  stdin, as the spec says) -> wire the pod -> write the WorkloadEndpoint -> tell the
  dataplane (routes, policy) -> answer in the config's ``cniVersion``.
* ``l3fabric-ipam``: IPAM only, for other plugins (``ptp``, ``bridge``). The result gives
  the address with the prefix of its IP pool and gateway ``169.254.1.1`` (``ipam.gateway``
  overrides it): ``ptp`` then routes the whole pool through the host, where our /32s are.
  (A /32 cannot be used: ``ptp`` deletes the prefix route the kernel adds for the address,
  and there is none for a /32.)

Failure semantics:

* ADD is all or nothing: whatever step fails, the steps before it are undone in reverse
  (dataplane told, WorkloadEndpoint deleted, veth removed, addresses released) and the
  answer is a CNI error. etcd unavailable is code 11 (try again later).
* DEL is idempotent: no netns, an empty ``CNI_NETNS``, a container never added and a
  repeated DEL all succeed. It answers success only when nothing of the attachment is
  left in etcd: when etcd cannot be read or written (the endpoint, the address) it fails
  with 11, so the runtime retries. The address is freed only after the endpoint is gone,
  so a DEL cut short never leaves an endpoint claiming an address IPAM thinks is free.
* One attachment per endpoint name: a second ADD under a pod name (and interface) in use
  takes the older attachment over, as Calico's CNI does for a re-created pod: the older
  endpoint, veth (with the older sandbox's interface), routes and addresses go before the
  new ones are made. Kubernetes runs one sandbox per pod name; a runtime that passes no
  pod name gets the container ID as the name. ADDs of one name are serialised, and the
  endpoint is written only if nobody changed it since it was read.
* Race, a late DEL after a re-ADD under the same pod name: pod P is re-created with a new
  container, whose ADD takes over ``workloads/<node>/<ns>.P.eth0``; the old container's
  DEL then arrives. The WorkloadEndpoint is deleted only while its ``containerID`` is the
  DEL's (compared on the revision read), and the veth name and IPAM handle are per
  container, so the new pod keeps everything.
* GC frees what the runtime no longer lists, found both in etcd (endpoints, IPAM handles)
  and in the kernel: each host veth carries its attachment in its alias
  (:func:`cni.plumbing.attachment_alias`), so a veth left without an endpoint goes too.
* Calls for one attachment are serialised (one asyncio lock per handle); different pods
  proceed in parallel. Netlink work runs in worker threads, so the event loop never
  blocks on it.

Our error codes (CNI reserves 100+ for plugins): see the ``ERR_*`` constants below.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from cni import protocol as proto
from cni.protocol import CniError, CniRequest
from datastore import keys
from datastore import model as m
from datastore.client import (
    KV,
    Compare,
    ConflictError,
    Datastore,
    DatastoreError,
    Get,
    Put,
    UnavailableError,
)
from felix_like import plumbing
from felix_like.metrics import Metrics
from felix_like.routes import PodRouteRefused
from ipam.allocator import IpamClient
from ipam.block import Block, BlockFormatError, affinity_of, block_count, reserved_ordinals
from ipam.model import (
    AddressInUseError,
    AddressNotInPoolError,
    AddressReservedError,
    HandleRecord,
    IpamError,
    IpamInputs,
    IpamUnavailableError,
    PoolExhaustedError,
    PoolSpec,
)

log = logging.getLogger(__name__)

PLUGIN: Final = "l3fabric"
IPAM_PLUGIN: Final = "l3fabric-ipam"

# Bound of the cache of written endpoints (one per pod of the node; past it, reads again).
_WRITTEN_MAX: Final = 4096

#: No free address in the pools this node may use.
ERR_POOL_EXHAUSTED: Final = 100
#: A requested address is in use, outside every enabled pool, or reserved.
ERR_ADDRESS_UNAVAILABLE: Final = 101
#: Creating the veth pair, addresses or routes failed (ifname taken, netns gone, ...).
ERR_WIRING: Final = 102
#: The dataplane (routes, policy) refused the new endpoint.
ERR_DATAPLANE: Final = 103
#: CHECK found the attachment not as it should be.
ERR_CHECK_FAILED: Final = 104
#: Any other IPAM failure (a delegated IPAM plugin that could not be run, say).
ERR_IPAM: Final = 105

GATEWAY_V4: Final = plumbing.GATEWAY_V4
GATEWAY_V6: Final = plumbing.GATEWAY_V6
_DELEGATE_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointSink(Protocol):
    """Who programs routes and policy for endpoints. An ADD tells it before writing the
    WorkloadEndpoint (and takes it back with ``endpoint_removed`` if the ADD fails after);
    a DEL before deleting it."""

    async def endpoint_added(self, key: str, wep: m.WorkloadEndpoint) -> None: ...

    async def endpoint_removed(self, key: str) -> None: ...


def owns_pod_routes(sink: EndpointSink | None) -> bool:
    """Whether ``sink`` programs the pods' host routes itself (the agent: its route manager
    adds a pod's /32 in the apply `endpoint_added` runs, before ADD answers). Then wiring
    leaves them alone; without such a sink (a bare handler) wiring installs them. Either
    way each route has one writer."""
    return bool(getattr(sink, "owns_pod_routes", False))


def handle_for(network: str, container_id: str, ifname: str) -> str:
    """The IPAM handle of one attachment (DESIGN §3)."""
    return f"{network}.{container_id}.{ifname}"


_NOT_DNS = re.compile(r"[^a-z0-9.-]+")


def pod_name_for(req: CniRequest) -> str:
    """The pod name of the WorkloadEndpoint: ``K8S_POD_NAME``, else the container ID.

    Made a DNS-1123 subdomain the same way for ADD and DEL (podman's generated names
    carry ``_``): lower case, other characters become ``-``.
    """
    raw = req.pod_name or req.container_id
    name = _NOT_DNS.sub("-", raw.lower()).strip(".-")
    return name[:200].strip(".-") or "pod"


@dataclass
class _Leftover:
    """What GC found of one attachment to remove."""

    endpoint: tuple[str, str] | None = None  # (key, containerID)
    veths: dict[str, tuple[IPInterface, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Ipam:
    """The addresses an ADD got, and how to give them back."""

    addresses: tuple[IPInterface, ...]  # as the IPAM answered (prefix of pool or subnet)
    delegated: bool


class CniHandler:
    """Serves ``l3fabric`` and ``l3fabric-ipam`` calls for node ``node``.

    ``node_netns`` is the node's namespace (name or path) when the agent does not run
    inside it (tests); None means the agent's own namespace.
    """

    def __init__(
        self,
        node: str,
        ds: Datastore,
        ipam: IpamClient,
        *,
        node_netns: str | None = None,
        dataplane: EndpointSink | None = None,
        metrics: Metrics | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.ds = ds
        self.ipam = ipam
        self.node_netns = node_netns
        self.dataplane = dataplane
        self.metrics = metrics
        self._now = now
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # One ADD per endpoint name at a time: the takeover of an older attachment and the
        # write of the new endpoint are decided on one read.
        self._name_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Every IPAM change of this node compare-and-swaps the same block(s): run in
        # parallel they mostly lose to each other and retry (8 ADDs in flight exhausted
        # the allocator's 25 attempts). One at a time, each commits at its first try.
        self._ipam_lock = asyncio.Lock()
        # The WorkloadEndpoints this handler wrote, as written: a DEL finds its endpoint
        # here instead of reading it back (one etcd request fewer). Its delete compares
        # the revision, so an endpoint changed or deleted since is read again.
        self._written: dict[str, tuple[KV, m.WorkloadEndpoint]] = {}

    # ------------------------------------------------------------------ entry point

    async def handle(self, plugin: str, env: dict[str, str], stdin: str) -> tuple[int, str, str]:
        """One CNI call: (exit status, stdout, stderr), as the shim prints them."""
        start = time.monotonic()
        verb = env.get("CNI_COMMAND", "") or "NONE"
        if verb not in proto.COMMANDS:
            verb = "INVALID"
        version: str | None = None
        try:
            version = proto.requested_version(stdin)
            req = proto.parse_request(env, stdin)
            version = req.cni_version
            out = await self._dispatch(plugin, req)
            result = "ok"
            code, stdout = 0, out
        except CniError as e:
            result = "error"
            code, stdout = 1, proto.error_json(e, version)
            log.info("CNI %s %s failed: %s", plugin, verb, e)
        except Exception as e:  # a bug: still answer in CNI terms
            log.exception("CNI %s %s crashed", plugin, verb)
            result = "error"
            code = 1
            stdout = proto.error_json(
                CniError(proto.ERR_TRY_AGAIN_LATER, f"agent error: {type(e).__name__}: {e}"),
                version)
        if self.metrics is not None:
            self.metrics.cni_requests.labels(verb, result).inc()
            self.metrics.cni_latency.labels(verb).observe(time.monotonic() - start)
        return code, stdout, ""

    async def _dispatch(self, plugin: str, req: CniRequest) -> str:
        if plugin not in (PLUGIN, IPAM_PLUGIN):
            raise CniError(proto.ERR_INVALID_CONFIG, f"unknown plugin {plugin!r}")
        if req.command == "VERSION":
            return json.dumps(proto.version_response(req.cni_version))
        if req.command == "STATUS":
            await self._status(req, ipam_only=plugin == IPAM_PLUGIN)
            return ""
        if req.command == "GC":
            await self._gc(req, ipam_only=plugin == IPAM_PLUGIN)
            return ""
        handle = handle_for(req.network_name, req.container_id, req.ifname)
        async with self._lock(handle):
            if plugin == IPAM_PLUGIN:
                if req.command == "ADD":
                    return json.dumps(await self._ipam_add(req, handle))
                if req.command == "DEL":
                    await self._release(handle)
                    return ""
                await self._ipam_check(req, handle)
                return ""
            if req.command == "ADD":
                name = keys.workload(self.node, req.pod_namespace, pod_name_for(req),
                                     req.ifname)
                async with self._lock(name, self._name_locks):
                    return json.dumps(await self._add(req, handle))
            if req.command == "DEL":
                await self._del(req, handle)
                return ""
            await self._check(req, handle)
            return ""

    @contextlib.asynccontextmanager
    async def _lock(self, handle: str, table: dict[str, tuple[asyncio.Lock, int]] | None = None
                    ) -> AsyncIterator[None]:
        """Serialise on ``handle`` (an attachment; with ``table``, another kind of name).

        Order, where several are held: the endpoint name, the attachment's handle, then
        the handle of the attachment it takes over. A DEL and GC hold one handle only."""
        locks = self._locks if table is None else table
        lock, users = locks.get(handle, (asyncio.Lock(), 0))
        locks[handle] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = locks[handle]
            if users <= 1:
                del locks[handle]
            else:
                locks[handle] = (lock, users - 1)

    def busy_handles(self) -> frozenset[str]:
        """Attachments with a call in progress (GC leaves them alone)."""
        return frozenset(self._locks)

    # ------------------------------------------------------------------ ADD

    async def _add(self, req: CniRequest, handle: str) -> dict[str, Any]:
        namespace, pod = req.pod_namespace, pod_name_for(req)
        key = keys.workload(self.node, namespace, pod, req.ifname)
        host_if = plumbing.host_veth_name(req.network_name, req.container_id, req.ifname)
        wep = self._workload(req, namespace, pod, host_if, (), "")  # validate names early
        if req.requested_mac == plumbing.HOST_MAC:
            # The pod's IPv6 link-local would be its own gateway's (fe80::ecee:eeff:feee:eeee).
            raise CniError(proto.ERR_INVALID_CONFIG, f"requested MAC {plumbing.HOST_MAC} is "
                           "the host side's, the pod's gateway: choose another")
        try:
            prior = await self._endpoint_at(key)
            if prior is not None and prior[1].spec.container_id != req.container_id:
                # Before the addresses are assigned: a re-created pod that asks for its
                # old address (IP=) gets it back.
                await self._take_over(req, key, *prior)
                prior = None
        except DatastoreError as e:
            raise _datastore_error("reading the workload endpoint", e) from e

        got = await self._assign(req, handle, namespace, pod)
        undo: list[tuple[str, Callable[[], Any]]] = [
            ("releasing the addresses", lambda: self._unassign(req, handle, got))]
        try:
            hosts = tuple(_host_prefix(a) for a in got.addresses)
            host_routes = not owns_pod_routes(self.dataplane)
            try:
                wired = await asyncio.to_thread(
                    plumbing.wire_pod, self.node_netns, req.netns, req.ifname, host_if,
                    hosts, req.mtu or 0, container_mac=req.requested_mac,
                    alias=plumbing.attachment_alias(req.network_name, req.container_id,
                                                    req.ifname),
                    host_routes=host_routes)
            except plumbing.PlumbingError as e:
                raise CniError(ERR_WIRING, f"wiring the pod failed: {e}") from e
            undo.append(("removing the veth", lambda: asyncio.to_thread(
                plumbing.unwire_pod, self.node_netns, host_if, hosts,
                host_routes=host_routes)))

            wep = self._workload(req, namespace, pod, host_if, hosts, wired.container_mac)
            if self.dataplane is not None:
                # Before the endpoint is written: its watch event then finds the endpoint
                # already known and changes nothing, instead of a second apply per ADD.
                # The apply this runs programs the pod's routes (when the sink owns them)
                # and its policy, so both are in the kernel before ADD answers.
                sink = self.dataplane
                undo.append(("forgetting the endpoint", lambda: sink.endpoint_removed(key)))
                try:
                    await sink.endpoint_added(key, wep)
                except PodRouteRefused as e:
                    raise CniError(ERR_WIRING, f"wiring the pod failed: {e}") from e
                except Exception as e:
                    raise CniError(ERR_DATAPLANE, f"programming the dataplane failed: {e}") from e

            # Undone also when the put fails: it may have been written all the same.
            undo.append(("deleting the workload endpoint", lambda: self._delete_wep(
                key, req.container_id)))
            value = m.encode(wep)
            try:
                rev = await self._put_wep(key, value, None if prior is None else prior[0],
                                          req.container_id)
            except DatastoreError as e:
                raise _datastore_error("writing the workload endpoint", e) from e
            if len(self._written) >= _WRITTEN_MAX:
                self._written.clear()
            self._written[key] = (KV(key, value, rev, rev, 0), wep)
        except BaseException:
            for what, step in reversed(undo):
                try:
                    res = step()
                    if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future):
                        await res
                except Exception as e:
                    if not _is_outage(e):
                        log.exception("failed ADD of %s: %s failed too", handle, what)
                        continue
                    # Expected while etcd is away; what is left, the runtime's retry or
                    # DEL of this attachment (or GC) removes.
                    log.warning("failed ADD of %s: %s failed too: etcd unavailable",
                                handle, what)
            raise

        log.info("ADD %s: %s on %s (%s)", handle, ",".join(map(str, hosts)), host_if, key)
        ours = proto.Result(
            interfaces=(
                proto.Interface(name=host_if, mac=plumbing.HOST_MAC, mtu=wired.mtu),
                proto.Interface(name=req.ifname, mac=wired.container_mac, sandbox=req.netns,
                                mtu=wired.mtu),
            ),
            ips=tuple(proto.IPConfig(address=a, interface=1) for a in hosts),
            routes=tuple(_default_routes(hosts)),
        )
        return proto.format_result(_chain(req.prev_result, ours), req.cni_version)

    async def _endpoint_at(self, key: str) -> tuple[KV, m.WorkloadEndpoint] | None:
        """The endpoint at ``key``: as this handler last wrote it, else read (an invalid
        one counts as absent: it is overwritten)."""
        mine = self._written.get(key)
        if mine is not None:
            return mine
        kv = await self.ds.get(key)
        wep = None if kv is None else _decode_wep(kv.key, kv.value)
        return None if kv is None or wep is None else (kv, wep)

    async def _put_wep(self, key: str, value: bytes, expected: KV | None,
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
            other = None if expected is None else _decode_wep(expected.key, expected.value)
            if other is not None and other.spec.container_id != container_id:
                raise CniError(proto.ERR_TRY_AGAIN_LATER,
                               f"{keys.relative(key)} was written for container "
                               f"{other.spec.container_id} meanwhile")
        raise CniError(proto.ERR_TRY_AGAIN_LATER, f"{keys.relative(key)} keeps changing")

    async def _take_over(self, req: CniRequest, key: str, kv: KV,
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
        async with self._lock(old):
            if self.dataplane is not None:
                try:
                    await self.dataplane.endpoint_removed(key)
                except Exception as e:
                    log.warning("takeover of %s: dataplane: %s", old, e)
            await self._delete_wep(key, s.container_id, kv)
            if s.host_interface:
                await asyncio.to_thread(plumbing.unwire_pod, self.node_netns,
                                        s.host_interface, hosts, host_routes=host_routes)
            if network is None:
                log.warning("takeover of %s: its network is unknown (veth %s has no alias); "
                            "its addresses are left to GC", keys.relative(key),
                            s.host_interface)
            elif _delegated(req):
                await self._exec_ipam(replace(req, container_id=s.container_id,
                                              ifname=s.endpoint, netns=""), "DEL")
            else:
                await self._release(old)

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

    def _workload(self, req: CniRequest, namespace: str, pod: str, host_if: str,
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

    # ------------------------------------------------------------------ IPAM

    async def _assign(self, req: CniRequest, handle: str, namespace: str, pod: str) -> _Ipam:
        if _delegated(req):
            res = await self._exec_ipam(req, "ADD")
            parsed = proto.parse_result(res)
            if not parsed.ips:
                await self._exec_ipam_quiet(req, "DEL")
                raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type} returned no address")
            return _Ipam(tuple(ip.address for ip in parsed.ips), delegated=True)
        try:
            if req.requested_ips:
                async with self._ipam_lock:
                    assigned = [await self.ipam.assign_ip(str(ip), handle,
                                                          namespace=namespace, pod=pod)
                                for ip in req.requested_ips]
            else:
                v4, v6 = _families(req.config)
                async with self._ipam_lock:
                    assigned = await self.ipam.auto_assign(handle, namespace=namespace,
                                                           pod=pod, num_v4=v4, num_v6=v6)
        except BaseException as e:
            with contextlib.suppress(Exception):
                await self._release_quiet(handle)
            if isinstance(e, Exception):
                raise _ipam_error(e) from e
            raise
        addrs = tuple(dict.fromkeys(_host_prefix(ipaddress.ip_interface(a.address))
                                    for a in assigned))
        if not addrs:
            raise CniError(ERR_IPAM, f"IPAM handle {handle} holds no address after assignment")
        return _Ipam(addrs, delegated=False)

    async def _unassign(self, req: CniRequest, handle: str, got: _Ipam) -> None:
        if got.delegated:
            await self._exec_ipam_quiet(req, "DEL")
        else:
            await self._release_quiet(handle)

    async def _release_quiet(self, handle: str) -> int:
        async with self._ipam_lock:
            return await self.ipam.release_by_handle(handle)

    async def _release(self, handle: str) -> int:
        try:
            return await self._release_quiet(handle)
        except (IpamError, DatastoreError) as e:
            raise _ipam_error(e) from e

    async def _handle_record(self, handle: str) -> HandleRecord | None:
        kv = await self.ds.get(keys.ipam_handle(handle))
        if kv is None:
            return None
        try:
            return HandleRecord.from_json(kv.value)
        except ValueError:
            return None

    async def _ipam_add(self, req: CniRequest, handle: str) -> dict[str, Any]:
        """``l3fabric-ipam`` ADD: addresses with their pool's prefix and a gateway."""
        namespace, pod = req.pod_namespace, pod_name_for(req)
        got = await self._assign(req, handle, namespace, pod)
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
                await self._release_quiet(handle)
            raise
        log.info("IPAM ADD %s: %s", handle, ",".join(str(i.address) for i in ips))
        return proto.format_result(proto.IpamResult(ips=tuple(ips)), req.cni_version)

    async def _pool_of(self, ip: IPAddress) -> PoolSpec | None:
        """The pool of an address just assigned, from the inputs IPAM decided with."""
        return (await self.ipam.inputs()).pool_of(str(ip))

    async def _ipam_check(self, req: CniRequest, handle: str) -> None:
        prev = req.prev_result
        assert prev is not None  # parse_request demands it for CHECK
        try:
            record = await self._handle_record(handle)
        except DatastoreError as e:
            raise _datastore_error("reading the IPAM handle", e) from e
        held = {ipaddress.ip_address(e.address) for e in (record.entries if record else ())}
        missing = [str(ip.address.ip) for ip in prev.ips if ip.address.ip not in held]
        if missing:
            raise CniError(ERR_CHECK_FAILED, f"IPAM handle {handle} does not hold "
                           f"{', '.join(missing)}")

    # ------------------------------------------------------------------ delegated IPAM

    async def _exec_ipam(self, req: CniRequest, command: str) -> dict[str, Any]:
        """Run the IPAM plugin named by ``ipam.type`` from CNI_PATH (spec: same env and
        stdin, CNI_COMMAND as for us). Its error is passed on as is."""
        path = _find_plugin(req.ipam_type, req.cni_path)
        if path is None:
            raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type!r} not found in CNI_PATH",
                           ":".join(req.cni_path) or "CNI_PATH is empty")
        env = self._delegate_env(req, command)
        proc = await asyncio.create_subprocess_exec(
            path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate(json.dumps(req.config).encode())
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            try:
                obj = json.loads(text)
                code = int(obj.get("code", ERR_IPAM))
                msg = str(obj.get("msg", "failed"))
                details = str(obj.get("details", ""))
            except (ValueError, AttributeError, TypeError):
                code, msg, details = ERR_IPAM, "failed", (text or err.decode(errors="replace"))
            raise CniError(code, f"IPAM plugin {req.ipam_type}: {msg}", details[:1024])
        if command != "ADD":
            return {}
        try:
            res = json.loads(text)
        except ValueError as e:
            raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type} printed no JSON result",
                           text[:256]) from e
        if not isinstance(res, dict):
            raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type} printed no JSON object")
        return res

    async def _exec_ipam_quiet(self, req: CniRequest, command: str) -> bool:
        try:
            await self._exec_ipam(req, command)
            return True
        except CniError as e:
            log.warning("IPAM plugin %s %s: %s", req.ipam_type, command, e)
            return False

    def _delegate_env(self, req: CniRequest, command: str) -> dict[str, str]:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": req.container_id,
            "CNI_NETNS": req.netns,
            "CNI_IFNAME": req.ifname,
            "CNI_PATH": ":".join(req.cni_path),
            "PATH": _DELEGATE_PATH,
        }
        args = ";".join(f"{k}={v}" for k, v in req.cni_args.items())
        if args:
            env["CNI_ARGS"] = args
        return env

    # ------------------------------------------------------------------ DEL

    async def _del(self, req: CniRequest, handle: str) -> None:
        host_if = plumbing.host_veth_name(req.network_name, req.container_id, req.ifname)
        problems: list[str] = []
        key, wep, wep_kv = await self._find_wep_kv(req, host_if, problems, written=True)
        # Whether etcd may still hold an endpoint of this attachment: then its address
        # stays allocated and the DEL fails (11), to be retried.
        unfinished = list(problems)
        hosts: tuple[IPInterface, ...] = ()
        if wep is not None:
            hosts = tuple(ipaddress.ip_interface(str(n)) for n in wep.spec.ip_networks)
            if self.dataplane is not None:
                try:
                    await self.dataplane.endpoint_removed(key)
                except Exception as e:
                    log.warning("DEL %s: dataplane: %s", handle, e)
        # The veth goes in a worker thread; its host routes go first. Deleting the veth
        # takes the kernel ~20 ms, so the etcd work overlaps it -- but the address is
        # freed only once no route to it through this veth is left (else a pod that gets
        # it next on this node could find it "already routed"), and DEL answers only when
        # the veth is gone too. Race: the same attachment re-ADDed meanwhile cannot
        # happen (its handle lock is ours until we answer).
        loop = asyncio.get_running_loop()
        routes_gone = asyncio.Event()

        def on_routes_removed() -> None:  # in the worker thread
            loop.call_soon_threadsafe(routes_gone.set)

        unwire = asyncio.ensure_future(asyncio.to_thread(
            plumbing.unwire_pod, self.node_netns, host_if, hosts,
            on_routes_removed=on_routes_removed,
            host_routes=not owns_pod_routes(self.dataplane)))
        try:
            if wep is not None:
                try:
                    await self._delete_wep(key, req.container_id, wep_kv)
                except DatastoreError as e:
                    unfinished.append(f"deleting {keys.relative(key)}: {e}")
            waiter = asyncio.ensure_future(routes_gone.wait())
            try:
                await asyncio.wait({unwire, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if unfinished:
                raise CniError(proto.ERR_TRY_AGAIN_LATER,
                               "the workload endpoint could not be removed from etcd",
                               "; ".join(unfinished))
            if _delegated(req):
                await self._exec_ipam(req, "DEL")
            else:
                freed = await self._release(handle)
                log.info("DEL %s: %d address(es) freed", handle, freed)
        finally:
            try:
                await unwire
            except Exception as e:
                # The veth is the kernel's to remove with the netns, or GC's (its alias
                # names the attachment): no reason to have the runtime retry forever.
                log.warning("DEL %s: removing %s: %s", handle, host_if, e)

    async def _find_wep(self, req: CniRequest, host_if: str,
                        problems: list[str]) -> tuple[str, m.WorkloadEndpoint | None]:
        """The WorkloadEndpoint of this attachment: at the key ADD derived from CNI_ARGS,
        else (a DEL with other CNI_ARGS than its ADD) found by containerID and endpoint."""
        key, wep, _ = await self._find_wep_kv(req, host_if, problems)
        return key, wep

    async def _find_wep_kv(self, req: CniRequest, host_if: str, problems: list[str],
                           written: bool = False
                           ) -> tuple[str, m.WorkloadEndpoint | None, KV | None]:
        """:meth:`_find_wep`, with the KV it was read from (None when not found).

        ``written``: an endpoint this handler wrote counts without reading it back (for
        DEL, whose delete compares the revision; CHECK reads what etcd holds)."""
        key = keys.workload(self.node, req.pod_namespace, pod_name_for(req), req.ifname)
        mine = self._written.get(key) if written else None
        if mine is not None and mine[1].spec.container_id == req.container_id:
            return key, mine[1], mine[0]
        try:
            kv = await self.ds.get(key)
            wep = None if kv is None else _decode_wep(kv.key, kv.value)
            if wep is not None and wep.spec.container_id == req.container_id:
                return key, wep, kv
            kvs, _ = await self.ds.list(keys.workloads_of(self.node))
        except DatastoreError as e:
            problems.append(f"reading workload endpoints: {e}")
            return key, None, None
        for kv in kvs:
            w = _decode_wep(kv.key, kv.value)
            if (w is not None and w.spec.container_id == req.container_id
                    and w.spec.endpoint == req.ifname and w.spec.host_interface == host_if):
                return kv.key, w, kv
        return key, None, None

    async def _read_wep(self, key: str) -> m.WorkloadEndpoint | None:
        kv = await self.ds.get(key)
        return None if kv is None else _decode_wep(kv.key, kv.value)

    async def _delete_wep(self, key: str, container_id: str, known: KV | None = None) -> bool:
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
                w = _decode_wep(kv.key, kv.value)
                if w is not None and w.spec.container_id != container_id:
                    return False  # a newer container of the same pod owns it now
            try:
                return await self.ds.delete(key, mod_revision=kv.mod_revision)
            except ConflictError:
                continue  # changed under us: re-read and decide again
        return False

    # ------------------------------------------------------------------ CHECK

    async def _check(self, req: CniRequest, handle: str) -> None:
        prev = req.prev_result
        assert prev is not None
        host_if = plumbing.host_veth_name(req.network_name, req.container_id, req.ifname)
        ours = [i for i, itf in enumerate(prev.interfaces)
                if itf.name == req.ifname and itf.sandbox == req.netns]
        if not ours:
            raise CniError(ERR_CHECK_FAILED, f"prevResult has no interface {req.ifname} in "
                           f"sandbox {req.netns}")
        addrs = [ip.address for ip in prev.ips if ip.interface in (None, *ours)]
        hosts = tuple(_host_prefix(a) for a in addrs)
        # The MAC asked for, else the one the result reported (a chained plugin after us,
        # tuning say, may have changed it and updated the result).
        mac = req.requested_mac or prev.interfaces[ours[0]].mac
        problems = await asyncio.to_thread(
            plumbing.check_pod, self.node_netns, req.netns, req.ifname, host_if, hosts,
            container_mac=mac)
        try:
            key = keys.workload(self.node, req.pod_namespace, pod_name_for(req), req.ifname)
            wep = await self._read_wep(key)
            if wep is None or wep.spec.container_id != req.container_id:
                _, wep = await self._find_wep(req, host_if, problems)
            if wep is None:
                problems.append(f"workload endpoint {keys.relative(key)} missing")
            else:
                have = {ipaddress.ip_interface(str(n)).ip for n in wep.spec.ip_networks}
                problems += [f"workload endpoint lacks {a.ip}" for a in hosts
                             if a.ip not in have]
                if req.requested_mac and wep.spec.mac != req.requested_mac:
                    problems.append(f"workload endpoint has MAC {wep.spec.mac}, not "
                                    f"{req.requested_mac}")
            if _delegated(req):
                try:
                    await self._exec_ipam(req, "CHECK")
                except CniError as e:
                    problems.append(e.msg)
            else:
                record = await self._handle_record(handle)
                held = {ipaddress.ip_address(e.address) for e in
                        (record.entries if record else ())}
                problems += [f"IPAM handle {handle} does not hold {a.ip}" for a in hosts
                             if a.ip not in held]
        except DatastoreError as e:
            raise _datastore_error("checking the attachment", e) from e
        if problems:
            raise CniError(ERR_CHECK_FAILED, f"{handle}: " + "; ".join(problems))

    # ------------------------------------------------------------------ GC

    async def _gc(self, req: CniRequest, ipam_only: bool) -> None:
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
        stale: dict[str, _Leftover] = {}
        veths: dict[str, plumbing.VethAttachment | None] = {}
        try:
            if not ipam_only:
                kvs, _ = await self.ds.list(keys.workloads_of(self.node))
                for kv in kvs:
                    w = _decode_wep(kv.key, kv.value)
                    if w is None:
                        continue
                    s = w.spec
                    if s.host_interface != plumbing.host_veth_name(net, s.container_id,
                                                                   s.endpoint):
                        continue  # another network's endpoint
                    h = handle_for(net, s.container_id, s.endpoint)
                    if h not in valid:
                        left = stale.setdefault(h, _Leftover())
                        left.endpoint = (kv.key, s.container_id)
                        left.veths[s.host_interface] = tuple(
                            ipaddress.ip_interface(str(n)) for n in s.ip_networks)
                veths = await asyncio.to_thread(plumbing.host_veths, self.node_netns)
                for name, att in veths.items():
                    if att is None or att.network != net:
                        continue  # another network's, or not known to be ours
                    h = handle_for(net, att.container_id, att.ifname)
                    if h not in valid:
                        stale.setdefault(h, _Leftover()).veths.setdefault(name, ())
            unnamed = {name for name, att in veths.items() if att is None}
            for h in await self._node_handles(net):
                if h not in valid:
                    left = stale.setdefault(h, _Leftover())
                    # A veth with no alias (wired by an older l3fabric): its name is the
                    # hash of the handle's parts.
                    left.veths.update((name, ()) for name in _veths_of_handle(net, h)
                                      if name in unnamed)
            freed = 0
            for h, left in sorted(stale.items()):
                # Checked and locked with no await between: an ADD or DEL of ``h`` in
                # progress keeps it; one that comes now waits for this.
                if h in self.busy_handles():
                    continue
                async with self._lock(h):
                    await self._remove_leftover(h, left)
                freed += 1
        except DatastoreError as e:
            raise _datastore_error("garbage-collecting attachments", e) from e
        if freed:
            log.info("GC %s: freed %d stale attachment(s)", net, freed)
        if _delegated(req):
            await self._exec_ipam_quiet(req, "GC")

    async def _remove_leftover(self, handle: str, left: _Leftover) -> None:
        """GC of one attachment: endpoint, then veths and routes, then addresses."""
        if left.endpoint is not None:
            key, container_id = left.endpoint
            if self.dataplane is not None:
                try:
                    await self.dataplane.endpoint_removed(key)
                except Exception as e:
                    log.warning("GC of %s: dataplane: %s", handle, e)
            await self._delete_wep(key, container_id)
        for name, hosts in sorted(left.veths.items()):
            if await asyncio.to_thread(plumbing.unwire_pod, self.node_netns, name, hosts,
                                       host_routes=not owns_pod_routes(self.dataplane)) \
                    and left.endpoint is None:
                log.info("GC of %s: removed veth %s, which had no endpoint", handle, name)
        await self._release(handle)

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

    # ------------------------------------------------------------------ STATUS

    async def _status(self, req: CniRequest, ipam_only: bool) -> None:
        """Code 50 unless an ADD could succeed now: etcd answers and (with our IPAM) an
        enabled pool for this node has a free address."""
        try:
            if _delegated(req) and not ipam_only:
                await self.ds.revision()
                return
            inputs = await self.ipam.current_inputs()
            v4, v6 = _families(req.config)
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


# ---------------------------------------------------------------------- helpers


def _veths_of_handle(network: str, handle: str) -> list[str]:
    """The host veth names handle ``<network>.<containerID>.<ifname>`` may have: both
    parts may hold dots, so every split is a candidate."""
    rest = handle[len(network) + 1:] if handle.startswith(f"{network}.") else ""
    return [plumbing.host_veth_name(network, rest[:i], rest[i + 1:])
            for i, c in enumerate(rest) if c == "."]


def _delegated(req: CniRequest) -> bool:
    return bool(req.ipam_type) and req.ipam_type != IPAM_PLUGIN


def _families(config: Mapping[str, Any]) -> tuple[int, int]:
    """How many IPv4/IPv6 addresses our IPAM assigns: ``ipam.assign_ipv4`` (default
    true) and ``ipam.assign_ipv6`` (default false), booleans or "true"/"false"."""
    ipam = config.get("ipam")
    ipam = ipam if isinstance(ipam, Mapping) else {}

    def flag(name: str, default: bool) -> bool:
        v = ipam.get(name, default)
        return v if isinstance(v, bool) else str(v).lower() == "true"

    v4, v6 = int(flag("assign_ipv4", True)), int(flag("assign_ipv6", False))
    if not v4 and not v6:
        raise CniError(proto.ERR_INVALID_CONFIG, "ipam assigns neither IPv4 nor IPv6")
    return v4, v6


def _host_prefix(a: IPInterface) -> IPInterface:
    return ipaddress.ip_interface(f"{a.ip}/{a.ip.max_prefixlen}")


def _default_routes(hosts: Sequence[IPInterface]) -> list[proto.Route]:
    out = []
    if any(a.version == 4 for a in hosts):
        out.append(proto.Route(dst=ipaddress.ip_network("0.0.0.0/0"),
                               gw=ipaddress.ip_address(GATEWAY_V4)))
    if any(a.version == 6 for a in hosts):
        out.append(proto.Route(dst=ipaddress.ip_network("::/0"),
                               gw=ipaddress.ip_address(GATEWAY_V6)))
    return out


def _chain(prev: proto.Result | None, ours: proto.Result) -> proto.Result:
    """Spec: an interface-creating plugin in a chain adds to the prevResult it got."""
    if prev is None:
        return ours
    offset = len(prev.interfaces)
    ips = tuple(proto.IPConfig(ip.address, ip.gateway,
                               None if ip.interface is None else ip.interface + offset)
                for ip in ours.ips)
    return proto.Result(interfaces=prev.interfaces + ours.interfaces, ips=prev.ips + ips,
                        routes=prev.routes + ours.routes, dns=prev.dns)


def _find_plugin(name: str, paths: Sequence[str]) -> str | None:
    if not name or "/" in name:
        return None
    for d in paths:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _decode_wep(key: str, value: bytes) -> m.WorkloadEndpoint | None:
    try:
        res = m.decode(key, value)
    except m.ValidationError as e:
        log.warning("ignoring invalid workload endpoint: %s", e)
        return None
    return res if isinstance(res, m.WorkloadEndpoint) else None


def _is_outage(e: BaseException) -> bool:
    """Whether ``e`` is etcd being away (expected; one log line), not a bug."""
    return isinstance(e, UnavailableError | IpamUnavailableError) or (
        isinstance(e, CniError) and e.code == proto.ERR_TRY_AGAIN_LATER)


def _datastore_error(what: str, e: Exception) -> CniError:
    if isinstance(e, UnavailableError | IpamUnavailableError):
        return CniError(proto.ERR_TRY_AGAIN_LATER, f"{what}: etcd unavailable", str(e))
    return CniError(proto.ERR_IO, f"{what}: {e}")


def _ipam_error(e: Exception) -> CniError:
    if isinstance(e, CniError):
        return e
    if isinstance(e, PoolExhaustedError):
        return CniError(ERR_POOL_EXHAUSTED, "no free address", str(e))
    if isinstance(e, AddressInUseError | AddressNotInPoolError | AddressReservedError):
        return CniError(ERR_ADDRESS_UNAVAILABLE, "requested address unavailable", str(e))
    if isinstance(e, IpamUnavailableError | UnavailableError):
        return CniError(proto.ERR_TRY_AGAIN_LATER, "IPAM: etcd unavailable", str(e))
    if isinstance(e, DatastoreError):
        return CniError(proto.ERR_IO, f"IPAM: {e}")
    if isinstance(e, IpamError):
        return CniError(ERR_IPAM, f"IPAM failed: {e}")
    raise e
