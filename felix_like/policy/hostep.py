"""Host endpoints: GlobalNetworkPolicy on a node's own interfaces, pure.

What a user gets: a ``HostEndpoint`` (``hostendpoints/<name>``: ``node``,
``interfaceName`` or ``*`` for every interface of the node but ``lo`` and the pods'
veths, ``expectedIPs``, labels) is selected by GlobalNetworkPolicies through its labels,
as pods are. Ingress is traffic to the host through that interface, egress traffic from
the host out of it. Traffic forwarded through the interface (to and from pods) is policed
only by the policies that say ``applyOnForward: true``. The rules are the pods' rules
(``Allow``, ``Deny``, ``Pass``, ``Log``; protocol, ``nets``/``notNets``, numeric
``ports``/``notPorts``, ICMP, ``selector``/``notSelector`` matching pods and host endpoints,
whose addresses are their ``expectedIPs``), evaluated in ascending ``order``; the first
``Allow`` or ``Deny`` decides, ``Pass`` ends the host endpoint's policies.

Semantics, as for pods in this project: policies add no implicit deny, so a host endpoint
no policy selects, or whose policies match nothing, allows everything. A default-deny is
a policy whose last rule is ``{"action": "Deny"}``. The failsafe ports of the
FelixConfiguration (Calico's defaults) are accepted before any host endpoint policy, and
so are replies (``ct state established,related``), ``lo``, ICMPv6 neighbour discovery
and pod traffic, which the pod policy owns. A named port in a host endpoint rule matches
nothing (a named port belongs to a pod) and is logged.

Owned here: `HostPlan` (`host_plan`, from the resources; `plan_of_state`, from the
agent's cluster state through a `HostPlanner` per node, which keeps the plan between
applies and the members of the selectors its rules use, so that an apply reads the pods
changed since the last one, never every pod of the cluster), and its renderings for
nftables (`nft_commands`: one transaction that replaces table ``inet l3fabric-host``)
and for iptables (`iptables_filter`, `ipset_script`: chains ``fabhep-*`` in ``filter``,
hooked first in ``INPUT``, ``OUTPUT`` and ``FORWARD``, and ipsets ``fabhep4-…``/
``fabhep6-…``; not ``fab-`` names, which the pod policy backend owns and prunes). In
iptables an Allow is ``RETURN``, never ``ACCEPT``: an accept would skip the pod policy's
chains that come after ours on the same hook. The applier is
`felix_like.policy.host_backend`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore import model
from datastore.calico_selector import Selector
from felix_like.owned import HOST_IF_PREFIX
from felix_like.policy.program import ipset_members
from felix_like.state import ChangeLog, ClusterState

log = logging.getLogger(__name__)

HOST_TABLE = "l3fabric-host"
CHAIN_PREFIX = "fabhep-"
SET_PREFIX = "fabhep"
NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}
NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp"}

# The direction of a host endpoint chain: (hook, which interface it is matched on).
DIRECTIONS = {"in": "input", "out": "output", "fwd-in": "forward", "fwd-out": "forward"}


@dataclass(frozen=True)
class AddrMatch:
    side: str  # "src" | "dst"
    nets: tuple[str, ...]  # one family, merged
    negate: bool = False


@dataclass(frozen=True)
class PortMatch:
    side: str  # "src" | "dst"
    ranges: tuple[tuple[int, int], ...]
    negate: bool = False


@dataclass(frozen=True)
class HostRule:
    """One rule of a host endpoint chain; ``version`` None: both families."""

    verdict: str  # "allow" | "deny" | "pass" | "log"
    comment: str
    version: int | None = None
    proto: int | None = None
    addrs: tuple[AddrMatch, ...] = ()
    ports: tuple[PortMatch, ...] = ()
    icmp: tuple[int, int | None] | None = None


@dataclass(frozen=True)
class EndpointChains:
    """A local host endpoint: its interface and its rules per direction."""

    name: str
    interface: str  # "*" or an interface name
    chains: tuple[tuple[str, tuple[HostRule, ...]], ...]  # (direction, rules)

    def rules(self, direction: str) -> tuple[HostRule, ...]:
        return dict(self.chains).get(direction, ())


@dataclass(frozen=True)
class HostPlan:
    failsafe_in: tuple[model.ProtoPort, ...] = ()
    failsafe_out: tuple[model.ProtoPort, ...] = ()
    endpoints: tuple[EndpointChains, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.endpoints)


# --- the calculation ---------------------------------------------------------------------------


def _merged(nets: Iterable[Any], version: int) -> tuple[str, ...]:
    same = [ipaddress.ip_network(n) for n in nets]
    same = [n for n in same if n.version == version]
    return tuple(str(n) for n in ipaddress.collapse_addresses(same))  # type: ignore[type-var]


def _order(g: model.GlobalNetworkPolicy) -> tuple[int, float, str]:
    o = g.spec.order
    return (1, 0.0, g.metadata.name) if o is None else (0, o, g.metadata.name)


NAMESPACE_LABEL = "projectcalico.org/namespace"


def endpoint_labels(w: model.WorkloadEndpoint) -> Mapping[str, str]:
    """What a selector in a host endpoint rule matches a pod on: its labels and its
    namespace as ``projectcalico.org/namespace``."""
    return {**w.spec.labels, NAMESPACE_LABEL: w.metadata.namespace or ""}


def _held(w: model.WorkloadEndpoint) -> tuple[str, ...]:
    return tuple(str(n) for n in w.spec.ip_networks)


def _expected(h: model.HostEndpoint) -> tuple[str, ...]:
    return tuple(str(a) for a in h.spec.expected_ips)


class Addresses:
    """Who holds which addresses, for selectors in rules: pods and host endpoints (their
    ``expectedIPs``). Asked only when a rule has a selector; each (selector, family) is
    merged once per plan, however many rules name it."""

    def __init__(self) -> None:
        self._nets: dict[tuple[Selector, int], tuple[str, ...]] = {}

    def of(self, sel: Selector) -> tuple[str, ...]:
        raise NotImplementedError

    def nets(self, sel: Selector, version: int) -> tuple[str, ...]:
        hit = self._nets.get((sel, version))
        if hit is None:
            hit = self._nets[sel, version] = _merged(self.of(sel), version)
        return hit


@dataclass
class _Addresses(Addresses):
    """`Addresses` by one pass over every pod of the cluster, on the first selector asked
    (`host_plan`: the plan from the resources alone)."""

    endpoints: Iterable[model.WorkloadEndpoint]
    host_endpoints: Iterable[model.HostEndpoint]
    _holders: list[tuple[Mapping[str, str], tuple[str, ...]]] | None = None
    _cache: dict[Selector, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Addresses.__init__(self)

    def _all(self) -> list[tuple[Mapping[str, str], tuple[str, ...]]]:
        if self._holders is None:
            self._holders = [(endpoint_labels(w), _held(w)) for w in self.endpoints]
            self._holders += [(h.metadata.labels, _expected(h)) for h in self.host_endpoints]
        return self._holders

    def of(self, sel: Selector) -> tuple[str, ...]:
        hit = self._cache.get(sel)
        if hit is None:
            hit = tuple(a for labels, addrs in self._all() if sel.matches(labels)
                        for a in addrs)
            self._cache[sel] = hit
        return hit


def _entity(side: str, ent: model.EntityRule, v: int, addrs: Addresses,
            where: str) -> tuple[list[AddrMatch], list[PortMatch]] | None:
    """The matches of one side in family ``v``; None when the side can match nothing."""
    a: list[AddrMatch] = []
    if ent.namespace_selector is not None:
        log.debug("%s: namespaceSelector matches pods only", where)
    if ent.selector is not None:
        nets = addrs.nets(ent.selector, v)
        if not nets:
            return None
        a.append(AddrMatch(side, nets))
    if ent.not_selector is not None:
        nets = addrs.nets(ent.not_selector, v)
        if nets:
            a.append(AddrMatch(side, nets, True))
    if ent.nets:
        nets = _merged(ent.nets, v)
        if not nets:
            return None
        a.append(AddrMatch(side, nets))
    if ent.not_nets:
        nets = _merged(ent.not_nets, v)
        if nets:
            a.append(AddrMatch(side, nets, True))
    p: list[PortMatch] = []
    if any(pm.name is not None for pm in (*ent.ports, *ent.not_ports)):
        log.warning("%s: a named port matches no host endpoint; the rule is skipped", where)
        return None
    if ent.ports:
        p.append(PortMatch(side, tuple((pm.first, pm.last) for pm in ent.ports)))
    if ent.not_ports:
        p.append(PortMatch(side, tuple((pm.first, pm.last) for pm in ent.not_ports), True))
    return a, p


def render_rule(r: model.Rule, where: str, addrs: Addresses) -> list[HostRule]:
    """A GlobalNetworkPolicy rule as host rules (one per family when addresses differ)."""
    verdict = r.action.lower()
    proto = None if r.protocol is None else (
        NUMBERS[r.protocol] if isinstance(r.protocol, str) else r.protocol)
    icmp = None
    if r.icmp is not None and r.icmp.type is not None:
        icmp = (r.icmp.type, r.icmp.code)
    versions: tuple[int, ...] = (4, 6)
    if proto == 1:
        versions = (4,)
    elif proto == 58:
        versions = (6,)
    sided = any(e.selector is not None or e.not_selector is not None or e.nets or e.not_nets
                for e in (r.source, r.destination))
    out: list[HostRule] = []
    for v in versions:
        src = _entity("src", r.source, v, addrs, where)
        dst = _entity("dst", r.destination, v, addrs, where)
        if src is None or dst is None:
            continue
        rule = HostRule(verdict, where, v if sided or len(versions) == 1 else None, proto,
                        tuple(src[0] + dst[0]), tuple(src[1] + dst[1]), icmp)
        if rule not in out:
            out.append(rule)
    return out


def _local(node: str, heps: Iterable[model.HostEndpoint]) -> list[model.HostEndpoint]:
    """``node``'s host endpoints that name an interface, the named interfaces first."""
    return sorted((h for h in heps if h.spec.node == node and h.spec.interface_name),
                  key=lambda h: (h.spec.interface_name == "*", h.metadata.name))


