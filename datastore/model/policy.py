"""Policy kinds: Kubernetes NetworkPolicy (schema and semantics unchanged) and the
Calico-style, ordered GlobalNetworkPolicy, with their rules, peers and port matches."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from datastore.calico_selector import Selector
from datastore.labelselector import (
    LabelSelector,
    ValidationError,
    type_name,
)
from datastore.model.fields import (
    _L4_PROTOCOLS,
    SELECT_ALL,
    IPNetwork,
    _bool,
    _float,
    _int_out,
    _network,
    _Obj,
    _one_of,
    _opt_selector,
    _port_name,
    _ranged,
    _reject_oddities,
    _selector,
    _str,
    _unique,
)
from datastore.model.resource import SpecResource

log = logging.getLogger(__name__)


# --- NetworkPolicy (networking.k8s.io/v1) ------------------------------------------------------

@dataclass(frozen=True)
class NetworkPolicyPort:
    """``port`` None = every port of ``protocol``; str = a named container port."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> NetworkPolicyPort:
        o = _Obj(obj, path, ("protocol", "port", "endPort"))
        protocol = o.get("protocol", _one_of(*_L4_PROTOCOLS), "TCP")
        raw = o.value.get("port")
        port: int | str | None
        if raw is None:
            port = None
        elif isinstance(raw, str):
            port = _port_name(raw, o.at("port"))
        elif isinstance(raw, int) and not isinstance(raw, bool):
            port = _ranged(1, 65535)(raw, o.at("port"))
        else:
            raise ValidationError(
                None, o.at("port"), f"expected an int or a port name, got {type_name(raw)}"
            )
        end_port = o.opt("endPort", _ranged(1, 65535))
        if end_port is not None:
            if port is None:
                raise ValidationError(None, o.at("endPort"), "may not be specified without port")
            if isinstance(port, str):
                raise ValidationError(
                    None, o.at("endPort"), "may not be specified with a named port"
                )
            if end_port < port:
                raise ValidationError(None, o.at("endPort"), f"{end_port} is less than port {port}")
        return cls(protocol, port, end_port)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol}
        if self.port is not None:
            out["port"] = self.port
        if self.end_port is not None:
            out["endPort"] = self.end_port
        return out


