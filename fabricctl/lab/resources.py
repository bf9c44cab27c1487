"""The etcd resources a lab writes (pure): IPPool, BGPConfiguration, Nodes, BGPPeers.

A dual-stack lab adds an IPv6 pool (``default-v6``) and each Node's ``bgp.ipv6Address``.

Labs run without the node-to-node mesh: every node peers with the router(s) at the other
end of its fabric links, as the topology's links say. Nodes carry their AS number and
their rack as a label (``rack``), so policies and peers can select by rack.
"""

from __future__ import annotations

from typing import Any

from datastore import model

from .bird import HOLD_TIME
from .topology import Topology

DEFAULT_AS = 64512


def lab_resources(topo: Topology) -> list[dict[str, Any]]:
    """Framed objects, in the order they should be written."""
    api = model.API_VERSION
    out: list[dict[str, Any]] = [
        {"apiVersion": api, "kind": "IPPool", "metadata": {"name": "default"},
         "spec": {"cidr": str(topo.pool_cidr), "blockSize": topo.block_size}},
        {"apiVersion": api, "kind": "BGPConfiguration", "metadata": {"name": "default"},
         "spec": {"asNumber": DEFAULT_AS, "nodeToNodeMesh": False, "holdTime": HOLD_TIME}},
    ]
    if topo.pool6_cidr is not None:
        out.insert(1, {"apiVersion": api, "kind": "IPPool", "metadata": {"name": "default-v6"},
                       "spec": {"cidr": str(topo.pool6_cidr), "blockSize": topo.block_size6}})
    for n in topo.by_role("node"):
        addr = topo.fabric_address(n.name)
        labels = {"l3fabric.io/lab": topo.name}
        if n.rack:
            labels["rack"] = n.rack
        bgp: dict[str, Any] = {"ipv4Address": str(addr), "asNumber": n.asn}
        addr6 = topo.fabric_address6(n.name)
        if addr6 is not None:
            bgp["ipv6Address"] = str(addr6)
        out.append({"apiVersion": api, "kind": "Node",
                    "metadata": {"name": n.name, "labels": labels}, "spec": {"bgp": bgp}})
    for n in topo.by_role("node"):
        for s, is_a in topo.sessions_of(n.name):
            peer, peer_ip, peer_asn = (s.b, s.b_ip, s.b_asn) if is_a else (s.a, s.a_ip, s.a_asn)
            out.append({"apiVersion": api, "kind": "BGPPeer",
                        "metadata": {"name": f"{n.name}-{peer}"},
                        "spec": {"peerIP": str(peer_ip.ip), "asNumber": peer_asn,
                                 "node": n.name}})
    return out


def encoded(topo: Topology) -> list[tuple[str, str]]:
    """(etcd key, JSON value) pairs, each validated by the datastore model."""
    pairs = []
    for doc in lab_resources(topo):
        res = model.parse_document(doc)
        pairs.append((model.key_for(res), model.encode(res).decode()))
    return pairs
