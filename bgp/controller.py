"""The one object the agent holds for BGP: the cluster state in, speaker updates out.

`BgpController.on_state(state)` takes the agent's `felix_like.state.ClusterState` and
makes the node's ExaBGP match it: neighbours (`bgp.config.desired_neighbors`), exports
(`bgp.export.export_prefixes`) and the import filter (enabled pools, own blocks). Calling it
again with the same state does nothing (level-triggered, idempotent). What the peers send
comes back through ``on_change`` (the agent re-applies its routes) and the ``learned``
property (prefix → next hops, the argument of ``calc.desired_routes``).

Reads from the state: its nodes, BGP configurations and peers, pools, the node's
confirmed affinities and the addresses it borrows (indexed by node: the cost of a call
follows what the node holds, plus the node list the full mesh is drawn from).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgp.config import desired_neighbors
from bgp.export import confirmed_blocks, export_prefixes, pool_cidrs
from bgp.speaker import BgpSpeaker, Learned
from felix_like.metrics import BgpSample, PeerSample

if TYPE_CHECKING:
    from felix_like.state import ClusterState

log = logging.getLogger(__name__)


def default_exabgp() -> str:
    beside = Path(sys.executable).parent / "exabgp"
    if beside.exists():
        return str(beside)
    return shutil.which("exabgp") or "exabgp"


class BgpController:
    def __init__(self, node: str, *, netns: str | None, socket_path: str, workdir: Path,
                 exabgp_bin: str | None = None, metrics: Any = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.node = node
        self.netns = netns
        self.metrics = metrics
        self._interfaces: dict[str, str] = {}  # CIDR address -> interface holding it
        self._neighbors_drawn_from: tuple[Any, ...] = ()
        self.on_change = on_change
        self.speaker = BgpSpeaker(node, netns=netns, socket_path=socket_path,
                                  workdir=Path(workdir), exabgp_bin=exabgp_bin or default_exabgp(),
                                  on_learned=self._on_learned)
        self.speaker.interface_of = self._interface_of
        if metrics is not None:
            metrics.sample_bgp(self.metrics_sample)

    @property
    def interfaces(self) -> dict[str, str]:
        """The node's interface addresses (``10.77.4.2/30``), each with the interface holding
        it; the agent sets them from its rtnetlink reads. Each session's local address is
        the one on the peer's subnet (a node with two uplinks), and a link-local next hop
        learned over a session is installed on the interface of that local address."""
        return self._interfaces

    @interfaces.setter
    def interfaces(self, addrs: dict[str, str]) -> None:
        self._interfaces = dict(addrs)

    @property
    def local_addresses(self) -> list[str]:
        return sorted(self._interfaces)

    def _interface_of(self, address: str) -> str | None:
        """The interface holding ``address`` (no prefix length), if it is the node's."""
        for cidr, name in self._interfaces.items():
            if cidr.split("/", 1)[0] == address:
                return name
        return None

    def _on_learned(self, table: Learned) -> None:
        if self.on_change is not None:
            self.on_change()

    @property
    def learned(self) -> Learned:
        return dict(self.speaker.learned)

    @property
    def max_prefixes(self) -> dict[str, int]:
        """Each configured peer's max-prefix limit in force (shown in the node status)."""
        return {ip: self.speaker.rib.limit(ip) for ip in sorted(self.speaker.neighbors)}

    @property
    def in_sync(self) -> bool:
        """True once the import table is complete after (re-)attaching to ExaBGP."""
        return self.speaker.in_sync

    async def start(self) -> None:
        await self.speaker.start()

    async def stop(self, drain: bool = False) -> None:
        await self.speaker.stop(drain=drain)

    async def on_state(self, state: ClusterState) -> None:
        bgpconf = state.bgp_configs.get("default")
        sp = self.speaker
        me = state.nodes.get(self.node)
        v6 = me.spec.bgp.ipv6_address if me is not None and me.spec.bgp is not None else None
        sp.nexthop6 = None if v6 is None else str(v6.ip)
        sp.set_filter(pool_cidrs(state), confirmed_blocks(self.node, state))
        await sp.set_exports(export_prefixes(self.node, state),
                             bgpconf.spec.communities if bgpconf else ())
        # The neighbours follow the Nodes (the full mesh), the BGP configuration and the
        # peers, and the node's addresses: drawn again only when one of them changed, not
        # on every pod's event.
        drawn_from = (id(state), state.bgp_generation, tuple(self.local_addresses))
        if drawn_from != self._neighbors_drawn_from:
            peers = [state.peers[k] for k in sorted(state.peers)]
            await sp.set_neighbors(desired_neighbors(self.node, state.nodes, bgpconf, peers,
                                                     local_addresses=self.local_addresses))
            self._neighbors_drawn_from = drawn_from

    def peer_status(self) -> list[dict[str, Any]]:
        return self.speaker.peer_status()

    def metrics_sample(self) -> BgpSample:
        """The BGP metrics now, read at each scrape: one `PeerSample` per configured
        neighbour, so a peer removed from the configuration leaves no series behind."""
        sp = self.speaker
        dropped = sp.prefixes_dropped()
        peers = tuple(PeerSample(peer=r["peerIP"], up=r["state"] == "Established",
                                 received=r["prefixesIn"], max_prefixes=r["maxPrefixes"],
                                 dropped=dropped.get(r["peerIP"], 0))
                      for r in sp.peer_status())
        return BgpSample(peers=peers, advertised=len(sp.announced),
                         exabgp_restarts=sp.exabgp.restarts)
