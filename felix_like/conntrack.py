"""Conntrack entries by address over raw ctnetlink: the fallback of `forget_flows`.

`felix_like.policy.manager.forget_flows` finds one IPv4 address's entries with the
kernel's dump filters (``CTA_FILTER``), which cost about what the matches cost. Everything
else (an IPv6 address, a network wider than one address) needs a full dump matched here.
pyroute2 parses a dump into objects at ~0.5 ms per entry (10 s for 20,000); this reads
only the addresses of each entry's two tuples, with ``struct``, and sends back the entry's
own tuple, id and zone to delete it.

Why not the kernel's filter for IPv6: up to at least Linux 6.18 its IPv6 address match is
inverted (``ctnetlink_filter_match_tuple`` drops the entries whose address *equals* the
filter's: a filter for fd00::2 returns every entry but fd00::2's), so it cannot narrow a
dump to one IPv6 address.

One request in flight at a time: use an instance from one thread at a time. It runs in
the thread that opened it, inside the namespace given to `Ctnl.open`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from felix_like.netlink import (
    NLM_F_DUMP,
    NetlinkError,
    Rtnl,
    _attr,
    _parse_attrs,
)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLA_F_NESTED = 0x8000

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_ID = 12
CTA_ZONE = 18
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4

_NFGENMSG = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), resource id (BE)


@dataclass(frozen=True)
class Entry:
    """One conntrack entry: its addresses (original source and destination, reply source
    and destination, as raw bytes) and what deleting exactly this entry takes."""

    addresses: tuple[bytes, ...]
    tuple_orig: bytes  # the CTA_TUPLE_ORIG payload as the kernel sent it
    id: bytes | None  # CTA_ID: a newer entry with the same tuple is not this one
    zone: bytes | None


def _addresses(tuple_payload: bytes, family: int) -> list[bytes]:
    ip = _parse_attrs(tuple_payload, 0).get(CTA_TUPLE_IP)
    if ip is None:
        return []
    attrs = _parse_attrs(ip, 0)
    src, dst = ((CTA_IP_V4_SRC, CTA_IP_V4_DST) if family == socket.AF_INET
                else (CTA_IP_V6_SRC, CTA_IP_V6_DST))
    return [a for a in (attrs.get(src), attrs.get(dst)) if a is not None]


class Ctnl(Rtnl):
    """A ctnetlink socket: `Rtnl`'s transport over ``NETLINK_NETFILTER``."""

    protocol = NETLINK_NETFILTER

    def entries(self, family: int) -> Iterator[Entry]:
        """Every entry of ``family`` in the namespace (one dump)."""
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
        for body in self._request(kind, NLM_F_DUMP, _NFGENMSG.pack(family, 0, 0)):
            attrs = _parse_attrs(body, _NFGENMSG.size)
            orig = attrs.get(CTA_TUPLE_ORIG)
            if orig is None:
                continue
            reply = attrs.get(CTA_TUPLE_REPLY, b"")
            yield Entry(tuple(_addresses(orig, family) + _addresses(reply, family)), orig,
                        attrs.get(CTA_ID), attrs.get(CTA_ZONE))

    def delete(self, family: int, entry: Entry) -> bool:
        """Delete ``entry``; False if it is gone already."""
        body = _NFGENMSG.pack(family, 0, 0) + _attr(CTA_TUPLE_ORIG | NLA_F_NESTED,
                                                    entry.tuple_orig)
        if entry.id is not None:
            body += _attr(CTA_ID, entry.id)
        if entry.zone is not None:
            body += _attr(CTA_ZONE, entry.zone)
        try:
            self._do((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, body)
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return False
            raise
        return True


def matching(entries: Iterable[Entry],
             nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[Entry]:
    """The entries with an address in one of ``nets`` at either end of either tuple."""
    hosts: set[bytes] = set()
    wide: list[tuple[int, int, int]] = []  # (mask, network, address length)
    for net in nets:
        if net.num_addresses == 1:
            hosts.add(net.network_address.packed)
        else:
            wide.append((int(net.netmask), int(net.network_address), net.max_prefixlen // 8))
    out = []
    for e in entries:
        if any(a in hosts for a in e.addresses) or any(
                len(a) == size and int.from_bytes(a, "big") & mask == network
                for a in e.addresses for mask, network, size in wide):
            out.append(e)
    return out


def forget(ns: str | None, family: int,
           nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
    """Delete the entries of ``family`` in namespace ``ns`` with an address in ``nets``;
    how many were deleted. Call it from the namespace's thread (`run_in_netns`) or with
    ``ns`` None there."""
    with Ctnl.open(ns) as ct:
        found = matching(ct.entries(family), list(nets))
        return sum(ct.delete(family, e) for e in found)
