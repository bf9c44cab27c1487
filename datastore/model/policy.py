"""The typed resource model of l3fabric (DESIGN §3): every kind stored in etcd, validated.

Owned here: one frozen dataclass per kind, the ``apiVersion``/``kind``/``metadata``/``spec``
framing, strict validation (unknown fields, wrong types and out-of-range values are errors
naming the JSON field path), and the bytes <-> resource codec used for etcd values.

Invariants:

* A resource object that exists is valid: the only ways to build one from data are
  ``from_dict``/``parse_document``/``decode``, and they validate everything.
* ``Cls.from_dict(res.to_dict()) == res`` for every resource, and ``to_dict`` is the framed
  object written to etcd (``encode``) and shown by ``fabricctl get -o yaml``.
* Everything is immutable and hashable (labels are :class:`FrozenMap`, lists are tuples,
  selectors are canonical ASTs), so the calculation layer can use resources as dict keys
  and compare old with new cheaply.

Failure mode: a bad value raises :class:`ValidationError` ``"<key>: <path>: <message>"``
(key relative to ``/l3fabric/v1/``). The agent then keeps the last good version of that key
(DESIGN §3); nothing here logs or counts, that is the caller's job.

Conventions of the wire format: JSON ``null`` is the same as an absent field (as in
Kubernetes); namespaced kinds without ``metadata.namespace`` are in ``default`` (as with
kubectl); Kubernetes server-populated metadata (``uid``, ``resourceVersion``,
``creationTimestamp``, ...) is accepted and dropped so ``kubectl get -o yaml`` output
applies unchanged.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self, TypeVar

from datastore import keys
from datastore.labelselector import (
    FrozenMap,
    LabelSelector,
    ValidationError,
    check_label_key,
    check_labels,
    type_name,
)
from datastore.selector import All, Selector, SelectorError, parse_selector

log = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "DEFAULT_MAX_PREFIXES",
    "KINDS",
    "MAX_PREFIXES_LIMIT",
    "MAX_VALUE_BYTES",
    "BGPConfiguration",
    "BGPConfigurationSpec",
    "BGPPeer",
    "BGPPeerSpec",
    "BGPPeerStatus",
    "EndpointPort",
    "EntityRule",
    "FrozenMap",
    "GlobalNetworkPolicy",
    "GlobalNetworkPolicySpec",
    "GracefulRestart",
    "ICMPMatch",
    "IPAMConfig",
    "IPAMConfigSpec",
    "IPBlock",
    "IPPool",
    "IPPoolSpec",
    "IPReservation",
    "IPReservationSpec",
    "Metadata",
    "Namespace",
    "NetworkPolicy",
    "NetworkPolicyPeer",
    "NetworkPolicyPort",
    "NetworkPolicyRule",
    "NetworkPolicySpec",
    "Node",
    "NodeBGPSpec",
    "NodeSpec",
    "NodeStatus",
    "NodeStatusBody",
    "PortMatch",
    "Resource",
    "Rule",
    "ValidationError",
    "WorkloadEndpoint",
    "WorkloadEndpointSpec",
    "decode",
    "encode",
    "key_for",
    "key_prefix_for_kind",
    "parse_document",
    "resolve_kind",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

T = TypeVar("T")

#: Values larger than this are rejected by ``decode`` without parsing (etcd's default
#: request limit is 1.5 MiB; no valid resource of ours comes near 1 MiB).
MAX_VALUE_BYTES = 1 << 20

API_VERSION = "l3fabric.io/v1"

SELECT_ALL: Selector = All()


# --- field readers ---------------------------------------------------------------------------


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Obj:
    """One JSON object being read. Unknown fields are rejected up front, before any other
    check, so a typo is reported as the typo and not as the missing field it shadows."""

    def __init__(
        self,
        value: Any,
        path: str,
        allowed: Collection[str],
        ignored: Collection[str] = (),
        *,
        permissive: bool = False,
    ) -> None:
        if not isinstance(value, Mapping):
            raise ValidationError(None, path, f"expected an object, got {type_name(value)}")
        for k in value:
            if not isinstance(k, str):
                raise ValidationError(None, path, f"expected string keys, got {type_name(k)}")
            if k not in allowed and k not in ignored and not permissive:
                raise ValidationError(None, _join(path, k), "unknown field")
        self.value = value
        self.path = path

    def at(self, name: str) -> str:
        return _join(self.path, name)

    def has(self, name: str) -> bool:
        return self.value.get(name) is not None

    def req(self, name: str, conv: Callable[[Any, str], T]) -> T:
        v = self.value.get(name)
        if v is None:
            raise ValidationError(None, self.at(name), "required")
        return conv(v, self.at(name))

    def opt(self, name: str, conv: Callable[[Any, str], T]) -> T | None:
        v = self.value.get(name)
        return None if v is None else conv(v, self.at(name))

    def get(self, name: str, conv: Callable[[Any, str], T], default: T) -> T:
        v = self.value.get(name)
        return default if v is None else conv(v, self.at(name))

    def list(self, name: str, conv: Callable[[Any, str], T]) -> tuple[T, ...]:
        v = self.value.get(name)
        if v is None:
            return ()
        items = _list(v, self.at(name))
        return tuple(conv(item, f"{self.at(name)}[{i}]") for i, item in enumerate(items))


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise ValidationError(None, path, f"expected a string, got {type_name(v)}")
    return v


def _nonempty(v: Any, path: str) -> str:
    s = _str(v, path)
    if not s:
        raise ValidationError(None, path, "must not be empty")
    return s


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ValidationError(None, path, f"expected a bool, got {type_name(v)}")
    return v


def _int(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)  # JSON writers that only have doubles
        raise ValidationError(None, path, f"expected an int, got {type_name(v)}")
    return v


def _ranged(lo: int, hi: int) -> Callable[[Any, str], int]:
    def conv(v: Any, path: str) -> int:
        n = _int(v, path)
        if not lo <= n <= hi:
            raise ValidationError(None, path, f"{n} is not between {lo} and {hi}")
        return n

    return conv


def _float(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValidationError(None, path, f"expected a number, got {type_name(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise ValidationError(None, path, f"{v} is not a finite number")
    return f


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise ValidationError(None, path, f"expected a list, got {type_name(v)}")
    return list(v)


def _one_of(*allowed: str) -> Callable[[Any, str], str]:
    def conv(v: Any, path: str) -> str:
        s = _str(v, path)
        if s not in allowed:
            raise ValidationError(None, path, f"{s!r} is not one of {', '.join(allowed)}")
        return s

    return conv


def _unique(values: tuple[T, ...], path: str) -> tuple[T, ...]:
    seen: set[T] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ValidationError(None, f"{path}[{i}]", f"duplicate value {v!r}")
        seen.add(v)
    return values


def _selector(v: Any, path: str) -> Selector:
    text = _str(v, path)
    try:
        return parse_selector(text)
    except SelectorError as e:
        raise ValidationError(None, path, f"invalid selector {text!r}: {e}") from None


def _opt_selector(v: Any, path: str) -> Selector | None:
    """For fields where an empty string means "no constraint" rather than ``all()``."""
    return None if _str(v, path).strip() == "" else _selector(v, path)


def _reject_oddities(text: str, path: str) -> None:
    # ipaddress accepts netmask prefixes (/255.0.0.0) and IPv6 zone ids; we do not.
    if "%" in text:
        raise ValidationError(None, path, f"{text!r}: zone ids are not allowed")


def _network(v: Any, path: str, *, bare_ip: bool = False) -> IPNetwork:
    """A CIDR with no host bits set. ``bare_ip`` also takes ``10.0.0.1`` as ``10.0.0.1/32``."""
    text = _str(v, path)
    _reject_oddities(text, path)
    addr, slash, plen = text.partition("/")
    if not slash and not bare_ip:
        raise ValidationError(None, path, f"{text!r} is not a CIDR (expected address/prefix)")
    if slash and not plen.isdigit():
        raise ValidationError(None, path, f"{text!r} is not a valid CIDR")
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValidationError(None, path, f"{text!r} is not a valid CIDR") from None
    if loose.network_address != ipaddress.ip_address(addr):
        raise ValidationError(None, path, f"{text!r} has host bits set (the network is {loose})")
    return loose


def _address(v: Any, path: str) -> IPAddress:
    text = _str(v, path)
    _reject_oddities(text, path)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValidationError(None, path, f"{text!r} is not a valid IP address") from None


def _interface(version: int) -> Callable[[Any, str], IPInterface]:
    """An address in CIDR form, ``10.77.1.1/30`` (Calico's Node address format)."""
    example = "10.77.1.1/30" if version == 4 else "fd00:77::1/64"

    def conv(v: Any, path: str) -> IPInterface:
        text = _str(v, path)
        _reject_oddities(text, path)
        _, slash, plen = text.partition("/")
        if not slash or not plen.isdigit():
            raise ValidationError(
                None, path, f"{text!r}: expected an address in CIDR form like {example}"
            )
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise ValidationError(None, path, f"{text!r} is not a valid address/prefix") from None
        if iface.version != version:
            raise ValidationError(None, path, f"{text!r} is not an IPv{version} address")
        return iface

    return conv


_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _dns_subdomain(v: Any, path: str) -> str:
    s = _nonempty(v, path)
    if len(s) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(s):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not a DNS-1123 subdomain (at most 253 lowercase alphanumerics, '-' "
            "and '.', starting and ending with an alphanumeric)",
        )
    return s


def _dns_label(v: Any, path: str) -> str:
    s = _nonempty(v, path)
    if len(s) > 63 or not _DNS1123_LABEL.fullmatch(s):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not a DNS-1123 label (at most 63 lowercase alphanumerics and '-', "
            "starting and ending with an alphanumeric)",
        )
    return s


_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _port_name(v: Any, path: str) -> str:
    """IANA_SVC_NAME (RFC 6335), as Kubernetes validates named ports."""
    s = _nonempty(v, path)
    if (
        len(s) > 15
        or not _IANA_SVC_NAME.fullmatch(s)
        or "--" in s
        or not any(c.isalpha() for c in s)
    ):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not a valid port name (at most 15 lowercase alphanumerics and '-', "
            "at least one letter, no leading, trailing or double '-')",
        )
    return s


_IFNAME = re.compile(r"[^\s/:.]{1,15}")


def _ifname(v: Any, path: str) -> str:
    """A Linux interface name; '.' is excluded too because it separates key parts."""
    s = _nonempty(v, path)
    if not _IFNAME.fullmatch(s):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not an interface name (1-15 characters, no space, '/', ':' or '.')",
        )
    return s


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _mac(v: Any, path: str) -> str:
    s = _str(v, path).lower()
    if not _MAC.fullmatch(s):
        raise ValidationError(None, path, f"{s!r} is not a MAC address like ee:ee:ee:ee:ee:ee")
    return s


