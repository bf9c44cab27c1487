"""Kinds about nodes: Node (a host and its BGP identity), Namespace (labels only) and
NodeStatus (what an agent reports, read permissively)."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from datastore.labelselector import (
    FrozenMap,
    ValidationError,
)
from datastore.model.fields import (
    _asn,
    _bool,
    _dns_label,
    _int,
    _interface,
    _Obj,
    _str,
)
from datastore.model.resource import API_VERSION, Metadata, Resource, SpecResource

log = logging.getLogger(__name__)


def _dotted_quad(v: Any, path: str) -> ipaddress.IPv4Address:
    text = _str(v, path)
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ValidationError(None, path, f"{text!r} is not a dotted-quad like 224.0.0.1") from None


@dataclass(frozen=True)
class NodeBGPSpec:
    ipv4_address: ipaddress.IPv4Interface
    ipv6_address: ipaddress.IPv6Interface | None = None
    as_number: int | None = None  # None: BGPConfiguration's asNumber
    route_reflector_cluster_id: ipaddress.IPv4Address | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> NodeBGPSpec:
        o = _Obj(obj, path, ("ipv4Address", "ipv6Address", "asNumber", "routeReflectorClusterID"))
        v4 = o.req("ipv4Address", _interface(4))
        v6 = o.opt("ipv6Address", _interface(6))
        assert isinstance(v4, ipaddress.IPv4Interface)
        assert v6 is None or isinstance(v6, ipaddress.IPv6Interface)
        return cls(
            ipv4_address=v4,
            ipv6_address=v6,
            as_number=o.opt("asNumber", _asn),
            route_reflector_cluster_id=o.opt("routeReflectorClusterID", _dotted_quad),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ipv4Address": str(self.ipv4_address)}
        if self.ipv6_address is not None:
            out["ipv6Address"] = str(self.ipv6_address)
        if self.as_number is not None:
            out["asNumber"] = self.as_number
        if self.route_reflector_cluster_id is not None:
            out["routeReflectorClusterID"] = str(self.route_reflector_cluster_id)
        return out


@dataclass(frozen=True)
class NodeSpec:
    bgp: NodeBGPSpec | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> NodeSpec:
        o = _Obj(obj, path, ("bgp",))
        return cls(bgp=o.opt("bgp", NodeBGPSpec.from_dict))

    def to_dict(self) -> dict[str, Any]:
        return {} if self.bgp is None else {"bgp": self.bgp.to_dict()}


@dataclass(frozen=True)
class Node(SpecResource[NodeSpec]):
    """A host running the agent; its labels (``metadata.labels``) feed node selectors."""

    kind: ClassVar[str] = "Node"
    spec_type = NodeSpec
    body_required: ClassVar[bool] = False
    spec: NodeSpec = NodeSpec()


@dataclass(frozen=True)
class Namespace(Resource):
    """A Kubernetes namespace: only its labels matter here. Kubernetes manifests apply
    unchanged (``apiVersion: v1``; ``spec.finalizers`` and ``status`` are dropped)."""

    kind: ClassVar[str] = "Namespace"
    api_versions: ClassVar[tuple[str, ...]] = ("v1", API_VERSION)
    body_required: ClassVar[bool] = False
    ignored_top: ClassVar[tuple[str, ...]] = ("status",)

    NAME_LABEL: ClassVar[str] = "kubernetes.io/metadata.name"

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        o = _Obj(body, path, (), ("finalizers",))
        o.list("finalizers", _str)
        return cls(metadata)

    def _check(self) -> None:
        _dns_label(self.metadata.name, "metadata.name")

    def _body(self) -> None:
        return None

    @property
    def effective_labels(self) -> FrozenMap[str]:
        """The labels selectors see: stored labels plus the implied name label (which wins)."""
        return FrozenMap({**self.metadata.labels, self.NAME_LABEL: self.metadata.name})


# --- NodeStatus --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BGPPeerStatus:
    peer_ip: str
    state: str = "unknown"
    type: str | None = None  # "node-mesh", "global", "node", ... as the agent names it
    as_number: int | None = None
    since: str | None = None
    prefixes_in: int | None = None
    prefixes_out: int | None = None
    max_prefixes: int | None = None  # the peer's max-prefix limit in force
    info: str | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> BGPPeerStatus:
        o = _Obj(obj, path, (), permissive=True)
        return cls(
            peer_ip=o.req("peerIP", _str),
            state=o.get("state", _str, "unknown"),
            type=o.opt("type", _str),
            as_number=o.opt("asNumber", _int),
            since=o.opt("since", _str),
            prefixes_in=o.opt("prefixesIn", _int),
            prefixes_out=o.opt("prefixesOut", _int),
            max_prefixes=o.opt("maxPrefixes", _int),
            info=o.opt("info", _str),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peerIP": self.peer_ip, "state": self.state}
        for name, value in (
            ("type", self.type),
            ("asNumber", self.as_number),
            ("since", self.since),
            ("prefixesIn", self.prefixes_in),
            ("prefixesOut", self.prefixes_out),
            ("maxPrefixes", self.max_prefixes),
            ("info", self.info),
        ):
            if value is not None:
                out[name] = value
        return out


def _counts(v: Any, path: str) -> FrozenMap[int]:
    o = _Obj(v, path, (), permissive=True)
    return FrozenMap({k: _int(n, o.at(k)) for k, n in o.value.items()})


@dataclass(frozen=True)
class NodeStatusBody:
    """What the agent reports. Permissive on purpose: unknown fields are ignored (dropped),
    so an older ``fabricctl`` can read the status of a newer agent."""

    updated: str | None = None  # RFC 3339 timestamp
    bgp_peers: tuple[BGPPeerStatus, ...] = ()
    blocks: tuple[str, ...] = ()
    programmed: FrozenMap[int] = field(default_factory=FrozenMap)
    errors: tuple[str, ...] = ()
    in_sync: bool | None = None
    version: str | None = None  # the agent's l3fabric release (`datastore.version`)
    metrics: str | None = None  # the URL of the agent's /metrics (fabricctl policy stats)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> NodeStatusBody:
        o = _Obj(obj, path, (), permissive=True)
        bgp = _Obj(o.value.get("bgp") or {}, o.at("bgp"), (), permissive=True)
        return cls(
            updated=o.opt("updated", _str),
            bgp_peers=bgp.list("peers", BGPPeerStatus.from_dict),
            blocks=o.list("blocks", _str),
            programmed=o.get("programmed", _counts, FrozenMap()),
            errors=o.list("errors", _str),
            in_sync=o.opt("inSync", _bool),
            version=o.opt("version", _str),
            metrics=o.opt("metrics", _str),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.updated is not None:
            out["updated"] = self.updated
        if self.in_sync is not None:
            out["inSync"] = self.in_sync
        if self.version is not None:
            out["version"] = self.version
        if self.metrics is not None:
            out["metrics"] = self.metrics
        out["bgp"] = {"peers": [p.to_dict() for p in self.bgp_peers]}
        out["blocks"] = list(self.blocks)
        out["programmed"] = dict(self.programmed)
        out["errors"] = list(self.errors)
        return out


@dataclass(frozen=True)
class NodeStatus(Resource):
    """Written by the agent under a lease at ``status/nodes/<node>``; body under ``status``."""

    kind: ClassVar[str] = "NodeStatus"
    body_field: ClassVar[str] = "status"
    body_required: ClassVar[bool] = False
    status: NodeStatusBody = NodeStatusBody()

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, NodeStatusBody.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.status.to_dict()
