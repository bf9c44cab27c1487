"""Policy calculation as data: the Kubernetes documentation's NetworkPolicy examples, GNP
ordering/Pass/Deny/Log, named ports, endPort, ipBlock except, anti-spoofing and the
interface dispatch, each checked through the packet interpreter over the rendered ruleset
AND the plain semantic evaluator; plus a property test that the two agree."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml
from helpers.policy_docs import (
    ALLOW_ALL_EGRESS,
    ALLOW_ALL_INGRESS,
    AND_NS_POD,
    DEFAULT_DENY_ALL,
    DEFAULT_DENY_EGRESS,
    DEFAULT_DENY_INGRESS,
    EGRESS_NAMED_PORT,
    GNP_PASS,
    MULTI_PORT_EGRESS,
    NAMED_PORT,
    OR_OWN_NS_POD,
    TEST_NETWORK_POLICY,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore import model
from felix_like.policy.explain import Conn, decide
from felix_like.policy.interp import ICMP, ICMPV6, SCTP, TCP, UDP, Interpreter, Packet
from felix_like.policy.ruleset import PolicyInputs, Ruleset, calculate

NODE = "n1"
HOST = "10.77.1.1"
OUTSIDE = "192.0.2.9"


def iface(pod: str) -> str:
    return "fab" + hashlib.sha1(pod.encode()).hexdigest()[:11]


def wep(ns: str, pod: str, ip: str, labels: dict[str, str] | None = None, node: str = NODE,
        ports: list[dict[str, Any]] | None = None, extra: list[str] | None = None
        ) -> model.WorkloadEndpoint:
    res = model.parse_document({
        "apiVersion": "l3fabric.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{pod}.eth0", "namespace": ns},
        "spec": {"node": node, "pod": pod, "endpoint": "eth0", "containerID": f"c-{pod}",
                 "ipNetworks": [f"{ip}/32", *(extra or [])], "hostInterface": iface(f"{ns}/{pod}"),
                 "labels": labels or {}, "ports": ports or []}})
    assert isinstance(res, model.WorkloadEndpoint)
    return res


def ns_obj(name: str, labels: dict[str, str]) -> model.Namespace:
    res = model.parse_document({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name, "labels": labels}})
    assert isinstance(res, model.Namespace)
    return res


def docs(text: str) -> list[model.Resource]:
    return [model.parse_document(d) for d in yaml.safe_load_all(text) if d]


# The pods of the world the tables run in. ns "default" and "prod" (project=myproject),
# "dev" (user=alice); one remote pod on node n2.
PODS = {
    "db": wep("default", "db", "10.244.1.10", {"role": "db"},
              ports=[{"name": "redis", "port": 6379}]),
    "frontend": wep("default", "frontend", "10.244.1.11", {"role": "frontend"}),
    "web": wep("default", "web", "10.244.1.12", {"app": "web"},
               ports=[{"name": "http", "port": 8080}, {"name": "dns", "port": 53,
                                                        "protocol": "UDP"}]),
    "other": wep("default", "other", "10.244.1.13", {}),
    "prodclient": wep("prod", "prodclient", "10.244.1.20", {"role": "client"}),
    "prodweb": wep("prod", "prodweb", "10.244.1.21", {"app": "web"},
                   ports=[{"name": "http", "port": 9090}]),
    "aliceclient": wep("dev", "aliceclient", "10.244.1.30", {"role": "client"}),
    "alicedb": wep("dev", "alicedb", "10.244.1.31", {"role": "db"}),
    "remote": wep("default", "remote", "10.244.2.10", {"role": "frontend"}, node="n2"),
}
NAMESPACES = {"prod": ns_obj("prod", {"project": "myproject"}),
              "dev": ns_obj("dev", {"user": "alice"}), "default": ns_obj("default", {})}


def world(*texts: str, pods: dict[str, model.WorkloadEndpoint] | None = None) -> PolicyInputs:
    res: list[model.Resource] = []
    for t in texts:
        res.extend(docs(t))
    return PolicyInputs(
        node=NODE,
        policies=tuple(r for r in res if isinstance(r, model.NetworkPolicy)),
        global_policies=tuple(r for r in res if isinstance(r, model.GlobalNetworkPolicy)),
        namespaces=NAMESPACES,
        endpoints=tuple((pods or PODS).values()),
        host_addresses=(HOST,),
    )


def ip(name: str) -> str:
    return str(PODS[name].spec.ip_networks[0].network_address) if name in PODS else name


def both(inputs: PolicyInputs, rs: Ruleset, src: str, dst: str, proto: int = TCP,
         dport: int | None = 80, **kw: Any) -> bool:
    """Interpreter verdict (through every node the packet crosses: n1 evaluates everything
    local) and the semantic evaluator's; they must agree."""
    s, d = ip(src), ip(dst)
    it = Interpreter(rs)
    got = it.evaluate(it.packet(s, d, proto, dport, **kw)).allowed
    want = decide(inputs, Conn(s, d, proto, dport, icmp_type=kw.get("icmp_type"))).allowed
    assert got == want, (src, dst, proto, dport, it.evaluate(it.packet(s, d, proto, dport,
                                                                       **kw)).trace)
    return got