@dataclass(frozen=True)
class IPBlock:
    """``cidr`` minus ``except_``. Text is kept as written (Kubernetes accepts host bits in
    ipBlock CIDRs); use :attr:`network`/:attr:`except_networks` for arithmetic."""

    cidr: str
    except_: tuple[str, ...] = ()

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr, strict=False)

    @property
    def except_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.except_)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> IPBlock:
        o = _Obj(obj, path, ("cidr", "except"))
        cidr_text = o.req("cidr", _str)
        cidr = _loose_network(cidr_text, o.at("cidr"))
        excepts = o.list("except", _str)
        for i, text in enumerate(excepts):
            p = f"{o.at('except')}[{i}]"
            net = _loose_network(text, p)
            if net.version != cidr.version:
                raise ValidationError(None, p, f"{text!r} is not the same IP family as {cidr}")
            if not (net.prefixlen > cidr.prefixlen and net.subnet_of(cidr)):  # type: ignore[arg-type]
                raise ValidationError(None, p, f"{text!r} must be strictly within cidr {cidr}")
        return cls(cidr_text, excepts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cidr": self.cidr}
        if self.except_:
            out["except"] = list(self.except_)
        return out


def _loose_network(text: str, path: str) -> IPNetwork:
    _reject_oddities(text, path)
    _, slash, plen = text.partition("/")
    if not slash or not plen.isdigit():
        raise ValidationError(None, path, f"{text!r} is not a CIDR (expected address/prefix)")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValidationError(None, path, f"{text!r} is not a valid CIDR") from None


@dataclass(frozen=True)
class NetworkPolicyPeer:
    """One ``from``/``to`` entry. Selectors are None when absent, which differs from empty:
    ``namespace_selector=None`` means "the policy's own namespace"."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> NetworkPolicyPeer:
        o = _Obj(obj, path, ("podSelector", "namespaceSelector", "ipBlock"))
        # An explicit `podSelector: {}` is present-and-empty; `null` is absent.
        peer = cls(
            pod_selector=o.opt("podSelector", LabelSelector.from_dict),
            namespace_selector=o.opt("namespaceSelector", LabelSelector.from_dict),
            ip_block=o.opt("ipBlock", IPBlock.from_dict),
        )
        if peer.ip_block is None and peer.pod_selector is None and peer.namespace_selector is None:
            raise ValidationError(
                None, path, "must specify a peer (podSelector, namespaceSelector or ipBlock)"
            )
        if peer.ip_block is not None and (
            peer.pod_selector is not None or peer.namespace_selector is not None
        ):
            raise ValidationError(
                None,
                o.at("ipBlock"),
                "may not be combined with podSelector or namespaceSelector in one peer",
            )
        return peer

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_dict()
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_dict()
        if self.ip_block is not None:
            out["ipBlock"] = self.ip_block.to_dict()
        return out


@dataclass(frozen=True)
class NetworkPolicyRule:
    """One ingress or egress rule. ``peers`` is ``from`` (ingress) or ``to`` (egress);
    empty ``peers`` = every peer, empty ``ports`` = every port (Kubernetes semantics)."""

    ports: tuple[NetworkPolicyPort, ...] = ()
    peers: tuple[NetworkPolicyPeer, ...] = ()

    @classmethod
    def parser(cls, peers_field: str) -> Callable[[Any, str], NetworkPolicyRule]:
        def conv(obj: Any, path: str) -> NetworkPolicyRule:
            o = _Obj(obj, path, ("ports", peers_field))
            return cls(
                ports=o.list("ports", NetworkPolicyPort.from_dict),
                peers=o.list(peers_field, NetworkPolicyPeer.from_dict),
            )

        return conv

    def to_dict(self, peers_field: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ports:
            out["ports"] = [p.to_dict() for p in self.ports]
        if self.peers:
            out[peers_field] = [p.to_dict() for p in self.peers]
        return out


@dataclass(frozen=True)
class NetworkPolicySpec:
    pod_selector: LabelSelector = field(default_factory=LabelSelector)
    policy_types: tuple[str, ...] = ()  # as written; empty = defaulted
    ingress: tuple[NetworkPolicyRule, ...] = ()
    egress: tuple[NetworkPolicyRule, ...] = ()

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> NetworkPolicySpec:
        o = _Obj(obj, path, ("podSelector", "policyTypes", "ingress", "egress"))
        types = _unique(o.list("policyTypes", _one_of("Ingress", "Egress")), o.at("policyTypes"))
        return cls(
            pod_selector=LabelSelector.from_dict(o.value.get("podSelector"), o.at("podSelector")),
            policy_types=types,
            ingress=o.list("ingress", NetworkPolicyRule.parser("from")),
            egress=o.list("egress", NetworkPolicyRule.parser("to")),
        )

    @property
    def effective_policy_types(self) -> tuple[str, ...]:
        """Kubernetes defaulting: Ingress always, Egress if there are egress rules."""
        if self.policy_types:
            return tuple(t for t in ("Ingress", "Egress") if t in self.policy_types)
        return ("Ingress", "Egress") if self.egress else ("Ingress",)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"podSelector": self.pod_selector.to_dict()}
        if self.policy_types:
            out["policyTypes"] = list(self.policy_types)
        if self.ingress:
            out["ingress"] = [r.to_dict("from") for r in self.ingress]
        if self.egress:
            out["egress"] = [r.to_dict("to") for r in self.egress]
        return out


@dataclass(frozen=True)
class NetworkPolicy(SpecResource[NetworkPolicySpec]):
    """A Kubernetes NetworkPolicy, schema and semantics unchanged."""

    kind: ClassVar[str] = "NetworkPolicy"
    spec_type = NetworkPolicySpec
    api_versions: ClassVar[tuple[str, ...]] = ("networking.k8s.io/v1",)
    namespaced: ClassVar[bool] = True
    body_required: ClassVar[bool] = False
    ignored_top: ClassVar[tuple[str, ...]] = ("status",)
    spec: NetworkPolicySpec = NetworkPolicySpec()

    @property
    def effective_policy_types(self) -> tuple[str, ...]:
        return self.spec.effective_policy_types


# --- GlobalNetworkPolicy (Calico style) --------------------------------------------------------

_RULE_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPv6")
_PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}


def _protocol(v: Any, path: str) -> str | int:
    if isinstance(v, str):
        return _one_of(*_RULE_PROTOCOLS)(v, path)
    return _ranged(1, 255)(v, path)


@dataclass(frozen=True)
class PortMatch:
    """A port or range ``first..last`` (inclusive), or a named port (``name`` set, first=last=0)."""

    first: int = 0
    last: int = 0
    name: str | None = None

    @classmethod
    def from_json(cls, v: Any, path: str) -> PortMatch:
        if isinstance(v, int) and not isinstance(v, bool):
            n = _ranged(1, 65535)(v, path)
            return cls(n, n)
        s = _str(v, path)
        lo, colon, hi = s.partition(":")
        if colon or s.isdigit():
            if not lo.isdigit() or (colon and not hi.isdigit()):
                raise ValidationError(None, path, f"{s!r} is not a port range 'first:last'")
            first = _ranged(1, 65535)(int(lo), path)
            last = _ranged(1, 65535)(int(hi), path) if colon else first
            if first > last:
                raise ValidationError(None, path, f"{s!r}: first port is greater than last")
            return cls(first, last)
        return cls(name=_port_name(s, path))

    def to_json(self) -> int | str:
        if self.name is not None:
            return self.name
        return self.first if self.first == self.last else f"{self.first}:{self.last}"


@dataclass(frozen=True)
class EntityRule:
    """Source or destination match. Every present field must match (AND); absent = any.
    Selectors here are None when absent or empty (``all()`` would mean "any endpoint",
    which excludes addresses that are not endpoints)."""

    selector: Selector | None = None
    namespace_selector: Selector | None = None
    not_selector: Selector | None = None
    nets: tuple[IPNetwork, ...] = ()
    not_nets: tuple[IPNetwork, ...] = ()
    ports: tuple[PortMatch, ...] = ()
    not_ports: tuple[PortMatch, ...] = ()

    FIELDS: ClassVar[tuple[str, ...]] = (
        "selector",
        "namespaceSelector",
        "notSelector",
        "nets",
        "notNets",
        "ports",
        "notPorts",
    )

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> EntityRule:
        o = _Obj(obj, path, cls.FIELDS)
        cidr = lambda v, p: _network(v, p, bare_ip=True)  # noqa: E731
        return cls(
            selector=o.opt("selector", _opt_selector),
            namespace_selector=o.opt("namespaceSelector", _opt_selector),
            not_selector=o.opt("notSelector", _opt_selector),
            nets=o.list("nets", cidr),
            not_nets=o.list("notNets", cidr),
            ports=o.list("ports", PortMatch.from_json),
            not_ports=o.list("notPorts", PortMatch.from_json),
        )

    @property
    def is_empty(self) -> bool:
        return self == EntityRule()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, sel in (
            ("selector", self.selector),
            ("namespaceSelector", self.namespace_selector),
            ("notSelector", self.not_selector),
        ):
            if sel is not None:
                out[name] = str(sel)
        for name, nets in (("nets", self.nets), ("notNets", self.not_nets)):
            if nets:
                out[name] = [str(n) for n in nets]
        for name, ports in (("ports", self.ports), ("notPorts", self.not_ports)):
            if ports:
                out[name] = [p.to_json() for p in ports]
        return out


@dataclass(frozen=True)
class ICMPMatch:
    type: int | None = None
    code: int | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> ICMPMatch:
        o = _Obj(obj, path, ("type", "code"))
        icmp = cls(type=o.opt("type", _ranged(0, 254)), code=o.opt("code", _ranged(0, 255)))
        if icmp.code is not None and icmp.type is None:
            raise ValidationError(None, o.at("code"), "may not be specified without type")
        return icmp

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.type is not None:
            out["type"] = self.type
        if self.code is not None:
            out["code"] = self.code
        return out


@dataclass(frozen=True)
class Rule:
    action: str
    protocol: str | int | None = None
    icmp: ICMPMatch | None = None
    source: EntityRule = EntityRule()
    destination: EntityRule = EntityRule()

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Rule:
        o = _Obj(obj, path, ("action", "protocol", "icmp", "source", "destination"))
        rule = cls(
            action=o.req("action", _one_of("Allow", "Deny", "Log", "Pass")),
            protocol=o.opt("protocol", _protocol),
            icmp=o.opt("icmp", ICMPMatch.from_dict),
            source=o.get("source", EntityRule.from_dict, EntityRule()),
            destination=o.get("destination", EntityRule.from_dict, EntityRule()),
        )
        number = _PROTOCOL_NUMBERS.get(str(rule.protocol), rule.protocol)
        for side in ("source", "destination"):
            ent: EntityRule = getattr(rule, side)
            if (ent.ports or ent.not_ports) and number not in (6, 17, 132):
                which = "ports" if ent.ports else "notPorts"
                raise ValidationError(
                    None, f"{o.at(side)}.{which}", "requires protocol TCP, UDP or SCTP"
                )
        if rule.icmp is not None and number not in (1, 58):
            raise ValidationError(None, o.at("icmp"), "requires protocol ICMP or ICMPv6")
        return rule

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.protocol is not None:
            out["protocol"] = self.protocol
        if self.icmp is not None:
            out["icmp"] = self.icmp.to_dict()
        if not self.source.is_empty:
            out["source"] = self.source.to_dict()
        if not self.destination.is_empty:
            out["destination"] = self.destination.to_dict()
        return out


@dataclass(frozen=True)
class GlobalNetworkPolicySpec:
    """Applies to endpoints matching ``selector`` (and ``namespace_selector`` if set), before
    namespaced policies, in ascending ``order`` (None sorts last)."""

    order: float | None = None
    selector: Selector = SELECT_ALL
    namespace_selector: Selector | None = None
    types: tuple[str, ...] = ()  # as written; empty = defaulted
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    # On a host endpoint, also police traffic forwarded through its interface
    # (felix_like.policy.hostep); workload endpoints ignore it.
    apply_on_forward: bool = False

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> GlobalNetworkPolicySpec:
        o = _Obj(
            obj, path, ("order", "selector", "namespaceSelector", "types", "ingress", "egress",
                        "applyOnForward")
        )
        spec = cls(
            order=o.opt("order", _float),
            selector=o.get("selector", _selector, SELECT_ALL),
            namespace_selector=o.opt("namespaceSelector", _opt_selector),
            types=_unique(o.list("types", _one_of("Ingress", "Egress")), o.at("types")),
            ingress=o.list("ingress", Rule.from_dict),
            egress=o.list("egress", Rule.from_dict),
            apply_on_forward=o.get("applyOnForward", _bool, False),
        )
        if spec.types:
            for direction, rules in (("Ingress", spec.ingress), ("Egress", spec.egress)):
                if rules and direction not in spec.types:
                    raise ValidationError(
                        None,
                        o.at(direction.lower()),
                        f"rules given but {direction} is not in types",
                    )
        return spec

    @property
    def effective_types(self) -> tuple[str, ...]:
        """Calico defaulting: Ingress, unless there are egress rules and no ingress rules."""
        if self.types:
            return tuple(t for t in ("Ingress", "Egress") if t in self.types)
        if self.egress and self.ingress:
            return ("Ingress", "Egress")
        return ("Egress",) if self.egress else ("Ingress",)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.order is not None:
            out["order"] = _int_out(self.order)
        out["selector"] = str(self.selector)
        if self.namespace_selector is not None:
            out["namespaceSelector"] = str(self.namespace_selector)
        if self.types:
            out["types"] = list(self.types)
        if self.ingress:
            out["ingress"] = [r.to_dict() for r in self.ingress]
        if self.egress:
            out["egress"] = [r.to_dict() for r in self.egress]
        if self.apply_on_forward:
            out["applyOnForward"] = True
        return out


@dataclass(frozen=True)
class GlobalNetworkPolicy(SpecResource[GlobalNetworkPolicySpec]):
    kind: ClassVar[str] = "GlobalNetworkPolicy"
    spec_type = GlobalNetworkPolicySpec
    body_required: ClassVar[bool] = False
    spec: GlobalNetworkPolicySpec = GlobalNetworkPolicySpec()


# --- staged policies --------------------------------------------------------------------------
# The same specs as their enforced twins, stored under keys of their own. The policy engine
# evaluates them where the twin would be and only counts what they would do: a code path
# that treats every NetworkPolicy as enforced must look for these first (they subclass the
# twins so that selection and rendering are shared).


@dataclass(frozen=True)
class StagedNetworkPolicy(NetworkPolicy):
    """A NetworkPolicy previewed, never enforced (``fabricctl policy promote`` enforces it)."""

    kind: ClassVar[str] = "StagedNetworkPolicy"
    api_versions: ClassVar[tuple[str, ...]] = ("l3fabric.io/v1",)

    def promoted(self) -> NetworkPolicy:
        """The enforced twin: the same name, namespace, labels and spec."""
        return NetworkPolicy(replace(self.metadata, revision=None), self.spec)


@dataclass(frozen=True)
class StagedGlobalNetworkPolicy(GlobalNetworkPolicy):
    """A GlobalNetworkPolicy previewed, never enforced."""

    kind: ClassVar[str] = "StagedGlobalNetworkPolicy"

    def promoted(self) -> GlobalNetworkPolicy:
        """The enforced twin: the same name, labels and spec."""
        return GlobalNetworkPolicy(replace(self.metadata, revision=None), self.spec)
