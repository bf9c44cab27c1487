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


@dataclass(frozen=True)
class Affinity:
    """A decoded ``ipam/affinities/<node>/<cidr>`` entry."""

    node: str
    cidr: str
    state: str


def decode_value(key: str, value: bytes) -> Any:
    """The agent's decoder for everything under PREFIX (the syncer calls it).

    Modelled resources are validated (ValueError on a bad value, so the syncer keeps the
    last good one); affinities become `Affinity`; what the agent does not consume
    (handles, blocks, status of other nodes) decodes to None and is ignored.
    """
    rel = keys.relative(key)
    if rel.startswith(keys.IPAM_AFFINITIES):
        from ipam.affinity import parse_affinity

        node, _, seg = rel[len(keys.IPAM_AFFINITIES):].partition("/")
        st: AffinityState = parse_affinity(value)
        return Affinity(node, keys.segment_to_cidr(seg), st.state)
    if rel.startswith(keys.IPAM_BLOCKS):
        from bgp.export import decode_block  # what BGP exports: affinity, borrowed addresses

        return decode_block(value)  # BlockFormatError is a ValueError
    if rel.startswith(("ipam/", "status/")):
        return None
    if keys.parse(key) is None:
        return None
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