GNP_DENY_BEFORE_ALLOW = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-dev}
spec:
  order: 10
  selector: all()
  ingress:
  - action: Deny
    source: {namespaceSelector: user == "alice"}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: default}
spec: {podSelector: {}, ingress: [{}], policyTypes: [Ingress]}
"""
GNP_ORDER = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: b-allow-tcp80}
spec:
  order: 5
  selector: role == "db"
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
---
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: a-deny-all}
spec:
  order: 20
  selector: role == "db"
  ingress: [{action: Deny}]
---
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: z-unordered-allow}
spec:
  selector: role == "db"
  ingress: [{action: Allow}]
"""
GNP_NETS_ICMP = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: nets}
spec:
  order: 1
  selector: has(role)
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: ICMP, icmp: {type: 8}}
  - {action: Deny, protocol: ICMP}
  - action: Deny
    source: {nets: [192.0.2.0/24], notNets: [192.0.2.128/25]}
  - action: Allow
    protocol: UDP
    destination: {ports: ["1000:2000"], notPorts: [1500]}
  - {action: Deny, protocol: UDP}
"""

CASES: list[tuple[str, str, str, str, int, int | None, bool]] = [
    # (name, policy yaml, src, dst, proto, port, allowed)
    ("no policy: all allowed", "", "frontend", "db", TCP, 6379, True),
    ("no policy: from outside", "", OUTSIDE, "db", UDP, 53, True),
    ("test-np: frontend pod", TEST_NETWORK_POLICY, "frontend", "db", TCP, 6379, True),
    ("test-np: remote frontend pod", TEST_NETWORK_POLICY, "remote", "db", TCP, 6379, True),
    ("test-np: wrong port", TEST_NETWORK_POLICY, "frontend", "db", TCP, 6380, False),
    ("test-np: wrong protocol", TEST_NETWORK_POLICY, "frontend", "db", UDP, 6379, False),
    ("test-np: other pod", TEST_NETWORK_POLICY, "other", "db", TCP, 6379, False),
    ("test-np: ns project=myproject", TEST_NETWORK_POLICY, "prodclient", "db", TCP, 6379,
     True),
    ("test-np: ns dev", TEST_NETWORK_POLICY, "aliceclient", "db", TCP, 6379, False),
    ("test-np: ipBlock", TEST_NETWORK_POLICY, "172.17.2.3", "db", TCP, 6379, True),
    ("test-np: ipBlock except", TEST_NETWORK_POLICY, "172.17.1.3", "db", TCP, 6379, False),
    ("test-np: egress to block", TEST_NETWORK_POLICY, "db", "10.0.0.7", TCP, 5978, True),
    ("test-np: egress wrong port", TEST_NETWORK_POLICY, "db", "10.0.0.7", TCP, 5979, False),
    ("test-np: egress to pod", TEST_NETWORK_POLICY, "db", "frontend", TCP, 80, False),
    ("test-np: not selected pods open", TEST_NETWORK_POLICY, "other", "frontend", TCP, 80,
     True),
    ("and: alice client", AND_NS_POD, "aliceclient", "alicedb", TCP, 1, True),
    ("and: prod client", AND_NS_POD, "prodclient", "alicedb", TCP, 1, False),
    ("and: default frontend", AND_NS_POD, "frontend", "alicedb", TCP, 1, False),
    ("or: prod client is not in dev", OR_OWN_NS_POD, "prodclient", "alicedb", TCP, 1, False),
    ("or: alice ns any pod", OR_OWN_NS_POD, "alicedb", "alicedb", TCP, 1, True),
    ("deny-ingress: pod", DEFAULT_DENY_INGRESS, "frontend", "db", TCP, 6379, False),
    ("deny-ingress: outside", DEFAULT_DENY_INGRESS, OUTSIDE, "db", TCP, 6379, False),
    ("deny-ingress: from node", DEFAULT_DENY_INGRESS, HOST, "db", TCP, 6379, True),
    ("deny-ingress: egress free", DEFAULT_DENY_INGRESS, "db", OUTSIDE, TCP, 443, True),
    ("deny-ingress: other ns", DEFAULT_DENY_INGRESS, "db", "prodweb", TCP, 443, True),
    ("allow-all-ingress", DEFAULT_DENY_INGRESS + "---" + ALLOW_ALL_INGRESS, "prodclient",
     "db", UDP, 9, True),
    ("deny-egress: pod", DEFAULT_DENY_EGRESS, "db", "frontend", TCP, 80, False),
    ("deny-egress: outside", DEFAULT_DENY_EGRESS, "db", OUTSIDE, TCP, 80, False),
    ("deny-egress: ingress free", DEFAULT_DENY_EGRESS, "prodclient", "db", TCP, 80, True),
    ("allow-all-egress", DEFAULT_DENY_EGRESS + "---" + ALLOW_ALL_EGRESS, "db", OUTSIDE, UDP,
     53, True),
    ("deny-all: in", DEFAULT_DENY_ALL, "prodclient", "db", TCP, 80, False),
    ("deny-all: out", DEFAULT_DENY_ALL, "db", "prodclient", TCP, 80, False),
    ("deny-all: inside default", DEFAULT_DENY_ALL, "db", "frontend", TCP, 80, False),
    ("endPort: low", MULTI_PORT_EGRESS, "db", "10.0.0.9", TCP, 32000, True),
    ("endPort: high", MULTI_PORT_EGRESS, "db", "10.0.0.9", TCP, 32768, True),
    ("endPort: above", MULTI_PORT_EGRESS, "db", "10.0.0.9", TCP, 32769, False),
    ("endPort: below", MULTI_PORT_EGRESS, "db", "10.0.0.9", TCP, 31999, False),
    ("named port: web http", NAMED_PORT, "other", "web", TCP, 8080, True),
    ("named port: web other port", NAMED_PORT, "other", "web", TCP, 9090, False),
    ("named port: web dns udp", NAMED_PORT, "other", "web", UDP, 53, True),
    ("named port: web dns tcp", NAMED_PORT, "other", "web", TCP, 53, False),
    ("named port: per pod, prodweb not selected", NAMED_PORT, "other", "prodweb", TCP, 1,
     True),
    ("egress named: web 8080", EGRESS_NAMED_PORT, "frontend", "web", TCP, 8080, True),
    ("egress named: prodweb 9090", EGRESS_NAMED_PORT, "frontend", "prodweb", TCP, 9090, True),
    ("egress named: prodweb 8080", EGRESS_NAMED_PORT, "frontend", "prodweb", TCP, 8080, False),
    ("egress named: web 9090", EGRESS_NAMED_PORT, "frontend", "web", TCP, 9090, False),
    ("gnp deny before np allow", GNP_DENY_BEFORE_ALLOW, "aliceclient", "db", TCP, 1, False),
    ("gnp deny: others allowed", GNP_DENY_BEFORE_ALLOW, "prodclient", "db", TCP, 1, True),
    ("gnp order: allow 80 first", GNP_ORDER, "other", "db", TCP, 80, True),
    ("gnp order: then deny", GNP_ORDER, "other", "db", TCP, 81, False),
    ("gnp order: not selected", GNP_ORDER, "other", "frontend", TCP, 81, True),
    ("gnp pass: to np, allowed", GNP_PASS, "frontend", "db", TCP, 6379, True),
    ("gnp pass: to np, wrong port", GNP_PASS, "frontend", "db", TCP, 6380, False),
    ("gnp pass: others hit deny", GNP_PASS, "other", "db", TCP, 6379, False),
    ("gnp icmp echo", GNP_NETS_ICMP, "other", "db", ICMP, None, True),
    ("gnp nets deny", GNP_NETS_ICMP, "192.0.2.9", "db", TCP, 1, False),
    ("gnp notNets", GNP_NETS_ICMP, "192.0.2.200", "db", TCP, 1, True),
    ("gnp ports range", GNP_NETS_ICMP, "other", "db", UDP, 1400, True),
    ("gnp notPorts", GNP_NETS_ICMP, "other", "db", UDP, 1500, False),
]


@pytest.mark.parametrize(("name", "text", "src", "dst", "proto", "port", "want"), CASES,
                         ids=[c[0] for c in CASES])
def test_case(name: str, text: str, src: str, dst: str, proto: int, port: int | None,
              want: bool) -> None:
    inputs = world(text)
    rs = calculate(inputs)
    kw: dict[str, Any] = {}
    if proto == ICMP:
        kw = {"icmp_type": 8 if "echo" in name else 0}
    assert both(inputs, rs, src, dst, proto, port, **kw) is want


def test_icmp_other_type_denied() -> None:
    inputs = world(GNP_NETS_ICMP)
    assert not both(inputs, calculate(inputs), "other", "db", ICMP, None, icmp_type=13)


def test_sctp_port() -> None:
    text = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{ports: [{protocol: SCTP, port: 7777}]}]
"""
    inputs = world(text)
    rs = calculate(inputs)
    assert both(inputs, rs, "other", "db", SCTP, 7777)
    assert not both(inputs, rs, "other", "db", TCP, 7777)


