"""CNI results: the version-neutral values a plugin answers with, and their JSON.

Owned here: :class:`Result` (and the abbreviated :class:`IpamResult`), rendered in the
JSON shape of the caller's ``cniVersion`` (:func:`format_result`) and parsed from any
version we speak (:func:`parse_result`, for a ``prevResult``). Standard library only,
no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cni.spec import (
    ERR_INCOMPATIBLE_VERSION,
    SUPPORTED_VERSIONS,
    CniError,
    IPAddress,
    IPInterface,
    IPNetwork,
    _cfg_err,
    _list,
    _opt_int,
    _parse_addr,
    _parse_interface_addr,
    _str,
    _str_list,
    is_supported,
    version_tuple,
)


@dataclass(frozen=True)
class Interface:
    """One entry of a result's ``interfaces``; ``sandbox`` empty for host interfaces.
    ``mtu``, ``socket_path`` and ``pci_id`` exist from 1.1.0 on."""

    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    """An address with its prefix; ``interface`` indexes the result's interfaces."""

    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def version(self) -> str:
        return str(self.address.version)


@dataclass(frozen=True)
class Route:
    """A route for the container; the optional attributes exist from 1.1.0 on."""

    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """A plugin ADD result, version-neutral; :func:`format_result` renders it."""

    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()


@dataclass(frozen=True)
class IpamResult:
    """The abbreviated result an IPAM plugin returns: no interfaces, no indexes."""

    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()


def format_result(result: Result | IpamResult, cni_version: str) -> dict[str, Any]:
    """Render ``result`` in the JSON shape of ``cni_version``.

    1.0.0 and later: ``ips`` carry no ``version``. 0.3.x/0.4.0: every ip carries
    ``"version": "4"|"6"``. Fields introduced in 1.1.0 (interface ``mtu``,
    ``socketPath``, ``pciID``; route ``mtu``/``advmss``/``priority``/``table``/
    ``scope``) are dropped for older versions. IPAM results have no ``interfaces``
    and no ``interface`` index.
    """
    if cni_version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"cannot render a result as {cni_version!r}")
    v = version_tuple(cni_version)
    with_ip_version = v < (1, 0, 0)
    rich = v >= (1, 1, 0)
    out: dict[str, Any] = {"cniVersion": cni_version}
    if isinstance(result, Result):
        out["interfaces"] = [_interface_json(i, rich) for i in result.interfaces]
    ips = []
    for ip in result.ips:
        obj: dict[str, Any] = {}
        if with_ip_version:
            obj["version"] = ip.version
        obj["address"] = str(ip.address)
        if ip.gateway is not None:
            obj["gateway"] = str(ip.gateway)
        if isinstance(result, Result) and ip.interface is not None:
            obj["interface"] = ip.interface
        ips.append(obj)
    out["ips"] = ips
    if result.routes:
        out["routes"] = [_route_json(r, rich) for r in result.routes]
    dns = _dns_json(result.dns)
    if dns:
        out["dns"] = dns
    return out


