"""The incremental policy calculation equals a from-scratch calculation.

A random sequence of changes (pods added, relabelled, moved between nodes, given other
ports or interfaces, removed; NetworkPolicies, GlobalNetworkPolicies and Namespaces added,
changed, removed; equal objects re-decoded; host addresses changed), applied one by one
or in batches: after every update the incremental ruleset must equal
``calculate(inputs_from_state(...))`` of the same state, and the packet interpreter must
agree with the semantic evaluator on it.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_calc import HOST, NODE, gnp_st, labels_st, np_st, ns_obj, wep

from datastore import model
from felix_like.policy.explain import Conn, decide
from felix_like.policy.incremental import IncrementalCalculation
from felix_like.policy.interp import TCP, UDP, Interpreter
from felix_like.policy.ruleset import calculate, inputs_from_state
from felix_like.state import ClusterState

PODS = [f"pod{i}" for i in range(6)]
PORTS = [[], [{"name": "http", "port": 80}],
         [{"name": "http", "port": 81}, {"name": "dns", "port": 53, "protocol": "UDP"}]]

POD_FIELDS = {
    "ns": st.sampled_from(["ns1", "ns2", "ns3"]), "labels": labels_st,
    "node": st.sampled_from([NODE, NODE, NODE, "n2"]), "ports": st.sampled_from(PORTS),
    "ip": st.integers(1, 8),  # a shared address now and then (IP reuse)
    "iface": st.sampled_from(["own"] * 6 + ["shared", "foreign"])}
pod_op = st.tuples(st.just("pod"), st.sampled_from(PODS),
                   st.one_of(st.none(), st.fixed_dictionaries(POD_FIELDS)))
# One field of an existing pod (a relabel, new ports, a move): what an update usually is.
pod_edit_op = st.tuples(st.just("edit"), st.sampled_from(PODS), st.one_of(
    *(st.tuples(st.just(k), v) for k, v in POD_FIELDS.items())))
np_op = st.tuples(st.just("np"), st.sampled_from(["p0", "p1"]),
                  st.one_of(st.none(), np_st))
gnp_body_st = st.one_of(gnp_st, st.builds(
    lambda g, n: {**g, "spec": {**g["spec"], "namespaceSelector": n}},
    gnp_st, st.sampled_from(['team == "x"', "!has(team)"])))
gnp_op = st.tuples(st.just("gnp"), st.sampled_from(["g1", "g2"]),
                   st.one_of(st.none(), gnp_body_st))
# Only the rules of an existing policy (selector and types kept; a GNP's order may change):
# its chain changes, endpoint chains only when the order did.
rules_op = st.one_of(st.tuples(st.just("np-rules"), st.sampled_from(["p0", "p1"]), np_st),
                     st.tuples(st.just("gnp-rules"), st.sampled_from(["g1", "g2"]), gnp_st))
ns_op = st.tuples(st.just("ns"), st.sampled_from(["ns1", "ns2", "ns3"]),
                  st.one_of(st.none(), st.sampled_from([{"team": "x"}, {}, {"team": "y"}])))
other_op = st.tuples(st.sampled_from(["redecode", "hosts"]), st.just(""), st.none())
op_st = st.tuples(st.one_of(pod_op, pod_edit_op, pod_edit_op, np_op, gnp_op, rules_op,
                            ns_op, other_op), st.booleans())


def _pod(name: str, spec: dict[str, Any]) -> model.WorkloadEndpoint:
    iface = {"own": None, "shared": "fabshared000", "foreign": "eth-" + name}[spec["iface"]]
    w = wep(spec["ns"], name, f"10.244.1.{spec['ip']}", spec["labels"], node=spec["node"],
            ports=spec["ports"])
    if iface is None:
        return w
    doc = w.to_dict()
    doc["spec"]["hostInterface"] = iface
    out = model.parse_document(doc)
    assert isinstance(out, model.WorkloadEndpoint)
    return out


def _apply(state: dict[str, Any], pods: dict[str, str], specs: dict[str, dict[str, Any]],
           op: tuple[str, str, Any]) -> None:
    kind, name, body = op
    if kind in ("np-rules", "gnp-rules"):
        kind = kind.split("-")[0]
        old = specs.get(f"{kind}:{name}")
        if old is None:
            return
        spec = dict(old["spec"])
        for k in ("ingress", "egress"):
            spec[k] = body["spec"][k]
        if kind == "gnp":  # a new order reorders the endpoints' jumps
            spec.pop("order", None)
            spec.update({k: v for k, v in body["spec"].items() if k == "order"})
        if kind == "np" and "policyTypes" not in spec:
            spec["policyTypes"] = ["Ingress", "Egress"] if spec["egress"] else ["Ingress"]
        body = {**old, "spec": spec}
    if kind == "edit":
        if name not in specs:
            return
        kind, body = "pod", {**specs[name], body[0]: body[1]}
    if kind == "pod":
        specs.pop(name, None)
        if body is not None:
            specs[name] = body
        if name in pods:  # the key moves with namespace and node
            del state[pods.pop(name)]
        if body is not None:
            w = _pod(name, body)
            pods[name] = model.key_for(w)
            state[pods[name]] = w
    elif kind in ("np", "gnp"):
        prefix = "np-" if kind == "np" else "gnp-"
        for k in [k for k in state if k.startswith(prefix + name + "@")]:
            del state[k]
        specs.pop(f"{kind}:{name}", None)
        if body is not None:
            specs[f"{kind}:{name}"] = body
            doc = copy.deepcopy(body)
            doc["metadata"]["name"] = name
            res = model.parse_document(doc)
            # The test keys policies by name so one name has one key (as etcd does).
            state[f"{prefix}{name}@{model.key_for(res)}"] = res
    elif kind == "ns":
        key = f"ns-{name}"
        if body is None:
            state.pop(key, None)
        else:
            state[key] = ns_obj(name, body)
    elif kind == "redecode":  # equal objects, new identities (a resync of the mirror)
        for k, v in list(state.items()):
            state[k] = model.parse_document(v.to_dict())


def _sync(cluster: ClusterState, state: dict[str, Any]) -> None:
    """Bring ``cluster`` to ``state`` as the syncer's events would (deletes, then puts)."""
    for key in [k for k in cluster.values if k not in state]:
        cluster.remove(key)
    for key, value in state.items():
        cluster.put(key, value)


