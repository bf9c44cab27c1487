"""Policy calculation: datastore resources in, a backend-neutral ruleset out (pure).

Owned here: the meaning of NetworkPolicy and GlobalNetworkPolicy on this node, expressed as
a small packet-filter program (:class:`Ruleset`) that the nftables and iptables backends
render and :mod:`felix_like.policy.interp` evaluates. Nothing here does I/O.

Shape of the program (both backends render exactly this)::

    forward/input hook:  ct state established,related accept       (replies always allowed)
                         iif fab*  -> from-pods: iif -> goto fo-<if>, else drop  (fail closed)
                         oif fab*  -> to-pods:   oif -> goto fi-<if>, else drop  (forward only)
    fo-<if> (egress of the pod):   anti-spoofing (source must be one of the pod's addresses)
                                   per GNP selecting it, ascending order:
                                       jump p-<gnp>; allowed -> return; passed -> goto fon-<if>
                                   goto fon-<if>
    fon-<if>:  isolated: jump p-<np> ...; allowed -> return; drop   | not isolated: return
    fi-<if> / fin-<if>: the same for ingress, after "source is one of the node's addresses
                        -> return" (traffic from the pod's own node is always allowed).

Policy chains (``p…``) are shared by every endpoint a policy selects; "allowed" and "passed"
are marks (``MARK_ALLOW``/``MARK_PASS``) set by the policy chain before it returns, because a
verdict in the egress chain must not end evaluation before the ingress chain has run.

Invariants:

* Selectors become named address sets whose name is a hash of the selector's canonical form:
  equal selectors share one set, and the set of a selector exists (in both families) for as
  long as a rendered policy uses it. Adding or removing a pod therefore changes set elements,
  the dispatch maps and the pod's own chains, never another chain's rules.
* Named ports are a set of ``(address, protocol, port)`` per port name, cluster-wide: a rule
  matches ``daddr . l4proto . dport`` against it, which resolves the name per destination pod
  in both directions while policy chains stay shared.
* Only policies that select a local endpoint are rendered (and only their sets).

Semantics chosen where Kubernetes and Calico leave room (``explain`` reports them the same
way):

* A GNP whose rules do not match falls through to the next GNP and then to the namespaced
  policies: GNPs add no implicit deny. ``Pass`` skips the remaining GNPs.
* Isolation (default deny for a direction) comes from NetworkPolicies only, per Kubernetes.
* GNP selectors see the pod's labels plus ``projectcalico.org/namespace: <ns>``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datastore import model
from datastore.calico_selector import Selector
from datastore.labelselector import LabelSelector
from felix_like.owned import HOST_IF_PREFIX
from felix_like.policy.program import (
    ALLOW,
    CLEAR,
    COUNT,
    DROP,
    HOST_SETS,
    MARK_ALLOW,
    MARK_PASS,
    PASS,
    PROTOCOLS,
    RETURN,
    STAGED_ALLOW,
    STAGED_VERDICTS,
    WOULD,
    Addr,
    Counted,
    Family,
    Icmp,
    LocalEndpoint,
    Marked,
    Match,
    NamedPort,
    Ports,
    Proto,
    Rule,
    Ruleset,
    SetSpec,
    Verdict,
    with_flow_logs,
)
from felix_like.policy.selection import (
    Net,
    PolicyInputs,
    ep_namespace,
    filler_matches,
    fixed_elements,
    gnp_order_key,
    gnp_selects,
    inputs_from_state,
    ipblock_nets,
    member_elements,
    normalize_nets,
    np_selects,
)
from felix_like.policy.staged import (
    ShadowNetworkPolicy,
    split_staged,
    staged_chains,
    staged_head,
)

log = logging.getLogger(__name__)

# What callers outside the policy package read from here: the calculation, its inputs and
# its result (the rest of the model lives in program.py and selection.py).
__all__ = [
    "PROTOCOLS",
    "PolicyInputs",
    "Ruleset",
    "calculate",
    "endpoint_chains",
    "filler_matches",
    "fixed_elements",
    "gnp_chain_name",
    "inputs_from_state",
    "member_elements",
    "np_chain_name",
    "policy_program",
]


# (kind, policy, direction) -> (chain name, rules, sets it uses); see _Builder._cached_chain.
_Program = tuple[str, tuple[Rule, ...], tuple[tuple[str, SetSpec, Any], ...]]
_PROGRAMS: dict[tuple[Any, ...], tuple[Any, _Program]] = {}


def _hash(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:12]


def _canon_k8s(sel: LabelSelector | None) -> str:
    return "-" if sel is None else json.dumps(sel.to_dict(), sort_keys=True)


# --- the calculation -------------------------------------------------------------------------


class _Builder:
    def __init__(self, inputs: PolicyInputs) -> None:
        self.inputs = inputs
        self.rs = Ruleset()
        # set name -> the endpoint predicate or fixed elements that fill it
        self.fillers: dict[str, Any] = {}
        self._recording: list[tuple[str, SetSpec, Any]] | None = None
        self.gnps = sorted(inputs.global_policies, key=gnp_order_key)
        self.np_by_ns: dict[str, list[model.NetworkPolicy]] = {}
        for p in inputs.policies:
            self.np_by_ns.setdefault(p.metadata.namespace or "default", []).append(p)

    # sets -------------------------------------------------------------------------------

    def _set(self, prefix: str, version: int, kind: str, what: str, filler: Any) -> str:
        name = f"{prefix}{version}-{_hash(what)}"
        spec = SetSpec(name, version, kind, what)
        if self._recording is not None:
            self._recording.append((name, spec, filler))
        if name not in self.rs.sets:
            self.rs.sets[name] = spec
            self.fillers[name] = filler
        return name

    def _cached_chain(self, key: tuple[Any, ...], build: Any) -> str:
        """Policy chains depend only on the policy: render each (policy, direction) once
        and replay its chain and sets on later calculations."""
        # Keyed by the policy object's identity (the agent's mirror keeps an object until
        # its key changes); the entry holds the object, so the id cannot be reused.
        ikey = (key[0], id(key[1]), key[2], self.inputs.log_allowed)
        entry = _PROGRAMS.get(ikey)
        hit = entry[1] if entry is not None and entry[0] is key[1] else None
        if hit is None:
            hit = self.record(build)
            if len(_PROGRAMS) > 20000:
                _PROGRAMS.clear()
            _PROGRAMS[ikey] = (key[1], hit)
        name, rules, sets = hit
        self.rs.chains[name] = rules
        for set_name, spec, filler in sets:
            if set_name not in self.rs.sets:
                self.rs.sets[set_name] = spec
                self.fillers[set_name] = filler
        return name

    def record(self, build: Any) -> _Program:
        """Run ``build`` (-> chain name, rules) and note every set it asked for."""
        outer, self._recording = self._recording, []
        try:
            name, rules = build()
            return name, rules, tuple(self._recording)
        finally:
            self._recording = outer

    def k8s_peer_set(self, policy_ns: str, peer: model.NetworkPolicyPeer, version: int) -> str:
        if peer.namespace_selector is None:
            what = f"k8s ns={policy_ns} pods={_canon_k8s(peer.pod_selector)}"
        else:
            what = (f"k8s nsSelector={_canon_k8s(peer.namespace_selector)} "
                    f"pods={_canon_k8s(peer.pod_selector)}")
        return self._set("s", version, "net", what, ("k8s", policy_ns, peer))

    def calico_set(self, sel: Selector | None, nsel: Selector | None, version: int) -> str:
        what = f"selector={sel if sel is not None else '-'} nsSelector={nsel or '-'}"
        return self._set("s", version, "net", what, ("calico", sel, nsel))

    def nets_set(self, nets: tuple[Net, ...], version: int) -> str:
        fam = tuple(n for n in nets if n.version == version)
        what = "nets " + ",".join(str(n) for n in fam)
        return self._set("b", version, "net", what, ("nets", fam))

    def port_set(self, name: str, version: int) -> str:
        return self._set("n", version, "port", f"port {name}", ("port", name))

    def fill_sets(self) -> None:
        eps = self.inputs.endpoints
        # Membership of selector sets depends only on (namespace, labels): group pods.
        groups: dict[tuple[str, Mapping[str, str]], list[model.WorkloadEndpoint]] = {}
        for wep in eps:
            groups.setdefault((ep_namespace(wep), wep.spec.labels), []).append(wep)
        for name, spec in self.rs.sets.items():
            filler = self.fillers[name]
            kind = filler[0]
            elems: set[Any] = set()
            if kind == "nets":
                elems = set(fixed_elements(filler))
            elif kind == "port":
                for wep in eps:
                    elems.update(member_elements(filler, spec.version, wep))
            else:
                for members in groups.values():
                    if filler_matches(self.inputs, filler, members[0]):
                        for m in members:
                            elems.update(member_elements(filler, spec.version, m))
            self.rs.elements[name] = frozenset(elems)

    # NetworkPolicy ----------------------------------------------------------------------

    def np_chain(self, p: model.NetworkPolicy | DefaultDeny, direction: str) -> str:
        return self._cached_chain(("np", p, direction), lambda: self._np_chain(p, direction))

    def _np_chain(self, p: model.NetworkPolicy | DefaultDeny,
                  direction: str) -> tuple[str, tuple[Rule, ...]]:
        if isinstance(p, DefaultDeny):
            return p.chain(direction)
        ns = p.metadata.namespace or "default"
        name = np_chain_name(p, direction)
        staged = isinstance(p, model.StagedNetworkPolicy)
        kind, allow = ("snp", STAGED_ALLOW) if staged else ("np", ALLOW)
        counts = not isinstance(p, ShadowNetworkPolicy)  # counted in its own chain
        if not counts:
            kind = "np"  # an enforced policy, as the staged pipeline sees it
        rules: list[Rule] = []
        src_or_dst = "src" if direction == "in" else "dst"
        k8s_rules = p.spec.ingress if direction == "in" else p.spec.egress
        for i, r in enumerate(k8s_rules):
            comment = f"{kind}/{ns}/{p.metadata.name} {direction}gress[{i}]"
            counted = Counted(kind, ns, p.metadata.name, f"{direction}gress", i,
                              "would-allow" if staged else "allow")
            peers: list[tuple[Match, ...] | None] = []
            if not r.peers:
                peers = [None]
            for peer in r.peers:
                if peer.ip_block is not None:
                    nets = ipblock_nets(peer.ip_block)
                    v = peer.ip_block.network.version
                    peers.append((Addr(src_or_dst, v, self.nets_set(nets, v)),))
                else:
                    for v in (4, 6):
                        peers.append((Addr(src_or_dst, v, self.k8s_peer_set(ns, peer, v)),))
            ports: list[tuple[Match, ...] | None] = [None] if not r.ports else []
            for port in r.ports:
                proto = Proto(PROTOCOLS[port.protocol])
                if port.port is None:
                    ports.append((proto,))
                elif isinstance(port.port, str):
                    for v in (4, 6):
                        ports.append((Family(v), proto,
                                      NamedPort("dst", v, self.port_set(port.port, v))))
                else:
                    hi = port.end_port if port.end_port is not None else port.port
                    ports.append((proto, Ports("dst", ((port.port, hi),))))
            for pm in peers:
                for tm in ports:
                    matches = (*(pm or ()), *(tm or ()))
                    if not _consistent(matches):
                        continue
                    rules.append(Rule(_with_family(matches), allow, comment,
                                      counted if counts else None))
        return name, tuple(with_flow_logs(rules, self.inputs.log_allowed))

    # GlobalNetworkPolicy ----------------------------------------------------------------

    def gnp_chain(self, g: model.GlobalNetworkPolicy, direction: str) -> str:
        return self._cached_chain(("gnp", g, direction), lambda: self._gnp_chain(g, direction))

    def _gnp_chain(self, g: model.GlobalNetworkPolicy,
                   direction: str) -> tuple[str, tuple[Rule, ...]]:
        name = gnp_chain_name(g, direction)
        rules: list[Rule] = []
        gnp_rules = g.spec.ingress if direction == "in" else g.spec.egress
        staged = isinstance(g, model.StagedGlobalNetworkPolicy)
        kind = "sgnp" if staged else "gnp"
        for i, r in enumerate(gnp_rules):
            comment = f"{kind}/{g.metadata.name} {direction}gress[{i}] {r.action}"
            action = r.action.lower()
            counted = Counted(kind, "", g.metadata.name, f"{direction}gress", i,
                              WOULD[action] if staged else action)
            verdict = {"Allow": ALLOW, "Deny": DROP, "Pass": PASS}.get(
                r.action, Verdict("log", f"l3fabric {g.metadata.name[:20]}: "))
            if staged:  # counted, never enforced: the staged pipeline's own marks
                verdict = STAGED_VERDICTS.get(r.action, COUNT)
            for matches in self._calico_rule(r):
                rules.append(Rule(matches, verdict, comment, counted))
        return name, tuple(with_flow_logs(rules, self.inputs.log_allowed))

    def _calico_rule(self, r: model.Rule) -> list[tuple[Match, ...]]:
        """A Calico rule as alternative match tuples (their OR)."""
        base: list[Match] = []
        versions: tuple[int, ...] = (4, 6)
        if r.protocol is not None:
            number = PROTOCOLS[r.protocol] if isinstance(r.protocol, str) else r.protocol
            base.append(Proto(number))
            if number == 1:
                versions = (4,)
            elif number == 58:
                versions = (6,)
            if r.icmp is not None and r.icmp.type is not None:
                base.append(Icmp(4 if number == 1 else 6, r.icmp.type, r.icmp.code))
        family_specific = any(
            e.selector is not None or e.namespace_selector is not None
            or e.not_selector is not None or e.nets or e.not_nets
            or any(p.name for p in (*e.ports, *e.not_ports))
            for e in (r.source, r.destination))
        out: list[tuple[Match, ...]] = []
        for v in versions:
            alts: list[tuple[Match, ...]] = [tuple(base)]
            for side, ent in (("src", r.source), ("dst", r.destination)):
                alts = [a + b for a in alts for b in self._entity(side, ent, v)]
            for a in alts:
                # A rule without addresses is the same in both families; any other rule
                # is rendered per family (a family's part may be empty: notNets of v4 only).
                if family_specific:
                    a = (Family(v), *a)
                if _consistent(a) and _with_family(a) not in out:
                    out.append(_with_family(a))
        return out

    def _entity(self, side: str, ent: model.EntityRule, v: int) -> list[tuple[Match, ...]]:
        must: list[Match] = []
        if ent.selector is not None or ent.namespace_selector is not None:
            must.append(Addr(side, v, self.calico_set(ent.selector, ent.namespace_selector, v)))
        if ent.not_selector is not None:
            must.append(Addr(side, v, self.calico_set(ent.not_selector, None, v), negate=True))
        if ent.nets:
            if not any(n.version == v for n in ent.nets):
                return []
            must.append(Addr(side, v, self.nets_set(normalize_nets(ent.nets), v)))
        if ent.not_nets and any(n.version == v for n in ent.not_nets):
            must.append(Addr(side, v, self.nets_set(normalize_nets(ent.not_nets), v),
                             negate=True))
        for p in ent.not_ports:
            if p.name is not None:
                must.append(NamedPort(side, v, self.port_set(p.name, v), negate=True))
        numeric_not = tuple((p.first, p.last) for p in ent.not_ports if p.name is None)
        if numeric_not:
            must.append(Ports(side, numeric_not, negate=True))
        if not ent.ports:
            return [tuple(must)]
        alts: list[tuple[Match, ...]] = []
        numeric = tuple((p.first, p.last) for p in ent.ports if p.name is None)
        if numeric:
            alts.append((*must, Ports(side, numeric)))
        for p in ent.ports:
            if p.name is not None:
                alts.append((*must, NamedPort(side, v, self.port_set(p.name, v))))
        return alts

    # endpoints --------------------------------------------------------------------------

    def endpoint(self, key: str, wep: model.WorkloadEndpoint) -> None:
        inputs = self.inputs
        gnps = [g for g in self.gnps if gnp_selects(inputs, g, wep)]
        nps = [p for p in self.np_by_ns.get(ep_namespace(wep), ()) if np_selects(p, wep)]
        chains, local = endpoint_chains(key, wep, gnps, nps, self.gnp_chain, self.np_chain)
        self.rs.chains.update(chains)
        self.rs.from_pod[local.iface] = f"fo-{local.iface}"
        self.rs.to_pod[local.iface] = f"fi-{local.iface}"
        self.rs.endpoints[local.iface] = local


@dataclass(frozen=True)
class DefaultDeny:
    """A namespace's default deny for one direction (``Ingress``/``Egress``): one chain
    shared by its isolated pods (``d…``: flow log, counter, drop), so a pod's own chains
    hold no counted rule and a pod add adds one ``goto`` per direction."""

    namespace: str
    typ: str

    def chain(self, direction: str) -> tuple[str, tuple[Rule, ...]]:
        counted = Counted("default-deny", self.namespace, "", self.typ.lower(), None, "deny")
        return np_chain_name(self, direction), tuple(with_flow_logs([Rule(
            (), DROP, f"{self.typ.lower()} isolated: no policy allowed it", counted)]))


_DEFAULT_DENIES: dict[tuple[str, str], DefaultDeny] = {}


def default_deny(namespace: str, typ: str) -> DefaultDeny:
    """One object per namespace and direction (its chain is rendered once)."""
    return _DEFAULT_DENIES.setdefault((namespace, typ), DefaultDeny(namespace, typ))


def np_chain_name(p: model.NetworkPolicy | DefaultDeny, direction: str) -> str:
    if isinstance(p, DefaultDeny):
        return f"d{direction[0]}-{_hash('default-deny', p.namespace)}"
    if isinstance(p, ShadowNetworkPolicy):
        return (f"r{direction[0]}-"
                f"{_hash('shadow', p.metadata.namespace or 'default', p.metadata.name)}")
    if isinstance(p, model.StagedNetworkPolicy):
        return (f"q{direction[0]}-"
                f"{_hash('snp', p.metadata.namespace or 'default', p.metadata.name)}")
    return f"p{direction[0]}-{_hash('np', p.metadata.namespace or 'default', p.metadata.name)}"


def gnp_chain_name(g: model.GlobalNetworkPolicy, direction: str) -> str:
    if isinstance(g, model.StagedGlobalNetworkPolicy):
        return f"h{direction[0]}-{_hash('sgnp', g.metadata.name)}"
    return f"g{direction[0]}-{_hash('gnp', g.metadata.name)}"


def policy_program(kind: str, policy: Any, direction: str,
                   log_allowed: bool = False) -> _Program:
    """The chain of one (policy, direction) and the sets it uses (``kind``: np | gnp), for
    callers that keep their own cache (the incremental calculation)."""
    b = _Builder(PolicyInputs(node="", log_allowed=log_allowed))
    if kind == "np":
        return b.record(lambda: b._np_chain(policy, direction))
    return b.record(lambda: b._gnp_chain(policy, direction))


def endpoint_chains(key: str, wep: model.WorkloadEndpoint,
                    gnps: Iterable[model.GlobalNetworkPolicy],
                    nps: Iterable[model.NetworkPolicy],
                    gnp_chain: Any, np_chain: Any,
                    ) -> tuple[dict[str, tuple[Rule, ...]], LocalEndpoint]:
    """The four chains of a local endpoint (``fo-``/``fon-``/``fi-``/``fin-<iface>``) given
    the GNPs selecting it in evaluation order and the NetworkPolicies selecting it in name
    order. ``gnp_chain(g, direction)``/``np_chain(p, direction)`` return (and register) the
    policy chain's name."""
    iface = wep.spec.host_interface
    assert iface is not None
    chains: dict[str, tuple[Rule, ...]] = {}
    names: dict[str, tuple[str, ...]] = {}
    gnps, staged_gnps = split_staged(gnps)
    nps_with_staged = tuple(nps)
    nps = [p for p in nps_with_staged if not isinstance(p, model.StagedNetworkPolicy)]
    for direction, typ in (("in", "Ingress"), ("out", "Egress")):
        head = f"f{direction[0]}-{iface}"
        tail = f"f{direction[0]}n-{iface}"
        rules: list[Rule] = []
        if direction == "out":
            rules.extend(_anti_spoof(wep))
        else:
            for v in (4, 6):
                rules.append(Rule((Addr("src", v, HOST_SETS[v]),), RETURN,
                                  "traffic from this node"))
        staged = staged_chains(iface, ep_namespace(wep), direction, typ, staged_gnps,
                               nps_with_staged, gnp_chain, np_chain)
        if staged:  # evaluated first, on every new connection, enforcing nothing
            chains.update(staged)
            rules.append(Rule((), Verdict("jump", staged_head(iface, direction)),
                              "staged policies"))
            rules.append(Rule((), CLEAR))
        used: list[str] = []
        for g in gnps:
            if typ not in g.spec.effective_types:
                continue
            chain = gnp_chain(g, direction)
            used.append(f"gnp/{g.metadata.name}")
            rules.append(Rule((), Verdict("jump", chain), f"gnp/{g.metadata.name}"))
            rules.append(Rule((Marked(MARK_ALLOW),), RETURN))
            rules.append(Rule((Marked(MARK_PASS),), Verdict("goto", tail)))
        rules.append(Rule((), Verdict("goto", tail)))
        chains[head] = tuple(rules)
        trules: list[Rule] = []
        isolating = [p for p in nps if typ in p.effective_policy_types]
        for p in isolating:
            ns = p.metadata.namespace or "default"
            chain = np_chain(p, direction)
            used.append(f"np/{ns}/{p.metadata.name}")
            trules.append(Rule((), Verdict("jump", chain), f"np/{ns}/{p.metadata.name}"))
            trules.append(Rule((Marked(MARK_ALLOW),), RETURN))
        if isolating:
            trules.append(Rule((), Verdict("goto", np_chain(
                default_deny(ep_namespace(wep), typ), direction))))
        chains[tail] = tuple(trules)
        names[direction] = tuple(used)
    return chains, LocalEndpoint(
        key=key, iface=iface, namespace=ep_namespace(wep), pod=wep.spec.pod,
        addresses=tuple(str(n) for n in wep.spec.ip_networks),
        ingress_policies=names["in"], egress_policies=names["out"])


