"""What the kernel tells the agent about its node: rtnetlink notifications and addresses.

Owns the agent's one notification socket (:func:`open_monitor`, read by
:func:`watch_kernel`), the parsing of its datagrams into events (:func:`parse_monitor`),
what a batch of them means to the agent (:class:`KernelChanges`), and the reads of the
node's own addresses (:func:`interface_addresses`, :func:`detect_node_ip`). It decides
nothing about routes: the agent brings its route manager in line with the changes
(`felix_like.agent.Agent._follow_kernel`).

Failure mode: if the socket overflows (ENOBUFS: notifications lost), the watcher reports
``everything`` changed and the agent reads links, addresses and routes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from felix_like.netlink import (
    _IFADDRMSG,
    _IFINFOMSG,
    _NLMSGHDR,
    _RTMSG,
    IFF_UP,
    IFLA_IFNAME,
    NETLINK_ROUTE,
    RTA_DST,
    RTA_TABLE,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    _parse_attrs,
    attr_str,
    attr_u32,
    open_netlink_socket,
)
from felix_like.owned import HOST_IF_PREFIX
from felix_like.routes import OWNED_PROTOS, RT_TABLE_MAIN

log = logging.getLogger(__name__)

#: rtnetlink multicast groups: links, IPv4 addresses, IPv4 and IPv6 routes.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
#: What the agent's monitor listens to. Not IPv6 addresses: the kernel gives every veth
#: that comes up an IPv6 link-local address, and the host side of a pod's veth has no
#: IPv4 one, so the agent re-reads the node's addresses only when an IPv4 one changes.
MONITOR_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
#: A burst (thousands of learned routes installed at once) must not overflow the socket;
#: if it does anyway, the reader gets ENOBUFS and re-reads everything.
MONITOR_RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33


def open_monitor(ns: str | None, groups: int = MONITOR_GROUPS) -> socket.socket:
    """A non-blocking rtnetlink socket in ``ns`` that receives the kernel's notifications
    of ``groups`` (links, IPv4 addresses, routes by default); read them with
    :func:`parse_monitor`. The caller closes it."""
    s = open_netlink_socket(ns, NETLINK_ROUTE, groups)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, MONITOR_RCVBUF)
    except OSError:  # without CAP_NET_ADMIN: as large as net.core.rmem_max allows
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MONITOR_RCVBUF)
    s.setblocking(False)
    return s



RTM_DELADDR = 21
IFF_LOWER_UP = 0x10000  # the carrier is up


@dataclass(frozen=True)
class LinkChange:
    """RTM_NEWLINK or RTM_DELLINK: a link's state now (``flags``: IFF_*)."""

    index: int
    name: str
    flags: int
    deleted: bool = False

    @property
    def usable(self) -> int:
        """The bits that make the link carry traffic: administratively up, carrier up."""
        return 0 if self.deleted else self.flags & (IFF_UP | IFF_LOWER_UP)


@dataclass(frozen=True)
class AddressChange:
    """RTM_NEWADDR or RTM_DELADDR on link ``index``."""

    family: int
    index: int
    deleted: bool


@dataclass(frozen=True)
class RouteDeleted:
    """RTM_DELROUTE: ``dst`` (a canonical CIDR) of ``proto`` left ``table``."""

    family: int
    dst: str
    proto: int
    table: int


MonitorEvent = LinkChange | AddressChange | RouteDeleted


def link_states(ipr: Any) -> dict[int, int]:
    """ifindex -> the `LinkChange.usable` bits of every link, read with a pyroute2 handle:
    where a monitor's reader starts from."""
    return {int(link["index"]): int(link["flags"]) & (IFF_UP | IFF_LOWER_UP)
            for link in ipr.get_links()}


