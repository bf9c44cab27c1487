"""The one etcd client of l3fabric: aetcd underneath, typed errors and plain values on top.

Owns: one gRPC channel to the etcd cluster (several endpoints through gRPC's own
round-robin balancer, retried on UNAVAILABLE, optional TLS client certificates) and the
translation of aetcd's results into frozen values (`KV`, `WatchEvent`) and of its many
exceptions into four typed ones (`NotFoundError`, `ConflictError`, `UnavailableError`,
`CompactedError`).

Failure mode: every call has a short deadline (``timeout``, 2 s by default). When no member
answers in time the call raises `UnavailableError`; callers decide whether to retry. A
watch whose member dies ends with `UnavailableError` and the caller re-watches from the
last revision it saw plus one (see `datastore.syncer`); a watch from a compacted revision
raises `CompactedError`, after which only a full resync is correct.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions as aexc
import grpc
from aetcd import rpc

from datastore.kv import (
    KV,
    CompactedError,
    Compare,
    ConflictError,
    DatastoreError,
    Delete,
    Get,
    NotFoundError,
    Op,
    Page,
    Put,
    Range,
    TxnResult,
    UnavailableError,
    WatchEvent,
)

# The client, and the vocabulary it speaks (defined in datastore.kv, named from here).
__all__ = [
    "DEFAULT_ENDPOINT",
    "KV",
    "CompactedError",
    "Compare",
    "ConflictError",
    "Datastore",
    "DatastoreError",
    "Delete",
    "EtcdConfig",
    "Get",
    "NotFoundError",
    "Op",
    "Page",
    "Put",
    "Range",
    "TxnResult",
    "UnavailableError",
    "WatchEvent",
]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


# -- configuration --------------------------------------------------------------------

@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = 2.0
    # The name every member's certificate is checked against. gRPC checks one name per
    # channel, and for a multi-address target its default (the whole address list) matches
    # no certificate; so by default it is the first endpoint's host. With several TLS
    # members every member certificate must be valid for this name (a shared DNS name, or
    # all member IPs as SANs).
    server_name: str | None = None

    @classmethod
    def from_strings(cls, endpoints: str, ca: str | None = None, cert: str | None = None,
                     key: str | None = None, timeout: float = 2.0) -> EtcdConfig:
        eps = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        if not eps:
            raise ValueError("no etcd endpoint given")
        return cls(eps, Path(ca) if ca else None, Path(cert) if cert else None,
                   Path(key) if key else None, timeout)

    @property
    def tls(self) -> bool:
        return self.ca is not None or any(e.startswith("https://") for e in self.endpoints)

    def tls_server_name(self) -> str:
        if self.server_name:
            return self.server_name
        first = self.endpoints[0]
        u = urlsplit(first if "://" in first else f"http://{first}")
        if u.hostname is None:
            raise ValueError(f"bad etcd endpoint {first!r}")
        return u.hostname

    def grpc_target(self, resolve: Callable[[str, int], list[str]] | None = None) -> str:
        """A gRPC target naming every endpoint: ``ipv4:a:p1,b:p2`` or ``dns:///h:p``.

        gRPC's ``ipv4:`` (and ``ipv6:``) schemes take a comma-separated list of literal
        addresses and balance over them; a single host name goes through ``dns:`` (gRPC
        re-resolves it on reconnect). gRPC has no target for several names, so each name of
        a list is resolved here, once, by ``resolve`` (the system resolver by default:
        /etc/hosts, then DNS) into the addresses of an ``ipv4:``/``ipv6:`` list; a member
        whose address changes later needs a restart of the client.
        """
        unix = [ep for ep in self.endpoints if ep.startswith("unix://")]
        if unix:
            # A unix socket reaches etcd from any network namespace: how agents inside
            # node namespaces talk to a test's etcd without a network path to it.
            if len(unix) != 1 or len(self.endpoints) != 1:
                raise ValueError("a unix:// etcd endpoint must be the only endpoint")
            return "unix:" + unix[0][len("unix://"):]
        hostports: list[tuple[str, int]] = []
        for ep in self.endpoints:
            u = urlsplit(ep if "://" in ep else f"http://{ep}")
            if u.hostname is None:
                raise ValueError(f"bad etcd endpoint {ep!r}")
            hostports.append((u.hostname, u.port or 2379))
        if all(_is_ipv4(h) for h, _ in hostports):
            return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hostports)
        if all(":" in h for h, _ in hostports):
            return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in hostports)
        if len(hostports) == 1:
            return f"dns:///{hostports[0][0]}:{hostports[0][1]}"
        return _resolved_target(hostports, resolve or _system_resolve)


def _is_literal(host: str) -> bool:
    return _is_ipv4(host) or ":" in host


def _system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _resolved_target(hostports: list[tuple[str, int]],
                     resolve: Callable[[str, int], list[str]]) -> str:
    """``ipv4:`` (else ``ipv6:``) list of every address of every endpoint, names resolved.
    One family for all: a gRPC address list cannot mix them."""
    v4: list[str] = []
    v6: list[str] = []
    for host, port in hostports:
        if _is_literal(host):
            addrs = [host]
        else:
            try:
                addrs = resolve(host, port)
            except OSError as e:
                raise ValueError(f"etcd endpoint {host!r} does not resolve: {e}") from e
        four = [a for a in addrs if _is_ipv4(a)]
        six = [a for a in addrs if ":" in a]
        if not four and not six:
            raise ValueError(f"etcd endpoint {host!r} resolves to no address")
        v4 += [f"{a}:{port}" for a in four]
        v6 += [f"[{a}]:{port}" for a in six]
        if not four:
            v4.append("")  # marks an endpoint with no IPv4 address
        if not six:
            v6.append("")
    if "" not in v4:
        return "ipv4:" + ",".join(dict.fromkeys(v4))
    if "" not in v6:
        return "ipv6:" + ",".join(dict.fromkeys(v6))
    raise ValueError("several etcd endpoints must share an address family (all reachable "
                     "over IPv4, or all over IPv6)")


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)


def _service_config() -> str:
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": "etcdserverpb.KV"}, {"service": "etcdserverpb.Lease"},
                     {"service": "etcdserverpb.Maintenance"}],
            "retryPolicy": {
                "maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client with our channel: several endpoints, TLS, retry policy."""

    def __init__(self, config: EtcdConfig) -> None:
        options = {
            "grpc.service_config": _service_config(),
            "grpc.enable_retries": 1,
            "grpc.keepalive_time_ms": 10_000,
            "grpc.keepalive_timeout_ms": 5_000,
            "grpc.initial_reconnect_backoff_ms": 100,
            "grpc.max_reconnect_backoff_ms": 1_000,
            "grpc.max_receive_message_length": 64 * 1024 * 1024,
        }
        super().__init__(host="unused", port=0, timeout=config.timeout, options=options)
        self._config = config

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        cfg = self._config
        target = cfg.grpc_target()
        opts = list(self._options.items())
        if cfg.tls:
            opts.append(("grpc.ssl_target_name_override", cfg.tls_server_name()))
            creds = grpc.ssl_channel_credentials(
                root_certificates=cfg.ca.read_bytes() if cfg.ca else None,
                private_key=cfg.key.read_bytes() if cfg.key else None,
                certificate_chain=cfg.cert.read_bytes() if cfg.cert else None,
            )
            self.channel = rpc.secure_channel(target, creds, options=opts)
        else:
            self.channel = rpc.insecure_channel(target, options=opts)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
        self._connected.set()

    def reset_watcher(self) -> None:
        """Replace the shared watch stream (aetcd's Watcher) with a new one. aetcd lets one
        watch creation be pending at a time and bounds only the wait for its answer, not
        the wait for its turn; after an etcd outage a creation was seen left pending for
        good, every later watch queued behind it. Its stream is cancelled; watches still
        on it end (the syncer re-watches)."""
        old = self._watcher
        if old is not None and old._request_handler is not None:
            old._request_handler.cancel()
        if self.channel is not None:
            self._watcher = aetcd.watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)


