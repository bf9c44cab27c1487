"""Flow logs with real packets, on both backends: denied connections reach the agent over
NFLOG and come out of ``fabricctl flows`` naming pods, policy and rule; allowed
connections and their return traffic log nothing; a staged deny logs "would-deny"."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.policy_docs import DB_FROM_FRONTEND
from test_policy_traffic import GNP_DENY_BEFORE_ALLOW, Lab, lab, load  # noqa: F401

from fabricctl import cli
from felix_like.netlink import run_in_netns
from felix_like.policy.flowlog import Enricher, FlowLogger
from felix_like.policy.manager import PolicyManager

# The GNP that denies namespaces of user alice, the db's NetworkPolicy, a staged lockdown.
POLICIES = "---".join([GNP_DENY_BEFORE_ALLOW.split("---")[0], DB_FROM_FRONTEND, """
apiVersion: l3fabric.io/v1
kind: StagedNetworkPolicy
metadata: {name: web-lockdown, namespace: default}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}
"""])


@pytest.fixture
def flows(lab: Lab, tmp_path: Path) -> Iterator[tuple[Lab, Path]]:  # noqa: F811
    m = lab.managers["n1"]
    path = tmp_path / "flows.jsonl"
    logger = FlowLogger("n1", lab.nodes["n1"], path,
                        Enricher(lambda: m.state, lambda: m.ruleset))
    logger.start()
    lab.flow_logger = logger  # type: ignore[attr-defined]
    try:
        yield lab, path
    finally:
        logger.stop()


def read_flows(path: Path, capsys: pytest.CaptureFixture[str], *extra: str,
               want: int = 1) -> list[dict[str, Any]]:
    """``fabricctl flows --file PATH -o json`` until it shows ``want`` records (2 s)."""
    deadline = time.monotonic() + 2
    while True:
        assert cli.main(["flows", "--file", str(path), "-o", "json", *extra]) == 0
        got = json.loads(capsys.readouterr().out)
        if len(got) >= want or time.monotonic() > deadline:
            return got  # type: ignore[no-any-return]
        time.sleep(0.1)


def test_a_denied_connection_is_logged_with_its_policy_and_rule(
        flows: tuple[Lab, Path], capsys: pytest.CaptureFixture[str]) -> None:
    the_lab, path = flows
    the_lab.apply(load(POLICIES))
    # Allowed, with data both ways: neither the connection nor its replies are logged.
    assert the_lab.run([("frontend", "db", "tcp", 6379, True)] * 3) == []
    assert the_lab.run([("aliceclient", "db", "tcp", 6379, False)]) == []
    got = read_flows(path, capsys, "--denied")
    assert len(got) >= 1
    rec = got[0]
    assert (rec["policy"], rec["namespace"], rec["rule"], rec["direction"], rec["verdict"]) \
        == ("deny-dev", "global", "0", "ingress", "deny")
    assert rec["src"]["pod"] == "aliceclient" and rec["src"]["namespace"] == "dev"
    assert rec["dst"]["pod"] == "db" and rec["dst"]["port"] == 6379
    assert rec["dst"]["labels"] == {"role": "db"} and rec["node"] == "n1"
    assert rec["proto"] == "tcp"
    everything = read_flows(path, capsys)
    assert not any(r["src"].get("pod") == "frontend" or r["dst"].get("pod") == "frontend"
                   for r in everything)

    # A staged deny logs "would-deny" while the connection succeeds.
    assert the_lab.run([("frontend", "web", "tcp", 8080, True)]) == []
    staged = [r for r in read_flows(path, capsys, want=len(everything) + 1)
              if r["verdict"] == "would-deny"]
    assert staged and staged[0]["policy"] == "(staged default deny)"
    assert staged[0]["dst"]["pod"] == "web"


def flood(ns: str, dst: str, port: int, count: int) -> None:
    """``count`` UDP datagrams from inside ``ns`` to ``dst``, as fast as one socket goes."""
    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            sent = 0
            while sent < count:
                try:
                    s.sendto(b"x", (dst, port))
                    sent += 1
                except BlockingIOError:
                    time.sleep(0.0005)

    run_in_netns(ns, send)


def test_a_flood_of_denied_packets_costs_little_and_hides_no_other_record(
        flows: tuple[Lab, Path], capsys: pytest.CaptureFixture[str]) -> None:
    the_lab, path = flows
    the_lab.apply(load(POLICIES))
    logger = the_lab.flow_logger  # type: ignore[attr-defined]
    cpu0, t0 = logger.cpu_seconds, time.monotonic()
    done = threading.Thread(target=flood, args=(the_lab.pods["aliceclient"], "10.244.1.10",
                                                53, 100_000))
    done.start()
    # Another denied connection in the middle of the flood (the db's default deny).
    assert the_lab.run([("other", "db", "tcp", 6380, False)]) == []
    done.join(120)
    time.sleep(0.5)
    cpu, wall = logger.cpu_seconds - cpu0, time.monotonic() - t0
    got = read_flows(path, capsys)
    assert any(r["src"].get("pod") == "other" and r["policy"] == "(default deny)"
               for r in got), "the other connection's record was lost in the flood"
    flood_records = [r for r in got if r["src"].get("pod") == "aliceclient"]
    # The kernel's limit per rule: its burst and a rate's worth per second, not 100,000.
    assert 0 < len(flood_records) <= 50 + 20 * (wall + 1)
    assert cpu < 0.2 * wall, f"flow log reader: {cpu:.3f} s of CPU in {wall:.1f} s"


def test_allowed_connections_are_logged_when_the_operator_turns_it_on(
        lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    m = PolicyManager(lab.backend, lab.nodes["n1"], "n1", log_allowed=True)
    lab.managers["n1"] = m  # the fixture cleans it up
    path = tmp_path / "flows.jsonl"
    logger = FlowLogger("n1", lab.nodes["n1"], path,
                        Enricher(lambda: m.state, lambda: m.ruleset))
    logger.start()
    try:
        lab.apply(load(POLICIES))
        # An allowed connection with data both ways: logged once, its packets after the
        # first and the replies not at all.
        assert lab.run([("frontend", "db", "tcp", 6379, True)]) == []
        allowed = [r for r in read_flows(path, capsys) if r["verdict"] == "allow"]
        assert allowed and allowed[0]["policy"] == "db-from-frontend"
        assert allowed[0]["src"]["pod"] == "frontend" and allowed[0]["rule"] == "0"
        assert len(allowed) < 3
    finally:
        logger.stop()
