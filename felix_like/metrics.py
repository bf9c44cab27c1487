"""Prometheus metrics of the node agent (prefix ``l3fabric_``) and the HTTP endpoint serving
them with ``/livez`` and ``/readyz``.

Owns: one private CollectorRegistry per agent (tests run several agents in one process)
and a tiny asyncio HTTP server. Besides ``l3fabric_*`` the registry carries the standard
process metrics (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, …).
Values another object owns are read when scraped (`Metrics.sample_bgp`): the series of a
BGP peer exist exactly while the peer is configured, so a deleted peer's go with it.
Labels are bounded: ``peer`` by the configured neighbours, the others by fixed sets
(CNI verb and result, route kind, manager, event type). `Metrics.catalogue` lists every
family; docs/metrics.md documents each (a unit test keeps the two equal).

Liveness is "the event loop answers"; readiness is "every start-up step is done"
(`Readiness`: the node registered, the BGP speaker started, the first datastore snapshot
in, the first route and policy applies succeeded). Until then ``/readyz`` answers 503
naming the step it waits for and the last error that step met.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from datastore.version import l3fabric_version
from felix_like.policy.flowlog import FLOW_FAMILIES
from felix_like.policy.stats import BYTES as POLICY_BYTES
from felix_like.policy.stats import LABELS as POLICY_LABELS
from felix_like.policy.stats import PACKETS as POLICY_PACKETS

log = logging.getLogger(__name__)

# No ``<counter>_created`` series beside each counter: they double the series a scrape
# carries and nothing here reads them (process-wide, as the client library keeps it).
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


#: The families `ProcessCollector` exports on Linux: (name, type).
PROCESS_FAMILIES: tuple[tuple[str, str], ...] = (
    ("process_virtual_memory_bytes", "gauge"), ("process_resident_memory_bytes", "gauge"),
    ("process_start_time_seconds", "gauge"), ("process_cpu_seconds_total", "counter"),
    ("process_open_fds", "gauge"), ("process_max_fds", "gauge"))


@dataclass(frozen=True)
class PeerSample:
    """One configured BGP neighbour as the speaker sees it now."""

    peer: str  # the neighbour's address
    up: bool
    received: int  # prefixes accepted from it
    max_prefixes: int
    dropped: int  # announcements refused at its limit since its table was created


@dataclass(frozen=True)
class BgpSample:
    peers: tuple[PeerSample, ...] = ()
    advertised: int = 0
    exabgp_restarts: int = 0  # ExaBGP processes restarted after dying


#: The families `Metrics.sample_bgp` exports: (name, type, labels, help).
BGP_FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("l3fabric_bgp_peer_up", "gauge", ("peer",),
     "1 when the BGP session with the peer is established"),
    ("l3fabric_bgp_prefixes_received", "gauge", ("peer",), "prefixes received from the peer"),
    ("l3fabric_bgp_max_prefixes", "gauge", ("peer",),
     "max-prefix limit of the peer (BGPPeer or BGPConfiguration maxPrefixes)"),
    ("l3fabric_bgp_prefixes_dropped", "counter", ("peer",),
     "announcements from the peer dropped at its max-prefix limit "
     "(l3fabric_bgp_max_prefixes)"),
    ("l3fabric_bgp_prefixes_advertised", "gauge", (), "prefixes advertised to peers"),
    ("l3fabric_exabgp_restarts", "counter", (),
     "ExaBGP processes restarted by the agent after they died"),
)


class _BgpCollector(Collector):
    """The BGP families, read from ``sample()`` at each scrape."""

    def __init__(self, sample: Callable[[], BgpSample]) -> None:
        self._sample = sample

    def describe(self) -> list[Metric]:
        return [self._family(name, kind, labels, text)
                for name, kind, labels, text in BGP_FAMILIES]

    @staticmethod
    def _family(name: str, kind: str, labels: tuple[str, ...],
                text: str) -> CounterMetricFamily | GaugeMetricFamily:
        if kind == "counter":
            return CounterMetricFamily(name, text, labels=labels)
        return GaugeMetricFamily(name, text, labels=labels)

    def collect(self) -> Iterator[Metric]:
        s = self._sample()
        fams = {name: self._family(name, kind, labels, text)
                for name, kind, labels, text in BGP_FAMILIES}
        for p in s.peers:
            fams["l3fabric_bgp_peer_up"].add_metric([p.peer], 1 if p.up else 0)
            fams["l3fabric_bgp_prefixes_received"].add_metric([p.peer], p.received)
            fams["l3fabric_bgp_max_prefixes"].add_metric([p.peer], p.max_prefixes)
            fams["l3fabric_bgp_prefixes_dropped"].add_metric([p.peer], p.dropped)
        fams["l3fabric_bgp_prefixes_advertised"].add_metric([], s.advertised)
        fams["l3fabric_exabgp_restarts"].add_metric([], s.exabgp_restarts)
        yield from fams.values()


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "l3fabric_build_info", "1, labelled with the agent's l3fabric release",
            ["version"], registry=r)
        self.build_info.labels(l3fabric_version()).set(1)
        self.cni_requests = Counter(
            "l3fabric_cni_requests", "CNI requests served, by verb and result",
            ["verb", "result"], registry=r)
        self.cni_latency = Histogram(
            "l3fabric_cni_request_seconds", "CNI request latency, by verb", ["verb"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.cni_add_steps = Histogram(
            "l3fabric_cni_add_step_seconds",
            "time of each step of a successful ADD: read (the endpoint's prior value), "
            "ipam, wiring (veth and addresses), dataplane (routes and policy applied), "
            "endpoint (its write to etcd)", ["step"], buckets=_LATENCY_BUCKETS, registry=r)
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
        self.config_values_invalid = Gauge(
            "l3fabric_config_values_invalid",
            "values in etcd invalid right now (their last good value in use)", registry=r)
        self.policy_apply_failures = Counter(
            "l3fabric_policy_apply_failures",
            "policy applies the kernel refused (the previous rules stay in force)",
            registry=r)
        self.blocks_owned = Gauge(
            "l3fabric_ipam_blocks_owned", "confirmed IPAM blocks affine to this node",
            registry=r)
        self.addresses_in_use = Gauge(
            "l3fabric_ipam_addresses_in_use", "addresses of local workloads", registry=r)
        self.in_sync = Gauge(
            "l3fabric_datastore_in_sync", "1 once the datastore snapshot is complete",
            registry=r)
        self.endpoints_without_interface = Gauge(
            "l3fabric_endpoints_without_interface",
            "local WorkloadEndpoints whose host interface does not exist (stale: their "
            "routes wait for the interface)", registry=r)

        self._bgp = _BgpCollector(BgpSample)  # nothing until the BGP speaker says
        r.register(self._bgp)

    def sample_bgp(self, sample: Callable[[], BgpSample]) -> None:
        """Read the BGP families from ``sample()`` at each scrape."""
        self._bgp._sample = sample

    def catalogue(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """Every family this registry exports: (name as scraped, type, labels), sorted."""
        out: list[tuple[str, str, tuple[str, ...]]] = [(n, t, ()) for n, t in PROCESS_FAMILIES]
        out += [(n + ("_total" if t == "counter" else ""), t, labels)
                for n, t, labels, _ in BGP_FAMILIES]
        out += [(n + "_total", "counter", POLICY_LABELS) for n in (POLICY_PACKETS, POLICY_BYTES)]
        out += [(n + "_total", "counter", ()) for n, _ in FLOW_FAMILIES]
        for m in vars(self).values():
            if isinstance(m, MetricWrapperBase):
                name = m._name + ("_total" if m._type == "counter" else "")
                out.append((name, str(m._type), tuple(m._labelnames)))
        return sorted(out)

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
        # More read-only pages by path (the flow log's ``/flows``), rendered off the loop.
        self.pages: dict[str, Callable[[], bytes]] = {}
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
            elif path in self.pages:
                body = await asyncio.to_thread(self.pages[path])
                status, ctype = "200 OK", "application/x-ndjson"
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
