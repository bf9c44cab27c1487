"""Node agent settings, FelixConfiguration (the agent reads the one named ``default``), and
HostEndpoint, a node's own interfaces as a policy endpoint.

Owned here: the outgoing NAT exclusions (``nonMasqueradeCIDRs``) and the failsafe host
ports, which stay open whatever a policy on a host endpoint says, so an operator cannot
lock a node out of SSH, BGP, etcd or the API server. The field names and the defaults
are Calico's FelixConfiguration's (``failsafeInboundHostPorts``,
``failsafeOutboundHostPorts``); ``nonMasqueradeCIDRs`` is ip-masq-agent's name for the
destinations outgoing NAT never rewrites for.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from datastore.labelselector import ValidationError
from datastore.model.fields import (
    IPAddress,
    IPNetwork,
    _address,
    _dns_subdomain,
    _network,
    _Obj,
    _ranged,
    _str,
)
from datastore.model.resource import SpecResource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtoPort:
    """One failsafe port: ``{"protocol": "TCP", "port": 22}``."""

    protocol: str
    port: int

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> ProtoPort:
        o = _Obj(obj, path, ("protocol", "port"))
        proto = o.get("protocol", _str, "TCP").upper()
        if proto not in ("TCP", "UDP", "SCTP"):
            raise ValidationError(None, o.at("protocol"), f"{proto!r} is not TCP, UDP or SCTP")
        return cls(proto, o.req("port", _ranged(0, 65535)))

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "port": self.port}


def _ports(spec: str) -> tuple[ProtoPort, ...]:
    """``"tcp:22,udp:68"`` -> ProtoPorts (a compact way to write the defaults)."""
    out = []
    for item in spec.split(","):
        proto, _, port = item.partition(":")
        out.append(ProtoPort(proto.upper(), int(port)))
    return tuple(out)


#: Calico's defaults: SSH, BGP, etcd, the Kubernetes API server and DHCP in; BGP, etcd,
#: the API server, DNS and DHCP out.
DEFAULT_FAILSAFE_INBOUND = _ports("tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:6443")
DEFAULT_FAILSAFE_OUTBOUND = _ports(
    "udp:53,udp:67,tcp:53,tcp:179,tcp:2379,tcp:2380,tcp:6443")


@dataclass(frozen=True)
class FelixConfigurationSpec:
    non_masquerade_cidrs: tuple[IPNetwork, ...] = ()
    failsafe_inbound_host_ports: tuple[ProtoPort, ...] = DEFAULT_FAILSAFE_INBOUND
    failsafe_outbound_host_ports: tuple[ProtoPort, ...] = DEFAULT_FAILSAFE_OUTBOUND

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> FelixConfigurationSpec:
        o = _Obj(obj, path, ("nonMasqueradeCIDRs", "failsafeInboundHostPorts",
                             "failsafeOutboundHostPorts"))
        return cls(
            non_masquerade_cidrs=o.list("nonMasqueradeCIDRs", _network),
            failsafe_inbound_host_ports=(
                o.list("failsafeInboundHostPorts", ProtoPort.from_dict)
                if o.has("failsafeInboundHostPorts") else DEFAULT_FAILSAFE_INBOUND),
            failsafe_outbound_host_ports=(
                o.list("failsafeOutboundHostPorts", ProtoPort.from_dict)
                if o.has("failsafeOutboundHostPorts") else DEFAULT_FAILSAFE_OUTBOUND),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "nonMasqueradeCIDRs": [str(n) for n in self.non_masquerade_cidrs],
            "failsafeInboundHostPorts": [p.to_dict() for p in self.failsafe_inbound_host_ports],
            "failsafeOutboundHostPorts": [p.to_dict()
                                          for p in self.failsafe_outbound_host_ports],
        }


@dataclass(frozen=True)
class FelixConfiguration(SpecResource[FelixConfigurationSpec]):
    """Node agent settings; the agent reads the one named ``default`` (absent: defaults)."""

    kind: ClassVar[str] = "FelixConfiguration"
    spec_type = FelixConfigurationSpec
    body_required: ClassVar[bool] = False
    spec: FelixConfigurationSpec = FelixConfigurationSpec()


_HOST_IFNAME = re.compile(r"[^\s/:]{1,15}")


@dataclass(frozen=True)
class HostEndpointSpec:
    """Which of a node's interfaces (``interfaceName``; ``*`` all of them) or addresses
    (``expectedIPs``) the endpoint stands for; Calico's field names."""

    node: str
    interface_name: str | None = None
    expected_ips: tuple[IPAddress, ...] = ()

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> HostEndpointSpec:
        o = _Obj(obj, path, ("node", "interfaceName", "expectedIPs"))
        iface = o.opt("interfaceName", _str)
        if iface is not None and iface != "*" and not _HOST_IFNAME.fullmatch(iface):
            raise ValidationError(None, o.at("interfaceName"),
                                  f"{iface!r} is not '*' or an interface name (1-15 "
                                  "characters, no space, '/' or ':')")
        spec = cls(o.req("node", _dns_subdomain), iface, o.list("expectedIPs", _address))
        if spec.interface_name is None and not spec.expected_ips:
            raise ValidationError(None, path, "interfaceName or expectedIPs is required")
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node}
        if self.interface_name is not None:
            out["interfaceName"] = self.interface_name
        if self.expected_ips:
            out["expectedIPs"] = [str(a) for a in self.expected_ips]
        return out


@dataclass(frozen=True)
class HostEndpoint(SpecResource[HostEndpointSpec]):
    """A node's own interfaces as a policy endpoint: GlobalNetworkPolicies select it by
    its labels (felix_like.policy.hostep)."""

    kind: ClassVar[str] = "HostEndpoint"
    spec_type = HostEndpointSpec
