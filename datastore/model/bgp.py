"""BGP configuration kinds: BGPConfiguration (cluster defaults) and BGPPeer (a peering)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from datastore.calico_selector import Selector
from datastore.labelselector import (
    ValidationError,
)
from datastore.model.fields import (
    IPAddress,
    _address,
    _asn,
    _bool,
    _dns_subdomain,
    _int,
    _nonempty,
    _Obj,
    _opt_selector,
    _ranged,
    _str,
)
from datastore.model.resource import SpecResource

log = logging.getLogger(__name__)


#: Paths a node keeps from one BGP peer (``maxPrefixes``, like a router's ``neighbor X
#: maximum-prefix N``); new prefixes beyond it are refused (`bgp.rib`).
DEFAULT_MAX_PREFIXES = 10_000
MAX_PREFIXES_LIMIT = 1_000_000
_max_prefixes = _ranged(1, MAX_PREFIXES_LIMIT)


@dataclass(frozen=True)
class GracefulRestart:
    enabled: bool = False
    restart_time: int = 120  # seconds; a 12-bit field in the capability (RFC 4724)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> GracefulRestart:
        o = _Obj(obj, path, ("enabled", "restartTime"))
        return cls(
            enabled=o.get("enabled", _bool, False),
            restart_time=o.get("restartTime", _ranged(1, 4095), 120),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "restartTime": self.restart_time}


def _hold_time(v: Any, path: str) -> int:
    n = _int(v, path)
    if n != 0 and not 3 <= n <= 65535:
        raise ValidationError(None, path, f"{n} must be 0 or between 3 and 65535 (RFC 4271)")
    return n


_COMMUNITY = re.compile(r"(\d{1,5}):(\d{1,5})")


def _community(v: Any, path: str) -> str:
    s = _str(v, path)
    m = _COMMUNITY.fullmatch(s)
    if m is None or int(m[1]) > 65535 or int(m[2]) > 65535:
        raise ValidationError(None, path, f"{s!r} is not a community 'a:b' with a, b in 0..65535")
    return s


@dataclass(frozen=True)
class BGPConfigurationSpec:
    as_number: int = 64512
    node_to_node_mesh: bool = True
    hold_time: int = 90
    graceful_restart: GracefulRestart = GracefulRestart()
    communities: tuple[str, ...] = ()
    # The per-peer max-prefix limit of every session that does not set its own: the
    # node-to-node mesh, route-reflector sessions, BGPPeers without ``maxPrefixes``.
    max_prefixes: int = DEFAULT_MAX_PREFIXES

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> BGPConfigurationSpec:
        o = _Obj(
            obj,
            path,
            ("asNumber", "nodeToNodeMesh", "holdTime", "gracefulRestart", "communities",
             "maxPrefixes"),
        )
        return cls(
            as_number=o.get("asNumber", _asn, 64512),
            node_to_node_mesh=o.get("nodeToNodeMesh", _bool, True),
            hold_time=o.get("holdTime", _hold_time, 90),
            graceful_restart=o.get("gracefulRestart", GracefulRestart.from_dict, GracefulRestart()),
            communities=o.list("communities", _community),
            max_prefixes=o.get("maxPrefixes", _max_prefixes, DEFAULT_MAX_PREFIXES),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "asNumber": self.as_number,
            "nodeToNodeMesh": self.node_to_node_mesh,
            "holdTime": self.hold_time,
            "gracefulRestart": self.graceful_restart.to_dict(),
            "maxPrefixes": self.max_prefixes,
        }
        if self.communities:
            out["communities"] = list(self.communities)
        return out


@dataclass(frozen=True)
class BGPConfiguration(SpecResource[BGPConfigurationSpec]):
    """Cluster BGP defaults; the agent reads the one named ``default``."""

    kind: ClassVar[str] = "BGPConfiguration"
    spec_type = BGPConfigurationSpec
    body_required: ClassVar[bool] = False
    spec: BGPConfigurationSpec = BGPConfigurationSpec()


@dataclass(frozen=True)
class BGPPeerSpec:
    """A peering. ``node`` xor ``node_selector`` picks which nodes peer; neither = all.
    ``max_prefixes`` None: the BGPConfiguration's ``maxPrefixes`` (10,000 by default)."""

    peer_ip: IPAddress
    as_number: int
    node: str | None = None
    node_selector: Selector | None = None
    password: str | None = None
    ttl_security: int = 0
    route_reflector_client: bool = False
    local_as_number: int | None = None
    max_prefixes: int | None = None

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> BGPPeerSpec:
        o = _Obj(
            obj,
            path,
            (
                "peerIP",
                "asNumber",
                "node",
                "nodeSelector",
                "password",
                "ttlSecurity",
                "routeReflectorClient",
                "localASNumber",
                "maxPrefixes",
            ),
        )
        peer_ip = o.req("peerIP", _address)
        as_number = o.req("asNumber", _asn)
        node = o.opt("node", _dns_subdomain)
        node_selector = o.opt("nodeSelector", _opt_selector)
        if node is not None and node_selector is not None:
            raise ValidationError(
                None, o.at("nodeSelector"), "may not be specified together with node"
            )
        return cls(
            peer_ip=peer_ip,
            as_number=as_number,
            node=node,
            node_selector=node_selector,
            password=o.opt("password", _nonempty),
            ttl_security=o.get("ttlSecurity", _ranged(0, 255), 0),
            route_reflector_client=o.get("routeReflectorClient", _bool, False),
            local_as_number=o.opt("localASNumber", _asn),
            max_prefixes=o.opt("maxPrefixes", _max_prefixes),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peerIP": str(self.peer_ip), "asNumber": self.as_number}
        if self.node is not None:
            out["node"] = self.node
        if self.node_selector is not None:
            out["nodeSelector"] = str(self.node_selector)
        if self.password is not None:
            out["password"] = self.password
        out["ttlSecurity"] = self.ttl_security
        out["routeReflectorClient"] = self.route_reflector_client
        if self.local_as_number is not None:
            out["localASNumber"] = self.local_as_number
        if self.max_prefixes is not None:
            out["maxPrefixes"] = self.max_prefixes
        return out


@dataclass(frozen=True)
class BGPPeer(SpecResource[BGPPeerSpec]):
    kind: ClassVar[str] = "BGPPeer"
    spec_type = BGPPeerSpec