def parse_monitor(data: bytes) -> list[MonitorEvent]:
    """The notifications in one datagram of an :func:`open_monitor` socket, in order.
    New routes are left out (the agent only needs to know of routes that went); so is
    anything malformed or of another type."""
    out: list[MonitorEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        size, mtype, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if size < _NLMSGHDR.size or offset + size > len(data):
            break
        body = data[offset + _NLMSGHDR.size:offset + size]
        offset += (size + 3) & ~3
        try:
            event = _monitor_event(mtype, body)
        except (struct.error, ValueError):  # malformed: not ours to interpret
            continue
        if event is not None:
            out.append(event)
    return out


def _monitor_event(mtype: int, body: bytes) -> MonitorEvent | None:
    """One notification's event, or None for a type the agent does not follow."""
    if mtype in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= _IFINFOMSG.size:
        _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
        attrs = _parse_attrs(body, _IFINFOMSG.size)
        return LinkChange(index, attr_str(attrs, IFLA_IFNAME) or "", flags,
                          mtype == RTM_DELLINK)
    if mtype in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= _IFADDRMSG.size:
        family, _, _, _, index = _IFADDRMSG.unpack_from(body)
        return AddressChange(family, index, mtype == RTM_DELADDR)
    if mtype == RTM_DELROUTE and len(body) >= _RTMSG.size:
        family, dst_len, _, _, table, proto, _, _, _ = _RTMSG.unpack_from(body)
        if family not in (socket.AF_INET, socket.AF_INET6):
            return None
        attrs = _parse_attrs(body, _RTMSG.size)
        table = attr_u32(attrs, RTA_TABLE) or table
        raw = attrs.get(RTA_DST)
        zero = b"\0" * (4 if family == socket.AF_INET else 16)
        addr = socket.inet_ntop(family, raw if raw is not None else zero)
        dst = str(ipaddress.ip_network(f"{addr}/{dst_len}", strict=False))
        return RouteDeleted(family, dst, proto, table)
    return None


def interface_addresses(ipr: Any) -> dict[str, str]:
    """Global IPv4 addresses (CIDR form) of the node's interfaces, our veths excepted, each
    with the name of the interface holding it."""
    names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}
    out = {}
    for a in ipr.get_addr(family=socket.AF_INET):
        name = names.get(a["index"], "")
        if a.get("scope", 0) == 0 and not name.startswith(HOST_IF_PREFIX):
            out[f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"] = name
    return dict(sorted(out.items()))


def detect_node_ip(ipr: Any) -> str | None:
    """The address (CIDR form) of the interface carrying the default route, else the first
    global IPv4 address of an interface that is up."""
    oif: int | None = None
    for r in ipr.get_default_routes(family=socket.AF_INET):
        oif = r.get_attr("RTA_OIF")
        break
    addrs = ipr.get_addr(family=socket.AF_INET)
    candidates = []
    for a in addrs:
        if a.get("scope", 0) != 0:  # 0 = universe
            continue
        cidr = f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
        if oif is not None and a["index"] == oif:
            return cidr
        if not str(a.get_attr("IFA_ADDRESS")).startswith("127."):
            candidates.append(cidr)
    return candidates[0] if candidates else None


@dataclass
class KernelChanges:
    """What a batch of rtnetlink notifications means to the agent."""

    came_up: list[str] = field(default_factory=list)  # links, not pod veths, now usable
    addresses: bool = False  # an IPv4 address was added or removed
    deleted: set[str] = field(default_factory=set)  # our protocols' dsts gone from main
    appeared: set[str] = field(default_factory=set)  # pod veths that exist now
    # pod veths deleted (maybe made again under their name), as (name, ifindex)
    vanished: set[tuple[str, int]] = field(default_factory=set)
    everything: bool = False  # notifications were lost: read and retry everything


def kernel_changes(batch: Sequence[MonitorEvent], links: dict[int, int]) -> KernelChanges:
    """Sort a batch of notifications; ``links`` (ifindex -> usable bits) is updated, and a
    link "comes up" when a usable bit is set that was not."""
    out = KernelChanges()
    for ev in batch:
        if isinstance(ev, AddressChange):
            out.addresses = out.addresses or ev.family == socket.AF_INET
        elif isinstance(ev, LinkChange):
            before = links.pop(ev.index, None)
            if not ev.deleted:
                links[ev.index] = ev.usable
            if ev.name.startswith(HOST_IF_PREFIX):
                # A deleted veth took its routes with it, even when a veth of the same
                # name is made again in the same burst (a runtime's retried ADD replacing
                # the pod): it stays "vanished", so the record of its routes through
                # the deleted one (its index) is dropped and the apply adds them through
                # the new one. Only a veth that exists at the end of the burst has
                # "appeared".
                if ev.deleted:
                    out.vanished.add((ev.name, ev.index))
                    out.appeared.discard(ev.name)
                else:
                    out.appeared.add(ev.name)
            elif ev.usable & ~(before or 0) and ev.name not in out.came_up:
                out.came_up.append(ev.name)
        elif (isinstance(ev, RouteDeleted) and ev.proto in OWNED_PROTOS
              and ev.table == RT_TABLE_MAIN):
            out.deleted.add(ev.dst)
    return out


async def watch_kernel(ns: str | None, read_links: Callable[[], Awaitable[dict[int, int]]],
                       read_addresses: Callable[[], Awaitable[None]],
                       follow: Callable[[KernelChanges], Awaitable[None]]) -> None:
    """Read the notifications of namespace ``ns`` forever: ``read_addresses`` at start
    and after an IPv4 address changed, ``follow`` with what each burst changed
    (`KernelChanges`; a flap brings a dozen messages, handled once). ``read_links`` gives
    the usable bits of every link (`link_states`), read at start and after notifications
    were lost (ENOBUFS), when ``everything`` is set. An error of either callback is logged
    and the next change or the agent's periodic resync reads again. Never returns."""
    try:
        sock = open_monitor(ns)
    except OSError as e:  # the periodic resync still re-reads everything
        log.warning("cannot watch links, addresses and routes (%s): re-read every "
                    "resync", e)
        await asyncio.Event().wait()  # a task of the agent's run() must not end
    loop = asyncio.get_running_loop()
    pending: list[MonitorEvent] = []
    lost = False
    woke = asyncio.Event()

    def readable() -> None:
        nonlocal lost
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    log.warning("reading netlink notifications: %s", e)
                    break
                lost = True  # the kernel dropped some: read everything again
                continue
            pending.extend(parse_monitor(data))
        woke.set()

    loop.add_reader(sock.fileno(), readable)
    try:
        links = await read_links()
        addresses = True  # what changed since the agent read them
        while True:
            if addresses:
                try:
                    await read_addresses()
                except Exception:  # the next change or the periodic resync reads them
                    log.exception("reading the interface addresses failed")
            await woke.wait()
            await asyncio.sleep(0.02)  # the rest of the burst
            woke.clear()
            batch = pending.copy()
            pending.clear()
            changes = kernel_changes(batch, links)
            addresses = changes.addresses
            if lost:
                lost = False
                log.warning("netlink notifications were lost: reading links, addresses "
                            "and routes again")
                links = await read_links()
                changes.everything = addresses = True
            try:
                await follow(changes)
            except Exception:  # the next change or the periodic resync reads them
                log.exception("following the kernel's link and route changes failed")
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
