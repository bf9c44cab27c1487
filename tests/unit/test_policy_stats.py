"""Policy counters as data: what each rendered rule counts toward, how the backends' kernel
listings are read back, and the table ``fabricctl policy stats`` builds from a scrape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator

import pytest
import yaml
from test_policy_staged import wep

from datastore import keys, model
from datastore.fake import FakeDatastore
from fabricctl import cli, policy_stats_cmd
from felix_like.metrics import HealthServer, Metrics
from felix_like.policy.iptables import IptablesBackend, parse_saved_counters
from felix_like.policy.nft import parse_counters
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
metadata: {name: no-docnet}
spec: {selector: all(), ingress: [{action: Deny, source: {nets: [192.0.2.0/24]}}]}
"""


def counted_of_ruleset() -> set[Counted]:
    docs = [model.parse_document(d) for d in yaml.safe_load_all(DOCS)]
    rs = calculate(PolicyInputs(
        node="n1", policies=tuple(d for d in docs if isinstance(d, model.NetworkPolicy)),
        global_policies=tuple(d for d in docs if isinstance(d, model.GlobalNetworkPolicy)),
        endpoints=(wep("a", "10.0.0.1", {"role": "db"}), wep("bb", "10.0.0.2", {"role": "db"}))))
    return {r.counted for rules in rs.chains.values() for r in rules if r.counted}


def test_every_policy_rule_and_each_namespace_default_deny_is_one_counter() -> None:
    # Two pods share one counter per rule: the two ports of rule 0 are one counter too.
    assert {c.text for c in counted_of_ruleset()} == {
        "np/shop/db ingress[0] allow",
        "gnp/no-docnet ingress[0] deny",
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
    counted_rule = {"family": "inet", "table": "l3fabric", "chain": "pi-1", "comment": c.text}
    nft_out = {"nftables": [
        {"metainfo": {}},
        {"rule": {**counted_rule, "expr": [{"counter": {"packets": 4, "bytes": 240}}]}},
        {"rule": {**counted_rule, "expr": [{"counter": {"packets": 3, "bytes": 180}},
                                          {"drop": None}]}},
        {"rule": {**counted_rule, "comment": "traffic from this node",
                  "expr": [{"counter": {"packets": 1, "bytes": 1}}]}},
        {"rule": {**counted_rule, "expr": [{"return": None}]}}]}
    assert parse_counters(nft_out) == {"pi-1": {c: (7, 420)}}
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


@contextlib.contextmanager
def agent_metrics(counts: dict[Counted, tuple[int, int]]) -> Iterator[str]:
    """A real agent metrics endpoint (HealthServer on 127.0.0.1, an ephemeral port) whose
    policy counters read ``counts``; yields its URL."""
    metrics = Metrics()
    metrics.registry.register(PolicyCounterCollector(lambda: counts))
    server = HealthServer(metrics, "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    try:
        yield f"http://127.0.0.1:{server.port}/metrics"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_policy_stats_reads_every_node_and_sums_per_rule(
        capsys: pytest.CaptureFixture[str]) -> None:
    c1 = Counted("np", "shop", "db", "ingress", 0, "allow")
    c2 = Counted("snp", "shop", "lockdown", "ingress", None, "would-deny")
    with agent_metrics({c1: (5, 300)}) as u1, agent_metrics({c1: (2, 120), c2: (4, 4)}) as u2:
        assert policy_stats_cmd.gather({"n1": u1, "n2": u2, "gone": "http://127.0.0.1:9/"})[1]
        assert cli.main(["policy", "stats", "--endpoint", u1, "--endpoint", u2,
                         "-o", "json"]) == 0
        data = json.loads(capsys.readouterr().out)
        by_policy = {r["policy"]: r for r in data["rules"]}
        assert by_policy["db"]["packets"] == 7 and by_policy["db"]["bytes"] == 420
        assert by_policy["staged:lockdown"]["action"] == "would-deny"
        assert cli.main(["policy", "stats", "--endpoint", u2, "--sort", "policy"]) == 0
        text = capsys.readouterr().out
        assert "would deny" in text and text.index("db") < text.index("staged:lockdown")


def test_policy_stats_finds_agents_through_their_node_status() -> None:
    ds = FakeDatastore()

    async def go() -> dict[str, str]:
        for node, url in (("n1", "http://10.0.0.1:9091/metrics"), ("n2", None)):
            st = model.parse_document({
                "apiVersion": model.API_VERSION, "kind": "NodeStatus",
                "metadata": {"name": node},
                "status": {"inSync": True, **({"metrics": url} if url else {})}})
            await ds.put(keys.node_status(node), model.encode(st))
        return await policy_stats_cmd.agent_urls(ds, None)

    # An agent that reports no URL (an older one) is not read.
    assert asyncio.run(go()) == {"n1": "http://10.0.0.1:9091/metrics"}


def test_iptables_reads_one_chains_counts_from_its_listing() -> None:
    listing = "\n".join([
        "Chain fab-pi-6569472df194 (1 references)",
        "    pkts      bytes target     prot opt in     out     source               "
        "destination",
        "       5      300 MARK       6    --  *      *       0.0.0.0/0            0.0.0.0/0"
        "            match-set fab-s4-b9 src /* np/shop/db ingress[0] allow */ MARK or 0x10000",
        "       5      300 RETURN     0    --  *      *       0.0.0.0/0            0.0.0.0/0"
        "            mark match 0x10000/0x10000",
        "       2      120 MARK       6    --  *      *       0.0.0.0/0            0.0.0.0/0"
        "            /* np/shop/db ingress[0] allow */ MARK or 0x10000"])
    backend = IptablesBackend(run=lambda cmd, stdin: listing)
    c = Counted("np", "shop", "db", "ingress", 0, "allow")
    assert backend._chain_counts(4, "fab-pi-6569472df194") == {c: (7, 420)}