def _plan(local: list[model.HostEndpoint], policies: Iterable[model.GlobalNetworkPolicy],
          config: model.FelixConfigurationSpec, addrs: Addresses) -> HostPlan:
    gnps = sorted(policies, key=_order)
    out: list[EndpointChains] = []
    for h in local:
        selected = [g for g in gnps if g.spec.selector.matches(h.metadata.labels)
                    and g.spec.namespace_selector is None]
        chains: list[tuple[str, tuple[HostRule, ...]]] = []
        for direction in DIRECTIONS:
            forward = direction.startswith("fwd")
            which = "Ingress" if direction.endswith("in") else "Egress"
            rules: list[HostRule] = []
            for g in selected:
                if which not in g.spec.effective_types or (forward and
                                                           not g.spec.apply_on_forward):
                    continue
                gnp_rules = g.spec.ingress if which == "Ingress" else g.spec.egress
                for i, r in enumerate(gnp_rules):
                    where = f"gnp/{g.metadata.name} {which.lower()}[{i}] {r.action}"
                    rules.extend(render_rule(r, where, addrs))
            if rules:
                chains.append((direction, tuple(rules)))
        out.append(EndpointChains(h.metadata.name, h.spec.interface_name or "*", tuple(chains)))
    return HostPlan(config.failsafe_inbound_host_ports, config.failsafe_outbound_host_ports,
                    tuple(out))