def _interface_json(iface: Interface, rich: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        obj["mac"] = iface.mac
    if rich and iface.mtu:
        obj["mtu"] = iface.mtu
    if iface.sandbox:
        obj["sandbox"] = iface.sandbox
    if rich and iface.socket_path:
        obj["socketPath"] = iface.socket_path
    if rich and iface.pci_id:
        obj["pciID"] = iface.pci_id
    return obj


def _route_json(route: Route, rich: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        obj["gw"] = str(route.gw)
    if rich:
        for key, value in (
            ("mtu", route.mtu),
            ("advmss", route.advmss),
            ("priority", route.priority),
            ("table", route.table),
            ("scope", route.scope),
        ):
            if value is not None:
                obj[key] = value
    return obj


def _dns_json(dns: DNS) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if dns.nameservers:
        obj["nameservers"] = list(dns.nameservers)
    if dns.domain:
        obj["domain"] = dns.domain
    if dns.search:
        obj["search"] = list(dns.search)
    if dns.options:
        obj["options"] = list(dns.options)
    return obj


def parse_result(obj: Any) -> Result:
    """Parse a result of any supported version (a ``prevResult``, say).

    The ips' ``version`` field (0.3.x/0.4.0) is ignored: the address says it.
    Raises CniError(7) on anything malformed.
    """
    if not isinstance(obj, Mapping):
        raise _cfg_err("prevResult must be a JSON object")
    version = obj.get("cniVersion")
    if version is not None and not (isinstance(version, str) and is_supported(version)):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"unsupported result cniVersion {version!r}")
    if "ip4" in obj or "ip6" in obj:
        raise CniError(ERR_INCOMPATIBLE_VERSION, "0.1.0/0.2.0 results are not supported")
    interfaces = tuple(_parse_interface(i) for i in _list(obj, "interfaces", "result"))
    ips = tuple(_parse_ip(i, len(interfaces)) for i in _list(obj, "ips", "result"))
    routes = tuple(_parse_route(r) for r in _list(obj, "routes", "result"))
    return Result(interfaces=interfaces, ips=ips, routes=routes, dns=_parse_dns(obj.get("dns")))


def convert_prev_result(obj: Any, to_version: str) -> dict[str, Any]:
    """Re-render a result (any supported version) as ``to_version``."""
    return format_result(parse_result(obj), to_version)


def _parse_interface(obj: Any) -> Interface:
    if not isinstance(obj, Mapping):
        raise _cfg_err("result interfaces must be objects")
    return Interface(
        name=_str(obj, "name", "interface", required=True),
        mac=_str(obj, "mac", "interface"),
        sandbox=_str(obj, "sandbox", "interface"),
        mtu=_opt_int(obj, "mtu", "interface", 0, 2**31 - 1) or None,
        socket_path=_str(obj, "socketPath", "interface"),
        pci_id=_str(obj, "pciID", "interface"),
    )


def _parse_ip(obj: Any, n_interfaces: int) -> IPConfig:
    if not isinstance(obj, Mapping):
        raise _cfg_err("result ips must be objects")
    address = _parse_interface_addr(obj.get("address"), "ips[].address")
    gateway = obj.get("gateway")
    index = _opt_int(obj, "interface", "ips[]", 0, 2**31 - 1)
    if index is not None and index >= n_interfaces:
        raise _cfg_err(f"ips[].interface {index} does not name one of the result's interfaces")
    return IPConfig(
        address=address,
        gateway=None if gateway in (None, "") else _parse_addr(gateway, "ips[].gateway"),
        interface=index,
    )


def _parse_route(obj: Any) -> Route:
    if not isinstance(obj, Mapping):
        raise _cfg_err("routes must be objects")
    dst = obj.get("dst")
    if not isinstance(dst, str):
        raise _cfg_err("routes[].dst must be a CIDR string")
    try:
        net = ipaddress.ip_network(dst, strict=False)
    except ValueError as e:
        raise _cfg_err(f"routes[].dst {dst!r} is not a CIDR") from e
    gw = obj.get("gw")
    return Route(
        dst=net,
        gw=None if gw in (None, "") else _parse_addr(gw, "routes[].gw"),
        mtu=_opt_int(obj, "mtu", "route", 0, 2**31 - 1),
        advmss=_opt_int(obj, "advmss", "route", 0, 2**31 - 1),
        priority=_opt_int(obj, "priority", "route", 0, 2**32 - 1),
        table=_opt_int(obj, "table", "route", 0, 2**32 - 1),
        scope=_opt_int(obj, "scope", "route", 0, 255),
    )


def _parse_dns(obj: Any) -> DNS:
    if obj is None:
        return DNS()
    if not isinstance(obj, Mapping):
        raise _cfg_err("dns must be an object")
    return DNS(
        nameservers=_str_list(obj, "nameservers", "dns"),
        domain=_str(obj, "domain", "dns"),
        search=_str_list(obj, "search", "dns"),
        options=_str_list(obj, "options", "dns"),
    )
