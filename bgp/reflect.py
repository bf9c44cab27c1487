"""Route reflection for a node acting as a route reflector: which learned routes go where.

ExaBGP keeps no RIB and reflects nothing, so the speaker re-announces, per neighbour, the
best path of every accepted prefix learned over iBGP, with its original next hop,
``originator-id`` and our cluster ID prepended to ``cluster-list`` (RFC 4456: client
routes go to everyone, non-client routes only to clients; never back to the sender or
the originator; a route that already carries our cluster ID is a loop and goes nowhere).
A link-local next hop means nothing on another client's link and is not reflected.

Pure: `reflected_routes` turns the import table's best paths and the neighbours into the
announce lines; `bgp.speaker.BgpSpeaker` diffs them against what it sent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from bgp.config import NeighborSpec
from bgp.rib import Path


def reflected_routes(best: Mapping[str, Sequence[tuple[str, Path]]],
                     neighbors: Mapping[str, NeighborSpec], up: Sequence[str],
                     exports: Collection[str]) -> dict[tuple[str, str], str]:
    """(neighbour, prefix) -> ExaBGP's announce line, for the iBGP neighbours ``up``.

    ``best`` is the import table's best paths (`bgp.rib.ImportTable.best`); our own
    ``exports`` are never reflected (we announce them ourselves)."""
    want: dict[tuple[str, str], str] = {}
    for prefix, cands in best.items():
        if prefix in exports:
            continue
        src, path = cands[0]
        sn = neighbors.get(src)
        if sn is None or not sn.ibgp or "%" in path.nexthop:
            continue  # (a link-local next hop means nothing on another client's link)
        cluster = next((n.cluster_id for n in neighbors.values() if n.cluster_id), None)
        if cluster is None or cluster in path.cluster_list:
            continue
        origin = path.originator_id or src
        clusters = " ".join((cluster, *path.cluster_list))
        aspath = " ".join(str(a) for a in path.as_path)
        for dst in up:
            if dst in (src, origin):
                continue
            if not (sn.rr_client or neighbors[dst].rr_client):
                continue
            want[(dst, prefix)] = (
                f"neighbor {dst} announce route {prefix} next-hop {path.nexthop} "
                f"originator-id {origin} cluster-list [ {clusters} ] as-path [ {aspath} ]")
    return want
