"""The flow log: denied connections (and a staged policy's would-be denials), read from the
kernel's NFLOG group, enriched and written as JSON lines on the node.

Owned here: the NFLOG group :data:`~felix_like.policy.program.FLOWLOG_GROUP` in the
agent's network namespace, and the flow log file with its rotated copies (``FILE.1`` ..).

The rules (``with_flow_logs``) send the first packet of a denied connection to the
group, at most ``FLOWLOG_RATE`` per second per rule (the kernel's limit), with the rule's
counter as prefix; replies and established flows are accepted before any policy runs, so
a pod's own return traffic is never logged. The agent reads the group over a netlink
socket of its own (the NFLOG protocol of ``nfnetlink_log``, a few structs: pyroute2 has no
NFLOG support, and the PyPI bindings, nflog and nflogr, wrap the C libnetfilter_log and
are unmaintained), limits itself again (:class:`TokenBucket`; what it drops counts in
``suppressed``), names the pods, namespaces, labels, policy and rule, and appends one
JSON object per line. A record is never lost silently: either written or counted.

Failure mode: the reader thread logs and ends if the socket fails; the dataplane is not
affected (logging is a side branch of each deny rule).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from datastore import model
from felix_like.policy.program import FLOWLOG_GROUP, PROTOCOL_NAMES, Counted, Ruleset

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY_RANGE = 96  # the IP and transport headers are all a record needs


# --- the NFLOG protocol -----------------------------------------------------------------


def _attr(kind: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def config_message(group: int, attrs: bytes, seq: int) -> bytes:
    """One NFULNL_MSG_CONFIG request for ``group`` (nfgenmsg: AF_UNSPEC, v0, group)."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_messages(group: int) -> list[bytes]:
    """Bind ``group``, then ask for the first ``COPY_RANGE`` bytes of each packet."""
    return [config_message(group, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), 1),
            config_message(group, _attr(NFULA_CFG_MODE, struct.pack(
                ">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)), 2)]


@dataclass(frozen=True)
class Logged:
    """One packet the kernel logged: its rule's prefix and the start of the packet."""

    prefix: str
    payload: bytes


def parse_messages(data: bytes) -> Iterator[Logged | int]:
    """The packets in one datagram of netlink messages; an error ack yields its errno
    (0: an ack)."""
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            return
        end = off + length
        if kind == NLMSG_ERROR:
            yield -struct.unpack_from("=i", data, off + 16)[0]
        elif kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            prefix, payload = "", b""
            a = off + 20  # after nlmsghdr and nfgenmsg
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                value = data[a + 4:a + alen]
                atype &= 0x7FFF
                if atype == NFULA_PREFIX:
                    prefix = value.split(b"\0", 1)[0].decode(errors="replace")
                elif atype == NFULA_PAYLOAD:
                    payload = value
                a += (alen + 3) & ~3
            yield Logged(prefix, payload)
        off += (length + 3) & ~3


@dataclass(frozen=True)
class Headers:
    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None


def parse_headers(payload: bytes) -> Headers | None:
    """Addresses, protocol and ports of an IPv4 or IPv6 packet's start."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        ihl = (payload[0] & 0xF) * 4
        proto = payload[9]
        src = str(ipaddress.IPv4Address(payload[12:16]))
        dst = str(ipaddress.IPv4Address(payload[16:20]))
        l4 = ihl
    elif version == 6 and len(payload) >= 40:
        proto = payload[6]  # extension headers are not followed: no ports then
        src = str(ipaddress.IPv6Address(payload[8:24]))
        dst = str(ipaddress.IPv6Address(payload[24:40]))
        l4 = 40
    else:
        return None
    sport = dport = None
    if proto in (6, 17, 132) and len(payload) >= l4 + 4:
        sport, dport = struct.unpack_from(">HH", payload, l4)
    return Headers(src, dst, proto, sport, dport)


# --- the agent's side -------------------------------------------------------------------


class TokenBucket:
    """``rate`` records per second, bursts of ``burst``; ``take()`` says whether one may
    go now."""

    def __init__(self, rate: float, burst: float,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._now = rate, burst, now
        self._tokens, self._at = burst, now()

    def take(self) -> bool:
        t = self._now()
        self._tokens = min(self.burst, self._tokens + (t - self._at) * self.rate)
        self._at = t
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class RotatingFile:
    """Appends lines to ``path``; past ``max_bytes`` it becomes ``path.1`` (``.1`` ->
    ``.2`` ...) and ``keep`` old files are kept."""

    def __init__(self, path: Path, max_bytes: int = 10 << 20, keep: int = 3) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def write(self, line: str) -> None:
        if self._f.tell() + len(line) > self.max_bytes:
            self._rotate()
        self._f.write(line)
        self._f.flush()

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        self._f.close()


class Enricher:
    """Names the pods and the rule of a logged packet, from what the policy manager holds:
    its cluster state (or a mapping key -> value) and its last ruleset."""

    def __init__(self, state: Callable[[], Any], ruleset: Callable[[], Ruleset | None]) -> None:
        self._state, self._ruleset = state, ruleset
        self._rules_of: Ruleset | None = None
        self._counted: dict[str, Counted] = {}

    def counted(self, prefix: str) -> Counted | None:
        rs = self._ruleset()
        if prefix not in self._counted and rs is not None and rs is not self._rules_of:
            self._rules_of = rs
            self._counted = {r.counted.short: r.counted for rules in rs.chains.values()
                             for r in rules if r.counted is not None}
        return self._counted.get(prefix)

    def endpoint(self, ip: str) -> model.WorkloadEndpoint | None:
        st = self._state()
        if hasattr(st, "endpoints_at"):
            for key in sorted(st.endpoints_at(ip)):
                wep = st.endpoints.get(key)
                if wep is not None:
                    return wep  # type: ignore[no-any-return]
            return None
        if isinstance(st, Mapping):
            addr = ipaddress.ip_address(ip)
            for v in st.values():
                if isinstance(v, model.WorkloadEndpoint) and any(
                        addr in n for n in v.spec.ip_networks):
                    return v
        return None


def record(node: str, h: Headers, c: Counted | None, enricher: Enricher,
           now: float) -> dict[str, Any]:
    """The JSON object of one logged connection."""
    def end(ip: str, port: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"ip": ip}
        if port is not None:
            out["port"] = port
        wep = enricher.endpoint(ip)
        if wep is not None:
            out.update(pod=wep.spec.pod, namespace=wep.metadata.namespace or "default",
                       labels=dict(wep.spec.labels))
        return out

    rec: dict[str, Any] = {
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "node": node, "verdict": c.action if c is not None else "deny",
        "proto": PROTOCOL_NAMES.get(h.proto, str(h.proto)),
        "src": end(h.src, h.sport), "dst": end(h.dst, h.dport)}
    if c is not None:
        rec.update(c.labels())
        rec["verdict"] = c.action
    return rec


class FlowLogger:
    """Reads the flow log's NFLOG group in ``netns`` on a thread of its own and appends
    records to ``path``. ``logged``/``suppressed``: records written, and dropped by the
    agent's own limit (``rate``/``burst`` per second, all rules together)."""

    def __init__(self, node: str, netns: str | None, path: Path, enricher: Enricher,
                 rate: float = 200, burst: float = 400, group: int = FLOWLOG_GROUP) -> None:
        self.node, self.netns, self.path, self.group = node, netns, path, group
        self.enricher = enricher
        self.bucket = TokenBucket(rate, burst)
        self.logged = 0
        self.suppressed = 0
        self.cpu_seconds = 0.0  # the reader thread's CPU time so far
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._out = RotatingFile(path)

    def start(self) -> None:
        from felix_like.netlink import run_in_netns

        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.bind((0, 0))
            return s

        sock = run_in_netns(self.netns, make)
        for msg in bind_messages(self.group):
            sock.send(msg)
            for ack in parse_messages(sock.recv(65536)):
                if isinstance(ack, int) and ack != 0:
                    sock.close()
                    raise OSError(ack, f"NFLOG group {self.group}: {os.strerror(ack)}")
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="flowlog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        start = time.thread_time()
        while not self._stop.is_set():
            self.cpu_seconds = time.thread_time() - start
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as e:  # ENOBUFS: the kernel dropped records; go on
                if e.errno == 105:
                    log.warning("flow log: the kernel dropped records (socket full)")
                    continue
                if not self._stop.is_set():
                    log.error("flow log: reading NFLOG failed, flow logging stops: %s", e)
                return
            for item in parse_messages(data):
                if isinstance(item, Logged):
                    try:
                        self.on_packet(item)
                    except Exception as e:  # the state changed under the lookup: skip it
                        self.suppressed += 1
                        log.debug("flow log: record skipped: %s", e)

    def on_packet(self, item: Logged) -> None:
        if not self.bucket.take():
            self.suppressed += 1
            return
        h = parse_headers(item.payload)
        if h is None:
            return
        rec = record(self.node, h, self.enricher.counted(item.prefix), self.enricher,
                     time.time())
        self._out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.logged += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
        self._out.close()


FLOW_FAMILIES = (("l3fabric_flow_logs", "connections written to the flow log"),
                 ("l3fabric_flow_logs_suppressed",
                  "connections the agent's own limit kept out of the flow log"))


class FlowLogCollector:
    """``l3fabric_flow_logs_total`` and ``l3fabric_flow_logs_suppressed_total``, read from
    the logger at each scrape."""

    def __init__(self, logger: FlowLogger) -> None:
        self._logger = logger

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        (name, text), (sname, stext) = FLOW_FAMILIES
        yield CounterMetricFamily(name, text, value=self._logger.logged)
        yield CounterMetricFamily(sname, stext, value=self._logger.suppressed)


def start_flow_log(node: str, netns: str | None, directory: Path, policy: Any,
                   registry: Any) -> FlowLogger | None:
    """The agent's flow log: ``directory/flows.jsonl`` (the CNI socket's directory),
    enriched from ``policy`` (the PolicyManager: its state and last ruleset), its counters
    in ``registry``. A namespace whose NFLOG group is taken runs without one."""
    logger = FlowLogger(node, netns, directory / "flows.jsonl",
                        Enricher(lambda: policy.state, lambda: policy.ruleset))
    try:
        logger.start()
    except OSError as e:
        log.warning("no flow log: %s", e)
        logger.stop()
        return None
    registry.register(FlowLogCollector(logger))
    return logger


def tail(path: Path, lines: int = 1000) -> bytes:
    """The last ``lines`` records of the flow log (the agent's ``/flows`` page, which
    ``fabricctl flows --node`` reads)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - lines * 600))
            data = f.read()
    except FileNotFoundError:
        return b""
    kept = data.splitlines(keepends=True)[-lines:]
    if kept and not kept[0].startswith(b"{"):
        kept = kept[1:]  # cut in the middle of a record
    return b"".join(kept)
