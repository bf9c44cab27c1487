"""Which policies select which endpoints, and what their peers match (pure).

Owned here: the policy calculation's inputs (:class:`PolicyInputs`, picked out of the
agent's cluster state) and the selection semantics both the calculation
(:mod:`felix_like.policy.ruleset`) and the independent explanation
(:mod:`felix_like.policy.explain`) read: label and namespace selectors, GNP order, ipBlock
arithmetic. Label matches are memoised: the same label maps recur across pods.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore import keys, model
from datastore.calico_selector import Selector
from datastore.labelselector import LabelSelector
from felix_like.policy.program import PROTOCOLS

NAMESPACE_LABEL = "projectcalico.org/namespace"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInputs:
    node: str
    policies: tuple[model.NetworkPolicy, ...] = ()
    global_policies: tuple[model.GlobalNetworkPolicy, ...] = ()
    namespaces: Mapping[str, model.Namespace] = field(default_factory=dict)
    endpoints: tuple[model.WorkloadEndpoint, ...] = ()  # every node's
    host_addresses: tuple[str, ...] = ()  # this node's addresses, bare IPs
    log_allowed: bool = False  # flow-log allowed new connections too (fabric-agent flag)


def inputs_from_state(
    state: Mapping[str, Any], node: str, host_addresses: Iterable[str] = ()
) -> PolicyInputs:
    """Pick what the policy calculation needs out of the agent's decoded mirror."""
    policies: list[model.NetworkPolicy] = []
    gnps: list[model.GlobalNetworkPolicy] = []
    namespaces: dict[str, model.Namespace] = {}
    endpoints: list[model.WorkloadEndpoint] = []
    hosts = {ipaddress.ip_address(a.split("/")[0]) for a in host_addresses}
    for key, value in state.items():
        if isinstance(value, model.NetworkPolicy):
            policies.append(value)
        elif isinstance(value, model.GlobalNetworkPolicy):
            gnps.append(value)
        elif isinstance(value, model.Namespace):
            namespaces[value.metadata.name] = value
        elif isinstance(value, model.WorkloadEndpoint):
            endpoints.append(value)
        elif isinstance(value, model.Node) and key == keys.node(node) and value.spec.bgp:
            hosts.add(value.spec.bgp.ipv4_address.ip)
            if value.spec.bgp.ipv6_address is not None:
                hosts.add(value.spec.bgp.ipv6_address.ip)
    endpoints.sort(key=lambda w: model.key_for(w))
    return PolicyInputs(
        node=node,
        policies=tuple(sorted(policies,
                              key=lambda p: (p.metadata.namespace or "", p.metadata.name))),
        global_policies=tuple(gnps),
        namespaces=namespaces,
        endpoints=tuple(endpoints),
        host_addresses=tuple(sorted(str(a) for a in hosts)),
    )


@functools.lru_cache(maxsize=1 << 16)
def _k8s_matches(sel: LabelSelector, labels: Mapping[str, str]) -> bool:
    return sel.matches(labels)


@functools.lru_cache(maxsize=1 << 16)
def _calico_matches(sel: Selector, labels: Mapping[str, str]) -> bool:
    return sel.matches(labels)


def namespace_labels(inputs: PolicyInputs, ns: str) -> Mapping[str, str]:
    obj = inputs.namespaces.get(ns)
    if obj is None:
        return model.FrozenMap({model.Namespace.NAME_LABEL: ns})
    return obj.effective_labels


def ep_namespace(wep: model.WorkloadEndpoint) -> str:
    return wep.metadata.namespace or "default"


def calico_labels(wep: model.WorkloadEndpoint) -> Mapping[str, str]:
    return model.FrozenMap({**wep.spec.labels, NAMESPACE_LABEL: ep_namespace(wep)})


def gnp_order_key(g: model.GlobalNetworkPolicy) -> tuple[int, float, str]:
    order = g.spec.order
    return (1, 0.0, g.metadata.name) if order is None else (0, order, g.metadata.name)


def gnp_selects(inputs: PolicyInputs, g: model.GlobalNetworkPolicy,
                wep: model.WorkloadEndpoint) -> bool:
    if not _calico_matches(g.spec.selector, calico_labels(wep)):
        return False
    nsel = g.spec.namespace_selector
    return nsel is None or _calico_matches(nsel, namespace_labels(inputs, ep_namespace(wep)))


