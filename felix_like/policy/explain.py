"""The plain semantic evaluator: policy resources and one connection in, a decision with
its reason out (pure).

This is the second, independent statement of the semantics in :mod:`ruleset`: it reads the
resources directly (no sets, chains or marks), so property tests can check that the
rendered program and the semantics agree, and ``fabricctl policy explain`` can say which
policy and rule decided, in the words of the resources.

Semantics (see also :mod:`ruleset`): for each direction, GNPs selecting the endpoint in
ascending order (None last, then by name), first matching Allow/Deny decides, Log goes on,
Pass skips to the namespaced policies, no match falls through; then Kubernetes semantics
(isolated if a NetworkPolicy selecting the pod has that policy type; allowed if any rule of
those policies matches). Egress additionally requires the source address to be the pod's
own (anti-spoofing); ingress from this node's addresses is always allowed.

Staged policies never decide: :func:`decide` leaves them out, and :func:`decide_staged`
answers what would happen were every staged policy promoted (each replacing its enforced
twin of the same name), the question an operator asks before ``fabricctl policy promote``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from dataclasses import dataclass

from datastore import model
from felix_like.policy.program import PROTOCOLS
from felix_like.policy.selection import (
    PolicyInputs,
    entity_selector_matches,
    ep_namespace,
    gnp_order_key,
    gnp_selects,
    ipblock_nets,
    k8s_peer_matches,
    np_selects,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conn:
    """A new connection: ``src_ep``/``dst_ep`` are the endpoints holding the addresses
    (None: an address outside every pod). ``sport`` matters only for GNP source ports."""

    src: str
    dst: str
    proto: int
    dport: int | None = None
    sport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    src_ep: model.WorkloadEndpoint | None = None
    dst_ep: model.WorkloadEndpoint | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    policy: str | None = None  # "gnp/NAME" or "np/NS/NAME"
    rule: str | None = None  # "ingress[0]" ...


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    egress: Decision | None  # None: the source is not a policed pod of ours
    ingress: Decision | None


def find_endpoint(inputs: PolicyInputs, ip: str) -> model.WorkloadEndpoint | None:
    addr = ipaddress.ip_address(ip)
    for wep in inputs.endpoints:
        if any(addr in n for n in wep.spec.ip_networks):
            return wep
    return None


def _in(ip: str, nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    a = ipaddress.ip_address(ip)
    return any(a in n for n in nets)


def _named_port(ep: model.WorkloadEndpoint | None, name: str, proto: int) -> int | None:
    if ep is None:
        return None
    for p in ep.spec.ports:
        if p.name == name and PROTOCOLS[p.protocol] == proto:
            return p.port
    return None


# --- NetworkPolicy -----------------------------------------------------------------------


def _k8s_rule_matches(inputs: PolicyInputs, policy: model.NetworkPolicy,
                      rule: model.NetworkPolicyRule, conn: Conn, direction: str) -> bool:
    ns = policy.metadata.namespace or "default"
    peer_ip = conn.src if direction == "ingress" else conn.dst
    peer_ep = conn.src_ep if direction == "ingress" else conn.dst_ep
    if rule.peers:
        hit = False
        for peer in rule.peers:
            if peer.ip_block is not None:
                hit = _in(peer_ip, ipblock_nets(peer.ip_block))
            else:
                hit = peer_ep is not None and k8s_peer_matches(inputs, ns, peer, peer_ep)
            if hit:
                break
        if not hit:
            return False
    if not rule.ports:
        return True
    for port in rule.ports:
        if PROTOCOLS[port.protocol] != conn.proto:
            continue
        if port.port is None:
            return True
        if isinstance(port.port, str):
            # Resolved on the destination pod, whichever direction is being evaluated.
            if conn.dport is not None and _named_port(conn.dst_ep, port.port,
                                                      conn.proto) == conn.dport:
                return True
            continue
        hi = port.end_port if port.end_port is not None else port.port
        if conn.dport is not None and port.port <= conn.dport <= hi:
            return True
    return False


# --- GlobalNetworkPolicy -----------------------------------------------------------------


def _ports_match(ports: tuple[model.PortMatch, ...], port: int | None,
                 ep: model.WorkloadEndpoint | None, proto: int) -> bool:
    for p in ports:
        if p.name is not None:
            if port is not None and _named_port(ep, p.name, proto) == port:
                return True
        elif port is not None and p.first <= port <= p.last:
            return True
    return False


def _entity_matches(inputs: PolicyInputs, ent: model.EntityRule, ip: str,
                    ep: model.WorkloadEndpoint | None, port: int | None, proto: int) -> bool:
    version = ipaddress.ip_address(ip).version
    has_selector = ent.selector is not None or ent.namespace_selector is not None
    if has_selector and (ep is None or not entity_selector_matches(
            inputs, ent.selector, ent.namespace_selector, ep)):
        return False
    if ent.not_selector is not None and ep is not None and entity_selector_matches(
            inputs, ent.not_selector, None, ep):
        return False
    if ent.nets and not _in(ip, ent.nets):
        return False
    if ent.not_nets and any(n.version == version for n in ent.not_nets) and _in(ip,
                                                                               ent.not_nets):
        return False
    if ent.ports and not _ports_match(ent.ports, port, ep, proto):
        return False
    return not (ent.not_ports and _ports_match(ent.not_ports, port, ep, proto))


def _calico_rule_matches(inputs: PolicyInputs, r: model.Rule, conn: Conn) -> bool:
    if r.protocol is not None:
        number = PROTOCOLS[r.protocol] if isinstance(r.protocol, str) else r.protocol
        if number != conn.proto:
            return False
        if r.icmp is not None and r.icmp.type is not None:
            if conn.icmp_type != r.icmp.type:
                return False
            if r.icmp.code is not None and conn.icmp_code != r.icmp.code:
                return False
    return _entity_matches(inputs, r.source, conn.src, conn.src_ep, conn.sport,
                           conn.proto) and _entity_matches(
        inputs, r.destination, conn.dst, conn.dst_ep, conn.dport, conn.proto)


# --- one direction -----------------------------------------------------------------------


def decide_direction(inputs: PolicyInputs, wep: model.WorkloadEndpoint, direction: str,
                     conn: Conn) -> Decision:
    """``direction`` is "ingress" (``wep`` is the destination) or "egress" (the source)."""
    typ = "Ingress" if direction == "ingress" else "Egress"
    if direction == "egress" and not _in(conn.src, wep.spec.ip_networks):
        return Decision(False, f"anti-spoofing: {conn.src} is not an address of this pod")
    if direction == "ingress" and conn.src in inputs.host_addresses:
        return Decision(True, "traffic from this node is always allowed")
    gnps = sorted((g for g in inputs.global_policies if gnp_selects(inputs, g, wep)),
                  key=gnp_order_key)
    for g in gnps:
        if typ not in g.spec.effective_types:
            continue
        rules = g.spec.ingress if direction == "ingress" else g.spec.egress
        passed = False
        for i, r in enumerate(rules):
            if not _calico_rule_matches(inputs, r, conn):
                continue
            where = f"{direction}[{i}]"
            pol = f"gnp/{g.metadata.name}"
            if r.action == "Allow":
                return Decision(True, f"{pol} {where} Allow matches", pol, where)
            if r.action == "Deny":
                return Decision(False, f"{pol} {where} Deny matches", pol, where)
            if r.action == "Pass":
                passed = True
                break
        if passed:
            break
    nps = [p for p in inputs.policies if np_selects(p, wep) and typ in p.effective_policy_types]
    if not nps:
        return Decision(True, f"no NetworkPolicy isolates this pod for {direction}")
    for p in nps:
        rules_k = p.spec.ingress if direction == "ingress" else p.spec.egress
        for i, rule in enumerate(rules_k):
            if _k8s_rule_matches(inputs, p, rule, conn, direction):
                pol = f"np/{p.metadata.namespace or 'default'}/{p.metadata.name}"
                return Decision(True, f"{pol} {direction}[{i}] allows it", pol,
                                f"{direction}[{i}]")
    names = ", ".join(f"{p.metadata.namespace}/{p.metadata.name}" for p in nps)
    return Decision(False, f"isolated for {direction} by {names}; no rule allows it")


def _staged(p: object) -> bool:
    return isinstance(p, model.StagedNetworkPolicy | model.StagedGlobalNetworkPolicy)


def enforced(inputs: PolicyInputs) -> PolicyInputs:
    """``inputs`` without its staged policies."""
    if not any(map(_staged, (*inputs.policies, *inputs.global_policies))):
        return inputs
    return dataclasses.replace(
        inputs, policies=tuple(p for p in inputs.policies if not _staged(p)),
        global_policies=tuple(g for g in inputs.global_policies if not _staged(g)))


def promoted(inputs: PolicyInputs) -> PolicyInputs | None:
    """``inputs`` with every staged policy enforced in place of its twin; None when there
    is no staged policy."""
    staged = [p for p in (*inputs.policies, *inputs.global_policies)
              if isinstance(p, model.StagedNetworkPolicy | model.StagedGlobalNetworkPolicy)]
    if not staged:
        return None
    twins = {model.key_for(p.promoted()): p.promoted() for p in staged}
    nps = {model.key_for(p): p for p in inputs.policies if not _staged(p)}
    gnps = {model.key_for(g): g for g in inputs.global_policies if not _staged(g)}
    for key, twin in twins.items():
        if isinstance(twin, model.GlobalNetworkPolicy):
            gnps[key] = twin
        else:
            nps[key] = twin
    return dataclasses.replace(inputs, policies=tuple(nps[k] for k in sorted(nps)),
                               global_policies=tuple(gnps.values()))


def decide_staged(inputs: PolicyInputs, conn: Conn) -> Verdict | None:
    """The verdict were the staged policies enforced; None when there are none."""
    preview = promoted(inputs)
    return None if preview is None else decide(preview, conn)


def decide(inputs: PolicyInputs, conn: Conn) -> Verdict:
    """Both directions for a new connection, as the cluster would enforce it: egress at the
    source pod (if it is a pod) and ingress at the destination pod (if it is one)."""
    inputs = enforced(inputs)
    src_ep = conn.src_ep or find_endpoint(inputs, conn.src)
    dst_ep = conn.dst_ep or find_endpoint(inputs, conn.dst)
    conn = Conn(conn.src, conn.dst, conn.proto, conn.dport, conn.sport, conn.icmp_type,
                conn.icmp_code, src_ep, dst_ep)
    egress = decide_direction(inputs, src_ep, "egress", conn) if src_ep else None
    ingress = decide_direction(inputs, dst_ep, "ingress", conn) if dst_ep else None
    ok = (egress is None or egress.allowed) and (ingress is None or ingress.allowed)
    return Verdict(ok, egress, ingress)


def selecting_policies(inputs: PolicyInputs, wep: model.WorkloadEndpoint) -> list[dict[str, str]]:
    """Every policy that selects ``wep``, in evaluation order, with the directions it
    applies to (for ``explain``)."""
    out: list[dict[str, str]] = []
    for g in sorted(inputs.global_policies, key=gnp_order_key):
        if gnp_selects(inputs, g, wep):
            out.append({"policy": f"{'sgnp' if _staged(g) else 'gnp'}/{g.metadata.name}",
                        "order": "" if g.spec.order is None else f"{g.spec.order:g}",
                        "types": ",".join(g.spec.effective_types)})
    for p in inputs.policies:
        if np_selects(p, wep):
            kind = "snp" if _staged(p) else "np"
            out.append({"policy": f"{kind}/{ep_namespace(wep)}/{p.metadata.name}", "order": "",
                        "types": ",".join(p.effective_policy_types)})
    return out
