"""The import table of one node: every path its BGP peers sent, and what of it to install.

Pure (no I/O, the clock is passed in). Owned by `bgp.speaker.BgpSpeaker`, which feeds it
the decoded ExaBGP events; `table()` is what the agent installs (DESIGN §4 and §5).

Rules:

- **filter**: a prefix is installed only when it lies inside an enabled IPPool, is not one
  of the prefixes this node exports itself, and is not a part of one of our blocks other
  than a host route (a /32 inside our block is a borrowed address of another node: it is
  wanted, it beats our blackhole by prefix length). Everything received is still kept
  (and counted), so a filter change (a new pool) needs no route refresh;
- **best path and ECMP**: among a prefix's paths the shortest AS path wins; every peer
  offering an equally short one adds its next hop (ECMP);
- **peer down**: its paths go, unless graceful restart was negotiated: then they stay,
  marked stale, until the peer's End-of-RIB after it is back (stale ones still unmarked
  are swept) or until the restart time has run out (`expire`);
- **enhanced route refresh**: at Begin-of-RIB the peer's paths are marked stale, the
  re-sent ones unmark themselves, and End-of-RIB sweeps the rest. The speaker marks a
  peer stale itself when it had to ask for a plain refresh after losing updates.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Path:
    nexthop: str
    as_path: tuple[int, ...] = ()
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = ()


@dataclass
class _PeerRib:
    paths: dict[str, Path] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)
    stale_until: float | None = None


def _net(prefix: str) -> Network:
    return ipaddress.ip_network(prefix, strict=False)


class ImportTable:
    def __init__(self) -> None:
        self._peers: dict[str, _PeerRib] = {}
        self._pools: tuple[Network, ...] = ()
        self._own_blocks: tuple[Network, ...] = ()
        self._own_prefixes: frozenset[str] = frozenset()

    # -- filter ----------------------------------------------------------------------------

    def set_filter(self, pools: Iterable[str], own_blocks: Iterable[str],
                   own_prefixes: Iterable[str] = ()) -> None:
        self._pools = tuple(_net(p) for p in pools)
        self._own_blocks = tuple(_net(b) for b in own_blocks)
        self._own_prefixes = frozenset(str(_net(p)) for p in [*own_prefixes, *own_blocks])

    def accepts(self, prefix: str) -> bool:
        net = _net(prefix)
        if str(net) in self._own_prefixes:
            return False
        if not any(net.version == p.version and net.subnet_of(p)  # type: ignore[arg-type]
                   for p in self._pools):
            return False
        for blk in self._own_blocks:
            if (net.version == blk.version and net.subnet_of(blk)  # type: ignore[arg-type]
                    and net.prefixlen != net.max_prefixlen):
                return False
        return True

    # -- events ----------------------------------------------------------------------------

    def _rib(self, peer: str) -> _PeerRib:
        return self._peers.setdefault(peer, _PeerRib())

    def announce(self, peer: str, prefix: str, path: Path) -> None:
        rib = self._rib(peer)
        key = str(_net(prefix))
        rib.paths[key] = path
        rib.stale.discard(key)

    def withdraw(self, peer: str, prefix: str) -> None:
        rib = self._peers.get(peer)
        if rib is not None:
            key = str(_net(prefix))
            rib.paths.pop(key, None)
            rib.stale.discard(key)

    def peer_down(self, peer: str, *, restart_time: float = 0, now: float = 0) -> None:
        """Drop the peer's paths, or keep them stale for ``restart_time`` seconds (GR)."""
        rib = self._peers.get(peer)
        if rib is None:
            return
        if restart_time > 0 and rib.paths:
            rib.stale = set(rib.paths)
            rib.stale_until = now + restart_time
        else:
            del self._peers[peer]

    def mark_stale(self, peer: str, *, until: float | None = None) -> None:
        """Start of a refresh (or of a restart): paths not re-sent before `sweep` go."""
        rib = self._rib(peer)
        rib.stale = set(rib.paths)
        rib.stale_until = until

    def sweep(self, peer: str) -> int:
        """End-of-RIB: remove the paths still stale. Returns how many went."""
        rib = self._peers.get(peer)
        if rib is None:
            return 0
        n = len(rib.stale)
        for key in rib.stale:
            rib.paths.pop(key, None)
        rib.stale.clear()
        rib.stale_until = None
        return n

    def expire(self, now: float) -> bool:
        """Sweep every peer whose stale time ran out. True if something went."""
        gone = False
        for peer, rib in list(self._peers.items()):
            if rib.stale_until is not None and now >= rib.stale_until:
                log.info("stale routes of %s expired: %d swept", peer, len(rib.stale))
                gone |= self.sweep(peer) > 0
        return gone

    def next_deadline(self) -> float | None:
        times = [r.stale_until for r in self._peers.values() if r.stale_until is not None]
        return min(times) if times else None

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)

    # -- views -----------------------------------------------------------------------------

    def received(self, peer: str) -> int:
        rib = self._peers.get(peer)
        return 0 if rib is None else len(rib.paths)

    def accepted(self, peer: str) -> int:
        rib = self._peers.get(peer)
        return 0 if rib is None else sum(1 for p in rib.paths if self.accepts(p))

    def paths(self, peer: str) -> dict[str, Path]:
        rib = self._peers.get(peer)
        return {} if rib is None else dict(rib.paths)

    def best(self) -> dict[str, list[tuple[str, Path]]]:
        """Accepted prefixes -> [(peer, path)] of the best (shortest AS path) paths."""
        offers: dict[str, list[tuple[str, Path]]] = {}
        for peer, rib in self._peers.items():
            for prefix, path in rib.paths.items():
                offers.setdefault(prefix, []).append((peer, path))
        out: dict[str, list[tuple[str, Path]]] = {}
        for prefix, cands in offers.items():
            if not self.accepts(prefix):
                continue
            shortest = min(len(p.as_path) for _, p in cands)
            out[prefix] = sorted((peer, p) for peer, p in cands if len(p.as_path) == shortest)
        return out

    def table(self) -> dict[str, tuple[str, ...]]:
        """What to install: prefix -> sorted distinct next hops (several = ECMP)."""
        return {prefix: tuple(sorted({p.nexthop for _, p in cands}))
                for prefix, cands in self.best().items()}
