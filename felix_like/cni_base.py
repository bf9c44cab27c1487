"""What the parts of the CNI handler share: the plugin names, our error codes, the names
of an attachment (its IPAM handle, its pod name), who the handler tells of endpoints, the
per-attachment locks, and how datastore and IPAM failures become CNI errors."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final, Protocol

from cni import protocol as proto
from cni.protocol import CniError, CniRequest
from datastore import model as m
from datastore.client import DatastoreError, UnavailableError
from felix_like import plumbing
from ipam.values import (
    AddressInUseError,
    AddressNotInPoolError,
    AddressReservedError,
    IpamError,
    IpamUnavailableError,
    PoolExhaustedError,
)

log = logging.getLogger("felix_like.cni_handler")

PLUGIN: Final = "l3fabric"
IPAM_PLUGIN: Final = "l3fabric-ipam"

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

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointSink(Protocol):
    """Who programs routes and policy for endpoints. An ADD tells it before writing the
    WorkloadEndpoint (and takes it back with ``endpoint_removed`` if the ADD fails after);
    a DEL before deleting it."""

    async def endpoint_added(self, key: str, wep: m.WorkloadEndpoint) -> None: ...

    async def endpoint_removed(self, key: str, addresses: Iterable[str] = ()) -> None: ...


def owns_pod_routes(sink: EndpointSink | None) -> bool:
    """Whether ``sink`` programs the pods' host routes itself (the agent: its route manager
    adds a pod's /32 in the apply `endpoint_added` runs, before ADD answers). Then wiring
    leaves them alone; without such a sink (a bare handler) wiring installs them. Either
    way each route has one writer."""
    return bool(getattr(sink, "owns_pod_routes", False))


def handle_for(network: str, container_id: str, ifname: str) -> str:
    """The IPAM handle of one attachment (docs/architecture.md §4)."""
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


class HandleLocks:
    """One asyncio lock per name, made on first use and dropped with its last user."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, handle: str) -> AsyncIterator[None]:
        """Serialise on ``handle`` (an attachment, or an endpoint name).

        Order, where several are held: the endpoint name, the attachment's handle, then
        the handle of the attachment it takes over. A DEL and GC hold one handle only."""
        locks = self._locks
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

    def busy(self) -> frozenset[str]:
        """Attachments with a call in progress (GC leaves them alone)."""
        return frozenset(self._locks)


def delegated(req: CniRequest) -> bool:
    return bool(req.ipam_type) and req.ipam_type != IPAM_PLUGIN


def families(config: Mapping[str, Any]) -> tuple[int, int]:
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


def host_prefix(a: IPInterface) -> IPInterface:
    return ipaddress.ip_interface(f"{a.ip}/{a.ip.max_prefixlen}")


def decode_wep(key: str, value: bytes) -> m.WorkloadEndpoint | None:
    try:
        res = m.decode(key, value)
    except m.ValidationError as e:
        log.warning("ignoring invalid workload endpoint: %s", e)
        return None
    return res if isinstance(res, m.WorkloadEndpoint) else None


def is_outage(e: BaseException) -> bool:
    """Whether ``e`` is etcd being away (expected; one log line), not a bug."""
    return isinstance(e, UnavailableError | IpamUnavailableError) or (
        isinstance(e, CniError) and e.code == proto.ERR_TRY_AGAIN_LATER)


def datastore_error(what: str, e: Exception) -> CniError:
    if isinstance(e, UnavailableError | IpamUnavailableError):
        return CniError(proto.ERR_TRY_AGAIN_LATER, f"{what}: etcd unavailable", str(e))
    return CniError(proto.ERR_IO, f"{what}: {e}")


def ipam_error(e: Exception) -> CniError:
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