# A populated world to start from: every pod, both policy names, namespaces.
world_st = st.tuples(
    st.lists(st.fixed_dictionaries(POD_FIELDS), min_size=len(PODS), max_size=len(PODS)),
    st.lists(np_st, min_size=2, max_size=2), st.lists(gnp_body_st, max_size=2),
    st.lists(st.sampled_from([{"team": "x"}, {}]), min_size=3, max_size=3))


@settings(max_examples=300, deadline=None)
@given(world=world_st, ops=st.lists(op_st, min_size=1, max_size=20),
       pkts=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9),
                               st.sampled_from([TCP, UDP]), st.sampled_from([80, 81, 53])),
                     max_size=3))
def test_incremental_equals_full_calculation(world: Any,
                                             ops: list[tuple[tuple[str, str, Any], bool]],
                                             pkts: list[Any]) -> None:
    inc = IncrementalCalculation(NODE)
    state: dict[str, Any] = {}
    pods: dict[str, str] = {}
    specs: dict[str, dict[str, Any]] = {}
    hosts = [HOST]
    pod_specs, nps, gnps, ns_labels = world
    start = [("pod", name, spec) for name, spec in zip(PODS, pod_specs, strict=True)]
    start += [("np", f"p{i}", n) for i, n in enumerate(nps)]
    start += [("gnp", f"g{i + 1}", g) for i, g in enumerate(gnps)]
    start += [("ns", f"ns{i + 1}", lab) for i, lab in enumerate(ns_labels)]
    for op in start:
        _apply(state, pods, specs, op)
    assert inc.update(dict(state), hosts) == calculate(inputs_from_state(state, NODE, hosts))
    # The agent's path: the same changes through a ClusterState, read as a change log.
    by_log, cluster = IncrementalCalculation(NODE), ClusterState()
    _sync(cluster, state)
    assert by_log.update_from(cluster, hosts) == inc.update(dict(state), hosts)
    for op, update_now in ops:
        if op[0] == "hosts":
            hosts = [HOST] if hosts != [HOST] else [HOST, "fd00::1"]
        else:
            _apply(state, pods, specs, op)
        if not update_now:
            continue  # batch several changes into one update
        got = inc.update(dict(state), hosts)
        want = calculate(inputs_from_state(state, NODE, hosts))
        assert got == want, op
        _sync(cluster, state)
        assert by_log.update_from(cluster, hosts) == want, op
    got = inc.update(dict(state), hosts)
    inputs = inputs_from_state(state, NODE, hosts)
    assert got == calculate(inputs)
    live = [sp for name, sp in specs.items() if ":" not in name]
    if len({sp["ip"] for sp in live}) < len(live) or any(sp["iface"] != "own" for sp in live):
        return  # an address held twice, or interfaces not ours: no single right answer
    it = Interpreter(got)
    addrs = [f"10.244.1.{i}" for i in range(1, 9)] + ["192.0.2.9"]
    for a, b, proto, port in pkts:
        src, dst = addrs[a % len(addrs)], addrs[b % len(addrs)]
        if it.locate(src) is None or it.locate(dst) is None:
            continue  # the cluster's decision also needs remote nodes: see test_policy_calc
        assert it.evaluate(it.packet(src, dst, proto, port)).allowed == decide(
            inputs, Conn(src, dst, proto, port, sport=40000)).allowed


