"""Policy counters with real packets, on both backends: the pods, namespaces and servers of
test_policy_traffic (its ``lab`` fixture), one policy, a few connections, and the counters
as a scrape of the agent's metrics shows them (``l3fabric_policy_*_total``)."""

from __future__ import annotations

from helpers.policy_docs import DB_FROM_FRONTEND
from test_policy_traffic import Lab, lab, load  # noqa: F401  (lab: the fixture)

from felix_like.metrics import Metrics
from felix_like.policy.stats import (
    PolicyCounterCollector,
    StatRow,
    counter_reader,
    rows_from_metrics,
)


def scrape(the_lab: Lab, node: str = "n1") -> dict[tuple[str, str, str, str, str], StatRow]:
    """The policy rows of a scrape of a registry reading ``node``'s backend."""
    metrics = Metrics()
    read = counter_reader(the_lab.managers[node].backend)
    metrics.registry.register(PolicyCounterCollector(read))
    rows = rows_from_metrics(node, metrics.render().decode())
    return {(r.policy, r.namespace, r.rule, r.direction, r.action): r for r in rows}


ALLOW_ROW = ("db-from-frontend", "default", "0", "ingress", "allow")
DENY_ROW = ("(default deny)", "default", "", "ingress", "deny")


def test_counters_rise_by_the_connections_made_and_survive_a_resync(lab: Lab) -> None:  # noqa: F811
    lab.apply(load(DB_FROM_FRONTEND))
    before = scrape(lab)
    assert ALLOW_ROW in before and DENY_ROW in before
    assert all(r.policy != "db" and "pod" not in r.to_dict() for r in before.values())

    allowed = [("frontend", "db", "tcp", 6379, True)] * 5
    denied = [("other", "db", "tcp", 6379, False)] * 3
    assert lab.run(allowed + denied) == []

    after = scrape(lab)
    # One counted packet per new connection: the rest of a flow is accepted as
    # established before any policy runs. A SYN the kernel sent again counts again.
    assert after[ALLOW_ROW].packets - before[ALLOW_ROW].packets >= 5
    assert after[ALLOW_ROW].bytes - before[ALLOW_ROW].bytes >= 5 * 40
    assert after[DENY_ROW].packets - before[DENY_ROW].packets >= 3
    # The echo traffic of the allowed connections is not counted again.
    assert after[ALLOW_ROW].packets - before[ALLOW_ROW].packets < 5 * 3

    # A resync rewrites every chain (a full converge): the counters keep their values.
    for m in lab.managers.values():
        m.resync()
        m.apply()
    again = scrape(lab)
    assert again[ALLOW_ROW].packets >= after[ALLOW_ROW].packets
    assert again[DENY_ROW].packets >= after[DENY_ROW].packets
    assert lab.run([("other", "db", "tcp", 6379, False)]) == []
    assert scrape(lab)[DENY_ROW].packets > again[DENY_ROW].packets

    # A policy change rewrites the policy's chain: its counts stay.
    lab.apply(load(DB_FROM_FRONTEND.replace("[{port: 6379}]", "[{port: 6379}, {port: 6380}]")))
    assert scrape(lab)[ALLOW_ROW].packets >= after[ALLOW_ROW].packets


STAGED = """
apiVersion: l3fabric.io/v1
kind: StagedNetworkPolicy
metadata: {name: db-lockdown, namespace: default}
spec: {podSelector: {matchLabels: {role: db}}, policyTypes: [Ingress]}
---
apiVersion: l3fabric.io/v1
kind: StagedGlobalNetworkPolicy
metadata: {name: no-6380}
spec:
  selector: role == "db"
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [6380]}}]
"""
STAGED_DENY_ROW = ("(staged default deny)", "default", "", "ingress", "would-deny")
STAGED_GNP_ROW = ("staged:no-6380", "global", "0", "ingress", "would-deny")


def test_a_staged_deny_counts_would_deny_while_the_traffic_flows(lab: Lab) -> None:  # noqa: F811
    lab.apply(load(STAGED))
    before = scrape(lab)
    assert lab.run([("frontend", "db", "tcp", 6379, True)] * 3
                   + [("other", "db", "tcp", 6380, True)] * 2) == []
    after = scrape(lab)
    # 6379 passes the staged GNP (no match) and reaches the staged default deny; 6380 is
    # decided by the staged GNP's Deny first.
    assert after[STAGED_DENY_ROW].packets - before[STAGED_DENY_ROW].packets >= 3
    assert after[STAGED_GNP_ROW].packets - before[STAGED_GNP_ROW].packets >= 2
    assert not any(r.action in ("deny", "allow") for r in after.values())