def test_replies_and_node_traffic_always_allowed() -> None:
    rs = calculate(world(DEFAULT_DENY_ALL))
    it = Interpreter(rs)
    pkt = it.packet(ip("db"), OUTSIDE, TCP, 80, established=True)
    assert it.evaluate(pkt).allowed
    assert it.evaluate(it.packet(HOST, ip("db"), TCP, 22)).allowed
    assert not it.evaluate(it.packet(ip("db"), OUTSIDE, TCP, 80)).allowed


def test_anti_spoofing_and_unknown_interface() -> None:
    rs = calculate(world(""))
    it = Interpreter(rs)
    db_if = it.locate(ip("db"))
    assert db_if is not None
    # db sends with frontend's address (or an outside one) through its own veth: dropped.
    assert not it.evaluate(Packet(ip("frontend"), OUTSIDE, TCP, 80, iif=db_if)).allowed
    assert not it.evaluate(Packet("10.9.9.9", ip("other"), TCP, 80, iif=db_if)).allowed
    assert not it.evaluate(Packet("fd00::1", "fd00::2", TCP, 80, iif=db_if)).allowed
    assert it.evaluate(Packet(ip("db"), OUTSIDE, TCP, 80, iif=db_if)).allowed
    # Also on the input hook (traffic to the node itself).
    assert not it.evaluate(Packet(ip("frontend"), HOST, TCP, 22, iif=db_if), "input").allowed
    # One of our interfaces with no endpoint behind it fails closed, both ways.
    assert not it.evaluate(Packet("10.244.1.99", OUTSIDE, TCP, 80, iif="fab00000000000")).allowed
    assert not it.evaluate(Packet(OUTSIDE, "10.244.1.99", TCP, 80, oif="fab00000000000")).allowed
    # Not ours: untouched.
    assert it.evaluate(Packet(OUTSIDE, "10.0.0.1", TCP, 80, iif="eth0", oif="veth9")).allowed
    # The semantic evaluator says the same about a spoofed source.
    assert not decide(world(""), Conn(ip("frontend"), OUTSIDE, TCP, 80,
                                      src_ep=PODS["db"])).allowed


