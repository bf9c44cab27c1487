"""The import table of one node: every path its BGP peers sent, and what of it to install.

Pure (no I/O, the clock is passed in). Owned by `bgp.speaker.BgpSpeaker`, which feeds it
the decoded ExaBGP events; `table()` is what the agent installs (docs/architecture.md §5 and §8).

Rules:

- **filter**: a prefix is installed only when it lies inside an enabled IPPool, is not one
  of the prefixes this node exports itself, and is not a part of one of our blocks other
  than a host route (a /32 inside our block is a borrowed address of another node: it is
  wanted, it beats our blackhole by prefix length). A prefix "inside" a pool is the pool's
  own CIDR or a longer one: a peer announcing the /16 of a /16 pool is inside, a /15 (a
  supernet) is not;
- **bounded storage**: a path outside every pool is not even stored (only counted in
  ``received``), so what a peer can make us hold is bounded by the pools and by the
  peer's max-prefix limit (``set_limit``, the BGPPeer's or BGPConfiguration's
  ``maxPrefixes``; ``max_prefixes``, 10,000 paths, for a peer without one — like a
  router's ``neighbor X maximum-prefix N``): a new prefix beyond it is dropped, counted
  (``dropped``) and logged once per peer, and the peer is marked ``limited``. Paths inside
  a pool but refused for another reason (one of our blocks) are kept, since our blocks
  move. Because out-of-pool paths are gone, a new pool needs a route refresh
  (``set_filter`` returns True when the pools grew; the speaker asks for one). Dropped
  paths are not re-learned when the peer falls back under the limit (BIRD's ``import
  limit ... action block`` behaves the same): a refresh or a session reset brings them;
- **a limit changed at run time** applies at once, to the next announcements, without a
  session reset. Raised: new prefixes are stored again up to the new limit; when the
  peer had prefixes refused, ``set_limit`` returns True and the speaker asks that peer
  for a route refresh, which brings them. Lowered below what the peer holds: what is held
  stays (no route is withdrawn from the kernel because of a configuration change) and
  every new prefix is refused until withdrawals bring the peer under the new limit —
  ``over_limit`` says so. A change restarts the once-per-limit log line; ``dropped`` keeps
  counting;
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

# Re-exported: the limit of a peer without one of its own, the model's default.
from datastore.model import DEFAULT_MAX_PREFIXES as DEFAULT_MAX_PREFIXES

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
    received: int = 0  # announcements seen, stored or not
    # Announcements of new prefixes refused at the peer's limit (a prefix re-sent, by a
    # refresh say, counts again: a set of the refused ones would be unbounded).
    dropped: int = 0
    limited: bool = False  # the limit in force was hit (logged once per limit)


def _version(key: str) -> int:
    """The IP version of a stored prefix (keys are normalised network strings)."""
    return 6 if ":" in key else 4


def _net(prefix: str) -> Network:
    return ipaddress.ip_network(prefix, strict=False)


class ImportTable:
    """``max_prefixes``: the limit of a peer that has none of its own (`set_limit`)."""

    def __init__(self, max_prefixes: int = DEFAULT_MAX_PREFIXES) -> None:
        self.max_prefixes = max_prefixes
        self._peers: dict[str, _PeerRib] = {}
        # Per-peer limits, apart from _PeerRib: they outlive a session going down.
        self._limits: dict[str, int] = {}
        self._pools: tuple[Network, ...] = ()
        self._own_blocks: tuple[Network, ...] = ()
        self._own_prefixes: frozenset[str] = frozenset()
        self._verdicts: dict[str, bool] = {}  # accepts() per prefix, for this filter

    # -- filter ----------------------------------------------------------------------------

    def set_filter(self, pools: Iterable[str], own_blocks: Iterable[str],
                   own_prefixes: Iterable[str] = ()) -> bool:
        """Set the filter; paths now outside every pool are dropped. True when a pool was
        added (paths inside it were not stored: the owner asks the peers for a refresh)."""
        old = set(self._pools)
        self._pools = tuple(_net(p) for p in pools)
        self._own_blocks = tuple(_net(b) for b in own_blocks)
        self._own_prefixes = frozenset(str(_net(p)) for p in [*own_prefixes, *own_blocks])
        self._verdicts.clear()
        new = set(self._pools)
        if old - new:
            for rib in self._peers.values():
                for key in [k for k in rib.paths if not self.in_pools(k)]:
                    del rib.paths[key]
                    rib.stale.discard(key)
        return bool(new - old)

    def in_pools(self, prefix: str) -> bool:
        """Inside an enabled pool: the pool's CIDR itself or longer (never a supernet)."""
        net = _net(prefix)
        return any(net.version == p.version and net.subnet_of(p)  # type: ignore[arg-type]
                   for p in self._pools)

    def accepts(self, prefix: str) -> bool:
        verdict = self._verdicts.get(prefix)
        if verdict is None:
            verdict = self._verdicts[prefix] = self._accepts(prefix)
        return verdict

    def _accepts(self, prefix: str) -> bool:
        net = _net(prefix)
        if str(net) in self._own_prefixes:
            return False
        if not self.in_pools(prefix):
            return False
        for blk in self._own_blocks:
            if (net.version == blk.version and net.subnet_of(blk)  # type: ignore[arg-type]
                    and net.prefixlen != net.max_prefixlen):
                return False
        return True

    # -- limits ----------------------------------------------------------------------------

    def limit(self, peer: str) -> int:
        """The max-prefix limit in force for the peer."""
        return self._limits.get(peer, self.max_prefixes)

    def set_limit(self, peer: str, limit: int | None) -> bool:
        """Set the peer's limit (None: the table's ``max_prefixes``). Applies from the next
        announcement; nothing held is removed. True when the limit went up for a peer
        that had prefixes refused under the old one: those come only when the peer sends
        them again, so the owner asks it for a route refresh."""
        old = self.limit(peer)
        if limit is None:
            self._limits.pop(peer, None)
        else:
            self._limits[peer] = limit
        new = self.limit(peer)
        if new == old:
            return False
        rib = self._peers.get(peer)
        log.info("max-prefix limit of peer %s: %d -> %d (holds %d)", peer, old, new,
                 0 if rib is None else len(rib.paths))
        if rib is None:
            return False
        refused, rib.limited = rib.limited, False  # log (and show) the new limit's hit
        return refused and new > old

    def over_limit(self, peer: str) -> bool:
        """Holds more than its limit (kept when the limit was lowered below it)."""
        return self.stored(peer) > self.limit(peer)

    # -- events ----------------------------------------------------------------------------

    def _rib(self, peer: str) -> _PeerRib:
        return self._peers.setdefault(peer, _PeerRib())

    def announce(self, peer: str, prefix: str, path: Path) -> bool:
        """Store the path. False when it was not stored: outside every pool, or a new
        prefix beyond the peer's limit (counted in ``dropped``, logged once per peer and
        limit)."""
        rib = self._rib(peer)
        rib.received += 1
        key = str(_net(prefix))
        if key not in rib.paths:
            if not self.in_pools(key):
                return False
            limit = self.limit(peer)
            if len(rib.paths) >= limit:
                rib.dropped += 1
                if not rib.limited:
                    rib.limited = True
                    log.warning("peer %s reached the limit of %d prefixes: new prefixes "
                                "from it are dropped (first: %s)", peer, limit, key)
                return False
        rib.paths[key] = path
        rib.stale.discard(key)
        return True

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

    def mark_stale(self, peer: str, *, until: float | None = None,
                   version: int | None = None) -> None:
        """Start of a refresh (or of a restart): paths not re-sent before `sweep` go.
        ``version`` (4 or 6): only that family's paths, as a refresh asks for one family
        at a time; None: all of them."""
        rib = self._rib(peer)
        rib.stale |= {k for k in rib.paths if version is None or _version(k) == version}
        rib.stale_until = until

    def unmark_stale(self, peer: str, version: int | None = None) -> None:
        """Keep the paths marked by `mark_stale` (of family ``version``, None: all):
        whether they are still right cannot be known now."""
        rib = self._peers.get(peer)
        if rib is None:
            return
        rib.stale -= {k for k in rib.stale if version is None or _version(k) == version}
        if not rib.stale:
            rib.stale_until = None

    def sweep(self, peer: str, version: int | None = None) -> int:
        """End-of-RIB (of family ``version``, None: every family): remove the paths still
        stale. Returns how many went."""
        rib = self._peers.get(peer)
        if rib is None:
            return 0
        gone = {k for k in rib.stale if version is None or _version(k) == version}
        for key in gone:
            rib.paths.pop(key, None)
        rib.stale -= gone
        if not rib.stale:
            rib.stale_until = None
        return len(gone)

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
        """The peer is no longer configured: its paths and its limit go."""
        self._peers.pop(peer, None)
        self._limits.pop(peer, None)

    # -- views -----------------------------------------------------------------------------

    def stored(self, peer: str) -> int:
        """Paths held for the peer (inside a pool; at most its limit, unless the limit was
        lowered below what it held)."""
        rib = self._peers.get(peer)
        return 0 if rib is None else len(rib.paths)

    def received(self, peer: str) -> int:
        """Announcements seen from the peer, stored or not."""
        rib = self._peers.get(peer)
        return 0 if rib is None else rib.received

    def dropped(self, peer: str) -> int:
        """Announcements of new prefixes refused at the peer's limit (not distinct)."""
        rib = self._peers.get(peer)
        return 0 if rib is None else rib.dropped

    def limited(self, peer: str) -> bool:
        """A new prefix was refused at the limit in force (since it was last changed)."""
        rib = self._peers.get(peer)
        return rib is not None and rib.limited

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
