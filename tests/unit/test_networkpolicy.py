"""NetworkPolicy (networking.k8s.io/v1): the Kubernetes documentation's examples validate
unchanged, and malformed variants are rejected naming the exact field path."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
import yaml

from datastore.labelselector import LabelSelector
from datastore.model import NetworkPolicy, ValidationError, parse_document

# From https://kubernetes.io/docs/concepts/services-networking/network-policies/
DOCS_EXAMPLES = {
    "test-network-policy": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
""",
    "and-namespace-pod": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: and-namespace-pod
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
      podSelector:
        matchLabels:
          role: client
""",
    "or-namespace-pod": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: or-namespace-pod
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
    - podSelector:
        matchLabels:
          role: client
""",
    "default-deny-ingress": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
""",
    "allow-all-ingress": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes:
  - Ingress
""",
    "default-deny-egress": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
spec:
  podSelector: {}
  policyTypes:
  - Egress
""",
    "allow-all-egress": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-egress
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes:
  - Egress
""",
    "default-deny-all": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
spec:
  podSelector: {}
  policyTypes:
  - Ingress
  - Egress
""",
    "multi-port-egress": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
""",
    "namespace-by-name": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-prod
  namespace: web
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: prod
    ports:
    - port: http
""",
    "match-expressions": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: expressions
spec:
  podSelector:
    matchExpressions:
    - {key: tier, operator: In, values: [frontend, backend]}
    - {key: legacy, operator: DoesNotExist}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: app, operator: Exists}
        - {key: env, operator: NotIn, values: [dev]}
    ports:
    - {protocol: UDP, port: 53}
    - {protocol: SCTP}
""",
}


def load(name: str) -> NetworkPolicy:
    res = parse_document(yaml.safe_load(DOCS_EXAMPLES[name]))
    assert isinstance(res, NetworkPolicy)
    return res


@pytest.mark.parametrize("name", sorted(DOCS_EXAMPLES))
def test_docs_example_validates_and_round_trips(name: str) -> None:
    pol = load(name)
    assert NetworkPolicy.from_dict(pol.to_dict()) == pol
    assert hash(pol) == hash(NetworkPolicy.from_dict(pol.to_dict()))


def test_test_network_policy_content() -> None:
    pol = load("test-network-policy")
    assert pol.metadata.namespace == "default"
    assert pol.spec.pod_selector.matches({"role": "db"})
    assert not pol.spec.pod_selector.matches({"role": "web"})
    rule = pol.spec.ingress[0]
    block = rule.peers[0].ip_block
    assert block is not None
    assert block.network == ipaddress.ip_network("172.17.0.0/16")
    assert block.except_networks == (ipaddress.ip_network("172.17.1.0/24"),)
    assert rule.peers[1].namespace_selector is not None and rule.peers[1].pod_selector is None
    assert rule.peers[2].pod_selector is not None and rule.peers[2].namespace_selector is None
    assert [(p.protocol, p.port) for p in rule.ports] == [("TCP", 6379)]
    assert pol.spec.egress[0].ports[0].port == 5978


def test_and_versus_or_peers() -> None:
    and_peers = load("and-namespace-pod").spec.ingress[0].peers
    or_peers = load("or-namespace-pod").spec.ingress[0].peers
    assert len(and_peers) == 1
    assert and_peers[0].namespace_selector is not None
    assert and_peers[0].pod_selector is not None
    assert len(or_peers) == 2


@pytest.mark.parametrize(
    ("name", "types"),
    [
        ("default-deny-ingress", ("Ingress",)),
        ("allow-all-ingress", ("Ingress",)),
        ("default-deny-egress", ("Egress",)),
        ("allow-all-egress", ("Egress",)),
        ("default-deny-all", ("Ingress", "Egress")),
        ("and-namespace-pod", ("Ingress",)),  # no policyTypes, no egress rules
        ("namespace-by-name", ("Ingress",)),
    ],
)
def test_effective_policy_types(name: str, types: tuple[str, ...]) -> None:
    assert load(name).effective_policy_types == types


def test_policy_types_default_includes_egress_when_egress_rules_present() -> None:
    doc = yaml.safe_load(DOCS_EXAMPLES["test-network-policy"])
    del doc["spec"]["policyTypes"]
    pol = parse_document(doc)
    assert isinstance(pol, NetworkPolicy)
    assert pol.effective_policy_types == ("Ingress", "Egress")
    assert pol.spec.policy_types == ()