def test_neighbour_discovery_of_an_ipv6_pod_passes_its_egress_policy() -> None:
    """A pod answers the node's neighbour solicitation from its own address: a policy
    that denies its egress must not drop that answer, or the node loses the pod's MAC and
    IPv6 connections to the pod fail (ARP is not IP, so IPv4 has no such gap)."""
    pod = wep("default", "v6", "10.244.1.50", extra=["fd44::50/128"])
    rs = calculate(world(DEFAULT_DENY_EGRESS, pods={**PODS, "v6": pod}))
    it = Interpreter(rs)
    v6_if = it.locate("10.244.1.50")
    assert v6_if is not None
    gw, ll = "fe80::ecee:eeff:feee:eeee", "fe80::1"
    for src in ("fd44::50", ll):
        for t in (133, 135, 136):
            nd = Packet(src, gw, ICMPV6, None, None, icmp_type=t, iif=v6_if)
            assert it.evaluate(nd, "input").allowed, (src, t)
    # Policy still holds for everything else, and a spoofed source is still dropped.
    assert not it.evaluate(Packet("fd44::50", "fd44::99", TCP, 80, iif=v6_if)).allowed
    assert not it.evaluate(Packet("fd44::50", gw, ICMPV6, None, None, icmp_type=128,
                                  iif=v6_if), "input").allowed
    assert not it.evaluate(Packet("fd44::51", gw, ICMPV6, None, None, icmp_type=136,
                                  iif=v6_if), "input").allowed


