"""An independent statement of the policy semantics, for the soak's reachability check.

It reads the raw JSON of the resources in etcd (WorkloadEndpoints, Namespaces,
NetworkPolicies, GlobalNetworkPolicies) and decides whether a new TCP or UDP connection
from one pod to another is allowed. It shares no code with the agent's policy engine
(``felix_like.policy``) or its model parsing: it is written from the documented semantics
(docs/architecture.md §9, the Kubernetes NetworkPolicy reference, Calico's policy order):

* per direction (egress at the source pod, ingress at the destination), the
  GlobalNetworkPolicies selecting the pod, by ascending ``order`` (absent last, then by
  name), and only those whose ``types`` hold the direction: the first rule that matches
  decides if it is Allow or Deny; Pass skips to the Kubernetes policies; Log goes on; a
  policy with no matching rule falls through to the next;
* then Kubernetes: a pod selected by a NetworkPolicy of its namespace having that policy
  type is isolated in that direction and the connection must match some rule of one of
  those policies; a pod selected by none is open.

It covers what the soak's generator writes (`soak.churn`): matchLabels selectors, peers
by pod and namespace selector, TCP/UDP ports, and Calico selectors of the forms
``all()``, ``has(k)``, ``k == "v"`` and ``k != "v"``. Anything else raises, so a
generator change cannot be silently misjudged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_EQ = re.compile(r'^\s*([A-Za-z0-9_./-]+)\s*(==|!=)\s*"([^"]*)"\s*$')
_HAS = re.compile(r"^\s*has\(([A-Za-z0-9_./-]+)\)\s*$")


class Unsupported(ValueError):
    pass


def calico_selects(expr: str | None, labels: dict[str, str]) -> bool:
    if expr is None or expr.strip() in ("", "all()"):
        return True
    m = _EQ.match(expr)
    if m:
        k, op, v = m.groups()
        return (labels.get(k) == v) if op == "==" else (labels.get(k) != v)
    m = _HAS.match(expr)
    if m:
        return m.group(1) in labels
    raise Unsupported(f"selector {expr!r}")


def label_selects(sel: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    sel = sel or {}
    if set(sel) - {"matchLabels"}:
        raise Unsupported(f"label selector {sel}")
    return all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items())


@dataclass(frozen=True)
class Pod:
    key: str  # "<ns>/<pod>"
    namespace: str
    labels: dict[str, str] = field(hash=False)


@dataclass
class World:
    """The resources in force (raw JSON objects, as read from etcd)."""

    namespaces: dict[str, dict[str, str]]
    netpols: list[dict[str, Any]]
    gnps: list[dict[str, Any]]

    def ns_labels(self, ns: str) -> dict[str, str]:
        return {**self.namespaces.get(ns, {}), "kubernetes.io/metadata.name": ns}

    # -- Kubernetes ---------------------------------------------------------------------

    def _peer_matches(self, policy_ns: str, peer: dict[str, Any], other: Pod) -> bool:
        if set(peer) - {"podSelector", "namespaceSelector"}:
            raise Unsupported(f"peer {peer}")
        if "namespaceSelector" in peer:
            if not label_selects(peer["namespaceSelector"], self.ns_labels(other.namespace)):
                return False
        elif other.namespace != policy_ns:
            return False
        return "podSelector" not in peer or label_selects(peer["podSelector"], other.labels)

    @staticmethod
    def _ports_match(ports: list[dict[str, Any]] | None, proto: str, port: int) -> bool:
        if not ports:
            return True
        for p in ports:
            if set(p) - {"protocol", "port"}:
                raise Unsupported(f"port {p}")
            if p.get("protocol", "TCP").lower() != proto:
                continue
            if "port" not in p or p["port"] == port:
                return True
        return False

    def _k8s(self, pod: Pod, other: Pod, direction: str, proto: str, port: int) -> bool:
        typ = "Ingress" if direction == "ingress" else "Egress"
        peers_field = "from" if direction == "ingress" else "to"
        isolated = False
        for np in self.netpols:
            spec = np.get("spec", {})
            ns = np.get("metadata", {}).get("namespace")
            if ns != pod.namespace or not label_selects(spec.get("podSelector"), pod.labels):
                continue
            if "policyTypes" not in spec:
                raise Unsupported("policy without policyTypes")
            if typ not in spec["policyTypes"]:
                continue
            isolated = True
            for rule in spec.get(direction) or []:
                peers = rule.get(peers_field) or []
                if peers and not any(self._peer_matches(ns, p, other) for p in peers):
                    continue
                if self._ports_match(rule.get("ports"), proto, port):
                    return True
        return not isolated

    # -- GlobalNetworkPolicy ------------------------------------------------------------

    @staticmethod
    def _entity_matches(ent: dict[str, Any] | None, pod: Pod, port: int | None,
                        proto: str) -> bool:
        ent = ent or {}
        if set(ent) - {"selector", "ports"}:
            raise Unsupported(f"entity {ent}")
        if "selector" in ent and not calico_selects(ent["selector"], pod.labels):
            return False
        return "ports" not in ent or (port is not None and port in ent["ports"])

    def _gnp(self, pod: Pod, src: Pod, dst: Pod, direction: str, proto: str,
             port: int) -> bool | None:
        """True/False when a GNP decides, None to go on to the Kubernetes policies."""
        typ = "Ingress" if direction == "ingress" else "Egress"
        chosen = [g for g in self.gnps
                  if calico_selects(g.get("spec", {}).get("selector"), pod.labels)]
        chosen.sort(key=lambda g: (g["spec"].get("order") is None,
                                   g["spec"].get("order") or 0, g["metadata"]["name"]))
        for g in chosen:
            spec = g["spec"]
            if "types" not in spec:
                raise Unsupported("GNP without types")
            if typ not in spec["types"]:
                continue
            for r in spec.get(direction) or []:
                if set(r) - {"action", "protocol", "source", "destination"}:
                    raise Unsupported(f"rule {r}")
                if "protocol" in r and r["protocol"].lower() != proto:
                    continue
                if not self._entity_matches(r.get("source"), src, None, proto):
                    continue
                if not self._entity_matches(r.get("destination"), dst, port, proto):
                    continue
                action = r["action"]
                if action == "Allow":
                    return True
                if action == "Deny":
                    return False
                if action == "Pass":
                    return None
                if action != "Log":
                    raise Unsupported(f"action {action}")
        return None

    # -- a connection ---------------------------------------------------------------------

    def direction_allows(self, pod: Pod, src: Pod, dst: Pod, direction: str, proto: str,
                         port: int) -> bool:
        decided = self._gnp(pod, src, dst, direction, proto, port)
        if decided is not None:
            return decided
        other = src if direction == "ingress" else dst
        return self._k8s(pod, other, direction, proto, port)

    def allows(self, src: Pod, dst: Pod, proto: str, port: int) -> bool:
        return (self.direction_allows(src, src, dst, "egress", proto, port)
                and self.direction_allows(dst, src, dst, "ingress", proto, port))
