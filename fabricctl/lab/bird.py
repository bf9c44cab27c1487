"""BIRD 2 configuration for a lab router, rendered from the topology (pure).

One ``protocol bgp`` per link to another BGP speaker: eBGP when the AS numbers differ,
iBGP otherwise (the router is then a route reflector when it carries
``l3fabric.rr-cluster-id``). Every session imports and exports only the lab's prefixes:
the IPPool and the fabric range (RFC 8212 needs explicit filters on eBGP anyway), so a
router never carries or installs anything else. ``next hop self`` everywhere, because
every session runs over its own point-to-point link and no two nodes share a segment;
``merge paths on`` in the kernel protocol gives ECMP (two spines).

In a dual-stack lab every session also carries IPv6 unicast (MP-BGP over the IPv4
session), with the same filters for the IPv6 pool and fabric; ``next hop self`` is then
the router's IPv6 address on the link.
"""

from __future__ import annotations

from .topology import Topology, TopologyError

HOLD_TIME = 9
KEEPALIVE = 3


def protocol_name(peer: str) -> str:
    """BIRD protocol names are symbols: letters, digits and underscores."""
    return "p_" + peer.replace("-", "_").replace(".", "_")


def render_bird(topo: Topology, router: str) -> str:
    r = topo.nodes.get(router)
    if r is None or r.role != "router":
        raise TopologyError(f"{topo.name}: {router} is not a router")
    assert r.asn is not None
    v6 = topo.dual_stack
    lines = [
        f"# BIRD 2 config for {router} in lab {topo.name}; rendered by `fabricctl lab`.",
        "# Do not edit: change the topology and re-render (fabricctl lab render).",
        f"router id {topo.router_id(router)};",
        "log stderr all;",
        "",
        "# Only the lab's pod pool and fabric links, never anything else.",
        f"define LAB_NETS = [ {topo.pool_cidr}+, {topo.fabric_cidr}+ ];",
        "filter lab_only { if net ~ LAB_NETS then accept; reject; }",
        "# Links are already in the kernel: only learned routes go there.",
        "filter to_kernel { if source = RTS_DEVICE then reject; if net ~ LAB_NETS then accept;"
        " reject; }",
    ]
    if v6:
        lines += [
            f"define LAB_NETS6 = [ {topo.pool6_cidr}+, {topo.fabric6_cidr}+ ];",
            "filter lab_only6 { if net ~ LAB_NETS6 then accept; reject; }",
            "filter to_kernel6 { if source = RTS_DEVICE then reject; "
            "if net ~ LAB_NETS6 then accept; reject; }",
        ]
    lines += [
        "",
        "protocol device { scan time 10; }",
        "protocol direct { ipv4 { import filter lab_only; };"
        + (" ipv6 { import filter lab_only6; };" if v6 else "") + " interface \"eth*\"; }",
        "protocol kernel {",
        "  ipv4 { import none; export filter to_kernel; };",
        "  merge paths on;",
        "}",
    ]
    if v6:
        lines += [
            "protocol kernel {",
            "  ipv6 { import none; export filter to_kernel6; };",
            "  merge paths on;",
            "}",
        ]
    lines += [
        "",
        "template bgp fabric {",
        f"  local as {r.asn};",
        f"  hold time {HOLD_TIME}; keepalive time {KEEPALIVE}; connect retry time 2;",
        "  connect delay time 1;",
        "  direct; check link on;",
        # BIRD waits 60 s (its default) after an error such as "Link down" before it
        # restarts a session: a 1.5 s flap of a node's link would cut the node off for a
        # minute. Restart after 1 s, backing off to 10 s on repeated errors.
        "  error wait time 1, 10;",
        "  ipv4 { import filter lab_only; export filter lab_only; next hop self; "
        "gateway direct; };",
    ]
    if v6:
        lines.append("  ipv6 { import filter lab_only6; export filter lab_only6; "
                     "next hop self; gateway direct; };")
    lines += [
        "}",
    ]
    if r.rr_cluster_id:
        lines.append(f"# Route reflector: iBGP neighbours are clients (cluster {r.rr_cluster_id}).")
    for s, is_a in topo.sessions_of(router):
        mine, peer, peer_ip, peer_asn = ((s.a_ip, s.b, s.b_ip, s.b_asn) if is_a
                                         else (s.b_ip, s.a, s.a_ip, s.a_asn))
        kind = topo.nodes[peer].role
        extra = ""
        if s.ibgp and r.rr_cluster_id:
            extra = f" rr client; rr cluster id {r.rr_cluster_id};"
        lines.append(
            f"protocol bgp {protocol_name(peer)} from fabric {{ "
            f"description \"{kind} {peer}\"; neighbor {peer_ip.ip} as {peer_asn}; "
            f"source address {mine.ip};{extra} }}")
    return "\n".join(lines) + "\n"
