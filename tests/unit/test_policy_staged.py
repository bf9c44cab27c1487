"""Staged policies as data: the ruleset counts what they would do and enforces nothing,
the incremental calculation agrees with the full one, explain previews them, and
``fabricctl policy promote`` turns one into its enforced twin (in-memory etcd)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml

from datastore import keys, model
from datastore.fake import FakeDatastore
from fabricctl.common import CliError
from fabricctl.policy_promote_cmd import promote, staged_key
from felix_like.policy.explain import Conn, decide, decide_staged
from felix_like.policy.incremental import IncrementalCalculation
from felix_like.policy.interp import Interpreter
from felix_like.policy.ruleset import calculate, inputs_from_state

DOCS = """
apiVersion: l3fabric.io/v1
kind: StagedNetworkPolicy
metadata: {name: lockdown, namespace: shop}
spec: {podSelector: {matchLabels: {role: db}}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allowed, namespace: shop}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: web}}}]}]
---
apiVersion: l3fabric.io/v1
kind: StagedGlobalNetworkPolicy
metadata: {name: no-telnet}
spec:
  selector: all()
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [23]}}]
"""


def wep(pod: str, ip: str, labels: dict[str, str]) -> model.WorkloadEndpoint:
    res = model.parse_document({
        "apiVersion": "l3fabric.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{pod}.eth0", "namespace": "shop"},
        "spec": {"node": "n1", "pod": pod, "endpoint": "eth0", "containerID": pod,
                 "ipNetworks": [f"{ip}/32"], "hostInterface": f"fab{pod}", "labels": labels}})
    assert isinstance(res, model.WorkloadEndpoint)
    return res


def state(docs: str = DOCS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in [*yaml.safe_load_all(docs)]:
        res = model.parse_document(d)
        out[model.key_for(res)] = res
    for w in (wep("db", "10.0.0.1", {"role": "db"}), wep("web", "10.0.0.2", {"role": "web"}),
              wep("other", "10.0.0.3", {})):
        out[model.key_for(w)] = w
    return out


def verdict(st: dict[str, Any], src: str, dst: str, port: int) -> tuple[bool, list[str]]:
    it = Interpreter(calculate(inputs_from_state(st, "n1")))
    res = it.evaluate(it.packet(src, dst, 6, port))
    return res.allowed, res.staged


def test_staged_policies_count_what_they_would_do_and_enforce_nothing() -> None:
    st = state()
    # other -> db: the enforced policy denies it already; the staged one would too.
    allowed, staged = verdict(st, "10.0.0.3", "10.0.0.1", 80)
    assert not allowed and staged == ["would deny: staged: ingress no policy would allow it"]
    # web -> db: enforced allows; the staged default deny adds up with it: would allow.
    allowed, staged = verdict(st, "10.0.0.2", "10.0.0.1", 80)
    assert allowed and staged == ["would allow: np/shop/web-allowed ingress[0]"]
    # web -> other on 23: nothing enforced selects other, so it flows; the staged GNP
    # would deny it (its rule counts "would-deny").
    allowed, staged = verdict(st, "10.0.0.2", "10.0.0.3", 23)
    assert allowed and staged == ["would deny: sgnp/no-telnet ingress[0] Deny"]
    rs = calculate(inputs_from_state(st, "n1"))
    counted = {r.counted.text for rules in rs.chains.values() for r in rules if r.counted}
    assert {"snp/shop/lockdown ingress would-deny", "sgnp/no-telnet ingress[0] would-deny",
            "staged-default-deny/shop ingress would-deny"} & counted == {
        "sgnp/no-telnet ingress[0] would-deny", "staged-default-deny/shop ingress would-deny"}
    # The staged pipeline evaluates the enforced policy through an uncounted copy: its
    # allow counter counts a connection once.
    np_counted = [name for name, rules in rs.chains.items() for r in rules
                  if r.counted is not None and r.counted.kind == "np"]
    assert np_counted and all(name.startswith("p") for name in np_counted)
    # Without the enforced policy, the staged default deny previews the lockdown.
    del st[keys.policy("shop", "web-allowed")]
    allowed, staged = verdict(st, "10.0.0.3", "10.0.0.1", 80)
    assert allowed and staged == ["would deny: staged: ingress no policy would allow it"]


def test_incremental_calculation_equals_the_full_one_with_staged_policies() -> None:
    st = state()
    inc = IncrementalCalculation("n1")
    assert inc.update(dict(st), []) == calculate(inputs_from_state(st, "n1"))
    del st[keys.staged_global_policy("no-telnet")]
    assert inc.update(dict(st), []) == calculate(inputs_from_state(st, "n1"))
    # A rules-only change of the enforced policy reaches the staged pipeline's copy too.
    st[keys.policy("shop", "web-allowed")] = model.parse_document(yaml.safe_load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allowed, namespace: shop}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: web}}}], ports: [{port: 80}]}]
"""))
    assert inc.update(dict(st), []) == calculate(inputs_from_state(st, "n1"))
    st.pop(keys.staged_policy("shop", "lockdown"))
    assert inc.update(dict(st), []) == calculate(inputs_from_state({
        k: v for k, v in st.items()}, "n1"))


def test_explain_keeps_staged_policies_out_of_the_verdict_and_previews_them() -> None:
    inputs = inputs_from_state(state(), "n1")
    conn = Conn("10.0.0.2", "10.0.0.3", 6, 23)
    assert decide(inputs, conn).allowed
    preview = decide_staged(inputs, conn)
    assert preview is not None and not preview.allowed
    assert preview.ingress is not None and "gnp/no-telnet ingress[0] Deny" in preview.ingress.reason
    assert decide_staged(inputs_from_state({}, "n1"), conn) is None


def test_promote_writes_the_enforced_twin_and_removes_the_staged_one() -> None:
    ds = FakeDatastore()
    st = state()

    async def go() -> None:
        for k, v in st.items():
            await ds.put(k, model.encode(v))
        target = await promote(ds, staged_key("shop/lockdown", None))
        assert target == keys.policy("shop", "lockdown")
        kv = await ds.get(target)
        assert kv is not None
        twin = model.decode(target, kv.value)
        assert type(twin) is model.NetworkPolicy and twin.spec == st[
            keys.staged_policy("shop", "lockdown")].spec
        assert await ds.get(keys.staged_policy("shop", "lockdown")) is None
        assert (await promote(ds, staged_key("no-telnet", None))) == keys.global_policy(
            "no-telnet")
        with pytest.raises(CliError, match="no staged policy"):
            await promote(ds, staged_key("lockdown", "shop"))

    asyncio.run(go())