def _anti_spoof(wep: model.WorkloadEndpoint) -> list[Rule]:
    rules: list[Rule] = []
    for v in (4, 6):
        nets = tuple(str(n) for n in wep.spec.ip_networks if n.version == v)
        if v == 6:
            # Neighbour discovery to the node, before any policy: from the link-local
            # address, or from one of the pod's own (a neighbour advertisement answering
            # the node's solicitation comes from the solicited address). A policy that
            # denied it would cut the node off from the pod's MAC address.
            # One rule per source (a single prefix each: no extra ipset per pod).
            for src in (("fe80::/10",), nets):
                for t in (133, 135, 136) if src else ():
                    rules.append(Rule((Proto(58), Icmp(6, t), Addr("src", 6, nets=src)),
                                      RETURN, "neighbour discovery"))
        if nets:
            rules.append(Rule((Addr("src", v, nets=nets, negate=True),), DROP,
                              "anti-spoofing: not the pod's address"))
        else:
            rules.append(Rule((Family(v),), DROP, f"anti-spoofing: no IPv{v} address"))
    return rules


def _versions(matches: tuple[Match, ...]) -> set[int]:
    return {m.version for m in matches if isinstance(m, Family | Addr | NamedPort | Icmp)}


def _consistent(matches: tuple[Match, ...]) -> bool:
    """False when the matches name two IP families (such a rule matches nothing)."""
    return len(_versions(matches)) <= 1


