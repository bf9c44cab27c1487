"""Pod wiring, Calico's model (docs/architecture.md §5): a veth per pod, routed, no bridge.

Node side: veth ``fab<11 hex>`` with MAC ``ee:ee:ee:ee:ee:ee``, no address, proxy-ARP
(``proxy_delay=0``) and forwarding on, and a ``<podIP>/32 dev <veth> scope link proto
l3fabric`` route. Pod side: ``CNI_IFNAME`` with ``<podIP>/32`` (``/128``), ``lo`` up, a
default route via ``169.254.1.1`` onlink (IPv6: via ``fe80::ecee:eeff:feee:eeee``, the
link-local address the kernel derives from the host side's MAC) and a permanent
neighbour entry mapping that gateway to ``ee:ee:ee:ee:ee:ee``, so the pod never has to
ARP for it (proxy-ARP only answers when the node has a route to 169.254.1.1). The pod
side's MAC is the kernel's random one unless the caller asks for one (the CNI ``mac``
capability or ``MAC=``).

Ownership: the agent's CNI handler calls these; it owns the ``fab*`` interfaces. The
pod's host routes have one writer per process: in the agent, its route manager (in the
apply the handler's endpoint report runs before ADD answers), so the handler wires with
``host_routes=False``; a bare handler with no route manager (a benchmark, a test) lets
``wire_pod`` install them and ``unwire_pod`` remove them.

Failure semantics: ``wire_pod`` is all or nothing. Whatever step fails, the veth it made
is deleted (deleting one end removes the peer, and the kernel drops the routes through
it) and ``PlumbingError`` names the step. ``unwire_pod`` is idempotent and tolerates
every piece being gone already.

Namespaces: ``node_ns`` is a name, a path, or ``None`` for the caller's own namespace
(the agent runs inside its node namespace); the pod's namespace is a path as CNI gives
it (``/var/run/netns/X``, ``/proc/PID/ns/net``). Nothing here runs a subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from felix_like.netlink import (
    IFLA_ADDRESS,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_MTU,
    RTPROT_STATIC,
    NetlinkError,
    Rtnl,
    attr_str,
    attr_u32,
    format_mac,
    netns_path,
    open_iproute,
    write_sysctls,
)
from felix_like.owned import HOST_IF_PREFIX
from felix_like.routes import (
    PROTO_L3FABRIC,
    RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE,
    RT_TABLE_MAIN,
    Route,
)

log = logging.getLogger(__name__)

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
#: EUI-64 link-local of ee:ee:ee:ee:ee:ee: the host veth has it without configuration.
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
DEFAULT_MTU = 1500

RT_SCOPE_UNIVERSE = 0
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x4
IFA_F_NODAD = 0x02
IFF_UP = 0x1
#: lo is registered first in every network namespace.
LOOPBACK_IFINDEX = 1

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class PlumbingError(Exception):
    """Wiring a pod failed; nothing of the attempt is left behind."""


@dataclass(frozen=True)
class WiredPod:
    host_if: str
    host_ifindex: int
    container_if: str
    container_ifindex: int
    container_mac: str
    mtu: int
    #: the pod's addresses as host prefixes (/32, /128)
    addresses: tuple[IPInterface, ...]
    #: the node-side routes this call installed (none with ``host_routes=False``)
    routes: tuple[Route, ...]


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """``fab`` + 11 hex chars of sha1("network.containerID.ifname"): 14 chars, under IFNAMSIZ."""
    digest = hashlib.sha1(f"{network}.{container_id}.{ifname}".encode()).hexdigest()
    return HOST_IF_PREFIX + digest[:11]


#: The host veth's alias names its attachment: ``l3fabric/<network>/<containerID>/<ifname>``.
#: None of the three may hold a ``/`` (CNI's and the kernel's name rules), so it parses back.
ALIAS_PREFIX = "l3fabric/"
#: The kernel's limit on an alias (IFALIASZ less the terminating NUL).
ALIAS_MAX = 255


@dataclass(frozen=True)
class VethAttachment:
    """The attachment a host veth was made for, read back from the kernel."""

    network: str
    container_id: str
    ifname: str


def attachment_alias(network: str, container_id: str, ifname: str) -> str:
    """The alias ``wire_pod`` gives the host veth; empty when it would not fit (the veth
    is then known by its name only: GC finds it through its WorkloadEndpoint)."""
    alias = f"{ALIAS_PREFIX}{network}/{container_id}/{ifname}"
    return alias if len(alias.encode()) <= ALIAS_MAX else ""


def parse_alias(name: str, alias: str) -> VethAttachment | None:
    """The attachment of host veth ``name`` with ``alias``; None unless the alias is ours
    and names the attachment ``name`` derives from (so a hand-set alias names nothing)."""
    if not alias.startswith(ALIAS_PREFIX):
        return None
    parts = alias[len(ALIAS_PREFIX):].split("/")
    if len(parts) != 3 or host_veth_name(*parts) != name:
        return None
    return VethAttachment(*parts)


def host_veths(node_ns: str | None) -> dict[str, VethAttachment | None]:
    """Every ``fab*`` interface of the node: name -> its attachment (None: no alias of
    ours). One link dump."""
    out: dict[str, VethAttachment | None] = {}
    with Rtnl.open(node_ns) as nl:
        for _, _, attrs in nl.links():
            name = attr_str(attrs, IFLA_IFNAME) or ""
            if name.startswith(HOST_IF_PREFIX):
                out[name] = parse_alias(name, attr_str(attrs, IFLA_IFALIAS) or "")
    return out


def _host_prefixes(addresses: Sequence[IPInterface]) -> tuple[IPInterface, ...]:
    out: list[IPInterface] = []
    for a in addresses:
        iface = ipaddress.ip_interface(a) if isinstance(a, str) else a
        out.append(ipaddress.ip_interface(f"{iface.ip}/{iface.ip.max_prefixlen}"))
    return tuple(out)


def _host_route(addr: IPInterface, host_if: str) -> Route:
    return Route(str(addr.network), "local", dev=host_if, proto=PROTO_L3FABRIC)


def _family(addr: IPInterface) -> int:
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def _host_sysctls(host_if: str, v4: bool, v6: bool) -> dict[str, str]:
    values: dict[str, str] = {}
    if v4:
        values[f"net.ipv4.conf.{host_if}.proxy_arp"] = "1"
        values[f"net.ipv4.neigh.{host_if}.proxy_delay"] = "0"
        values[f"net.ipv4.conf.{host_if}.forwarding"] = "1"
    if v6:
        # Set while the link is down: its link-local (the pods' gateway) is then usable
        # at once instead of after ~1 s of duplicate address detection.
        values[f"net.ipv6.conf.{host_if}.accept_dad"] = "0"
        values[f"net.ipv6.conf.{host_if}.proxy_ndp"] = "1"
        values[f"net.ipv6.conf.{host_if}.forwarding"] = "1"
    return values


def _lookup(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def wire_pod(
    node_ns: str | None,
    pod_netns_path: str,
    ifname: str,
    host_if: str,
    addresses: Sequence[IPInterface],
    mtu: int,
    *,
    container_mac: str = "",
    alias: str = "",
    node_ipr: Any | None = None,
    node_nl: Rtnl | None = None,
    host_routes: bool = True,
) -> WiredPod:
    """Create and configure the pod's veth pair and its host routes; all or nothing.

    ``mtu`` <= 0 takes :func:`detect_uplink_mtu` (through ``node_ipr``, a pyroute2 handle
    bound to ``node_ns``, when given). ``container_mac`` (lower-case colon form, a unicast
    address: :func:`cni.protocol.normalize_mac`) is given to ``ifname`` when the veth is
    created, so it costs no extra request; empty keeps the kernel's random one.
    ``alias`` (:func:`attachment_alias`) is set on ``host_if``, so GC can tell from the
    kernel alone which attachment a veth is for.
    ``node_nl`` lets the caller reuse a raw netlink socket bound to ``node_ns``; otherwise
    one is opened.
    A leftover veth of the same name (an earlier attempt for the same container and
    interface: the name is derived from them) is replaced.
    ``host_routes=False`` leaves the pod's host routes to the caller's route manager.
    Raises :class:`PlumbingError`; on error no veth and no route of this call remain.

    Netlink goes through :class:`felix_like.netlink.Rtnl` (a raw socket: pyroute2's sync
    handle costs ~0.3 ms of CPU per request, and this is fifteen requests); the kernel
    state made is the same as ``ip link/addr/route/neigh add`` would make.
    """
    prefixes = _host_prefixes(addresses)
    if not prefixes:
        raise PlumbingError("no addresses to wire")
    v4 = any(a.version == 4 for a in prefixes)
    v6 = any(a.version == 6 for a in prefixes)
    node = node_nl if node_nl is not None else Rtnl.open(node_ns)
    pod: Rtnl | None = None
    pod_fd = -1
    created = False
    step = "opening the pod namespace"
    try:
        if mtu <= 0:
            step = "detecting the uplink MTU"
            mtu = _detect_uplink_mtu(node_ipr) if node_ipr is not None else _uplink_mtu(node)
            step = "opening the pod namespace"
        pod_fd = os.open(netns_path(pod_netns_path), os.O_RDONLY | os.O_CLOEXEC)
        pod = Rtnl.open(pod_netns_path)

        step = f"creating veth {host_if} <-> {ifname}"
        # IPv4 only: up at creation (one request less). With IPv6, accept_dad=0 must be
        # set while the link is still down.
        try:
            node.add_veth(host_if, HOST_MAC, mtu, ifname, pod_fd, up=not v6,
                          peer_mac=container_mac)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            # Either our own leftover (an earlier attempt for the same container and
            # interface: the name derives from them), which we replace, or the name is
            # taken in the pod.
            old = node.link_index(host_if)
            if old is None:
                raise RuntimeError(f"{ifname} already exists in the pod") from exc
            log.info("replacing leftover host veth %s", host_if)
            node.delete_link(old)
            node.add_veth(host_if, HOST_MAC, mtu, ifname, pod_fd, up=not v6,
                          peer_mac=container_mac)
        created = True
        host_idx = node.link_index(host_if)
        if host_idx is None:
            raise RuntimeError(f"{host_if} vanished right after creation")

        step = f"setting sysctls on {host_if}"
        write_sysctls(node_ns, _host_sysctls(host_if, v4, v6))
        if v6 or alias:
            step = f"bringing {host_if} up" + (f" with alias {alias}" if alias else "")
            node.set_up(host_idx, alias=alias)

        step = f"configuring {ifname} in the pod"
        pod.set_up(LOOPBACK_IFINDEX)
        found = pod.get_link(ifname)
        if found is None:
            raise RuntimeError(f"{ifname} not found in the pod after creation")
        pod_idx, pod_attrs = found
        mac = container_mac or format_mac(pod_attrs.get(IFLA_ADDRESS, b""))
        for a in prefixes:
            step = f"adding {a} to {ifname} in the pod"
            pod.add_address(pod_idx, str(a.ip), a.network.prefixlen,
                            IFA_F_NODAD if a.version == 6 else 0)
        step = f"bringing {ifname} up in the pod"
        pod.set_up(pod_idx)
        if v4:
            step = "adding the pod's IPv4 gateway neighbour and default route"
            pod.add_neighbour(pod_idx, GATEWAY_V4, HOST_MAC, NUD_PERMANENT)
            pod.add_route(socket.AF_INET, "0.0.0.0", 0, gateway=GATEWAY_V4, oif=pod_idx,
                          flags=RTNH_F_ONLINK, table=RT_TABLE_MAIN, proto=RTPROT_STATIC,
                          scope=RT_SCOPE_UNIVERSE)
        if v6:
            step = "adding the pod's IPv6 gateway neighbour and default route"
            pod.add_neighbour(pod_idx, GATEWAY_V6, HOST_MAC, NUD_PERMANENT)
            pod.add_route(socket.AF_INET6, "::", 0, gateway=GATEWAY_V6, oif=pod_idx,
                          table=RT_TABLE_MAIN, proto=RTPROT_STATIC, scope=RT_SCOPE_UNIVERSE)

        routes: list[Route] = []
        for a in prefixes if host_routes else ():
            step = f"adding the host route {a.network} dev {host_if}"
            try:
                node.add_route(_family(a), str(a.ip), a.network.prefixlen, oif=host_idx,
                               scope=RT_SCOPE_LINK, proto=PROTO_L3FABRIC, table=RT_TABLE_MAIN)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                raise RuntimeError(f"{a.ip} is already routed on this node") from exc
            routes.append(_host_route(a, host_if))

        return WiredPod(host_if=host_if, host_ifindex=host_idx, container_if=ifname,
                        container_ifindex=pod_idx, container_mac=mac, mtu=mtu,
                        addresses=prefixes, routes=tuple(routes))
    except Exception as exc:
        if created:
            _delete_link(node, host_if)
        raise PlumbingError(f"wiring {host_if}: {step}: {exc}") from exc
    finally:
        if pod_fd >= 0:
            os.close(pod_fd)
        if pod is not None:
            pod.close()
        if node_nl is None:
            node.close()


def _delete_link(nl: Rtnl, name: str) -> bool:
    """Delete interface ``name`` if present (a veth takes its peer and routes with it)."""
    idx = nl.link_index(name)
    if idx is None:
        return False
    try:
        nl.delete_link(idx)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            log.warning("deleting %s failed: %s", name, exc)
            return False
    return True


def unwire_pod(
    node_ns: str | None,
    host_if: str,
    addresses: Sequence[IPInterface],
    *,
    node_ipr: Any | None = None,
    node_nl: Rtnl | None = None,
    on_routes_removed: Callable[[], None] | None = None,
    host_routes: bool = True,
) -> bool:
    """Remove a pod's host veth and our host routes through it. Idempotent: missing
    pieces are fine. Returns True if the veth was there.

    Only routes whose device is ``host_if`` are deleted. Race: pod A is deleted, its
    address is reused by pod B on this node, and a late or repeated DEL for A arrives.
    A route for the address via B's veth is B's and must stay; routes via A's veth went
    with A's veth.

    ``node_nl`` as for :func:`wire_pod`; ``node_ipr`` is accepted for compatibility and
    not used. Most of the time (~20 ms) is the kernel deleting the veth pair: when every
    route through it is known to be gone, before that, ``on_routes_removed`` is called
    (from this thread), so a caller can free the addresses meanwhile. It is not called
    when the veth is absent or a route could not be deleted (then the veth's deletion
    removes it: wait for the return). ``host_routes=False``: the caller's route manager
    owns the routes and has removed them already; only the veth goes.
    """
    node = node_nl if node_nl is not None else Rtnl.open(node_ns)
    try:
        idx = node.link_index(host_if)
        if idx is None:
            return False
        routes_gone = True
        for a in _host_prefixes(addresses) if host_routes else ():
            try:
                node.delete_route(_family(a), str(a.ip), a.network.prefixlen, oif=idx,
                                  proto=PROTO_L3FABRIC, table=RT_TABLE_MAIN,
                                  scope=RT_SCOPE_NOWHERE)
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENODEV):
                    routes_gone = False
                    log.warning("deleting route %s dev %s failed: %s", a.network, host_if, exc)
        if routes_gone and on_routes_removed is not None:
            on_routes_removed()
        # By the index looked up above, not by name again: indexes are allocated
        # cyclically, so this one cannot name a newer link.
        try:
            node.delete_link(idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                log.warning("deleting %s failed: %s", host_if, exc)
                return False
        return True
    finally:
        if node_nl is None:
            node.close()


def check_pod(
    node_ns: str | None,
    pod_netns_path: str,
    ifname: str,
    host_if: str,
    addresses: Sequence[IPInterface],
    *,
    container_mac: str = "",
) -> list[str]:
    """What is missing or wrong in a wired pod (CNI CHECK); empty when all is in place.
    ``container_mac``, when given, is the MAC ``ifname`` must have."""
    problems: list[str] = []
    prefixes = _host_prefixes(addresses)
    node = open_iproute(node_ns)
    try:
        host_idx = _lookup(node, host_if)
        if host_idx is None:
            problems.append(f"host interface {host_if} missing")
        else:
            link = node.get_links(host_idx)[0]
            if link.get_attr("IFLA_ADDRESS") != HOST_MAC:
                problems.append(f"host interface {host_if} has MAC "
                                f"{link.get_attr('IFLA_ADDRESS')}, not {HOST_MAC}")
        for a in prefixes:
            ok = False
            for r in node.route("dump", family=_family(a), table=RT_TABLE_MAIN):
                dst = r.get_attr("RTA_DST")
                if dst == str(a.ip) and r["dst_len"] == a.network.prefixlen:
                    ok = host_idx is not None and r.get_attr("RTA_OIF") == host_idx
                    break
            if not ok:
                problems.append(f"host route {a.network} dev {host_if} missing")
    finally:
        node.close()

    if not os.path.exists(netns_path(pod_netns_path)):
        return [*problems, f"pod namespace {pod_netns_path} missing"]
    pod = open_iproute(pod_netns_path)
    try:
        pod_idx = _lookup(pod, ifname)
        if pod_idx is None:
            return [*problems, f"interface {ifname} missing in the pod"]
        if container_mac:
            have_mac = pod.get_links(pod_idx)[0].get_attr("IFLA_ADDRESS")
            if have_mac != container_mac.lower():
                problems.append(f"interface {ifname} in the pod has MAC {have_mac}, "
                                f"not {container_mac.lower()}")
        have = {(m.get_attr("IFA_ADDRESS"), m["prefixlen"])
                for m in pod.get_addr(index=pod_idx)}
        for a in prefixes:
            if (str(a.ip), a.network.prefixlen) not in have:
                problems.append(f"address {a} missing on {ifname}")
        for version, gw in ((4, GATEWAY_V4), (6, GATEWAY_V6)):
            if not any(a.version == version for a in prefixes):
                continue
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            default = [r for r in pod.route("dump", family=family, table=RT_TABLE_MAIN)
                       if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY") == gw]
            if not default:
                problems.append(f"IPv{version} default route via {gw} missing in the pod")
            neigh = [n for n in pod.get_neighbours(family=family, ifindex=pod_idx)
                     if n.get_attr("NDA_DST") == gw and n["state"] & NUD_PERMANENT
                     and n.get_attr("NDA_LLADDR") == HOST_MAC]
            if not neigh:
                problems.append(f"permanent neighbour {gw} -> {HOST_MAC} missing in the pod")
    finally:
        pod.close()
    return problems


def _detect_uplink_mtu(ipr: Any) -> int:
    links = {int(m["index"]): m for m in ipr.get_links()}
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route("dump", family=family, table=RT_TABLE_MAIN):
            if r["dst_len"] != 0 or r["type"] != 1:
                continue
            oif = r.get_attr("RTA_OIF")
            if oif is None:
                hops = r.get_attr("RTA_MULTIPATH") or []
                oif = hops[0]["oif"] if hops else None
            if oif in links:
                return int(links[oif].get_attr("IFLA_MTU"))
    mtus = [int(m.get_attr("IFLA_MTU")) for m in links.values()
            if m["flags"] & IFF_UP and m.get_attr("IFLA_IFNAME") != "lo"
            and not str(m.get_attr("IFLA_IFNAME")).startswith(HOST_IF_PREFIX)]
    return max(mtus) if mtus else DEFAULT_MTU


def _uplink_mtu(nl: Rtnl) -> int:
    """:func:`_detect_uplink_mtu` over a raw socket: one route dump per family and, in
    the common case, one link request (no dump of every pod's veth)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for oif in nl.default_route_oifs(family, RT_TABLE_MAIN):
            found = nl.get_link(index=oif) if oif > 0 else None
            mtu = attr_u32(found[1], IFLA_MTU) if found is not None else None
            if mtu is not None:
                return mtu
    mtus = []
    for _, flags, attrs in nl.links():
        name = attr_str(attrs, IFLA_IFNAME) or ""
        mtu = attr_u32(attrs, IFLA_MTU)
        if flags & IFF_UP and name != "lo" and not name.startswith(HOST_IF_PREFIX) \
                and mtu is not None:
            mtus.append(mtu)
    return max(mtus) if mtus else DEFAULT_MTU


def detect_uplink_mtu(node_ns: str | None) -> int:
    """MTU of the interface carrying the default route; else the highest MTU of the up,
    non-lo, non-``fab*`` interfaces; else 1500."""
    with Rtnl.open(node_ns) as nl:
        return _uplink_mtu(nl)