def host_plan(node: str, host_endpoints: Iterable[model.HostEndpoint],
              policies: Iterable[model.GlobalNetworkPolicy],
              endpoints: Iterable[model.WorkloadEndpoint],
              config: model.FelixConfigurationSpec) -> HostPlan:
    """The plan of ``node``: its host endpoints' chains and the failsafe ports, from the
    resources alone (a rule's selector reads every pod of ``endpoints``)."""
    heps = list(host_endpoints)
    local = _local(node, heps)
    if not local:
        return HostPlan()
    return _plan(local, policies, config, _Addresses(endpoints, heps))


@dataclass
class _Indexed(Addresses):
    """`Addresses` from `HostPlanner`'s membership index: a selector already in it costs
    its members; one not yet in it is filled by one pass over the cluster's pods (shared
    by every selector missing in the same calculation)."""

    members: dict[Selector, dict[str, model.WorkloadEndpoint]]
    endpoints: Mapping[str, model.WorkloadEndpoint]
    host_endpoints: Iterable[model.HostEndpoint]
    scans: int = 0
    _holders: list[tuple[str, Mapping[str, str], model.WorkloadEndpoint]] | None = None
    _cache: dict[Selector, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Addresses.__init__(self)

    def _all(self) -> list[tuple[str, Mapping[str, str], model.WorkloadEndpoint]]:
        if self._holders is None:
            self.scans += 1
            self._holders = [(k, endpoint_labels(w), w) for k, w in self.endpoints.items()]
        return self._holders

    def of(self, sel: Selector) -> tuple[str, ...]:
        hit = self._cache.get(sel)
        if hit is None:
            members = self.members.get(sel)
            if members is None:
                members = {k: w for k, labels, w in self._all() if sel.matches(labels)}
                self.members[sel] = members
            hit = tuple(a for w in members.values() for a in _held(w))
            hit += tuple(a for h in self.host_endpoints if sel.matches(h.metadata.labels)
                         for a in _expected(h))
            self._cache[sel] = hit
        return hit

    @property
    def used(self) -> set[Selector]:
        return set(self._cache)


@dataclass(eq=False)
class HostPlanner:
    """The host plan of one node of one `ClusterState`, kept between applies: an apply
    costs the pods that changed since the last one, not the cluster's pods.

    Owned: the last plan; the inputs it was made of (the cluster's host endpoints and
    GlobalNetworkPolicies, compared by identity: O(their number), no pod; the default
    FelixConfiguration); a `ChangeLog` of the state's policy inputs; and, for each selector
    the plan's rules use, the pods it matches (key -> endpoint), kept up to date from the
    log. A changed pod is matched against those selectors only; the plan is made again
    only when an input or a used selector's members (or their addresses) changed.

    Invariant (a unit test holds it on random changes): `plan` equals `host_plan` of the
    same state. A node with no host endpoint keeps no log and no index (the early return).
    Selectors a plan stops using leave the index when it is made again; one coming into
    use is filled by a pass over the cluster's pods (a policy or host endpoint change).
    """

    node: str
    scans: int = 0  # passes over every pod of the cluster, for tests and the benchmark
    _heps: dict[str, model.HostEndpoint] = field(default_factory=dict)
    _local: list[model.HostEndpoint] = field(default_factory=list)
    _gnps: dict[str, model.GlobalNetworkPolicy] = field(default_factory=dict)
    _config: model.FelixConfiguration | None = None
    _log: ChangeLog | None = None
    _members: dict[Selector, dict[str, model.WorkloadEndpoint]] = field(default_factory=dict)
    _plan: HostPlan | None = None

    def plan(self, state: ClusterState) -> HostPlan:
        if state.host_endpoints != self._heps:  # identical values compare in C, no pod read
            self._heps = dict(state.host_endpoints)
            self._local = _local(self.node, self._heps.values())
            self._plan = None
        if not self._local:
            self._log, self._members, self._plan = None, {}, None
            return HostPlan()
        if self._log is None:  # the log first: a change while the index fills is in it
            self._log, self._members, self._plan = state.policy_log(), {}, None
        changed = self._log.take()
        if state.global_policies != self._gnps:
            self._gnps = dict(state.global_policies)
            self._plan = None
        config = state.felix_configs.get("default")
        if config is not self._config:
            self._config, self._plan = config, None
        if self._members and changed:
            self._follow(state, changed)
        if self._plan is None:
            addrs = _Indexed(self._members, state.endpoints, self._heps.values())
            self._plan = _plan(self._local, self._gnps.values(), state.felix_config(), addrs)
            self.scans += addrs.scans
            used = addrs.used
            self._members = {s: m for s, m in self._members.items() if s in used}
        return self._plan

    def _follow(self, state: ClusterState, changed: Iterable[str]) -> None:
        """Each changed key (any policy input; pods are the ones that matter) against the
        selectors in use: the plan goes when a member comes, goes or changes addresses."""
        for key in changed:
            new = state.endpoints.get(key)
            if new is None:  # gone, or no pod
                for members in self._members.values():
                    if members.pop(key, None) is not None:
                        self._plan = None
                continue
            labels = endpoint_labels(new)
            for sel, members in self._members.items():
                old = members.get(key)
                if sel.matches(labels):
                    if old is not new:
                        members[key] = new
                        if old is None or old.spec.ip_networks != new.spec.ip_networks:
                            self._plan = None
                elif old is not None:
                    del members[key]
                    self._plan = None


def plan_of_state(state: ClusterState | Mapping[str, Any], node: str,
                  planner: HostPlanner | None = None) -> HostPlan:
    """`host_plan` of a `felix_like.state.ClusterState`, through ``planner`` (the caller's,
    kept between applies: an apply reads the pods changed since the last one; without
    one, a planner for this call), or of a mapping key -> value."""
    if isinstance(state, Mapping):
        values = list(state.values())
        configs = [v.spec for v in values if isinstance(v, model.FelixConfiguration)
                   and v.metadata.name == "default"]
        return host_plan(node, [v for v in values if isinstance(v, model.HostEndpoint)],
                         [v for v in values if isinstance(v, model.GlobalNetworkPolicy)
                          and not isinstance(v, model.StagedGlobalNetworkPolicy)],
                         [v for v in values if isinstance(v, model.WorkloadEndpoint)],
                         configs[0] if configs else model.FelixConfigurationSpec())
    return (planner or HostPlanner(node)).plan(state)


def chain_name(ep: str, direction: str) -> str:
    """``fabhep-<direction>-<hash of the endpoint>`` (28 characters at most: iptables)."""
    return f"{CHAIN_PREFIX}{direction}-{hashlib.sha1(ep.encode()).hexdigest()[:10]}"


# --- nftables ----------------------------------------------------------------------------------

_T = {"family": "inet", "table": HOST_TABLE}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _nft_net(n: str) -> Any:
    addr, _, plen = n.partition("/")
    return {"prefix": {"addr": addr, "len": int(plen)}}


def _nft_ports(ranges: tuple[tuple[int, int], ...]) -> Any:
    return {"set": [lo if lo == hi else {"range": [lo, hi]} for lo, hi in ranges]}


def nft_rule(r: HostRule) -> list[dict[str, Any]]:
    expr: list[dict[str, Any]] = []
    if r.version is not None:
        expr.append(_match(_meta("nfproto"), "ipv4" if r.version == 4 else "ipv6"))
    if r.proto is not None:
        expr.append(_match(_meta("l4proto"), r.proto))
    for a in r.addrs:
        proto = "ip" if r.version == 4 else "ip6"
        field_ = "saddr" if a.side == "src" else "daddr"
        expr.append(_match({"payload": {"protocol": proto, "field": field_}},
                           {"set": [_nft_net(n) for n in a.nets]}, "!=" if a.negate else "=="))
    for p in r.ports:
        field_ = "sport" if p.side == "src" else "dport"
        expr.append(_match({"payload": {"protocol": "th", "field": field_}},
                           _nft_ports(p.ranges), "!=" if p.negate else "=="))
    if r.icmp is not None:
        proto = "icmp" if r.version == 4 else "icmpv6"
        expr.append(_match({"payload": {"protocol": proto, "field": "type"}}, r.icmp[0]))
        if r.icmp[1] is not None:
            expr.append(_match({"payload": {"protocol": proto, "field": "code"}}, r.icmp[1]))
    verdicts: dict[str, dict[str, Any]] = {
        "allow": {"accept": None}, "deny": {"drop": None}, "pass": {"return": None},
        "log": {"log": {"prefix": "l3fabric host: "}}}
    verdict = verdicts[r.verdict]
    expr.append(verdict)
    return expr


def _failsafe_nft(ports: tuple[model.ProtoPort, ...]) -> list[list[dict[str, Any]]]:
    out = []
    for proto in sorted({p.protocol for p in ports}):
        nums = sorted({p.port for p in ports if p.protocol == proto})
        out.append([_match(_meta("l4proto"), NUMBERS.get(proto, 132)),
                    _match({"payload": {"protocol": "th", "field": "dport"}},
                           {"set": list(nums)}), {"accept": None}])
    return out


#: ICMPv6 neighbour discovery and multicast listener messages (130-136): IPv6 does not work
#: without them, so no host endpoint policy drops them (as Felix does).
ND_TYPES = (130, 131, 132, 133, 134, 135, 136)


def nft_commands(plan: HostPlan) -> list[dict[str, Any]]:
    """One transaction: the table goes (``add`` first: a missing one is no error) and, when
    the node has a host endpoint, comes back whole."""
    table = {"family": "inet", "name": HOST_TABLE}
    cmds: list[dict[str, Any]] = [{"add": {"table": table}}, {"delete": {"table": table}}]
    if not plan.active:
        return cmds
    cmds.append({"add": {"table": table}})
    est = [_match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}]
    nd = [_match(_meta("l4proto"), 58),
          _match({"payload": {"protocol": "icmpv6", "field": "type"}}, {"set": list(ND_TYPES)}),
          {"accept": None}]
    pods_in = _match(_meta("iifname"), HOST_IF_PREFIX + "*")
    pods_out = _match(_meta("oifname"), HOST_IF_PREFIX + "*")
    base: dict[str, list[list[dict[str, Any]]]] = {
        "input": [est, [_match(_meta("iifname"), "lo"), {"accept": None}],
                  [pods_in, {"accept": None}], nd, *_failsafe_nft(plan.failsafe_in)],
        "output": [est, [_match(_meta("oifname"), "lo"), {"accept": None}],
                   [pods_out, {"accept": None}], nd, *_failsafe_nft(plan.failsafe_out)],
        "forward": [est],
    }
    chains: dict[str, list[list[dict[str, Any]]]] = {}
    for ep in plan.endpoints:
        for direction, rules in ep.chains:
            name = chain_name(ep.name, direction)
            chains[name] = [nft_rule(r) for r in rules]
            hook = DIRECTIONS[direction]
            key = "iifname" if direction in ("in", "fwd-in") else "oifname"
            if ep.interface == "*":
                # every interface but lo and the pods' (those are accepted above for
                # input and output; forwarded pod traffic has a pod at one end)
                iface = [_match(_meta(key), HOST_IF_PREFIX + "*", "!="),
                         _match(_meta(key), "lo", "!=")]
            else:
                iface = [_match(_meta(key), ep.interface)]
            base[hook].append([*iface, {"goto": {"target": name}}])
    for hook in base:
        cmds.append({"add": {"chain": {**_T, "name": hook, "type": "filter", "hook": hook,
                                       "prio": 10, "policy": "accept"}}})
    for name in chains:
        cmds.append({"add": {"chain": {**_T, "name": name}}})
    for name, exprs in [*base.items(), *chains.items()]:
        for expr in exprs:
            cmds.append({"add": {"rule": {**_T, "chain": name, "expr": expr}}})
    return cmds


