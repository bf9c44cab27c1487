"""The calculation layer of the agent: datastore state in, desired dataplane state out.

Pure (STYLE rule 1): no etcd, no netlink, no clock. The agent hands it the syncer's
decoded mirror of ``/l3fabric/v1/`` and gets back what this node's kernel should hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datastore import keys, model
from felix_like.routes import Route, render_routes
from ipam.affinity import CONFIRMED, AffinityState
from ipam.model import IpamConfig, IpamInputs
from ipam.sources import pool_spec


@dataclass(frozen=True)
class Affinity:
    """A decoded ``ipam/affinities/<node>/<cidr>`` entry."""

    node: str
    cidr: str
    state: str


def consumed(key: str) -> bool:
    """Whether the calculation reads ``key`` at all. The others (IPAM handles, status,
    keys that hold no resource) decode to None, so writing or deleting them changes
    nothing the agent computes."""
    rel = keys.relative(key)
    if rel.startswith((keys.IPAM_AFFINITIES, keys.IPAM_BLOCKS, keys.IPAM_RESERVATIONS)) \
            or rel == keys.IPAM_CONFIG:
        return True
    if rel.startswith(("ipam/", "status/")):
        return False
    return keys.parse(key) is not None


def decode_value(key: str, value: bytes) -> Any:
    """The agent's decoder for everything under PREFIX (the syncer calls it).

    Modelled resources are validated (ValueError on a bad value, so the syncer keeps the
    last good one); affinities become `Affinity`; blocks what BGP exports of them; what
    the agent does not consume (see `consumed`) decodes to None and is ignored.
    """
    if not consumed(key):
        return None
    rel = keys.relative(key)
    if rel.startswith(keys.IPAM_AFFINITIES):
        from ipam.affinity import parse_affinity

        node, _, seg = rel[len(keys.IPAM_AFFINITIES):].partition("/")
        st: AffinityState = parse_affinity(value)
        return Affinity(node, keys.segment_to_cidr(seg), st.state)
    if rel.startswith(keys.IPAM_BLOCKS):
        from bgp.export import decode_block  # what BGP exports: affinity, borrowed addresses

        return decode_block(value)  # BlockFormatError is a ValueError
    return model.decode(key, value)


def local_endpoints(node: str, state: Mapping[str, Any]) -> list[model.WorkloadEndpoint]:
    prefix = keys.workloads_of(node)
    return [v for k, v in state.items()
            if k.startswith(prefix) and isinstance(v, model.WorkloadEndpoint)]


def confirmed_blocks(node: str, state: Mapping[str, Any]) -> list[str]:
    prefix = keys.ipam_affinities_of(node)
    return sorted(v.cidr for k, v in state.items()
                  if k.startswith(prefix) and isinstance(v, Affinity) and v.state == CONFIRMED)


def endpoint_addresses(weps: Iterable[model.WorkloadEndpoint]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for wep in weps:
        if not wep.spec.host_interface:
            continue
        for net in wep.spec.ip_networks:
            out.append((str(net), wep.spec.host_interface))
    return out


def desired_routes(node: str, state: Mapping[str, Any],
                   learned: Mapping[str, tuple[str, ...]] | None = None) -> set[Route]:
    """Local pod /32s, a blackhole per confirmed block, and routes learned over BGP."""
    return render_routes(endpoint_addresses(local_endpoints(node, state)),
                         confirmed_blocks(node, state), learned or {})


def ipam_inputs(node: str, state: Mapping[str, Any],
                overlay: Mapping[str, model.WorkloadEndpoint | None] | None = None
                ) -> IpamInputs:
    """What IPAM decides with, from the mirror's last good values (a pool overwritten with
    garbage stays usable as it was). ``overlay``: endpoints the CNI handler reported
    before the watch did (None: removed); with the mirror's, their addresses are in use."""
    pools = []
    reservations: list[str] = []
    in_use: set[str] = set()
    config = IpamConfig()
    labels: dict[str, str] = {}
    pools_prefix = keys.full(keys.IPPOOLS)
    res_prefix = keys.full(keys.IPAM_RESERVATIONS)
    weps_prefix = keys.full(keys.WORKLOADS)
    overlay = overlay or {}
    for k, v in state.items():
        if k.startswith(weps_prefix):
            if isinstance(v, model.WorkloadEndpoint) and k not in overlay:
                in_use.update(_addresses(v))
        elif k.startswith(pools_prefix) and isinstance(v, model.IPPool):
            pools.append(pool_spec(v))
        elif k.startswith(res_prefix) and isinstance(v, model.IPReservation):
            reservations.extend(str(c) for c in v.spec.reserved_cidrs)
    for w in overlay.values():
        if w is not None:
            in_use.update(_addresses(w))
    cfg = state.get(keys.full(keys.IPAM_CONFIG))
    if isinstance(cfg, model.IPAMConfig):
        config = IpamConfig(strict_affinity=cfg.spec.strict_affinity,
                            max_blocks_per_host=cfg.spec.max_blocks_per_host,
                            release_cooldown=float(cfg.spec.release_cooldown_seconds))
    me = state.get(keys.node(node))
    if isinstance(me, model.Node):
        labels = dict(me.metadata.labels)
    return IpamInputs(pools=tuple(sorted(pools, key=lambda p: p.name)), config=config,
                      reservations=tuple(sorted(reservations)), node_labels=labels,
                      in_use=frozenset(in_use))


def _addresses(wep: model.WorkloadEndpoint) -> Iterable[str]:
    return (str(n.network_address) for n in wep.spec.ip_networks)