def _kv(raw: Any) -> KV:
    return KV(
        key=raw.key.decode() if isinstance(raw.key, bytes) else str(raw.key),
        value=bytes(raw.value),
        create_revision=int(raw.create_revision),
        mod_revision=int(raw.mod_revision),
        version=int(raw.version),
        lease=int(getattr(raw, "lease", 0)),
    )


_CMP_RESULT = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL,
               "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}
# target -> (the protobuf enum, the field of Compare that holds the operand)
_CMP_TARGET = {"mod": (rpc.Compare.MOD, "mod_revision"),
               "create": (rpc.Compare.CREATE, "create_revision"),
               "version": (rpc.Compare.VERSION, "version"),
               "value": (rpc.Compare.VALUE, "value")}


def _compare_pb(x: Compare) -> Any:
    target, field_name = _CMP_TARGET[x.target]
    return rpc.Compare(key=x.key.encode(), target=target, result=_CMP_RESULT[x.op],
                       **{field_name: x.value})


def _op_pb(x: Op) -> Any:
    if isinstance(x, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=x.key.encode(), value=x.value,
                                                        lease=x.lease or 0))
    if isinstance(x, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=x.key.encode()))
    if isinstance(x, Range):
        start = x.prefix.encode()
        return rpc.RequestOp(request_range=rpc.RangeRequest(
            key=start, range_end=aetcd.utils.prefix_range_end(start), keys_only=x.keys_only))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=x.key.encode()))