# --- iptables + ipset --------------------------------------------------------------------------

HOOKS = {"input": ("INPUT", f"{CHAIN_PREFIX}input"), "output": ("OUTPUT", f"{CHAIN_PREFIX}output"),
         "forward": ("FORWARD", f"{CHAIN_PREFIX}forward")}


def set_name(nets: tuple[str, ...], version: int) -> str:
    return f"{SET_PREFIX}{version}-{hashlib.sha1(','.join(nets).encode()).hexdigest()[:12]}"


def ipsets(plan: HostPlan) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Every ipset the plan's rules use: name -> (version, members)."""
    out: dict[str, tuple[int, tuple[str, ...]]] = {}
    for ep in plan.endpoints:
        for _, rules in ep.chains:
            for r in rules:
                for a in r.addrs:
                    assert r.version is not None  # addresses make a rule per family
                    out[set_name(a.nets, r.version)] = (r.version, a.nets)
    return out


def ipset_script(plan: HostPlan) -> str:
    lines: list[str] = []
    for name, (v, nets) in sorted(ipsets(plan).items()):
        fam = "inet" if v == 4 else "inet6"
        tmp = name + "-t"
        lines += [f"create {name} hash:net family {fam} -exist",
                  f"create {tmp} hash:net family {fam} -exist", f"flush {tmp}"]
        lines += [f"add {tmp} {m} -exist" for m in ipset_members(nets)]
        lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
    return "\n".join(lines) + "\n" if lines else ""


