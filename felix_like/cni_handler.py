"""The agent's CNI handler: every CNI call the shims forward, for one node.

Owns, for this node and per attachment (handle ``<network>.<containerID>.<ifname>``):
the IPAM handle's addresses, the pod's veth pair (through :mod:`felix_like.plumbing`;
its host routes too when no route manager owns them, `owns_pod_routes`), and the
WorkloadEndpoint at ``workloads/<node>/<ns>.<pod>.<iface>``.

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
  (:func:`felix_like.plumbing.attachment_alias`), so a veth left without an endpoint goes
  too.
* Calls for one attachment are serialised (one asyncio lock per handle); different pods
  proceed in parallel. Netlink work runs in worker threads, so the event loop never
  blocks on it.

Our error codes (CNI reserves 100+ for plugins): see the ``ERR_*`` constants in
``felix_like.cni_base`` (importable from here too).

This module answers the calls and runs ADD, DEL and CHECK; the parts it composes:
``cni_ipam`` (addresses, ``l3fabric-ipam``, STATUS), ``cni_delegate`` (another IPAM
plugin), ``workloads`` (the WorkloadEndpoints, takeover of a pod name) and ``cni_gc``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from cni import protocol as proto
from cni.protocol import CniError, CniRequest
from datastore import keys
from datastore import model as m
from datastore.client import KV, Datastore, DatastoreError
from felix_like import plumbing
from felix_like.cni_base import (
    ERR_ADDRESS_UNAVAILABLE,
    ERR_CHECK_FAILED,
    ERR_DATAPLANE,
    ERR_IPAM,
    ERR_POOL_EXHAUSTED,
    ERR_WIRING,
    GATEWAY_V4,
    GATEWAY_V6,
    IPAM_PLUGIN,
    PLUGIN,
    EndpointSink,
    HandleLocks,
    IPAddress,
    IPInterface,
    datastore_error,
    delegated,
    handle_for,
    host_prefix,
    is_outage,
    log,
    owns_pod_routes,
    pod_name_for,
)
from felix_like.cni_delegate import exec_ipam
from felix_like.cni_gc import AttachmentGc
from felix_like.cni_ipam import CniIpam
from felix_like.metrics import Metrics
from felix_like.routes import PodRouteRefused
from felix_like.workloads import WorkloadStore
from ipam.allocator import IpamClient

__all__ = [
    "ERR_ADDRESS_UNAVAILABLE", "ERR_CHECK_FAILED", "ERR_DATAPLANE", "ERR_IPAM",
    "ERR_POOL_EXHAUSTED", "ERR_WIRING", "GATEWAY_V4", "GATEWAY_V6", "IPAM_PLUGIN", "PLUGIN",
    "CniHandler", "EndpointSink", "IPAddress", "IPInterface", "handle_for", "owns_pod_routes",
    "pod_name_for",
]


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
        self._locks = HandleLocks()
        # One ADD per endpoint name at a time: the takeover of an older attachment and the
        # write of the new endpoint are decided on one read.
        self._name_locks = HandleLocks()
        self._addresses = CniIpam(node, ds, ipam, now)
        self._store = WorkloadStore(node, ds, self._addresses, self._locks,
                                    node_netns=node_netns, dataplane=dataplane)
        self._gc = AttachmentGc(node, ds, self._addresses, self._store, self._locks,
                                node_netns=node_netns, dataplane=dataplane)

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
            await self._addresses.status(req, ipam_only=plugin == IPAM_PLUGIN)
            return ""
        if req.command == "GC":
            await self._gc.run(req, ipam_only=plugin == IPAM_PLUGIN)
            return ""
        handle = handle_for(req.network_name, req.container_id, req.ifname)
        async with self._locks.hold(handle):
            if plugin == IPAM_PLUGIN:
                if req.command == "ADD":
                    return json.dumps(await self._addresses.ipam_add(req, handle))
                if req.command == "DEL":
                    await self._addresses.release(handle)
                    return ""
                await self._addresses.ipam_check(req, handle)
                return ""
            if req.command == "ADD":
                name = keys.workload(self.node, req.pod_namespace, pod_name_for(req),
                                     req.ifname)
                async with self._name_locks.hold(name):
                    return json.dumps(await self._add(req, handle))
            if req.command == "DEL":
                await self._del(req, handle)
                return ""
            await self._check(req, handle)
            return ""

    def busy_handles(self) -> frozenset[str]:
        """Attachments with a call in progress (GC leaves them alone)."""
        return self._locks.busy()

    # ------------------------------------------------------------------ ADD

    async def _add(self, req: CniRequest, handle: str) -> dict[str, Any]:
        namespace, pod = req.pod_namespace, pod_name_for(req)
        key = keys.workload(self.node, namespace, pod, req.ifname)
        host_if = plumbing.host_veth_name(req.network_name, req.container_id, req.ifname)
        wep = self._store.workload(req, namespace, pod, host_if, (), "")  # validate names early
        if req.requested_mac == plumbing.HOST_MAC:
            # The pod's IPv6 link-local would be its own gateway's (fe80::ecee:eeff:feee:eeee).
            raise CniError(proto.ERR_INVALID_CONFIG, f"requested MAC {plumbing.HOST_MAC} is "
                           "the host side's, the pod's gateway: choose another")
        steps = _Steps()
        try:
            prior = await self._store.endpoint_at(key)
            if prior is not None and prior[1].spec.container_id != req.container_id:
                # Before the addresses are assigned: a re-created pod that asks for its
                # old address (IP=) gets it back.
                await self._store.take_over(req, key, *prior)
                prior = None
        except DatastoreError as e:
            raise datastore_error("reading the workload endpoint", e) from e

        steps.done("read")
        got = await self._addresses.assign(req, handle, namespace, pod)
        steps.done("ipam")
        undo: list[tuple[str, Callable[[], Any]]] = [
            ("releasing the addresses", lambda: self._addresses.unassign(req, handle, got))]
        try:
            hosts = tuple(host_prefix(a) for a in got.addresses)
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
            steps.done("wiring")
            undo.append(("removing the veth", lambda: asyncio.to_thread(
                plumbing.unwire_pod, self.node_netns, host_if, hosts,
                host_routes=host_routes)))

            wep = self._store.workload(req, namespace, pod, host_if, hosts, wired.container_mac)
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
                steps.done("dataplane")

            # Undone also when the put fails: it may have been written all the same.
            undo.append(("deleting the workload endpoint", lambda: self._store.delete_wep(
                key, req.container_id)))
            value = m.encode(wep)
            try:
                rev = await self._store.put_wep(key, value, None if prior is None else prior[0],
                                                req.container_id)
            except DatastoreError as e:
                raise datastore_error("writing the workload endpoint", e) from e
            self._store.remember(key, KV(key, value, rev, rev, 0), wep)
            steps.done("endpoint")
        except BaseException:
            for what, step in reversed(undo):
                try:
                    res = step()
                    if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future):
                        await res
                except Exception as e:
                    if not is_outage(e):
                        log.exception("failed ADD of %s: %s failed too", handle, what)
                        continue
                    # Expected while etcd is away; what is left, the runtime's retry or
                    # DEL of this attachment (or GC) removes.
                    log.warning("failed ADD of %s: %s failed too: etcd unavailable",
                                handle, what)
            raise

        if self.metrics is not None:
            for step, took in steps.took.items():
                self.metrics.cni_add_steps.labels(step).observe(took)
        log.info("ADD %s: %s on %s (%s) in %s", handle, ",".join(map(str, hosts)), host_if,
                 key, steps)
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

    # ------------------------------------------------------------------ DEL

    async def _del(self, req: CniRequest, handle: str) -> None:
        host_if = plumbing.host_veth_name(req.network_name, req.container_id, req.ifname)
        problems: list[str] = []
        key, wep, wep_kv = await self._store.find_wep_kv(req, host_if, problems, written=True)
        # Whether etcd may still hold an endpoint of this attachment: then its address
        # stays allocated and the DEL fails (11), to be retried.
        unfinished = list(problems)
        hosts: tuple[IPInterface, ...] = ()
        # Whether the route manager removed the pod's routes; if not, they go with the veth
        # and the address is freed only after it (not as soon as the routes are gone).
        routes_removed_by_dataplane = True
        if wep is not None:
            hosts = tuple(ipaddress.ip_interface(str(n)) for n in wep.spec.ip_networks)
            if self.dataplane is not None:
                try:
                    await self.dataplane.endpoint_removed(
                        key, [str(n) for n in wep.spec.ip_networks])
                except Exception as e:
                    log.warning("DEL %s: dataplane: %s", handle, e)
                    routes_removed_by_dataplane = False
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
            on_routes_removed=on_routes_removed if routes_removed_by_dataplane else None,
            host_routes=not owns_pod_routes(self.dataplane)))
        try:
            if wep is not None:
                try:
                    await self._store.delete_wep(key, req.container_id, wep_kv)
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
            if delegated(req):
                await exec_ipam(req, "DEL")
            else:
                freed = await self._addresses.release(handle)
                log.info("DEL %s: %d address(es) freed", handle, freed)
        finally:
            try:
                await unwire
            except Exception as e:
                # The veth is the kernel's to remove with the netns, or GC's (its alias
                # names the attachment): no reason to have the runtime retry forever.
                log.warning("DEL %s: removing %s: %s", handle, host_if, e)

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
        hosts = tuple(host_prefix(a) for a in addrs)
        # The MAC asked for, else the one the result reported (a chained plugin after us,
        # tuning say, may have changed it and updated the result).
        mac = req.requested_mac or prev.interfaces[ours[0]].mac
        problems = await asyncio.to_thread(
            plumbing.check_pod, self.node_netns, req.netns, req.ifname, host_if, hosts,
            container_mac=mac)
        try:
            key = keys.workload(self.node, req.pod_namespace, pod_name_for(req), req.ifname)
            wep = await self._store.read_wep(key)
            if wep is None or wep.spec.container_id != req.container_id:
                _, wep = await self._store.find_wep(req, host_if, problems)
            if wep is None:
                problems.append(f"workload endpoint {keys.relative(key)} missing")
            else:
                have = {ipaddress.ip_interface(str(n)).ip for n in wep.spec.ip_networks}
                problems += [f"workload endpoint lacks {a.ip}" for a in hosts
                             if a.ip not in have]
                if req.requested_mac and wep.spec.mac != req.requested_mac:
                    problems.append(f"workload endpoint has MAC {wep.spec.mac}, not "
                                    f"{req.requested_mac}")
            if delegated(req):
                try:
                    await exec_ipam(req, "CHECK")
                except CniError as e:
                    problems.append(e.msg)
            else:
                record = await self._addresses.handle_record(handle)
                held = {ipaddress.ip_address(e.address) for e in
                        (record.entries if record else ())}
                problems += [f"IPAM handle {handle} does not hold {a.ip}" for a in hosts
                             if a.ip not in held]
        except DatastoreError as e:
            raise datastore_error("checking the attachment", e) from e
        if problems:
            raise CniError(ERR_CHECK_FAILED, f"{handle}: " + "; ".join(problems))


# ---------------------------------------------------------------------- helpers


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


class _Steps:
    """The time of each step of one ADD (docs/architecture.md §6), for the
    ``l3fabric_cni_add_step_seconds`` histogram and the ADD's log line."""

    def __init__(self) -> None:
        self.took: dict[str, float] = {}
        self._start = self._last = time.monotonic()

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.took[step] = now - self._last
        self._last = now

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v * 1000:.0f}" for k, v in self.took.items())
        return f"{(self._last - self._start) * 1000:.0f} ms ({parts})"
