"""Policy counters as data: what each rendered rule counts toward, how the backends' kernel
listings are read back, and the table ``fabricctl policy stats`` builds from a scrape."""

from __future__ import annotations

import yaml

from datastore import model
from felix_like.metrics import Metrics
from felix_like.policy.iptables import parse_saved_counters
from felix_like.policy.nft import counter_name, parse_counters
from felix_like.policy.program import Counted
from felix_like.policy.ruleset import PolicyInputs, calculate
from felix_like.policy.stats import PolicyCounterCollector, rows_from_metrics, sort_rows

DOCS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 5432}, {port: 5433}]}]
---
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: no-telnet}
spec:
  selector: all()
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [23]}}]
"""


def wep(pod: str, labels: dict[str, str]) -> model.WorkloadEndpoint:
    res = model.parse_document({
        "apiVersion": "l3fabric.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{pod}.eth0", "namespace": "shop"},
        "spec": {"node": "n1", "pod": pod, "endpoint": "eth0", "containerID": pod,
                 "ipNetworks": [f"10.0.0.{len(pod)}/32"], "hostInterface": f"fab{pod}",
                 "labels": labels}})
    assert isinstance(res, model.WorkloadEndpoint)
    return res


def counted_of_ruleset() -> set[Counted]:
    docs = [model.parse_document(d) for d in yaml.safe_load_all(DOCS)]
    rs = calculate(PolicyInputs(
        node="n1", policies=tuple(d for d in docs if isinstance(d, model.NetworkPolicy)),
        global_policies=tuple(d for d in docs if isinstance(d, model.GlobalNetworkPolicy)),
        endpoints=(wep("a", {"role": "db"}), wep("bb", {"role": "db"}))))
    return {r.counted for rules in rs.chains.values() for r in rules if r.counted}


def test_every_policy_rule_and_each_namespace_default_deny_is_one_counter() -> None:
    # Two pods share one counter per rule: the two ports of rule 0 are one counter too.
    assert {c.text for c in counted_of_ruleset()} == {
        "np/shop/db ingress[0] allow",
        "gnp/no-telnet ingress[0] deny",
        "default-deny/shop ingress deny",
    }


def test_counter_text_round_trips_and_labels_name_no_pod() -> None:
    for c in counted_of_ruleset():
        assert Counted.parse(c.text) == c
        assert set(c.labels()) == {"policy", "namespace", "rule", "direction", "action"}
    assert Counted.parse("anti-spoofing: not the pod's address") is None
    assert Counted.parse("gnp/x ingress[0] deny").labels()["namespace"] == "global"  # type: ignore[union-attr]


def test_backend_listings_are_read_back_by_comment() -> None:
    c = Counted("np", "shop", "db", "ingress", 0, "allow")
    nft_out = {"nftables": [
        {"metainfo": {}},
        {"counter": {"name": counter_name(c), "comment": c.text, "packets": 7, "bytes": 420}},
        {"counter": {"name": "someone-elses", "packets": 1, "bytes": 1}}]}
    assert parse_counters(nft_out) == {c: (7, 420)}
    saved = "\n".join([
        "*filter",
        ":fab-pi-abc - [0:0]",
        '[3:180] -A fab-pi-abc -p tcp -m multiport --dports 5432 -m comment --comment '
        '"np/shop/db ingress[0] allow" -j MARK --set-xmark 0x10000/0x10000',
        "[3:180] -A fab-pi-abc -m mark --mark 0x10000/0x10000 -j RETURN",
        '[2:120] -A fab-pi-abc -p tcp -m multiport --dports 5433 -m comment --comment '
        '"np/shop/db ingress[0] allow" -j MARK --set-xmark 0x10000/0x10000',
        '[9:9] -A OTHER -m comment --comment "np/shop/db ingress[0] allow" -j ACCEPT',
        "COMMIT"])
    assert parse_saved_counters(saved) == {"fab-pi-abc": {c: (5, 300)}}


def test_a_scrape_becomes_the_stats_table() -> None:
    c1 = Counted("np", "shop", "db", "ingress", 0, "allow")
    c2 = Counted("default-deny", "shop", "", "ingress", None, "deny")
    metrics = Metrics()
    metrics.registry.register(PolicyCounterCollector(lambda: {c1: (5, 300), c2: (9, 540)}))
    rows = rows_from_metrics("n1", metrics.render().decode())
    assert [(r.policy, r.packets, r.bytes) for r in sort_rows(rows, "packets")] == [
        ("(default deny)", 9, 540), ("db", 5, 300)]
    assert [r.policy for r in sort_rows(rows, "policy")] == ["(default deny)", "db"]
    failing = Metrics()
    failing.registry.register(PolicyCounterCollector(lambda: 1 / 0))  # type: ignore[arg-type,return-value]
    assert rows_from_metrics("n1", failing.render().decode()) == []
