"""ExaBGP configuration of one node, rendered from the datastore resources.

See docs/architecture.md §8.

Pure (STYLE rules 1 and 6): Node, BGPConfiguration and BGPPeer objects in, a table of
neighbours (`desired_neighbors`) and the ExaBGP configuration text (`render_config`) out.
The speaker diffs two neighbour tables to say which sessions a change touches; ExaBGP's
own reload (SIGUSR1) then re-establishes only neighbours whose definition changed, so
unaffected sessions keep running.

Topology rules (Calico's, with what ExaBGP can do):

- no node has ``routeReflectorClusterID`` and ``nodeToNodeMesh`` is true (the default):
  every node peers with every other node that has a BGP address (``node-mesh``);
- some nodes have ``routeReflectorClusterID``: those are reflectors. A reflector peers with
  every other node (other reflectors: ``rr-mesh``; the rest: ``rr-client``); a client peers
  only with the reflectors (``rr``). This applies whatever ``nodeToNodeMesh`` says. ExaBGP
  does not reflect by itself: the speaker of a reflector node re-announces what it learns
  (`NeighborSpec.rr_client` tells it to whom), keeping the next hop and adding
  originator-id and cluster-list;
- ``nodeToNodeMesh: false`` and no reflectors: only explicit BGPPeers;
- explicit BGPPeers (``global`` when they select every node, else ``node``) come on top;
  an explicit peer wins over a node-to-node session to the same address.

The local AS is the node's ``bgp.asNumber``, else the BGPConfiguration's (also for the
peer ASN of other nodes), so AS-per-rack designs are Node fields only. Likewise the
max-prefix limit (``NeighborSpec.max_prefixes``): a BGPPeer's ``maxPrefixes``, else the
BGPConfiguration's (10,000 by default), which is also the limit of every node-to-node
and route-reflector session. It is enforced by the speaker's import table, not by
ExaBGP: it is not rendered, and a change of it alone touches no session.

Local address (`local_address_for`): the node's address on the subnet that holds the
peer, longest prefix first, the BGP address winning ties; a peer on no attached subnet
(multi-hop) gets the BGP address. A node with two uplinks (one per route reflector, say)
must use, per session, the address of the link it runs over: ExaBGP binds its listener
(``listen 179``) and its outgoing connection to ``local-address``, so with the BGP address
(10.77.1.2) for rr2 (10.77.4.1) the reflector's connections to 10.77.4.2 are refused and
ours come from an address rr2 has no neighbour for (lab route-reflector: rr2 stays
"Active, Connection refused"). The owner passes the node's interface addresses
(``local_addresses``); without them only the BGP address's own subnet is known. ExaBGP's
``local-address auto`` is not an option: it cannot be combined with ``listen``, which
ExaBGP-to-ExaBGP sessions need.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from datastore import model
from datastore.calico_selector import All

log = logging.getLogger(__name__)

DEFAULT_BGP = model.BGPConfigurationSpec()


@dataclass(frozen=True)
class NeighborSpec:
    """One BGP session of this node, as ExaBGP needs it. Equal specs = untouched session
    (``max_prefixes`` is left out of the comparison: the import table applies it, the
    session does not change)."""

    peer_ip: str
    peer_as: int
    local_as: int
    local_address: str
    router_id: str
    type: str  # node-mesh, rr, rr-mesh, rr-client, global, node
    hold_time: int = 90
    graceful_restart: int = 0  # restart time in seconds; 0 = capability off
    md5_password: str | None = None
    ttl_security: int = 0  # hops (GTSM, RFC 5082); 0 = off
    rr_client: bool = False  # we reflect routes to this neighbour (we are its reflector)
    cluster_id: str | None = None  # our cluster ID when we are a reflector
    name: str | None = None  # the node name or BGPPeer name behind the session
    # IPv6 unicast too, over this IPv4 session (MP-BGP, RFC 4760): the node has a
    # ``bgp.ipv6Address``, the next hop of its IPv6 blocks.
    ipv6: bool = False
    # Paths kept from this peer (bgp.rib); None: the speaker's default (10,000).
    max_prefixes: int | None = field(default=None, compare=False)

    @property
    def ibgp(self) -> bool:
        return self.peer_as == self.local_as


@dataclass(frozen=True)
class NeighborDiff:
    added: frozenset[str]
    removed: frozenset[str]
    changed: frozenset[str]

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_neighbors(old: Mapping[str, NeighborSpec],
                   new: Mapping[str, NeighborSpec]) -> NeighborDiff:
    return NeighborDiff(
        added=frozenset(new.keys() - old.keys()),
        removed=frozenset(old.keys() - new.keys()),
        changed=frozenset(k for k in new.keys() & old.keys() if new[k] != old[k]),
    )


def _node_ip(node: model.Node) -> str | None:
    bgp = node.spec.bgp
    return None if bgp is None else str(bgp.ipv4_address.ip)


def local_address_for(peer_ip: str, bgp_address: ipaddress.IPv4Interface,
                      local_addresses: Iterable[ipaddress.IPv4Interface] = ()) -> str:
    """The address to source a session to ``peer_ip`` from: the node's address on the
    most specific subnet holding the peer (the BGP address wins ties), else the BGP
    address."""
    peer = ipaddress.ip_address(peer_ip)
    best = bgp_address if peer in bgp_address.network else None
    for iface in local_addresses:
        if (peer in iface.network and iface.ip != peer
                and (best is None or iface.network.prefixlen > best.network.prefixlen)):
            best = iface
    return str((best or bgp_address).ip)


def _node_as(node: model.Node, spec: model.BGPConfigurationSpec) -> int:
    bgp = node.spec.bgp
    if bgp is not None and bgp.as_number is not None:
        return bgp.as_number
    return spec.as_number


def _cluster_id(node: model.Node) -> str | None:
    bgp = node.spec.bgp
    if bgp is None or bgp.route_reflector_cluster_id is None:
        return None
    return str(bgp.route_reflector_cluster_id)


def desired_neighbors(
    node_name: str,
    nodes: Mapping[str, model.Node],
    bgp_config: model.BGPConfiguration | None = None,
    peers: Iterable[model.BGPPeer] = (),
    local_addresses: Iterable[ipaddress.IPv4Interface | str] = (),
) -> dict[str, NeighborSpec]:
    """The sessions ``node_name`` should have, keyed by peer IP. Empty when the node itself
    has no BGP address (it cannot speak BGP then). ``local_addresses``: the node's
    interface addresses with prefix length (``10.77.4.2/30``), for `local_address_for`."""
    spec = bgp_config.spec if bgp_config is not None else DEFAULT_BGP
    me = nodes.get(node_name)
    if me is None:
        return {}
    my_ip = _node_ip(me)
    if my_ip is None or me.spec.bgp is None:
        return {}
    my_addr = me.spec.bgp.ipv4_address
    ifaces = [i for i in (ipaddress.ip_interface(str(a)) for a in local_addresses)
              if isinstance(i, ipaddress.IPv4Interface)]  # IPv6 sessions: not yet
    my_as = _node_as(me, spec)
    my_cluster = _cluster_id(me)
    gr = spec.graceful_restart.restart_time if spec.graceful_restart.enabled else 0

    def session(ip: str, peer_as: int, kind: str, name: str, *, local_as: int = my_as,
                password: str | None = None, ttl: int = 0, client: bool = False,
                max_prefixes: int = spec.max_prefixes) -> NeighborSpec:
        local = local_address_for(ip, my_addr, ifaces)
        return NeighborSpec(peer_ip=ip, peer_as=peer_as, local_as=local_as, local_address=local,
                            router_id=my_ip, type=kind, hold_time=spec.hold_time,
                            graceful_restart=gr, md5_password=password, ttl_security=ttl,
                            rr_client=client, cluster_id=my_cluster if client else None,
                            name=name, max_prefixes=max_prefixes,
                            ipv6=me.spec.bgp is not None
                            and me.spec.bgp.ipv6_address is not None)

    out: dict[str, NeighborSpec] = {}

    reflectors = {n for n, obj in nodes.items() if _cluster_id(obj) is not None}
    for other, obj in sorted(nodes.items()):
        if other == node_name:
            continue
        ip = _node_ip(obj)
        if ip is None or ip == my_ip:
            continue
        if reflectors:
            if my_cluster is not None:
                kind = "rr-mesh" if other in reflectors else "rr-client"
            elif other in reflectors:
                kind = "rr"
            else:
                continue
        elif spec.node_to_node_mesh:
            kind = "node-mesh"
        else:
            continue
        out[ip] = session(ip, _node_as(obj, spec), kind, other, client=kind == "rr-client")

    labels = dict(me.metadata.labels)
    for peer in sorted(peers, key=lambda p: p.metadata.name):
        ps = peer.spec
        if ps.node is not None:
            if ps.node != node_name:
                continue
            kind = "node"
        elif ps.node_selector is not None and not isinstance(ps.node_selector, All):
            if not ps.node_selector.matches(labels):
                continue
            kind = "node"
        else:
            kind = "global"
        ip = str(ps.peer_ip)
        if ip == my_ip or ipaddress.ip_address(ip).version != 4:
            continue  # ourselves (a global peer list naming every node), or IPv6: not yet
        local_as = ps.local_as_number if ps.local_as_number is not None else my_as
        out[ip] = session(ip, ps.as_number, kind, peer.metadata.name, local_as=local_as,
                          password=ps.password, ttl=ps.ttl_security,
                          client=ps.route_reflector_client and my_cluster is not None,
                          max_prefixes=(ps.max_prefixes if ps.max_prefixes is not None
                                        else spec.max_prefixes))
    return out


def _quote(text: str) -> str:
    if '"' in text or "\n" in text:
        raise ValueError("an MD5 password may not contain a double quote or a newline")
    return f'"{text}"'


def render_neighbor(n: NeighborSpec, process: str = "relay") -> str:
    lines = [
        f"neighbor {n.peer_ip} {{",
        f"  description \"{n.type} {n.name or ''}\";",
        f"  router-id {n.router_id};",
        f"  local-address {n.local_address};",
        f"  local-as {n.local_as};",
        f"  peer-as {n.peer_as};",
        f"  hold-time {n.hold_time};",
        "  listen 179;",
        "  group-updates true;",
        # End-of-RIB only when the speaker says so, after its exports (bgp.speaker).
        "  manual-eor true;",
    ]
    if n.md5_password:
        lines.append(f"  md5-password {_quote(n.md5_password)};")
    if n.ttl_security:
        # GTSM: send with TTL 255, accept only packets that crossed at most N hops.
        lines.append("  outgoing-ttl 255;")
        lines.append(f"  incoming-ttl {256 - n.ttl_security};")
    cap = "route-refresh; " + (f"graceful-restart {n.graceful_restart}; "
                               if n.graceful_restart else "")
    lines += [
        f"  capability {{ {cap}}}",
        "  family { ipv4 unicast; ipv6 unicast; }" if n.ipv6 else "  family { ipv4 unicast; }",
        f"  api {{ processes [ {process} ]; neighbor-changes; "
        "receive { parsed; update; refresh; } }",
        "}",
    ]
    return "\n".join(lines)


def render_config(neighbors: Mapping[str, NeighborSpec], process_cmd: Sequence[str]) -> str:
    """The whole ExaBGP configuration: the relay process and one block per neighbour,
    ordered by peer address so the same table always renders the same text."""
    for arg in process_cmd:
        if any(c.isspace() for c in arg) or ";" in arg:
            raise ValueError(f"process argument {arg!r} may not contain spaces or ';'")
    head = ["# rendered by l3fabric bgp.config: do not edit, the agent rewrites it",
            "process relay {",
            f"  run {' '.join(process_cmd)};",
            "  encoder json;",
            "}"]
    body = [render_neighbor(neighbors[ip])
            for ip in sorted(neighbors, key=lambda a: ipaddress.ip_address(a))]
    return "\n".join(head + body) + "\n"