def _ipt_rule(r: HostRule, chain: str) -> list[str]:
    """The iptables lines of one rule (none when it is of the other family)."""
    parts: list[str] = []
    if r.proto is not None:
        parts.append(f"-p {NAMES.get(r.proto, str(r.proto))}")
    for a in r.addrs:
        assert r.version is not None
        neg = "! " if a.negate else ""
        parts.append(f"-m set {neg}--match-set {set_name(a.nets, r.version)} {a.side}")
    for p in r.ports:
        neg = "! " if p.negate else ""
        flag = "--sports" if p.side == "src" else "--dports"
        spec = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in p.ranges)
        parts.append(f"-m multiport {neg}{flag} {spec}")
    if r.icmp is not None:
        t = str(r.icmp[0]) + (f"/{r.icmp[1]}" if r.icmp[1] is not None else "")
        parts.append(f"-m icmp --icmp-type {t}" if r.version == 4
                     else f"-m icmp6 --icmpv6-type {t}")
    target = {"allow": "-j RETURN", "deny": "-j DROP", "pass": "-j RETURN",
              "log": '-j LOG --log-prefix "l3fabric host: "'}[r.verdict]
    comment = r.comment.replace('"', "'")[:250]
    return [f"-A {chain} {' '.join(parts)} -m comment --comment \"{comment}\" {target}"
            .replace("  ", " ")]


