"""Host endpoints: which policies a node's host endpoints get, the failsafe ports, and the
renderings for nftables and iptables (pure)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from datastore import keys, model
from felix_like.policy import hostep
from felix_like.policy.hostep import (
    HostPlan,
    HostPlanner,
    chain_name,
    host_plan,
    ipset_script,
    iptables_filter,
    nft_commands,
    plan_of_state,
)
from felix_like.state import ClusterState

API = "l3fabric.io/v1"


def hep(name: str, node: str, iface: str | None = "*", ips: tuple[str, ...] = (),
        **labels: str) -> model.HostEndpoint:
    spec: dict[str, Any] = {"node": node}
    if iface is not None:
        spec["interfaceName"] = iface
    if ips:
        spec["expectedIPs"] = list(ips)
    return model.HostEndpoint.from_dict({"apiVersion": API, "kind": "HostEndpoint",
                                         "metadata": {"name": name, "labels": labels},
                                         "spec": spec})


def gnp(name: str, **spec: Any) -> model.GlobalNetworkPolicy:
    return model.GlobalNetworkPolicy.from_dict({"apiVersion": API, "kind": "GlobalNetworkPolicy",
                                                "metadata": {"name": name}, "spec": spec})


DENY_8080 = {"action": "Deny", "protocol": "TCP", "destination": {"ports": [8080]}}
DEFAULTS = model.FelixConfigurationSpec()


def test_a_host_endpoint_needs_an_interface_or_addresses() -> None:
    with pytest.raises(model.ValidationError, match="interfaceName or expectedIPs"):
        hep("x", "n1", None)
    assert hep("x", "n1", None, ("10.0.0.1",)).spec.expected_ips


def test_no_host_endpoint_on_the_node_means_nothing_to_program() -> None:
    plan = host_plan("n1", [hep("other", "n2", role="node")],
                     [gnp("p", selector="role == 'node'", ingress=[DENY_8080])], [], DEFAULTS)
    assert plan == HostPlan() and not plan.active
    assert [next(iter(c)) for c in nft_commands(plan)] == ["add", "delete"]


def test_selected_by_labels_ingress_egress_and_forward() -> None:
    plan = host_plan("n1", [hep("n1-all", "n1", role="node")], [
        gnp("in", order=1, selector="role == 'node'", ingress=[DENY_8080]),
        gnp("out", order=2, selector="role == 'node'", types=["Egress"],
            egress=[{"action": "Deny", "protocol": "UDP", "destination": {"ports": [53]}}]),
        gnp("fwd", order=3, selector="has(role)", applyOnForward=True,
            ingress=[{"action": "Deny", "protocol": "TCP", "destination": {"ports": [25]}}]),
        gnp("pods", selector="app == 'web'", ingress=[DENY_8080]),
    ], [], DEFAULTS)
    (ep,) = plan.endpoints
    assert [r.comment for r in ep.rules("in")] == [
        "gnp/in ingress[0] Deny", "gnp/fwd ingress[0] Deny"]
    assert [r.comment for r in ep.rules("out")] == ["gnp/out egress[0] Deny"]
    assert [r.comment for r in ep.rules("fwd-in")] == ["gnp/fwd ingress[0] Deny"]
    assert ep.rules("fwd-out") == ()
    assert ep.rules("in")[0].ports[0].ranges == ((8080, 8080),)
    # Calico's failsafe ports by default.
    assert {(p.protocol, p.port) for p in plan.failsafe_in} >= {("TCP", 22), ("TCP", 179),
                                                                 ("UDP", 68)}


def test_selectors_in_rules_match_pods_and_host_endpoints_per_family() -> None:
    wep = model.WorkloadEndpoint.from_dict({
        "apiVersion": API, "kind": "WorkloadEndpoint",
        "metadata": {"name": "web-1.eth0", "namespace": "prod"},
        "spec": {"node": "n2", "namespace": "prod", "pod": "web-1", "endpoint": "eth0",
                 "containerID": "c", "ipNetworks": ["10.244.1.5/32"],
                 "labels": {"app": "web"}}})
    other = hep("n2-eth0", "n2", "eth0", ("10.98.2.2", "fd98:2::2"), role="node")
    plan = host_plan("n1", [hep("n1", "n1", role="node"), other], [
        gnp("p", selector="role == 'node'", ingress=[
            {"action": "Allow", "source": {"selector": "app == 'web' || role == 'node'"}},
            {"action": "Deny", "source": {"selector": "app == 'none'"}}])], [wep], DEFAULTS)
    rules = plan.endpoints[0].rules("in")
    # The Allow per family; the Deny of a selector matching nobody matches nothing.
    assert [(r.version, r.addrs[0].nets) for r in rules] == [
        (4, ("10.98.2.2/32", "10.244.1.5/32")), (6, ("fd98:2::2/128",))]


def test_named_ports_match_no_host_endpoint() -> None:
    plan = host_plan("n1", [hep("n1", "n1")], [
        gnp("p", ingress=[{"action": "Deny", "protocol": "TCP",
                           "destination": {"ports": ["http"]}}])], [], DEFAULTS)
    assert plan.endpoints[0].rules("in") == ()


def test_nft_failsafe_comes_before_the_endpoint_chains() -> None:
    plan = host_plan("n1", [hep("n1", "n1", "eth0"), hep("n1-all", "n1")],
                     [gnp("p", ingress=[DENY_8080])], [], DEFAULTS)
    cmds = nft_commands(plan)
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    inp = [r["expr"] for r in rules if r["chain"] == "input"]
    kinds = [next(iter(e[-1])) for e in inp]
    # replies, lo, the pods, ICMPv6 neighbour discovery, failsafe TCP, failsafe UDP
    assert kinds == ["accept"] * 6 + ["goto", "goto"]
    # The named interface first, then every other one.
    assert inp[6][0]["match"]["right"] == "eth0"
    assert inp[7][-1]["goto"]["target"] == chain_name("n1-all", "in")


def test_iptables_allow_is_return_and_hooks_are_added_once() -> None:
    plan = host_plan("n1", [hep("n1", "n1")], [gnp("p", ingress=[
        {"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}}, DENY_8080])], [], DEFAULTS)
    text = iptables_filter(plan, 4, set(), set())
    assert "-I INPUT 1 -j fabhep-input" in text and "-I FORWARD 1 -j fabhep-forward" in text
    assert "-j ACCEPT" not in text
    assert "--match-set fabhep4-" in text and "-j RETURN" in text and "-j DROP" in text
    assert "-p tcp -m multiport --dports 22,179,2379,2380,6443" in text
    assert "! -i fab+ -g " + chain_name("n1", "in") in text
    again = iptables_filter(plan, 4, {"fabhep-input", "fabhep-output", "fabhep-forward"},
                            {"fabhep-input", "fabhep-output", "fabhep-forward"})
    assert "-I INPUT" not in again
    v6 = iptables_filter(plan, 6, set(), set())
    assert "10.0.0.0" not in v6 and "fabhep4-" not in v6  # IPv4 addresses stay in iptables
    assert "--icmpv6-type 135 -j RETURN" in v6 and "icmpv6" not in text
    assert "add fabhep4-" in ipset_script(plan)


def test_iptables_removes_everything_when_the_last_endpoint_goes() -> None:
    present = {"fabhep-input", "fabhep-output", "fabhep-forward", chain_name("n1", "in")}
    text = iptables_filter(HostPlan(), 4, present, {"fabhep-input", "fabhep-output",
                                                    "fabhep-forward"})
    assert "-D INPUT -j fabhep-input" in text
    assert all(f"-X {c}" in text for c in present)
    assert text.index("-D INPUT") < text.index("-X fabhep-input")


def test_plan_follows_the_cluster_state() -> None:
    st = ClusterState()
    assert not plan_of_state(st, "n1").active
    st.put(keys.host_endpoint("n1"), hep("n1", "n1", role="node"))
    st.put(keys.global_policy("p"), gnp("p", selector="role == 'node'", ingress=[DENY_8080]))
    assert plan_of_state(st, "n1").endpoints[0].rules("in")
    st.put(keys.felix_config(), model.FelixConfiguration.from_dict({
        "apiVersion": API, "kind": "FelixConfiguration", "metadata": {"name": "default"},
        "spec": {"failsafeInboundHostPorts": []}}))
    assert plan_of_state(st, "n1").failsafe_in == ()
    st.remove(keys.global_policy("p"))
    assert plan_of_state(st, "n1").endpoints[0].chains == ()


def test_explain_a_host_endpoint() -> None:
    from fabricctl.hostep_explain import explain, is_ref

    assert is_ref("hostendpoint/n1") and is_ref("hep/n1") and not is_ref("default/web")
    state: dict[str, Any] = {
        keys.host_endpoint("n1-all"): hep("n1-all", "n1", "*", ("10.98.1.2",), role="node"),
        keys.global_policy("p"): gnp("p", order=5, selector="role == 'node'",
                                     ingress=[DENY_8080, {"action": "Deny"}]),
    }
    out = explain(state, "hostendpoint/n1-all", "10.97.0.2", "8080/tcp")
    assert [p["policy"] for p in out["policies"]] == ["p"]
    flows = {f["direction"]: f for f in out["flows"]}
    ingress = flows["ingress, to the host"]
    assert not ingress["allowed"] and "gnp/p ingress[0] Deny" in ingress["reason"]
    assert flows["egress, from the host"]["allowed"]
    assert flows["forwarded in through its interface"]["allowed"]  # no applyOnForward
    ssh = {f["direction"]: f for f in explain(state, "hep/n1-all", "10.97.0.2",
                                              "22/tcp")["flows"]}
    assert ssh["ingress, to the host"]["allowed"]
    assert "failsafe" in ssh["ingress, to the host"]["reason"]
    other = {f["direction"]: f for f in explain(state, "hep/n1-all", "10.97.0.2",
                                                "9/udp")["flows"]}
    assert "gnp/p ingress[1] Deny" in other["ingress, to the host"]["reason"]


# --- the plan kept between applies (HostPlanner) ---------------------------------------------


def pod(name: str, node: str, ns: str, ips: tuple[str, ...],
        **labels: str) -> model.WorkloadEndpoint:
    return model.WorkloadEndpoint.from_dict({
        "apiVersion": API, "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{name}.eth0", "namespace": ns},
        "spec": {"node": node, "namespace": ns, "pod": name, "endpoint": "eth0",
                 "containerID": f"c-{name}", "ipNetworks": [f"{ip}/{128 if ':' in ip else 32}"
                                                           for ip in ips],
                 "labels": labels}})


def put_pod(st: ClusterState, w: model.WorkloadEndpoint) -> str:
    key = model.key_for(w)
    st.put(key, w)
    return key


def straight(st: ClusterState, node: str) -> HostPlan:
    """The plan from the resources alone: every pod of the cluster read."""
    return host_plan(node, st.host_endpoints.values(), st.global_policies.values(),
                     st.endpoints.values(), st.felix_config())


RULE_SELECTORS = ("app == 'a0'", "app == 'a1' || role == 'node'",
                  "projectcalico.org/namespace == 'ns1'", "has(tier)", "app == 'none'",
                  "tier == 'db' && app != 'a2'")


def random_gnp(rnd: random.Random, name: str) -> model.GlobalNetworkPolicy:
    def entity() -> dict[str, Any]:
        out: dict[str, Any] = {}
        if rnd.random() < 0.6:
            out["selector"] = rnd.choice(RULE_SELECTORS)
        if rnd.random() < 0.2:
            out["notSelector"] = rnd.choice(RULE_SELECTORS)
        if rnd.random() < 0.2:
            out["nets"] = [rnd.choice(["10.0.0.0/8", "10.244.0.0/16", "fd00::/8"])]
        return out

    def rules() -> list[dict[str, Any]]:
        return [{"action": rnd.choice(["Allow", "Deny", "Pass", "Log"]),
                 "source": entity(), "destination": entity()}
                for _ in range(rnd.randint(0, 2))]

    return gnp(name, order=rnd.randint(0, 5), applyOnForward=rnd.random() < 0.5,
               selector=rnd.choice(["role == 'node'", "all()", "zone == 'a'"]),
               types=["Ingress", "Egress"], ingress=rules(), egress=rules())


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_plan_equals_the_plan_from_the_resources(seed: int) -> None:
    rnd = random.Random(seed)
    st = ClusterState()
    nodes = ["n1", "n2", "n3"]
    planners = {n: HostPlanner(n) for n in nodes}  # as each node's manager keeps it
    pods: list[str] = []
    serial = 0

    def a_pod() -> model.WorkloadEndpoint:
        nonlocal serial
        serial += 1
        ips = [f"10.244.{serial // 250}.{serial % 250 + 1}"]
        if rnd.random() < 0.3:
            ips.append(f"fd44::{serial:x}")
        labels = {k: v for k, v in (("app", rnd.choice(["a0", "a1", "a2"])),
                                    ("tier", rnd.choice(["web", "db"])),
                                    ("role", "node")) if rnd.random() < 0.6}
        return pod(f"p{serial}", rnd.choice(nodes), rnd.choice(["ns0", "ns1"]),
                   tuple(ips), **labels)

    for _ in range(20):
        pods.append(put_pod(st, a_pod()))
    for step in range(50):
        what = rnd.random()
        if what < 0.3:
            pods.append(put_pod(st, a_pod()))
        elif what < 0.45 and pods:
            st.remove(pods.pop(rnd.randrange(len(pods))))
        elif what < 0.6 and pods:  # relabelled or readdressed in place
            key = rnd.choice(pods)
            old = st.endpoints[key]
            new = a_pod()
            st.put(key, pod(old.spec.pod, old.spec.node, old.metadata.namespace or "",
                            tuple(str(n.network_address) for n in (
                                new if rnd.random() < 0.5 else old).spec.ip_networks),
                            **new.spec.labels))
        elif what < 0.75:
            g = random_gnp(rnd, f"g{rnd.randint(0, 4)}")
            if rnd.random() < 0.2:
                st.remove(model.key_for(g))
            else:
                st.put(model.key_for(g), g)
        elif what < 0.9:
            node = rnd.choice(nodes)
            name = f"{node}-{rnd.choice(['all', 'eth0'])}"
            h = hep(name, node, "*" if name.endswith("all") else "eth0",
                    (f"10.98.{nodes.index(node)}.{rnd.randint(1, 9)}",),
                    **({"role": "node"} if rnd.random() < 0.7 else {"zone": "a"}))
            if rnd.random() < 0.2:
                st.remove(keys.host_endpoint(name))
            else:
                st.put(keys.host_endpoint(name), h)
        else:
            ports = [] if rnd.random() < 0.5 else [{"protocol": "TCP", "port": 22}]
            st.put(keys.felix_config(), model.FelixConfiguration.from_dict({
                "apiVersion": API, "kind": "FelixConfiguration",
                "metadata": {"name": "default"}, "spec": {"failsafeInboundHostPorts": ports}}))
        for node in ("n1", "n2"):
            kept, fresh = planners[node].plan(st), straight(st, node)
            assert kept == fresh, (seed, step, node)
            assert nft_commands(kept) == nft_commands(fresh)


def counting_labels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every pod whose labels the plan reads, by pod name, from now on."""
    seen: list[str] = []
    real = hostep.endpoint_labels

    def counted(w: model.WorkloadEndpoint) -> Any:
        seen.append(w.spec.pod)
        return real(w)

    monkeypatch.setattr(hostep, "endpoint_labels", counted)
    return seen