def np_selects(p: model.NetworkPolicy, wep: model.WorkloadEndpoint) -> bool:
    return (p.metadata.namespace or "default") == ep_namespace(wep) and _k8s_matches(
        p.spec.pod_selector, wep.spec.labels
    )


def k8s_peer_matches(inputs: PolicyInputs, policy_ns: str, peer: model.NetworkPolicyPeer,
                     wep: model.WorkloadEndpoint) -> bool:
    """Pod/namespace selector peer (not ipBlock) against an endpoint."""
    ns = ep_namespace(wep)
    if peer.namespace_selector is None:
        if ns != policy_ns:
            return False
    elif not _k8s_matches(peer.namespace_selector, namespace_labels(inputs, ns)):
        return False
    return peer.pod_selector is None or _k8s_matches(peer.pod_selector, wep.spec.labels)


def entity_selector_matches(inputs: PolicyInputs, sel: Selector | None, nsel: Selector | None,
                            wep: model.WorkloadEndpoint) -> bool:
    if sel is not None and not _calico_matches(sel, calico_labels(wep)):
        return False
    return nsel is None or _calico_matches(nsel, namespace_labels(inputs, ep_namespace(wep)))


@functools.lru_cache(maxsize=4096)
def ipblock_nets(block: model.IPBlock) -> tuple[Net, ...]:
    """``cidr`` minus ``except`` as disjoint prefixes (none shorter than /1, so ipset's
    hash:net, which cannot hold /0, stores the same elements as nftables)."""
    nets: list[Net] = [block.network]
    for exc in block.except_networks:
        out: list[Net] = []
        for n in nets:
            if exc.version == n.version and exc.subnet_of(n):  # type: ignore[arg-type]
                out.extend(n.address_exclude(exc))  # type: ignore[arg-type]
            elif exc.version == n.version and n.subnet_of(exc):  # type: ignore[arg-type]
                continue
            else:
                out.append(n)
        nets = out
    return normalize_nets(nets)


def normalize_nets(nets: Iterable[Net]) -> tuple[Net, ...]:
    out: list[Net] = []
    for version in (4, 6):
        fam = [n for n in nets if n.version == version]
        for n in ipaddress.collapse_addresses(fam):  # type: ignore[type-var]
            if n.prefixlen == 0:
                out.extend(n.subnets(1))
            else:
                out.append(n)
    return tuple(out)


# --- set members: who contributes what to a selector or named-port set -------------------


def _ep_ips(wep: model.WorkloadEndpoint, version: int) -> list[str]:
    out: list[str] = []
    for n in wep.spec.ip_networks:
        if n.version == version:
            # A pod normally has /32s; a wider network counts as all its addresses.
            out.append(str(n.network_address) if n.num_addresses == 1 else str(n))
    return out


def fixed_elements(filler: tuple[Any, ...]) -> tuple[str, ...]:
    """Elements of a ``nets`` set (they depend on no endpoint)."""
    return tuple(str(n) for n in filler[1]) if filler[0] == "nets" else ()


def filler_matches(inputs: PolicyInputs, filler: tuple[Any, ...],
                   wep: model.WorkloadEndpoint) -> bool:
    """Whether ``wep`` contributes to the sets filled by ``filler`` (selector or port sets;
    never for ``nets``). ``inputs`` is only read for namespace labels."""
    kind = filler[0]
    if kind == "k8s":
        return k8s_peer_matches(inputs, filler[1], filler[2], wep)
    if kind == "calico":
        return entity_selector_matches(inputs, filler[1], filler[2], wep)
    if kind == "port":
        return any(p.name == filler[1] for p in wep.spec.ports)
    return False


def member_elements(filler: tuple[Any, ...], version: int,
                    wep: model.WorkloadEndpoint) -> tuple[Any, ...]:
    """What a matching ``wep`` puts into the ``version`` set of ``filler``: its addresses
    (a selector set) or its ``(address, protocol, port)`` of that port name."""
    if filler[0] == "port":
        return tuple((a, PROTOCOLS[p.protocol], p.port) for p in wep.spec.ports
                     if p.name == filler[1] for a in _ep_ips(wep, version))
    return tuple(str(n) for n in wep.spec.ip_networks if n.version == version)
