"""ExaBGP's process API, read side: what its JSON messages say, decoded. Pure.

Owned here: the meaning of the fields of ExaBGP 5's ``encoder json`` messages that the
speaker uses (session states, End-of-RIB and route-refresh markers, the announcements and
withdrawals of an ``update``), and which next hop of those offered for one prefix is
installed. `bgp.speaker.BgpSpeaker` applies them to its import table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: ExaBGP's session states as NodeStatus shows them.
STATE_NAMES = {"up": "Established", "connected": "Connect", "down": "Idle"}


@dataclass(frozen=True)
class Update:
    """One ``update`` message's unicast routes: what a peer announces and withdraws."""

    # prefix -> the next hops offered for it, in message order. An IPv6 next hop may come
    # as a global and a link-local address (RFC 2545, BIRD sends both on a direct
    # session; FRR may send ``::`` and a link-local one); ExaBGP lists the prefix under
    # each.
    offered: dict[str, list[str]]
    withdrawn: list[str]
    as_path: tuple[int, ...] = ()
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = ()


def parse_update(update: Mapping[str, Any]) -> Update:
    """The IPv4 and IPv6 unicast routes of ExaBGP's ``update`` object and their attributes."""
    attrs = update.get("attribute") or {}
    as_path: list[int] = []
    for seg in (attrs.get("as-path") or {}).values():
        as_path.extend(int(a) for a in seg.get("value", []))
    origin = attrs.get("originator-id")
    offered: dict[str, list[str]] = {}
    for family, by_nh in (update.get("announce") or {}).items():
        if not family.startswith(("ipv4", "ipv6")) or "unicast" not in family:
            continue
        for nexthop, nlris in by_nh.items():
            for n in nlris:
                offered.setdefault(n["nlri"], []).append(nexthop)
    withdrawn = [n["nlri"] for family, nlris in (update.get("withdraw") or {}).items()
                 if "unicast" in family for n in nlris]
    return Update(offered=offered, withdrawn=withdrawn, as_path=tuple(as_path),
                  originator_id=None if origin is None else str(origin),
                  cluster_list=tuple(str(c) for c in attrs.get("cluster-list") or ()))


def marker_version(marker: Any) -> int | None:
    """The IP version of an End-of-RIB or route-refresh marker's ``afi`` (ExaBGP's JSON);
    None when it names none: then it stands for every family."""
    afi = marker.get("afi") if isinstance(marker, Mapping) else None
    return {"ipv4": 4, "ipv6": 6}.get(afi) if isinstance(afi, str) else None


def choose_nexthop(offered: Iterable[str],
                   interface: Callable[[], str | None]) -> str | None:
    """The next hop to install, of those an update offers for one prefix: a global
    address (the lowest of several: the choice must not depend on their order), else a
    link-local one scoped to the session's interface (``fe80::1%eth1``: the kernel
    refuses a link-local gateway without one), else None: nothing usable (only the
    unspecified ``::`` or ``0.0.0.0``, or a link-local one and no interface known)."""
    good: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    local: list[ipaddress.IPv6Address] = []
    for nh in offered:
        try:
            ip = ipaddress.ip_address(nh)
        except ValueError:
            continue
        if ip.is_unspecified or ip.is_multicast:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
            local.append(ip)
        else:
            good.append(ip)
    if good:
        return str(min(good, key=lambda a: (a.version, int(a))))
    if local:
        dev = interface()
        if dev:
            return f"{min(local)}%{dev}"
    return None