def cluster_with_a_web_rule(pods: int) -> ClusterState:
    st = ClusterState()
    st.put(keys.host_endpoint("n1-all"), hep("n1-all", "n1", role="node"))
    st.put(keys.global_policy("p"), gnp("p", selector="role == 'node'", ingress=[
        {"action": "Allow", "source": {"selector": "app == 'web'"}}, {"action": "Deny"}]))
    for i in range(pods):
        put_pod(st, pod(f"db{i}", f"n{i % 7 + 2}", "prod", (f"10.244.9.{i + 1}",), app="db"))
    return st


def test_a_pod_a_host_rule_selects_changes_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    st = cluster_with_a_web_rule(50)
    n1 = HostPlanner("n1")
    assert n1.plan(st).endpoints[0].rules("in")[0].verdict == "deny"
    seen = counting_labels(monkeypatch)
    key = put_pod(st, pod("web-1", "n5", "prod", ("10.244.1.5",), app="web"))
    allow = n1.plan(st).endpoints[0].rules("in")[0]
    assert (allow.verdict, allow.addrs[0].nets) == ("allow", ("10.244.1.5/32",))
    moved = pod("web-1", "n5", "prod", ("10.244.1.6",), app="web")
    st.put(key, moved)
    assert n1.plan(st).endpoints[0].rules("in")[0].addrs[0].nets == (
        "10.244.1.6/32",)
    st.remove(key)
    assert n1.plan(st).endpoints[0].rules("in")[0].verdict == "deny"
    assert seen == ["web-1", "web-1"]  # the pod itself, never the 50 others
    assert n1.plan(st) == straight(st, "n1")