def test_allow_all_rule_is_empty_and_deny_all_has_no_rules() -> None:
    allow = load("allow-all-ingress").spec
    deny = load("default-deny-ingress").spec
    assert len(allow.ingress) == 1 and allow.ingress[0].peers == () and allow.ingress[0].ports == ()
    assert deny.ingress == ()


def test_named_port_and_default_protocol() -> None:
    port = load("namespace-by-name").spec.ingress[0].ports[0]
    assert port.port == "http" and port.protocol == "TCP"
    sel = load("namespace-by-name").spec.ingress[0].peers[0].namespace_selector
    assert isinstance(sel, LabelSelector)
    assert sel.matches({"kubernetes.io/metadata.name": "prod"})


def test_end_port() -> None:
    port = load("multi-port-egress").spec.egress[0].ports[0]
    assert (port.port, port.end_port) == (32000, 32768)


def test_namespace_defaults_to_default() -> None:
    assert load("default-deny-ingress").metadata.namespace == "default"


def test_kubernetes_server_fields_are_dropped() -> None:
    doc = yaml.safe_load(DOCS_EXAMPLES["default-deny-all"])
    doc["metadata"].update(uid="1234", resourceVersion="99", creationTimestamp=None, generation=1)
    doc["status"] = {}
    assert parse_document(doc) == load("default-deny-all")