def iptables_filter(plan: HostPlan, version: int, present: set[str],
                    hooked: set[str]) -> str:
    """``iptables-restore --noflush`` input for one family: every chain of ours declared
    (flushed) and filled, those no longer wanted deleted, hooks added where missing."""
    hook_rules: dict[str, list[str]] = {"input": [], "output": [], "forward": []}
    est = "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
    proto_name = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
    for hook, ports, flag in (("input", plan.failsafe_in, "-i"),
                              ("output", plan.failsafe_out, "-o")):
        fixed = hook_rules[hook]
        fixed += [est, f"{flag} lo -j RETURN", f"{flag} {HOST_IF_PREFIX}+ -j RETURN"]
        if version == 6:
            fixed += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in ND_TYPES]
        for proto in sorted({p.protocol for p in ports}):
            nums = ",".join(str(n) for n in sorted({p.port for p in ports
                                                    if p.protocol == proto}))
            fixed.append(f"-p {proto_name[proto]} -m multiport --dports {nums} "
                         '-m comment --comment "failsafe" -j RETURN')
    hook_rules["forward"].append(est)
    chains: dict[str, list[str]] = {}
    for ep in plan.endpoints:
        for direction, rules in ep.chains:
            name = chain_name(ep.name, direction)
            lines: list[str] = []
            for r in rules:
                if r.version in (None, version):
                    lines += _ipt_rule(r, name)
            chains[name] = lines
            hook = DIRECTIONS[direction]
            flag = "-i" if direction in ("in", "fwd-in") else "-o"
            iface = (f"! {flag} {HOST_IF_PREFIX}+" if ep.interface == "*"
                     else f"{flag} {ep.interface}")
            hook_rules[hook].append(f"{iface} -g {name}")
    want = {HOOKS[h][1] for h in HOOKS} | set(chains) if plan.active else set()
    out = ["*filter"]
    out += [f":{c} - [0:0]" for c in sorted(want | (present & set(chains)))]
    if plan.active:
        for hook, (builtin, ours) in HOOKS.items():
            out += [f"-A {ours} {ln}" for ln in hook_rules[hook]]
            if ours not in hooked:
                out.append(f"-I {builtin} 1 -j {ours}")
        for lines in chains.values():
            out += lines
    for builtin, ours in HOOKS.values():
        if not plan.active and ours in hooked:
            out.append(f"-D {builtin} -j {ours}")
    stale = sorted(present - want)
    out += [f":{c} - [0:0]" for c in stale]  # flushed first: they may jump to each other
    out += [f"-X {c}" for c in stale]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