def test_a_pod_no_host_rule_selects_reads_only_that_pod(
        monkeypatch: pytest.MonkeyPatch) -> None:
    st = cluster_with_a_web_rule(200)
    n1 = HostPlanner("n1")
    before = n1.plan(st)
    assert n1.scans == 1  # the selector's members, filled once
    seen = counting_labels(monkeypatch)
    put_pod(st, pod("db-new", "n3", "prod", ("10.244.8.1",), app="db"))
    after = n1.plan(st)
    assert after is before  # nothing recomputed
    assert seen == ["db-new"] and n1.scans == 1
    seen.clear()
    straight(st, "n1")
    assert len(seen) == 201  # what each apply read before: every pod of the cluster


def test_a_node_without_host_endpoint_reads_no_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    st = cluster_with_a_web_rule(20)
    n2 = HostPlanner("n2")
    seen = counting_labels(monkeypatch)
    put_pod(st, pod("web-1", "n2", "prod", ("10.244.1.5",), app="web"))
    assert n2.plan(st) == HostPlan()
    assert seen == []
    # Its host endpoint arrives: the plan follows, from the pods as they are now.
    st.put(keys.host_endpoint("n2-all"), hep("n2-all", "n2", role="node"))
    rules = n2.plan(st).endpoints[0].rules("in")
    assert rules[0].addrs[0].nets == ("10.244.1.5/32",)
    st.remove(keys.host_endpoint("n2-all"))
    assert n2.plan(st) == HostPlan()
