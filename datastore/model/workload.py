"""WorkloadEndpoint: one pod interface, written by the CNI handler, keyed by node."""

from __future__ import annotations

import logging
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
    _L4_PROTOCOLS,
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
from datastore.model.resource import Metadata, Resource

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

    def _check(self) -> None:
        want = self.make_name(self.spec.pod, self.spec.endpoint)
        if self.metadata.name != want:
            raise ValidationError(
                None, "metadata.name", f"{self.metadata.name!r} must be <pod>.<endpoint>: {want!r}"
            )

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict(self.metadata.namespace or "default")