def test_sets_shared_and_pod_add_changes_elements_only() -> None:
    text = EGRESS_NAMED_PORT + "---" + NAMED_PORT + "---" + OR_OWN_NS_POD + "---" + AND_NS_POD
    before = calculate(world(text))
    pods = dict(PODS)
    pods["web2"] = wep("default", "web2", "10.244.1.40", {"app": "web"},
                       ports=[{"name": "http", "port": 8081}])
    after = calculate(world(text, pods=pods))
    new_if = iface("default/web2")
    assert set(after.sets) == set(before.sets)
    changed = {n for n in after.sets if after.elements[n] != before.elements[n]}
    assert changed, "the new pod must appear in some set"
    for name, rules in after.chains.items():
        if name.endswith(new_if):
            assert name not in before.chains
        else:
            assert before.chains[name] == rules, name
    assert set(after.from_pod) - set(before.from_pod) == {new_if}
    # Equal selectors written in two policies share one set.
    sel_sets = [s for s in after.sets.values() if "app" in s.what and s.version == 4]
    assert len(sel_sets) == len({s.what for s in sel_sets})


def test_label_change_moves_pod_between_sets() -> None:
    text = OR_OWN_NS_POD
    pods = dict(PODS)
    rs1 = calculate(world(text, pods=pods))
    pods["alicedb"] = wep("dev", "alicedb", "10.244.1.31", {"role": "cache"})
    rs2 = calculate(world(text, pods=pods))
    i1, i2 = Interpreter(rs1), Interpreter(rs2)
    p = i1.packet(ip("prodclient"), ip("alicedb"), TCP, 1)
    assert not i1.evaluate(p).allowed and i2.evaluate(p).allowed


# --- property: the rendered program and the semantic evaluator agree -------------------