def _with_family(matches: tuple[Match, ...]) -> tuple[Match, ...]:
    """Deduplicate Family matches, keeping one (first) when a family is implied."""
    out: list[Match] = []
    fam_seen = False
    for m in matches:
        if isinstance(m, Family):
            if fam_seen:
                continue
            fam_seen = True
        if m not in out:
            out.append(m)
    return tuple(out)


def calculate(inputs: PolicyInputs) -> Ruleset:
    """The desired ruleset of ``inputs.node``: one pair of chains per local endpoint with a
    host interface, the policy chains they use and the sets those reference."""
    b = _Builder(inputs)
    b.rs.host_addresses = inputs.host_addresses
    for v in (4, 6):
        b.rs.sets[HOST_SETS[v]] = SetSpec(HOST_SETS[v], v, "net", "this node's addresses")
        b.fillers[HOST_SETS[v]] = ("nets", ())
    for wep in inputs.endpoints:
        if wep.spec.node != inputs.node or not wep.spec.host_interface:
            continue
        if not wep.spec.host_interface.startswith(HOST_IF_PREFIX):
            log.warning("endpoint %s: host interface %s is not ours (%s*): not policed",
                        model.key_for(wep), wep.spec.host_interface, HOST_IF_PREFIX)
            continue
        b.endpoint(model.key_for(wep), wep)
    b.fill_sets()
    for v in (4, 6):
        b.rs.elements[HOST_SETS[v]] = frozenset(
            f"{a}/{32 if v == 4 else 128}" for a in inputs.host_addresses
            if ipaddress.ip_address(a).version == v)
    return b.rs
