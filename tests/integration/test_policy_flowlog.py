"""Flow logs with real packets, on both backends: denied connections reach the agent over
NFLOG and come out of ``fabricctl flows`` naming pods, policy and rule; allowed
connections and their return traffic log nothing; a staged deny logs "would-deny"."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.policy_docs import DB_FROM_FRONTEND
from test_policy_traffic import GNP_DENY_BEFORE_ALLOW, Lab, lab, load  # noqa: F401

from fabricctl import cli
from felix_like.policy.flowlog import Enricher, FlowLogger

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