LABEL_VALUES = ["a", "b"]
labels_st = st.dictionaries(st.sampled_from(["role", "tier"]), st.sampled_from(LABEL_VALUES),
                            max_size=2)
k8s_sel_st = st.builds(lambda lab: {"matchLabels": lab}, labels_st)
peer_st = st.one_of(
    st.builds(lambda s: {"podSelector": s}, k8s_sel_st),
    st.builds(lambda s: {"namespaceSelector": s},
              st.sampled_from([{}, {"matchLabels": {"team": "x"}}])),
    st.builds(lambda s, n: {"podSelector": s, "namespaceSelector": n}, k8s_sel_st,
              st.sampled_from([{}, {"matchLabels": {"team": "x"}}])),
    st.sampled_from([{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/28"]}},
                     {"ipBlock": {"cidr": "192.0.2.0/24"}}]),
)
port_st = st.one_of(
    st.builds(lambda p: {"protocol": p}, st.sampled_from(["TCP", "UDP"])),
    st.builds(lambda p, n: {"protocol": p, "port": n}, st.sampled_from(["TCP", "UDP"]),
              st.sampled_from([80, 81, 53])),
    st.builds(lambda n: {"port": 80, "endPort": n}, st.sampled_from([80, 90])),
    st.builds(lambda n: {"port": n}, st.sampled_from(["http", "dns"])),
)
rule_st = st.builds(lambda peers, ports: {k: v for k, v in (("peers", peers),
                                                            ("ports", ports)) if v},
                    st.lists(peer_st, max_size=2), st.lists(port_st, max_size=2))
np_st = st.builds(
    lambda sel, types, ing, eg, ns: {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": ns},
        "spec": {"podSelector": sel, **({"policyTypes": types} if types else {}),
                 "ingress": [{"from": r["peers"], **({"ports": r["ports"]} if "ports" in r
                                                     else {})} if "peers" in r else
                             ({"ports": r["ports"]} if "ports" in r else {}) for r in ing],
                 "egress": [{"to": r["peers"], **({"ports": r["ports"]} if "ports" in r
                                                  else {})} if "peers" in r else
                            ({"ports": r["ports"]} if "ports" in r else {}) for r in eg]}},
    k8s_sel_st, st.sampled_from([[], ["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    st.lists(rule_st, max_size=2), st.lists(rule_st, max_size=2),
    st.sampled_from(["ns1", "ns2"]))
calico_sel_st = st.sampled_from(['role == "a"', 'role != "a"', "has(tier)", "all()",
                                 'role in {"a", "b"} && !has(tier)', 'tier not in {"a"}'])
entity_st = st.fixed_dictionaries({}, optional={
    "selector": calico_sel_st, "notSelector": calico_sel_st,
    "namespaceSelector": st.sampled_from(['team == "x"', "all()"]),
    "nets": st.sampled_from([["10.244.0.0/16"], ["192.0.2.0/25", "198.51.100.0/24"]]),
    "notNets": st.sampled_from([["10.244.1.0/28"], ["192.0.2.0/26"]]),
    "ports": st.sampled_from([[80], ["50:60"], ["http"], [81, "dns"]]),
    "notPorts": st.sampled_from([[53], ["http"]]),
})
gnp_rule_st = st.builds(
    lambda action, proto, src, dst: {
        "action": action, **({"protocol": proto} if proto else {}),
        "source": src if proto else {k: v for k, v in src.items() if "orts" not in k},
        "destination": dst if proto else {k: v for k, v in dst.items() if "orts" not in k}},
    st.sampled_from(["Allow", "Deny", "Pass", "Log"]), st.sampled_from([None, "TCP", "UDP"]),
    entity_st, entity_st)
gnp_st = st.builds(
    lambda name, order, sel, ing, eg: {
        "apiVersion": "l3fabric.io/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": {**({"order": order} if order is not None else {}), "selector": sel,
                 "ingress": ing, "egress": eg}},
    st.sampled_from(["g1", "g2", "g3"]), st.sampled_from([None, 1, 2]), calico_sel_st,
    st.lists(gnp_rule_st, max_size=3), st.lists(gnp_rule_st, max_size=2))
pod_st = st.tuples(st.sampled_from(["ns1", "ns2"]), labels_st, st.booleans(),
                   st.sampled_from([[], [{"name": "http", "port": 80}],
                                    [{"name": "http", "port": 81},
                                     {"name": "dns", "port": 53, "protocol": "UDP"}]]))


def _gnp_name(g: dict[str, Any]) -> str:
    return str(g["metadata"]["name"])


@settings(max_examples=300, deadline=None)
@given(nps=st.lists(np_st, max_size=3), gnps=st.lists(gnp_st, max_size=3, unique_by=_gnp_name),
       pods=st.lists(pod_st, min_size=2, max_size=4),
       pkts=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5),
                               st.sampled_from([TCP, UDP]), st.sampled_from([80, 81, 53, 55])),
                     min_size=1, max_size=6))
def test_rendered_program_agrees_with_semantics(nps: list[dict[str, Any]],
                                                gnps: list[dict[str, Any]],
                                                pods: list[Any], pkts: list[Any]) -> None:
    for i, n in enumerate(nps):
        n["metadata"]["name"] = f"p{i}"
    weps = {}
    for i, (ns, labels, local, ports) in enumerate(pods):
        weps[f"pod{i}"] = wep(ns, f"pod{i}", f"10.244.1.{i + 1}", labels,
                              node=NODE if local else "n2", ports=ports)
    inputs = PolicyInputs(
        node=NODE,
        policies=tuple(p for p in map(model.parse_document, nps)
                       if isinstance(p, model.NetworkPolicy)),
        global_policies=tuple(g for g in map(model.parse_document, gnps)
                              if isinstance(g, model.GlobalNetworkPolicy)),
        namespaces={"ns1": ns_obj("ns1", {"team": "x"}), "ns2": ns_obj("ns2", {})},
        endpoints=tuple(weps.values()), host_addresses=(HOST,))
    rs = calculate(inputs)
    it = Interpreter(rs)
    addrs = [f"10.244.1.{i + 1}" for i in range(len(pods))] + ["192.0.2.9", "10.244.1.200"]
    for a, b, proto, port in pkts:
        src, dst = addrs[a % len(addrs)], addrs[b % len(addrs)]
        want = decide(inputs, Conn(src, dst, proto, port, sport=40000))
        # The cluster's decision: egress on the source pod's node, ingress on the
        # destination's. Our ruleset is n1's; remote pods are evaluated semantically.
        src_ep, dst_ep = it.locate(src), it.locate(dst)
        got = it.evaluate(it.packet(src, dst, proto, port)).allowed
        if src_ep is None and want.egress is not None:
            got = got and want.egress.allowed
        if dst_ep is None and want.ingress is not None:
            got = got and want.ingress.allowed
        assert got == want.allowed, (src, dst, proto, port, want,
                                     it.evaluate(it.packet(src, dst, proto, port)).trace)


GNP_SUBSTRING = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: only-front-to-d}
spec:
  selector: role starts with "d"
  ingress:
  - action: Allow
    source: {selector: role contains "ront" && !(role ends with "client")}
  - action: Deny
"""


def test_substring_selectors_in_policy() -> None:
    """``starts with`` picks the protected pods (db, alicedb); ``contains``/``ends with``
    pick the sources; a pod without the label matches neither."""
    inputs = world(GNP_SUBSTRING)
    rs = calculate(inputs)
    assert both(inputs, rs, "frontend", "db")
    assert both(inputs, rs, "remote", "alicedb")
    assert not both(inputs, rs, "prodclient", "db")  # "client": no "ront"
    assert not both(inputs, rs, "other", "db")  # no role label at all
    assert both(inputs, rs, "other", "web")  # web is not selected: no policy applies