def _int_out(f: float) -> float | int:
    return int(f) if f.is_integer() else f


# --- metadata ----------------------------------------------------------------------------------

# Written by a Kubernetes API server; accepted so its output applies, then dropped.
_K8S_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
)


def _annotations(v: Any, path: str) -> FrozenMap[str]:
    o = _Obj(v, path, (), permissive=True)
    for k, val in o.value.items():
        check_label_key(k, o.at(k))
        _str(val, o.at(k))
    return FrozenMap(o.value)


@dataclass(frozen=True)
class Metadata:
    """Identity and labels. ``revision`` is the etcd ``mod_revision`` the resource was read
    at; it is never stored, does not take part in equality, and is None for parsed files."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=FrozenMap)
    annotations: Mapping[str, str] = field(default_factory=FrozenMap)
    revision: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Code that builds metadata by hand may pass dicts; keep the object hashable.
        for name in ("labels", "annotations"):
            value = getattr(self, name)
            if not isinstance(value, FrozenMap):
                object.__setattr__(self, name, FrozenMap(value))

    @classmethod
    def from_dict(cls, obj: Any, path: str, *, namespaced: bool) -> Metadata:
        o = _Obj(obj, path, ("name", "namespace", "labels", "annotations"), _K8S_SERVER_METADATA)
        name = o.req("name", _dns_subdomain)
        namespace: str | None = None
        if namespaced:
            namespace = o.get("namespace", _dns_label, "default")
        elif o.has("namespace"):
            raise ValidationError(None, o.at("namespace"), "this kind is not namespaced")
        return cls(
            name=name,
            namespace=namespace,
            labels=check_labels(o.value.get("labels"), o.at("labels")),
            annotations=o.get("annotations", _annotations, FrozenMap()),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


# --- resource base -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """Base of every kind. Subclasses add one ``spec`` field (``status`` for NodeStatus)."""

    kind: ClassVar[str]
    api_versions: ClassVar[tuple[str, ...]] = (API_VERSION,)
    namespaced: ClassVar[bool] = False
    # The top-level field holding the body, and whether a document may leave it out.
    body_field: ClassVar[str] = "spec"
    body_required: ClassVar[bool] = True
    # Top-level fields accepted and dropped (Kubernetes ``status`` of k8s kinds).
    ignored_top: ClassVar[tuple[str, ...]] = ()

    metadata: Metadata

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Self:
        top = _Obj(obj, "", ("apiVersion", "kind", "metadata", cls.body_field), cls.ignored_top)
        api = top.req("apiVersion", _str)
        if api not in cls.api_versions:
            raise ValidationError(
                None,
                "apiVersion",
                f"{api!r} is not valid for {cls.kind} (use {' or '.join(cls.api_versions)})",
            )
        kind = top.req("kind", _str)
        if kind != cls.kind:
            raise ValidationError(None, "kind", f"expected {cls.kind!r}, got {kind!r}")
        md = top.req("metadata", lambda v, p: Metadata.from_dict(v, p, namespaced=cls.namespaced))
        body = obj.get(cls.body_field)
        if body is None:
            if cls.body_required:
                raise ValidationError(None, cls.body_field, "required")
            body = {}
        res = cls._build(md, body, cls.body_field)
        res._check()
        return res

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        raise NotImplementedError

    def _check(self) -> None:
        """Cross-checks between metadata and the body; subclasses override."""

    def _body(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def validated(self) -> Self:
        """This resource run through the same checks as ``from_dict``; for objects built in
        code (the CNI handler's WorkloadEndpoint, the agent's NodeStatus) before writing."""
        return self.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": self.api_versions[0],
            "kind": self.kind,
            "metadata": self.metadata.to_dict(),
        }
        body = self._body()
        if body is not None:
            out[self.body_field] = body
        return out


# --- IPPool, IPAMConfig, IPReservation ---------------------------------------------------------

# (family, smallest block prefix, largest block prefix, default block size)
_BLOCK_SIZES: dict[int, tuple[int, int, int]] = {4: (20, 32, 26), 6: (116, 128, 122)}


@dataclass(frozen=True)
class IPPoolSpec:
    cidr: IPNetwork
    block_size: int
    node_selector: Selector = SELECT_ALL
    disabled: bool = False

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> IPPoolSpec:
        o = _Obj(obj, path, ("cidr", "blockSize", "nodeSelector", "disabled"))
        cidr = o.req("cidr", _network)
        lo, hi, default = _BLOCK_SIZES[cidr.version]
        block_size = o.get("blockSize", _ranged(lo, hi), default)
        if cidr.prefixlen > block_size:
            raise ValidationError(
                None,
                o.at("blockSize"),
                f"{block_size} is larger than the pool {cidr} (prefix length must be at most "
                "the block size)",
            )
        return cls(
            cidr=cidr,
            block_size=block_size,
            node_selector=o.get("nodeSelector", _selector, SELECT_ALL),
            disabled=o.get("disabled", _bool, False),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cidr": str(self.cidr),
            "blockSize": self.block_size,
            "nodeSelector": str(self.node_selector),
            "disabled": self.disabled,
        }


@dataclass(frozen=True)
class IPPool(Resource):
    """A range pods get addresses from, carved into blocks of ``block_size`` per node."""

    kind: ClassVar[str] = "IPPool"
    spec: IPPoolSpec

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, IPPoolSpec.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


@dataclass(frozen=True)
class IPAMConfigSpec:
    strict_affinity: bool = False
    max_blocks_per_host: int = 0  # 0 = unlimited
    release_cooldown_seconds: int = 0

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> IPAMConfigSpec:
        o = _Obj(obj, path, ("strictAffinity", "maxBlocksPerHost", "releaseCooldownSeconds"))
        return cls(
            strict_affinity=o.get("strictAffinity", _bool, False),
            max_blocks_per_host=o.get("maxBlocksPerHost", _ranged(0, 1 << 31), 0),
            release_cooldown_seconds=o.get("releaseCooldownSeconds", _ranged(0, 1 << 31), 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "strictAffinity": self.strict_affinity,
            "maxBlocksPerHost": self.max_blocks_per_host,
            "releaseCooldownSeconds": self.release_cooldown_seconds,
        }


@dataclass(frozen=True)
class IPAMConfig(Resource):
    """Cluster-wide IPAM settings; one object named ``default`` at ``ipam/config``."""

    kind: ClassVar[str] = "IPAMConfig"
    body_required: ClassVar[bool] = False
    spec: IPAMConfigSpec = IPAMConfigSpec()

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, IPAMConfigSpec.from_dict(body, path))

    def _check(self) -> None:
        if self.metadata.name != "default":
            raise ValidationError(None, "metadata.name", "the IPAMConfig must be named 'default'")

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


@dataclass(frozen=True)
class IPReservationSpec:
    reserved_cidrs: tuple[IPNetwork, ...]

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> IPReservationSpec:
        o = _Obj(obj, path, ("reservedCIDRs",))
        if not o.has("reservedCIDRs"):
            raise ValidationError(None, o.at("reservedCIDRs"), "required")
        return cls(o.list("reservedCIDRs", lambda v, p: _network(v, p, bare_ip=True)))

    def to_dict(self) -> dict[str, Any]:
        return {"reservedCIDRs": [str(n) for n in self.reserved_cidrs]}


@dataclass(frozen=True)
class IPReservation(Resource):
    """Addresses IPAM never hands out (bare addresses are stored as /32 or /128)."""

    kind: ClassVar[str] = "IPReservation"
    spec: IPReservationSpec

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, IPReservationSpec.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


# --- BGP ---------------------------------------------------------------------------------------

_asn = _ranged(1, 4294967295)

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
class BGPConfiguration(Resource):
    """Cluster BGP defaults; the agent reads the one named ``default``."""

    kind: ClassVar[str] = "BGPConfiguration"
    body_required: ClassVar[bool] = False
    spec: BGPConfigurationSpec = BGPConfigurationSpec()

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, BGPConfigurationSpec.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


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
class BGPPeer(Resource):
    kind: ClassVar[str] = "BGPPeer"
    spec: BGPPeerSpec

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, BGPPeerSpec.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


# --- Node, Namespace ---------------------------------------------------------------------------


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
class Node(Resource):
    """A host running the agent; its labels (``metadata.labels``) feed node selectors."""

    kind: ClassVar[str] = "Node"
    body_required: ClassVar[bool] = False
    spec: NodeSpec = NodeSpec()

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, NodeSpec.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


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


# --- NetworkPolicy (networking.k8s.io/v1) ------------------------------------------------------

_L4_PROTOCOLS = ("TCP", "UDP", "SCTP")


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
class NetworkPolicy(Resource):
    """A Kubernetes NetworkPolicy, schema and semantics unchanged."""

    kind: ClassVar[str] = "NetworkPolicy"
    api_versions: ClassVar[tuple[str, ...]] = ("networking.k8s.io/v1",)
    namespaced: ClassVar[bool] = True
    body_required: ClassVar[bool] = False
    ignored_top: ClassVar[tuple[str, ...]] = ("status",)
    spec: NetworkPolicySpec = NetworkPolicySpec()

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, NetworkPolicySpec.from_dict(body, path))

    @property
    def effective_policy_types(self) -> tuple[str, ...]:
        return self.spec.effective_policy_types

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


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

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> GlobalNetworkPolicySpec:
        o = _Obj(
            obj, path, ("order", "selector", "namespaceSelector", "types", "ingress", "egress")
        )
        spec = cls(
            order=o.opt("order", _float),
            selector=o.get("selector", _selector, SELECT_ALL),
            namespace_selector=o.opt("namespaceSelector", _opt_selector),
            types=_unique(o.list("types", _one_of("Ingress", "Egress")), o.at("types")),
            ingress=o.list("ingress", Rule.from_dict),
            egress=o.list("egress", Rule.from_dict),
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
        return out


@dataclass(frozen=True)
class GlobalNetworkPolicy(Resource):
    kind: ClassVar[str] = "GlobalNetworkPolicy"
    body_required: ClassVar[bool] = False
    spec: GlobalNetworkPolicySpec = GlobalNetworkPolicySpec()

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, GlobalNetworkPolicySpec.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()


# --- WorkloadEndpoint --------------------------------------------------------------------------


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


@dataclass(frozen=True)
class WorkloadEndpointSpec:
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
            node=o.req("node", _dns_subdomain),
            pod=o.req("pod", _dns_subdomain),
            endpoint=o.req("endpoint", _ifname),
            container_id=o.req("containerID", _nonempty),
            ip_networks=o.list("ipNetworks", _network),
            mac=o.opt("mac", _mac),
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


@dataclass(frozen=True)
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
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.updated is not None:
            out["updated"] = self.updated
        if self.in_sync is not None:
            out["inSync"] = self.in_sync
        if self.version is not None:
            out["version"] = self.version
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


# --- registry, keys, codec ---------------------------------------------------------------------

KINDS: dict[str, type[Resource]] = {
    cls.kind: cls
    for cls in (
        IPPool,
        IPAMConfig,
        BGPConfiguration,
        BGPPeer,
        Node,
        Namespace,
        NetworkPolicy,
        GlobalNetworkPolicy,
        WorkloadEndpoint,
        IPReservation,
        NodeStatus,
    )
}

ALIASES: dict[str, str] = {
    **{kind.lower(): kind for kind in KINDS},
    "ippools": "IPPool",
    "ipamconfigs": "IPAMConfig",
    "bgpconfig": "BGPConfiguration",
    "bgpconfigs": "BGPConfiguration",
    "bgpconfigurations": "BGPConfiguration",
    "bgppeers": "BGPPeer",
    "nodes": "Node",
    "namespaces": "Namespace",
    "ns": "Namespace",
    "networkpolicies": "NetworkPolicy",
    "netpol": "NetworkPolicy",
    "netpols": "NetworkPolicy",
    "globalnetworkpolicies": "GlobalNetworkPolicy",
    "gnp": "GlobalNetworkPolicy",
    "workloadendpoints": "WorkloadEndpoint",
    "wep": "WorkloadEndpoint",
    "weps": "WorkloadEndpoint",
    "ipreservations": "IPReservation",
    "nodestatuses": "NodeStatus",
}


def resolve_kind(name: str) -> type[Resource]:
    """The class for a kind or CLI alias (case-insensitive); KeyError names the known kinds."""
    kind = ALIASES.get(name.lower())
    if kind is None:
        raise KeyError(f"unknown kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[kind]


# kind -> (list prefix relative to keys.PREFIX)
_PREFIXES: dict[str, str] = {
    "IPPool": keys.IPPOOLS,
    "IPAMConfig": keys.IPAM_CONFIG,
    "BGPConfiguration": keys.BGP_CONFIGS,
    "BGPPeer": keys.BGP_PEERS,
    "Node": keys.NODES,
    "Namespace": keys.NAMESPACES,
    "NetworkPolicy": keys.POLICIES,
    "GlobalNetworkPolicy": keys.GLOBAL_POLICIES,
    "WorkloadEndpoint": keys.WORKLOADS,
    "IPReservation": keys.IPAM_RESERVATIONS,
    "NodeStatus": keys.NODE_STATUS,
}


def key_prefix_for_kind(kind: str, namespace: str | None = None) -> str:
    """The absolute etcd prefix to list ``kind`` (a kind or alias) under.

    With ``namespace``, NetworkPolicy narrows to ``policies/<ns>/``. WorkloadEndpoint keys
    are grouped by node, not namespace, so for them the caller filters by namespace.
    """
    cls = resolve_kind(kind)
    if cls is NetworkPolicy and namespace is not None:
        return keys.full(f"{keys.POLICIES}{namespace}/")
    return keys.full(_PREFIXES[cls.kind])


def key_for(res: Resource) -> str:
    """The absolute etcd key ``res`` is stored at."""
    name = res.metadata.name
    if isinstance(res, NetworkPolicy):
        return keys.policy(res.metadata.namespace or "default", name)
    if isinstance(res, WorkloadEndpoint):
        s = res.spec
        return keys.workload(s.node, res.metadata.namespace or "default", s.pod, s.endpoint)
    if isinstance(res, IPAMConfig):
        return keys.ipam_config()
    by_kind: dict[str, Callable[[str], str]] = {
        "IPPool": keys.ippool,
        "BGPConfiguration": keys.bgp_config,
        "BGPPeer": keys.bgppeer,
        "Node": keys.node,
        "Namespace": keys.namespace,
        "GlobalNetworkPolicy": keys.global_policy,
        "IPReservation": keys.ipam_reservation,
        "NodeStatus": keys.node_status,
    }
    return by_kind[res.kind](name)


def encode(res: Resource) -> bytes:
    """The compact JSON value stored in etcd for ``res``."""
    return json.dumps(res.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def parse_document(obj: Any) -> Resource:
    """Validate one YAML/JSON document (``fabricctl apply``); its ``kind`` picks the class."""
    if not isinstance(obj, Mapping):
        raise ValidationError(None, "", f"expected an object, got {type_name(obj)}")
    kind = obj.get("kind")
    if kind is None:
        raise ValidationError(None, "kind", "required")
    if not isinstance(kind, str):
        raise ValidationError(None, "kind", f"expected a string, got {type_name(kind)}")
    cls = KINDS.get(kind)
    if cls is None:
        raise ValidationError(
            None, "kind", f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})"
        )
    return cls.from_dict(obj)


def decode(key: str, value: bytes, revision: int | None = None) -> Resource:
    """Parse and validate the etcd value at ``key``; it must be the kind the key holds and
    name the same resource. A value without ``metadata.name``/``namespace`` takes them from
    the key (handy with ``etcdctl put``). ``revision`` goes into ``metadata.revision``.
    Every error is a ValidationError naming the key relative to ``/l3fabric/v1/``."""
    try:
        rel = keys.relative(key)
    except ValueError:
        raise ValidationError(key, "", "not an l3fabric key") from None
    where = keys.parse(key)
    if where is None:
        raise ValidationError(rel, "", "not a key that holds a resource")
    if len(value) > MAX_VALUE_BYTES:
        raise ValidationError(
            rel, "", f"value is {len(value)} bytes, more than the {MAX_VALUE_BYTES} byte limit"
        )
    try:
        # Decode explicitly: json.loads(bytes) would guess UTF-16/32 from the first bytes.
        obj = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValidationError(rel, "", "value is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValidationError(
            rel, "", f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise ValidationError(rel, "", "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValidationError(rel, "", f"expected a JSON object, got {type_name(obj)}")
    kind = obj.get("kind")
    if isinstance(kind, str) and kind != where.kind:
        raise ValidationError(
            rel, "kind", f"{kind!r} does not match the key, which holds {where.kind}"
        )
    md = obj.get("metadata")
    if isinstance(md, dict):
        fill = {"name": where.name}
        if where.namespace is not None:
            fill["namespace"] = where.namespace
        obj = {**obj, "metadata": {**fill, **md}}
    try:
        res = parse_document(obj)
    except ValidationError as e:
        raise e.with_key(rel) from None
    if res.metadata.namespace != where.namespace:
        raise ValidationError(
            rel,
            "metadata.namespace",
            f"{res.metadata.namespace!r} does not match the key's namespace {where.namespace!r}",
        )
    if res.metadata.name != where.name:
        raise ValidationError(
            rel,
            "metadata.name",
            f"{res.metadata.name!r} does not match the key's name {where.name!r}",
        )
    if isinstance(res, WorkloadEndpoint) and res.spec.node != where.node:
        raise ValidationError(
            rel, "spec.node", f"{res.spec.node!r} does not match the key's node {where.node!r}"
        )
    if revision is not None:
        res = replace(res, metadata=replace(res.metadata, revision=revision))
    return res
