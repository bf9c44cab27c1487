"""The calculation layer of the agent: the cluster state in, desired dataplane state out.

Pure (STYLE rule 1): no etcd, no netlink, no clock. The agent hands it its
`felix_like.state.ClusterState` and gets back what this node's kernel should hold and what
IPAM decides with. Each function reads the state's indexes for the node, so its cost
follows the node, not the cluster (`ipam_inputs` reads the pools and IPAM configuration,
and takes the state's live view of the addresses in use).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from datastore import model
from felix_like.routes import Route, render_routes
from felix_like.state import ClusterState
from ipam.inputs import pool_spec
from ipam.values import IpamConfig, IpamInputs


def endpoint_addresses(weps: Iterable[model.WorkloadEndpoint]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for wep in weps:
        if not wep.spec.host_interface:
            continue
        for net in wep.spec.ip_networks:
            out.append((str(net), wep.spec.host_interface))
    return out


def desired_routes(node: str, state: ClusterState,
                   learned: Mapping[str, tuple[str, ...]] | None = None) -> set[Route]:
    """Local pod /32s, a blackhole per confirmed block, and routes learned over BGP."""
    return render_routes(endpoint_addresses(state.endpoints_of(node).values()),
                         state.confirmed_blocks(node), learned or {})


def ipam_inputs(node: str, state: ClusterState) -> IpamInputs:
    """What IPAM decides with, from the state's last good values (a pool overwritten with
    garbage stays usable as it was); every endpoint's addresses are in use, those the
    CNI handler reported before etcd's watch echoed them included."""
    cfg = state.ipam_config
    config = IpamConfig() if cfg is None else IpamConfig(
        strict_affinity=cfg.spec.strict_affinity,
        max_blocks_per_host=cfg.spec.max_blocks_per_host,
        release_cooldown=float(cfg.spec.release_cooldown_seconds))
    me = state.nodes.get(node)
    pools = sorted((pool_spec(p) for p in state.pools.values()), key=lambda p: p.name)
    reservations = sorted(str(c) for r in state.reservations.values()
                          for c in r.spec.reserved_cidrs)
    return IpamInputs(pools=tuple(pools), config=config, reservations=tuple(reservations),
                      node_labels={} if me is None else dict(me.metadata.labels),
                      in_use=state.addresses_in_use(), room=state.block_room(),
                      orphans=state.orphan_blocks())
