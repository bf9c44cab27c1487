"""The flow log as data: NFLOG messages and packet headers parsed, the agent's limit and
its suppressed count, rotation, and ``fabricctl flows`` over the rotated files."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from pathlib import Path

import pytest

from datastore import keys, model
from datastore.fake import FakeDatastore
from fabricctl import cli, flows_cmd
from felix_like.metrics import HealthServer, Metrics
from felix_like.policy.flowlog import (
    NFNL_SUBSYS_ULOG,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    FlowLogger,
    Logged,
    RotatingFile,
    TokenBucket,
    _attr,
    bind_messages,
    parse_headers,
    parse_messages,
    tail,
)

SYN = (bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0])
       + socket.inet_aton("10.244.1.30") + socket.inet_aton("10.244.1.10")
       + struct.pack(">HH", 34132, 6379) + bytes(16))


def packet_message(prefix: str, payload: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(4242)) + _attr(
        NFULA_PREFIX, prefix.encode() + b"\0") + _attr(NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body


def test_nflog_packets_and_acks_are_parsed() -> None:
    data = packet_message("c-0123456789abcdef", SYN) + packet_message("c-x", SYN[:20])
    assert list(parse_messages(data)) == [Logged("c-0123456789abcdef", SYN),
                                          Logged("c-x", SYN[:20])]
    ack = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -16) + bytes(16)
    assert list(parse_messages(ack)) == [16]
    assert all(len(m) % 4 == 0 for m in bind_messages(4242))
    h = parse_headers(SYN)
    assert h is not None and (h.src, h.dst, h.proto, h.sport, h.dport) == (
        "10.244.1.30", "10.244.1.10", 6, 34132, 6379)
    assert parse_headers(SYN[:20]).dport is None  # type: ignore[union-attr]
    assert parse_headers(b"") is None


def test_the_agents_limit_counts_what_it_suppresses(tmp_path: Path) -> None:
    clock = [0.0]
    bucket = TokenBucket(10, 5, now=lambda: clock[0])
    assert [bucket.take() for _ in range(7)] == [True] * 5 + [False] * 2
    clock[0] = 0.5
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]

    class NoOne:
        def counted(self, prefix: str) -> None:
            return None

        def endpoint(self, ip: str) -> None:
            return None

    logger = FlowLogger("n1", None, tmp_path / "flows.jsonl", NoOne())  # type: ignore[arg-type]
    logger.bucket = TokenBucket(1, 3, now=lambda: 0.0)
    for _ in range(10):
        logger.on_packet(Logged("c-unknown", SYN))
    logger.stop()
    assert (logger.logged, logger.suppressed) == (3, 7)
    lines = (tmp_path / "flows.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["dst"] == {"ip": "10.244.1.10",
                                                                "port": 6379}


def test_flows_reads_rotated_files_oldest_first(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "flows.jsonl"
    out = RotatingFile(path, max_bytes=100, keep=2)
    for i in range(8):
        out.write(json.dumps({"seq": i, "verdict": "deny" if i % 2 else "would-deny"}) + "\n")
    out.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"]
    assert cli.main(["flows", "--file", str(path), "-o", "json"]) == 0
    seqs = [r["seq"] for r in json.loads(capsys.readouterr().out)]
    assert seqs == sorted(seqs) and seqs[-1] == 7
    assert cli.main(["flows", "--file", str(path), "--denied", "--last", "2", "-o", "json"]) == 0
    assert [r["seq"] for r in json.loads(capsys.readouterr().out)] == [5, 7]


def test_flows_of_another_node_come_from_its_agent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "flows.jsonl"
    path.write_text("".join(json.dumps({"seq": i, "verdict": "deny", "node": "n2"}) + "\n"
                            for i in range(3)))
    metrics = Metrics()
    server = HealthServer(metrics, "127.0.0.1", 0)
    server.pages["/flows"] = lambda: tail(path, lines=2)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    ds = FakeDatastore()
    st = model.parse_document({
        "apiVersion": model.API_VERSION, "kind": "NodeStatus", "metadata": {"name": "n2"},
        "status": {"metrics": f"http://127.0.0.1:{server.port}/metrics"}})
    asyncio.run(ds.put(keys.node_status("n2"), model.encode(st)))
    monkeypatch.setattr(flows_cmd, "run", lambda args, fn: asyncio.run(fn(ds)))
    try:
        assert cli.main(["flows", "--node", "n2", "-o", "json"]) == 0
        assert [r["seq"] for r in json.loads(capsys.readouterr().out)] == [1, 2]
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
