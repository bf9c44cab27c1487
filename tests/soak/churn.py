"""What the soak writes as an operator and an orchestrator would: random but valid
NetworkPolicies, GlobalNetworkPolicies, pod labels and namespace labels, from the soak's
seeded random generator (the same seed writes the same documents).

Every document is checked against the datastore model before it is written, so a
mismatch at a settle point is the fabric's, never a document the agent had to reject.
"""

from __future__ import annotations

import random
from typing import Any

from datastore import model

from .lab import API, NAMESPACES
from .prober import TCP_PORT, UDP_PORT

ROLES = ("web", "db", "cache")
TEAMS = ("a", "b", "c")
NP_NAMES = ("np0", "np1", "np2")
GNP_NAMES = ("g0", "g1", "g2")
PORTS = ((("TCP", TCP_PORT), ("UDP", UDP_PORT), ("TCP", 9999)))


def _port(rng: random.Random) -> dict[str, Any]:
    proto, port = rng.choice(PORTS)
    return {"protocol": proto, "port": port}


def _peer(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(("pod", "ns", "both"))
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = {"matchLabels": {"role": rng.choice(ROLES)}}
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = ({} if rng.random() < 0.3 else
                                     {"matchLabels": {"team": rng.choice(TEAMS)}})
    return peer


def _k8s_rule(rng: random.Random, peers_field: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.7:
        rule[peers_field] = [_peer(rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.5:
        rule["ports"] = [_port(rng)]
    return rule


def network_policy(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    types = rng.choice((["Ingress"], ["Ingress"], ["Egress"], ["Ingress", "Egress"]))
    spec: dict[str, Any] = {
        "podSelector": ({} if rng.random() < 0.25 else
                        {"matchLabels": {"role": rng.choice(ROLES)}}),
        "policyTypes": types,
    }
    for t in types:
        direction, peers = ("ingress", "from") if t == "Ingress" else ("egress", "to")
        spec[direction] = [_k8s_rule(rng, peers) for _ in range(rng.randint(0, 2))]
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec}
    model.parse_document(doc)
    return doc


def _selector(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return "all()"
    role = rng.choice(ROLES)
    return f'role != "{role}"' if r < 0.3 else f'role == "{role}"'


def _calico_rule(rng: random.Random, direction: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": rng.choice(("Allow", "Deny", "Deny", "Pass", "Log"))}
    peer_side = "source" if direction == "ingress" else "destination"
    if rng.random() < 0.6:
        rule[peer_side] = {"selector": _selector(rng)}
    if rng.random() < 0.4:
        proto, port = rng.choice(PORTS)
        rule["protocol"] = proto
        rule.setdefault("destination", {})["ports"] = [port]
    return rule


def global_policy(rng: random.Random, name: str) -> dict[str, Any]:
    types = rng.choice((["Ingress"], ["Egress"], ["Ingress", "Egress"]))
    spec: dict[str, Any] = {"order": rng.randint(1, 9), "selector": _selector(rng),
                            "types": types}
    for t in types:
        direction = t.lower()
        spec[direction] = [_calico_rule(rng, direction) for _ in range(rng.randint(1, 2))]
    doc = {"apiVersion": API, "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
           "spec": spec}
    model.parse_document(doc)
    return doc


def namespace(rng: random.Random, ns: str) -> dict[str, Any]:
    labels = dict(NAMESPACES[ns])
    labels["team"] = rng.choice(TEAMS)
    doc = {"apiVersion": API, "kind": "Namespace",
           "metadata": {"name": ns, "labels": labels}}
    model.parse_document(doc)
    return doc


def pod_labels(rng: random.Random) -> dict[str, str]:
    return {"role": rng.choice(ROLES)}