def _translate(exc: BaseException) -> DatastoreError:
    if isinstance(exc, DatastoreError):
        return exc
    if isinstance(exc, aexc.RevisionCompactedError):
        return CompactedError(int(exc.compacted_revision))
    if isinstance(exc, aexc.ConnectionFailedError | aexc.ConnectionTimeoutError
                  | aexc.WatchTimeoutError | TimeoutError):
        return UnavailableError(f"etcd unavailable: {exc}")
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return UnavailableError(f"etcd unavailable: {exc.details()}")
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return NotFoundError(f"etcd: {exc.details()}")
        if _is_election_error(exc.details() or ""):
            return UnavailableError(f"etcd unavailable: {exc.details()}")
        return DatastoreError(f"etcd error {exc.code().name}: {exc.details()}")
    if isinstance(exc, aexc.ClientError):
        text = str(exc)
        if "not found" in text.lower():  # aetcd maps NOT_FOUND to a bare ClientError
            return NotFoundError(f"etcd: {text}")
        if "deadline" in text.lower() or "unavailable" in text.lower():
            return UnavailableError(f"etcd unavailable: {text}")
        return DatastoreError(f"etcd error: {text}")
    return DatastoreError(f"etcd error: {exc!r}")


# What a member says while the cluster elects a leader or a proposal times out. etcd sends
# some of these with status UNKNOWN (a proposal's "context deadline exceeded" when the
# leader is killed), not UNAVAILABLE. They are transient: the caller's bounded retry, whose
# writes are compare-and-swaps, may run again, and a write that was in fact committed loses
# its compare on the retry instead of applying twice.
_ELECTION_ERRORS = ("context deadline exceeded", "leader changed", "no leader",
                    "request timed out", "timed out waiting for read index")


def _is_election_error(details: str) -> bool:
    text = details.lower()
    return any(e in text for e in _ELECTION_ERRORS)


_EXPECTED = (aexc.ClientError, grpc.aio.AioRpcError, TimeoutError)


