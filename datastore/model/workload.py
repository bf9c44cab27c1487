"""WorkloadEndpoint: one pod interface, written by the CNI handler, keyed by node."""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from datastore.labelselector import (
    FrozenMap,
    ValidationError,
    check_labels,
)
from datastore.model.fields import (
    _DNS1123_LABEL,
    _DNS1123_SUBDOMAIN,
    _IFNAME,
    _L4_PROTOCOLS,
    _MAC,
    IPNetwork,
    _dns_subdomain,
    _ifname,
    _mac,
    _network,
    _nonempty,
    _Obj,
    _one_of,
    _port_name,
    _ranged,
    _str,
)
from datastore.model.resource import API_VERSION, Metadata, Resource

log = logging.getLogger(__name__)


def _interned(s: str | None) -> str | None:
    return None if s is None else sys.intern(s)


@dataclass(frozen=True)
class EndpointPort:
    """A named container port, for NetworkPolicy/GNP named-port matches."""

    name: str
    port: int
    protocol: str = "TCP"

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> EndpointPort:
        o = _Obj(obj, path, ("name", "port", "protocol"))
        return cls(
            name=o.req("name", _port_name),
            port=o.req("port", _ranged(1, 65535)),
            protocol=o.get("protocol", _one_of(*_L4_PROTOCOLS), "TCP"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "protocol": self.protocol}


@dataclass(frozen=True, slots=True)
class WorkloadEndpointSpec:
    """Slotted, with the strings that repeat over a node's or the cluster's endpoints
    (node, interface, MAC) interned: an agent holds every endpoint of the cluster."""

    node: str
    pod: str
    endpoint: str  # the interface inside the pod (CNI_IFNAME)
    container_id: str
    ip_networks: tuple[IPNetwork, ...] = ()
    mac: str | None = None
    host_interface: str | None = None
    labels: Mapping[str, str] = field(default_factory=FrozenMap)
    ports: tuple[EndpointPort, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.labels, FrozenMap):
            object.__setattr__(self, "labels", FrozenMap(self.labels))

    FIELDS: ClassVar[tuple[str, ...]] = (
        "node",
        "namespace",
        "pod",
        "endpoint",
        "containerID",
        "ipNetworks",
        "mac",
        "hostInterface",
        "labels",
        "ports",
    )

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> WorkloadEndpointSpec:
        o = _Obj(obj, path, cls.FIELDS)
        return cls(
            node=sys.intern(o.req("node", _dns_subdomain)),
            pod=o.req("pod", _dns_subdomain),
            endpoint=sys.intern(o.req("endpoint", _ifname)),
            container_id=o.req("containerID", _nonempty),
            ip_networks=o.list("ipNetworks", _network),
            mac=_interned(o.opt("mac", _mac)),
            host_interface=o.opt("hostInterface", _ifname),
            labels=check_labels(o.value.get("labels"), o.at("labels")),
            ports=o.list("ports", EndpointPort.from_dict),
        )

    def to_dict(self, namespace: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node,
            "namespace": namespace,
            "pod": self.pod,
            "endpoint": self.endpoint,
            "containerID": self.container_id,
            "ipNetworks": [str(n) for n in self.ip_networks],
        }
        if self.mac is not None:
            out["mac"] = self.mac
        if self.host_interface is not None:
            out["hostInterface"] = self.host_interface
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.ports:
            out["ports"] = [p.to_dict() for p in self.ports]
        return out


@dataclass(frozen=True, slots=True)
class WorkloadEndpoint(Resource):
    """One pod interface, written by the CNI handler. ``metadata.name`` is
    ``<pod>.<endpoint>`` and ``spec.namespace`` (optional) repeats ``metadata.namespace``,
    so the key ``workloads/<node>/<ns>.<pod>.<iface>`` follows from the object."""

    kind: ClassVar[str] = "WorkloadEndpoint"
    namespaced: ClassVar[bool] = True
    spec: WorkloadEndpointSpec

    @staticmethod
    def make_name(pod: str, endpoint: str) -> str:
        return f"{pod}.{endpoint}"

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        spec = WorkloadEndpointSpec.from_dict(body, path)
        ns = body.get("namespace")
        if ns is not None and _str(ns, f"{path}.namespace") != metadata.namespace:
            raise ValidationError(
                None,
                f"{path}.namespace",
                f"{ns!r} does not match metadata.namespace {metadata.namespace!r}",
            )
        return cls(metadata, spec)

    @classmethod
    def from_canonical(
        cls, obj: Mapping[str, Any], name: str, namespace: str, node: str
    ) -> WorkloadEndpoint | None:
        """The endpoint ``obj`` holds if it is in the form the CNI handler writes, checked
        in one pass; None for any other form, valid or not, which ``from_dict`` then reads
        (and words the error of). What this accepts ``from_dict`` accepts, giving an equal
        endpoint (``tests/unit/test_model_canonical.py`` holds it to that); an agent
        decodes every endpoint of the cluster, and this is 4-5 times cheaper.

        ``name``, ``namespace`` and ``node`` are the key's: the value must say the same."""
        md = obj.get("metadata")
        spec = obj.get("spec")
        if (
            len(obj) != 4
            or obj.get("apiVersion") != API_VERSION
            or obj.get("kind") != cls.kind
            or type(md) is not dict
            or type(spec) is not dict
            or md.get("name") != name
            or md.get("namespace") != namespace
            or not _CANONICAL_METADATA.issuperset(md)
            or not _CANONICAL_SPEC.issuperset(spec)
            or spec.get("node") != node
            or spec.get("namespace", namespace) != namespace
            or len(name) > 253
            or not _DNS1123_SUBDOMAIN.fullmatch(name)
            or len(namespace) > 63
            or not _DNS1123_LABEL.fullmatch(namespace)
            or len(node) > 253
            or not _DNS1123_SUBDOMAIN.fullmatch(node)
        ):
            return None
        pod, endpoint, cid = spec.get("pod"), spec.get("endpoint"), spec.get("containerID")
        mac, host_if = spec.get("mac"), spec.get("hostInterface")
        if (
            type(pod) is not str
            or type(endpoint) is not str
            or type(cid) is not str
            or not cid
            or name != f"{pod}.{endpoint}"
            or len(pod) > 253
            or not _DNS1123_SUBDOMAIN.fullmatch(pod)
            or not _IFNAME.fullmatch(endpoint)
            or (mac is not None and (type(mac) is not str or not _MAC.fullmatch(mac)))
            or (host_if is not None and (type(host_if) is not str
                                         or not _IFNAME.fullmatch(host_if)))
        ):
            return None
        nets = _canonical_networks(spec.get("ipNetworks"))
        if nets is None:
            return None
        ports = spec.get("ports")
        if ports is not None and type(ports) is not list:
            return None
        try:
            md_labels = check_labels(md.get("labels"), "metadata.labels")
            labels = check_labels(spec.get("labels"), "spec.labels")
            port_list = tuple(EndpointPort.from_dict(p, "spec.ports") for p in ports or ())
        except ValidationError:
            return None
        return cls(
            Metadata(name=name, namespace=sys.intern(namespace), labels=md_labels),
            WorkloadEndpointSpec(
                node=sys.intern(node),
                pod=pod,
                endpoint=sys.intern(endpoint),
                container_id=cid,
                ip_networks=nets,
                mac=_interned(mac),
                host_interface=host_if,
                labels=labels,
                ports=port_list,
            ),
        )

    def _check(self) -> None:
        want = self.make_name(self.spec.pod, self.spec.endpoint)
        if self.metadata.name != want:
            raise ValidationError(
                None, "metadata.name", f"{self.metadata.name!r} must be <pod>.<endpoint>: {want!r}"
            )

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict(self.metadata.namespace or "default")


# The fields of the form `WorkloadEndpoint.from_canonical` reads (metadata without
# annotations or a Kubernetes server's fields: those endpoints take the general path).
_CANONICAL_METADATA = frozenset(("name", "namespace", "labels"))
_CANONICAL_SPEC = frozenset(WorkloadEndpointSpec.FIELDS)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"  # no leading zeros, as ipaddress
_HOST_V4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}/32")


def _canonical_networks(value: Any) -> tuple[IPNetwork, ...] | None:
    """Host networks (``a.b.c.d/32``, ``…/128``) as the handler writes them, or None."""
    if type(value) is not list:
        return None if value is not None else ()
    out: list[IPNetwork] = []
    for text in value:
        if type(text) is not str:
            return None
        if _HOST_V4.fullmatch(text):
            a, b, c, d = text[:-3].split(".")
            out.append(ipaddress.IPv4Network(
                ((int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d), 32)))
        elif text.endswith("/128") and "%" not in text and ":" in text:
            try:
                out.append(ipaddress.IPv6Network(text))
            except ValueError:
                return None
        else:
            return None
    return tuple(out)