# --- explaining --------------------------------------------------------------------------------


def _rule_matches(r: HostRule, src: str, dst: str, proto: int, dport: int | None) -> bool:
    version = ipaddress.ip_address(src).version
    if r.version not in (None, version) or r.proto not in (None, proto):
        return False
    for a in r.addrs:
        ip = ipaddress.ip_address(src if a.side == "src" else dst)
        inside = any(ip in ipaddress.ip_network(n) for n in a.nets)
        if inside == a.negate:
            return False
    for p in r.ports:
        port = dport if p.side == "dst" else None  # the source port is the peer's choice
        inside = port is not None and any(lo <= port <= hi for lo, hi in p.ranges)
        if inside == p.negate:
            return False
    return r.icmp is None


def evaluate(plan: HostPlan, name: str, direction: str, src: str, dst: str, proto: int,
             dport: int | None) -> tuple[bool, str]:
    """What the node's program does with a new connection through host endpoint ``name``
    (``direction`` one of `DIRECTIONS`): (allowed, why), in the words of the resources."""
    ep = next((e for e in plan.endpoints if e.name == name), None)
    if ep is None:
        return True, "not a host endpoint of its node's program: allowed"
    if direction in ("in", "out"):
        failsafe = plan.failsafe_in if direction == "in" else plan.failsafe_out
        if any(NUMBERS.get(p.protocol) == proto and p.port == dport for p in failsafe):
            return True, f"failsafe port {dport}/{NAMES[proto]}: always allowed"
    for r in ep.rules(direction):
        if not _rule_matches(r, src, dst, proto, dport):
            continue
        if r.verdict == "allow":
            return True, f"allowed by {r.comment}"
        if r.verdict == "deny":
            return False, f"denied by {r.comment}"
        if r.verdict == "pass":
            return True, f"{r.comment}: the host endpoint's policies end, allowed"
    if not ep.rules(direction):
        return True, "no policy applies in this direction: allowed"
    return True, "no rule matched: allowed (policies add no implicit deny)"