def test_unchanged_objects_keep_identity() -> None:
    """What a pod add does not touch keeps its identity (the backends skip it by ``is``)."""
    inc = IncrementalCalculation(NODE)
    policy = model.parse_document({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "ns1"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {
            "matchLabels": {"role": "a"}}}]}]}})
    a = wep("ns1", "a", "10.244.1.1", {"role": "a"})
    b = wep("ns1", "b", "10.244.1.2", {"role": "b"})
    state: dict[str, Any] = {"p": policy, model.key_for(a): a, model.key_for(b): b}
    first = inc.update(dict(state), [HOST])
    c = wep("ns1", "c", "10.244.1.3", {"role": "a"})
    state[model.key_for(c)] = c
    second = inc.update(dict(state), [HOST])
    assert second == calculate(inputs_from_state(state, NODE, [HOST]))
    for name, rules in first.chains.items():
        assert second.chains[name] is rules, name
    changed = [n for n, e in second.elements.items() if e is not first.elements[n]]
    assert len(changed) == 1 and "10.244.1.3/32" in second.elements[changed[0]]
    assert set(second.from_pod) - set(first.from_pod) == {c.spec.host_interface}


def test_gnp_reorder_and_rules_only_change() -> None:
    """A GNP whose rules change keeps its endpoints' chains; a new ``order`` reorders
    the jumps of every endpoint it selects."""
    def gnp(name: str, order: int, port: int) -> model.Resource:
        return model.parse_document({
            "apiVersion": "l3fabric.io/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"order": order, "selector": "all()", "ingress": [
                {"action": "Allow", "protocol": "TCP", "destination": {"ports": [port]}}]}})

    inc = IncrementalCalculation(NODE)
    a = wep("ns1", "a", "10.244.1.1", {"role": "a"})
    state: dict[str, Any] = {"g1": gnp("g1", 1, 80), "g2": gnp("g2", 2, 81),
                             model.key_for(a): a}
    first = inc.update(dict(state), [HOST])
    head = f"fi-{a.spec.host_interface}"
    state["g1"] = gnp("g1", 1, 82)  # rules only
    second = inc.update(dict(state), [HOST])
    assert second == calculate(inputs_from_state(state, NODE, [HOST]))
    assert second.chains[head] is first.chains[head]
    state["g1"] = gnp("g1", 3, 82)  # now after g2
    third = inc.update(dict(state), [HOST])
    assert third == calculate(inputs_from_state(state, NODE, [HOST]))
    assert third.endpoints[a.spec.host_interface].ingress_policies == ("gnp/g2", "gnp/g1")
