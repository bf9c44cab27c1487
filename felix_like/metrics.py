"""Prometheus metrics of the node agent (prefix ``l3fabric_``) and the HTTP endpoint serving
them with ``/livez`` and ``/readyz``.

Owns: one private CollectorRegistry per agent (tests run several agents in one process)
and a tiny asyncio HTTP server. Liveness is "the event loop answers"; readiness is "every
start-up step is done" (`Readiness`: the node registered, the BGP speaker started, the
first datastore snapshot in, the first route and policy applies succeeded). Until then
``/readyz`` answers 503 naming the step it waits for and the last error that step met.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.cni_requests = Counter(
            "l3fabric_cni_requests", "CNI requests served, by verb and result",
            ["verb", "result"], registry=r)
        self.cni_latency = Histogram(
            "l3fabric_cni_request_seconds", "CNI request latency, by verb", ["verb"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.routes_programmed = Gauge(
            "l3fabric_routes_programmed", "routes of ours in the kernel, by kind", ["kind"],
            registry=r)
        self.route_errors = Counter(
            "l3fabric_route_errors", "netlink route operations that failed", registry=r)
        self.apply_latency = Histogram(
            "l3fabric_dataplane_apply_seconds", "time of one dataplane apply, by manager",
            ["manager"], buckets=_LATENCY_BUCKETS, registry=r)
        self.datastore_events = Counter(
            "l3fabric_datastore_events", "datastore events seen, by type", ["type"], registry=r)
        self.config_errors = Counter(
            "l3fabric_config_errors", "invalid values seen in etcd (last good value kept)",
            registry=r)
        self.blocks_owned = Gauge(
            "l3fabric_ipam_blocks_owned", "confirmed IPAM blocks affine to this node",
            registry=r)
        self.addresses_in_use = Gauge(
            "l3fabric_ipam_addresses_in_use", "addresses of local workloads", registry=r)
        self.in_sync = Gauge(
            "l3fabric_datastore_in_sync", "1 once the datastore snapshot is complete",
            registry=r)
        self.bgp_peer_up = Gauge(
            "l3fabric_bgp_peer_up", "1 when the BGP session with the peer is established",
            ["peer"], registry=r)
        self.bgp_prefixes_received = Gauge(
            "l3fabric_bgp_prefixes_received", "prefixes received from the peer", ["peer"],
            registry=r)
        self.bgp_prefixes_dropped = Gauge(
            "l3fabric_bgp_prefixes_dropped",
            "announcements from the peer dropped at its max-prefix limit "
            "(l3fabric_bgp_max_prefixes)", ["peer"], registry=r)
        self.bgp_max_prefixes = Gauge(
            "l3fabric_bgp_max_prefixes",
            "max-prefix limit of the peer (BGPPeer or BGPConfiguration maxPrefixes)",
            ["peer"], registry=r)
        self.bgp_prefixes_advertised = Gauge(
            "l3fabric_bgp_prefixes_advertised", "prefixes advertised to peers", registry=r)
        self.endpoints_without_interface = Gauge(
            "l3fabric_endpoints_without_interface",
            "local WorkloadEndpoints whose host interface does not exist (stale: their "
            "routes wait for the interface)", registry=r)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


#: The agent's start-up steps in the order it takes them, and what each waits for.
READINESS_STEPS: Mapping[str, str] = {
    "etcd": "etcd (schema check and node registration)",
    "bgp": "the BGP speaker to start",
    "snapshot": "the first etcd snapshot",
    "routes": "the first route apply",
    "policy": "the first policy apply",
}


class Readiness:
    """Whether the agent is ready and, until it is, why not.

    Each start-up step is marked `done` once, or `failed` with an error as often as it
    fails; the reason names the first step not done and the last error it met. Once
    every step is done the agent stays ready: a later etcd outage leaves the dataplane as
    it was, so ``/readyz`` does not flap with it (the CNI answers code 11 meanwhile).
    """

    def __init__(self, steps: Mapping[str, str] = READINESS_STEPS,
                 now: Callable[[], float] = time.monotonic) -> None:
        self._steps = dict(steps)
        self._now = now
        self._done: set[str] = set()
        self._errors: dict[str, tuple[str, float]] = {}

    def done(self, step: str) -> None:
        self._check(step)
        self._done.add(step)
        self._errors.pop(step, None)

    def failed(self, step: str, error: str) -> None:
        self._check(step)
        self._errors[step] = (error, self._now())

    def is_done(self, step: str) -> bool:
        return step in self._done

    @property
    def ready(self) -> bool:
        return self._done >= self._steps.keys()

    def reason(self) -> str:
        """"waiting for <step>[; last error N s ago: <error>]", or "ready"."""
        for step, what in self._steps.items():
            if step in self._done:
                continue
            text = f"waiting for {what}"
            if step in self._errors:
                error, at = self._errors[step]
                text += f"; last error {self._now() - at:.0f} s ago: {error}"
            return text
        return "ready"

    def _check(self, step: str) -> None:
        if step not in self._steps:
            raise ValueError(f"unknown readiness step {step!r}")


class HealthServer:
    """``GET /metrics``, ``/livez``, ``/readyz`` on one TCP address."""

    def __init__(self, metrics: Metrics, host: str, port: int,
                 readiness: Readiness | None = None) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.readiness = readiness or Readiness()
        self._server: asyncio.Server | None = None

    @property
    def ready(self) -> bool:
        return self.readiness.ready

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("metrics and health on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path == "/metrics":
                # Off the event loop: collectors read the kernel (policy counters).
                body = await asyncio.to_thread(self.metrics.render)
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            elif path == "/livez":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                if self.readiness.ready:
                    status, ctype, body = "200 OK", "text/plain", b"ready\n"
                else:
                    status, ctype = "503 Service Unavailable", "text/plain"
                    body = f"not ready: {self.readiness.reason()}\n".encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as e:
            log.debug("health request: %s", e)
        finally:
            writer.close()