class Datastore:
    """Async access to etcd for every part of l3fabric. Keys are ``str``, values ``bytes``."""

    def __init__(self, config: EtcdConfig | None = None) -> None:
        self.config = config or EtcdConfig()
        self._client = _Client(self.config)

    async def __aenter__(self) -> Datastore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._client.close()
        except _EXPECTED as e:  # closing a dead channel is not worth an error
            log.debug("closing etcd client: %s", e)

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        try:
            got = await self._client.get(key.encode())
        except _EXPECTED as e:
            raise _translate(e) from e
        return None if got is None else _kv(got)

    async def get_at(self, key: str, revision: int) -> KV | None:
        """``key`` as it was at ``revision`` (etcd's MVCC history), None if absent then.

        Raises `CompactedError` when ``revision`` is older than the last compaction.
        """
        resp = await self._range(rpc.RangeRequest(key=key.encode(), revision=revision))
        return _kv(resp.kvs[0]) if resp.count else None

    async def list_page(self, prefix: str, start: str = "", revision: int = 0,
                        limit: int = 0) -> Page:
        """At most ``limit`` keys under ``prefix`` from ``start`` (inclusive; the prefix
        itself when empty), in key order, as of ``revision`` (0: now).

        The pages of one snapshot are read at the first page's revision, so that no
        single response has to hold the whole prefix (the channel takes at most 64 MiB).
        Raises `CompactedError` when ``revision`` is older than the last compaction.
        """
        first = (start or prefix).encode()
        resp = await self._range(rpc.RangeRequest(
            key=first, range_end=aetcd.utils.prefix_range_end(prefix.encode()),
            revision=revision, limit=limit))
        return Page([_kv(kv) for kv in resp.kvs], int(resp.header.revision), bool(resp.more))

    async def _range(self, req: Any) -> Any:
        """One Range request built here: aetcd's range builder drops ``revision``."""
        try:
            await self._client.connect()
            return await self._client.kvstub.Range(req, timeout=self._client._timeout,
                                                   metadata=self._client.metadata)
        except _EXPECTED as e:
            err = _translate(e)
            if "compacted" in str(err) and not isinstance(err, CompactedError):
                raise CompactedError(0) from e
            raise err from e

    async def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        """Every key under ``prefix`` and the store revision of that snapshot."""
        try:
            got = await self._client.get_prefix(prefix.encode(), keys_only=keys_only)
        except _EXPECTED as e:
            raise _translate(e) from e
        return [_kv(kv) for kv in got], int(got.header.revision)

    async def revision(self) -> int:
        """The current store revision (a cheap range read of a key that never exists)."""
        try:
            got = await self._client.get_prefix(b"/l3fabric/\x00revision-probe", keys_only=True)
        except _EXPECTED as e:
            raise _translate(e) from e
        return int(got.header.revision)

    # -- writes -----------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        res = await self.txn([], [Put(key, value, lease)], [])
        return res.revision

    async def create(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Create ``key``; `ConflictError` if it exists."""
        res = await self.txn([Compare(key, "create", "==", 0)], [Put(key, value, lease)], [])
        if not res.succeeded:
            raise ConflictError(f"{key} already exists")
        return res.revision

    async def update(self, key: str, value: bytes, mod_revision: int,
                     lease: int | None = None) -> int:
        """Replace ``key`` if unchanged since ``mod_revision``; `ConflictError` otherwise."""
        res = await self.txn([Compare(key, "mod", "==", mod_revision)],
                             [Put(key, value, lease)], [])
        if not res.succeeded:
            raise ConflictError(f"{key} changed since revision {mod_revision}")
        return res.revision

    async def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key``; with ``mod_revision`` only if unchanged (`ConflictError` if not).

        Returns whether the key existed.
        """
        cmp = [] if mod_revision is None else [Compare(key, "mod", "==", mod_revision)]
        res = await self.txn(cmp, [Get(key), Delete(key)], [])
        if not res.succeeded:
            raise ConflictError(f"{key} changed since revision {mod_revision}")
        return res.gets[0] is not None

    async def delete_prefix(self, prefix: str) -> None:
        try:
            await self._client.delete_prefix(prefix.encode())
        except _EXPECTED as e:
            raise _translate(e) from e

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        """One etcd transaction. Gets of the executed branch come back in order.

        The request is built as protobuf messages directly (not through aetcd's
        transaction helpers, which build each message field by field): every IPAM
        allocation is one of these, and on a small node the client's CPU is on the
        allocation's critical path.
        """
        c = self._client
        try:
            if not c._connected.is_set():
                await c.connect()
            request = rpc.TxnRequest(compare=[_compare_pb(x) for x in compare],
                                     success=[_op_pb(x) for x in success],
                                     failure=[_op_pb(x) for x in failure])
            resp = await c.kvstub.Txn(request, timeout=c._timeout, metadata=c.metadata)
        except _EXPECTED as e:
            raise _translate(e) from e
        gets: list[KV | None] = []
        ranges: list[tuple[KV, ...]] = []
        for op, r in zip(success if resp.succeeded else failure, resp.responses, strict=True):
            if isinstance(op, Get):
                kvs = r.response_range.kvs
                gets.append(_kv(kvs[0]) if kvs else None)
            elif isinstance(op, Range):
                ranges.append(tuple(_kv(kv) for kv in r.response_range.kvs))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), tuple(gets),
                         tuple(ranges))

    # -- leases -----------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        try:
            lease = await self._client.lease(ttl)
        except _EXPECTED as e:
            raise _translate(e) from e
        return int(lease.id)

    async def refresh_lease(self, lease_id: int) -> None:
        """Keep ``lease_id`` alive for another TTL; `NotFoundError` if it already expired.

        (etcd answers a keep-alive of an expired lease with TTL 0, not with an error.)
        """
        try:
            reply = await self._client.refresh_lease(lease_id)
        except _EXPECTED as e:
            raise _translate(e) from e
        if reply is None or int(reply.TTL) <= 0:
            raise NotFoundError(f"lease {lease_id:x} not found (expired or revoked)")

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._client.revoke_lease(lease_id)
        except _EXPECTED as e:
            raise _translate(e) from e

    # -- maintenance (tests, fabricctl) --------------------------------------------------

    async def compact(self, revision: int) -> None:
        try:
            await self._client.compact(revision, physical=True)
        except _EXPECTED as e:
            raise _translate(e) from e

    # -- watch ------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` (inclusive), in order.

        Ends by raising: `CompactedError` when ``start_revision`` is gone, or
        `UnavailableError` when the stream breaks. It never ends silently while the
        client is open.
        """
        try:
            # Bounded: a wedged watch stream never answers (see `_Client.reset_watcher`).
            w = await asyncio.wait_for(
                self._client.watch_prefix(prefix.encode(), start_revision=start_revision),
                2 * self.config.timeout + 1)
        except (TimeoutError, aexc.WatchTimeoutError) as e:
            self._client.reset_watcher()
            raise UnavailableError(f"watch on {prefix}: not created in time ({e!r}); "
                                   "watch stream reset") from e
        except _EXPECTED as e:
            raise _translate(e) from e
        try:
            async for ev in w:
                kind: Literal["put", "delete"] = (
                    "delete" if ev.kind == aetcd.rtypes.EventKind.DELETE else "put")
                yield WatchEvent(kind, _kv(ev.kv))
        except _EXPECTED as e:
            raise _translate(e) from e
        finally:
            try:
                await w.cancel()
            except Exception as e:
                log.debug("cancelling watch: %s", e)
        raise UnavailableError(f"watch on {prefix} ended")