def test_ipblock_accepts_host_bits_like_kubernetes() -> None:
    doc = yaml.safe_load(DOCS_EXAMPLES["test-network-policy"])
    doc["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] = "10.0.0.7/24"
    pol = parse_document(doc)
    assert isinstance(pol, NetworkPolicy)
    block = pol.spec.egress[0].peers[0].ip_block
    assert block is not None and block.cidr == "10.0.0.7/24"
    assert block.network == ipaddress.ip_network("10.0.0.0/24")


# --- malformed variants: (id, mutation of test-network-policy, path, message fragment) ---------

BASE = yaml.safe_load(DOCS_EXAMPLES["test-network-policy"])
IN0 = ("spec", "ingress", 0)
PEER0 = (*IN0, "from", 0)
PORT0 = (*IN0, "ports", 0)


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


MALFORMED: list[tuple[str, tuple[Any, ...], Any, str, str]] = [
    # id, where to write, value, expected path, message fragment
    ("typo-in-peer", (*IN0, "from", 1), {"podSelectr": {}},
     "spec.ingress[0].from[1].podSelectr", "unknown field"),
    ("empty-peer", PEER0, {}, "spec.ingress[0].from[0]", "must specify a peer"),
    ("ipblock-with-selector", PEER0,
     {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
     "spec.ingress[0].from[0].ipBlock", "may not be combined"),
    ("bad-cidr", (*PEER0, "ipBlock", "cidr"), "172.17.0.0/33",
     "spec.ingress[0].from[0].ipBlock.cidr", "not a valid CIDR"),
    ("cidr-not-a-cidr", (*PEER0, "ipBlock", "cidr"), "172.17.0.1",
     "spec.ingress[0].from[0].ipBlock.cidr", "not a CIDR"),
    ("cidr-missing", (*PEER0, "ipBlock"), {"except": ["172.17.1.0/24"]},
     "spec.ingress[0].from[0].ipBlock.cidr", "required"),
    ("except-outside", (*PEER0, "ipBlock", "except"), ["10.1.0.0/24"],
     "spec.ingress[0].from[0].ipBlock.except[0]", "strictly within"),
    ("except-equal", (*PEER0, "ipBlock", "except"), ["172.17.1.0/24", "172.17.0.0/16"],
     "spec.ingress[0].from[0].ipBlock.except[1]", "strictly within"),
    ("except-other-family", (*PEER0, "ipBlock", "except"), ["fd00::/64"],
     "spec.ingress[0].from[0].ipBlock.except[0]", "same IP family"),
    ("except-not-list", (*PEER0, "ipBlock", "except"), "172.17.1.0/24",
     "spec.ingress[0].from[0].ipBlock.except", "expected a list, got string"),
    ("port-zero", (*PORT0, "port"), 0, "spec.ingress[0].ports[0].port", "between 1 and 65535"),
    ("port-too-big", (*PORT0, "port"), 70000, "spec.ingress[0].ports[0].port", "between"),
    ("port-bool", (*PORT0, "port"), True, "spec.ingress[0].ports[0].port", "got bool"),
    ("port-name-long", (*PORT0, "port"), "a-very-long-name",
     "spec.ingress[0].ports[0].port", "not a valid port name"),
    ("port-name-upper", (*PORT0, "port"), "HTTP", "spec.ingress[0].ports[0].port", "port name"),
    ("port-name-dashes", (*PORT0, "port"), "a--b", "spec.ingress[0].ports[0].port", "port name"),
    ("port-name-digits", (*PORT0, "port"), "8080", "spec.ingress[0].ports[0].port", "port name"),
    ("port-name-edge-dash", (*PORT0, "port"), "-http", "spec.ingress[0].ports[0].port", "name"),
    ("protocol-icmp", (*PORT0, "protocol"), "ICMP",
     "spec.ingress[0].ports[0].protocol", "not one of TCP, UDP, SCTP"),
    ("protocol-lowercase", (*PORT0, "protocol"), "tcp",
     "spec.ingress[0].ports[0].protocol", "not one of"),
    ("endport-without-port", PORT0, {"protocol": "TCP", "endPort": 90},
     "spec.ingress[0].ports[0].endPort", "without port"),
    ("endport-named", PORT0, {"port": "http", "endPort": 90},
     "spec.ingress[0].ports[0].endPort", "named port"),
    ("endport-below-port", PORT0, {"port": 100, "endPort": 90},
     "spec.ingress[0].ports[0].endPort", "less than port"),
    ("policy-type-typo", ("spec", "policyTypes"), ["Ingres"],
     "spec.policyTypes[0]", "not one of Ingress, Egress"),
    ("policy-type-duplicate", ("spec", "policyTypes"), ["Egress", "Egress"],
     "spec.policyTypes[1]", "duplicate"),
    ("in-without-values", ("spec", "podSelector"),
     {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
     "spec.podSelector.matchExpressions[0].values", "must be specified"),
    ("exists-with-values", ("spec", "podSelector"),
     {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
     "spec.podSelector.matchExpressions[0].values", "may not be specified"),
    ("operator-case", ("spec", "podSelector"),
     {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]},
     "spec.podSelector.matchExpressions[0].operator", "not one of"),
    ("expression-missing-key", ("spec", "podSelector"),
     {"matchExpressions": [{"operator": "Exists"}]},
     "spec.podSelector.matchExpressions[0].key", "required"),
    ("bad-label-key", ("spec", "podSelector"), {"matchLabels": {"-role": "db"}},
     "spec.podSelector.matchLabels.-role", "label key"),
    ("bad-label-prefix", ("spec", "podSelector"), {"matchLabels": {"Example.com/a": "db"}},
     "spec.podSelector.matchLabels.Example.com/a", "prefix"),
    ("bad-label-value", ("spec", "podSelector"), {"matchLabels": {"role": "x" * 64}},
     "spec.podSelector.matchLabels.role", "label value"),
    ("label-value-int", (*IN0, "from", 1, "namespaceSelector", "matchLabels"), {"project": 1},
     "spec.ingress[0].from[1].namespaceSelector.matchLabels.project", "expected a string"),
    ("ingress-not-list", ("spec", "ingress"), {"from": []}, "spec.ingress", "expected a list"),
    ("from-in-egress", ("spec", "egress", 0, "from"), [],
     "spec.egress[0].from", "unknown field"),
    ("spec-typo", ("spec", "podselector"), {}, "spec.podselector", "unknown field"),
    ("selector-not-object", ("spec", "podSelector"), "role=db",
     "spec.podSelector", "expected an object, got string"),
    ("namespace-uppercase", ("metadata", "namespace"), "Prod",
     "metadata.namespace", "DNS-1123 label"),
    ("name-too-long", ("metadata", "name"), "a" * 254, "metadata.name", "DNS-1123 subdomain"),
    ("api-version", ("apiVersion",), "l3fabric.io/v1", "apiVersion", "not valid for"),
]


@pytest.mark.parametrize(
    ("where", "value", "path", "fragment"),
    [pytest.param(w, v, p, f, id=i) for i, w, v, p, f in MALFORMED],
)
def test_malformed_is_rejected_with_path(where: tuple[Any, ...], value: Any, path: str,
                                         fragment: str) -> None:
    doc = copy.deepcopy(BASE)
    _set(doc, where, value)
    with pytest.raises(ValidationError) as exc:
        parse_document(doc)
    assert exc.value.path == path, str(exc.value)
    assert fragment in exc.value.message, str(exc.value)
    assert str(exc.value) == f"{path}: {exc.value.message}"


def test_at_least_twenty_malformed_variants() -> None:
    assert len(MALFORMED) >= 20
