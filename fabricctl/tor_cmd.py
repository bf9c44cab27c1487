"""``fabricctl tor-config``: the top-of-rack router's BGP configuration, from etcd.

What it prints is the other half of the sessions the nodes' ExaBGP opens (docs/architecture.md §8):
a BGPPeer's ``peerIP`` is the ToR's address and its ``node``/``nodeSelector`` say which
nodes peer with it (neither: every node). So for one *peer group* this renders one
neighbour per (BGPPeer, selected Node): the node's ``bgp.ipv4Address`` as the neighbour,
the BGPPeer's ``peerIP`` as the ToR's source address, and as remote AS the AS the node
speaks on that session (the BGPPeer's ``localASNumber``, else the node's ``bgp.asNumber``,
else the BGPConfiguration ``asNumber``).

A **peer group** named NAME is the set of BGPPeers whose ``metadata.name`` starts with
NAME, or which carry the label ``l3fabric.io/peer-group: NAME``. The prefix rule is for
the common naming ``rack1-n1``, ``rack1-n2``; note that ``rack1`` also matches
``rack10-…`` — label the peers when names could collide.

Policy encoded in the output:

* import: only prefixes inside an enabled IPPool, from the pool's prefix length up to
  /32 (/128) — a node can announce its blocks and borrowed /32s and nothing else;
* export: what the ToR learned over BGP (the other nodes' blocks, and whatever the
  spine sends), with next hop self;
* IPv6 unicast on a node's IPv4 session too (MP-BGP), when the node has a
  ``bgp.ipv6Address`` and an IPv6 pool is enabled: the node offers it (``bgp.config``),
  and the ToR's next hop self is then its own IPv6 address on the link;
* MD5 ``password``, ``ttlSecurity`` (GTSM) and ``multihop`` when the node's address and
  the ToR's are not on one subnet; graceful restart and hold time from the
  BGPConfiguration ``default``; the ToR is a route reflector for its nodes when they share
  its AS (iBGP does not re-advertise otherwise).

Layers (STYLE 6): `load_inputs` reads etcd, `plan` is pure (resources in, `TorPlan` out,
`TorConfigError` for contradictions), `render_bird`/`render_frr` are pure text.

Two shapes of output. The whole configuration (the default) owns the router: router ID,
``device`` and ``kernel`` protocols (BIRD), ``frr defaults`` (FRR). A **snippet**
(``--snippet``) is only what l3fabric adds, every name prefixed ``l3fabric``/``L3FABRIC``,
for a router that has its own configuration: ``include "l3fabric.conf";`` at the end of a
stock ``bird.conf`` (its router ID, device protocol and kernel protocols stay; the stock
kernel protocol's ``export all`` puts the learned routes in the FIB) or the lines added to
``frr.conf`` (its router ID stays: zebra's, or the stock ``router bgp``'s).

The first comment lines (the header) name the options the text was made with; ``--check
FILE`` renders again with them, from etcd now, and compares everything but comment lines
(the revision in the header always moves): exit 0 when the router's file is current,
else 1 with a unified diff. The file holds MD5 passwords: ``--output`` writes it 0640.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datastore import keys, model
from datastore.client import Datastore
from fabricctl.common import CliError, run
from fabricctl.install_cmd import write_file  # atomic, the mode from creation on

PEER_GROUP_LABEL = "l3fabric.io/peer-group"
FORMATS = ("bird", "frr")
COMMENT = {"bird": "#", "frr": "!"}
#: ``--output``'s mode: the file holds the sessions' MD5 passwords.
OUTPUT_MODE = 0o640

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TorConfigError(Exception):
    """The resources in etcd do not describe one consistent router."""


@dataclass(frozen=True)
class TorInputs:
    """What the plan reads, already decoded and validated."""

    peers: tuple[model.BGPPeer, ...]
    nodes: tuple[model.Node, ...]
    bgp: model.BGPConfiguration
    pools: tuple[model.IPPool, ...]
    revision: int = 0
    problems: tuple[str, ...] = ()  # keys skipped because their values are invalid


@dataclass(frozen=True)
class TorNeighbor:
    symbol: str  # a BIRD protocol name; unique in the plan
    node: str
    peers: tuple[str, ...]  # the BGPPeers that made this session
    address: str  # the node's address: the neighbour
    remote_as: int
    local_address: str  # the BGPPeer's peerIP: the ToR's source address
    version: int
    password: str | None = None
    ttl_security: int = 0
    multihop: bool = False
    rr_client: bool = False
    ipv6: bool = False  # IPv6 unicast on this IPv4 session (the node's IPv6 blocks)


@dataclass(frozen=True)
class TorPlan:
    group: str
    local_as: int
    router_id: str
    neighbors: tuple[TorNeighbor, ...]
    pools_v4: tuple[ipaddress.IPv4Network, ...]
    pools_v6: tuple[ipaddress.IPv6Network, ...]
    hold_time: int
    graceful_restart: bool
    restart_time: int
    revision: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


# -- selection ------------------------------------------------------------------------------

def in_group(peer: model.BGPPeer, group: str) -> bool:
    return (peer.metadata.name.startswith(group)
            or peer.metadata.labels.get(PEER_GROUP_LABEL) == group)


def selected_nodes(peer: model.BGPPeer, nodes: Iterable[model.Node]) -> list[model.Node]:
    spec = peer.spec
    if spec.node is not None:
        return [n for n in nodes if n.metadata.name == spec.node]
    if spec.node_selector is not None:
        sel = spec.node_selector
        return [n for n in nodes if sel.matches(n.metadata.labels)]
    return list(nodes)


def _remote_as(peer: model.BGPPeer, node: model.Node, bgp: model.BGPConfiguration) -> int:
    """The AS the node speaks towards this peer: the BGPPeer's ``localASNumber`` (the
    node's local AS for this session), else the node's own, else the cluster default."""
    if peer.spec.local_as_number is not None:
        return peer.spec.local_as_number
    if node.spec.bgp is not None and node.spec.bgp.as_number is not None:
        return node.spec.bgp.as_number
    return bgp.spec.as_number


_SYMBOL_BAD = re.compile(r"[^A-Za-z0-9_]")


def _symbol(node: str, taken: set[str]) -> str:
    base = "l3f_" + _SYMBOL_BAD.sub("_", node)
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def plan(inputs: TorInputs, group: str, router_id: str | None = None,
         asn: int | None = None) -> TorPlan:
    """The ToR's sessions and filters for peer group ``group`` (pure)."""
    peers = sorted((p for p in inputs.peers if in_group(p, group)),
                   key=lambda p: p.metadata.name)
    if not peers:
        known = ", ".join(sorted(p.metadata.name for p in inputs.peers)) or "none"
        raise TorConfigError(
            f"no BGPPeer is in peer group {group!r} (name starting with it, or label "
            f"{PEER_GROUP_LABEL}={group}); BGPPeers in etcd: {known}")
    ases = {p.spec.as_number for p in peers}
    local_as = asn if asn is not None else (ases.pop() if len(ases) == 1 else 0)
    if local_as == 0:
        raise TorConfigError(
            f"the BGPPeers of group {group!r} disagree on the ToR's AS ({sorted(ases)}); "
            f"one router has one AS: fix them or pick one with --asn")
    wrong = [p.metadata.name for p in peers if p.spec.as_number != local_as]
    if wrong:
        raise TorConfigError(
            f"--asn {local_as} differs from the asNumber of BGPPeer(s) {', '.join(wrong)}: "
            f"their nodes expect that AS and would refuse the session")

    notes: list[str] = []
    # IPv6 blocks ride the IPv4 sessions of nodes that have an IPv6 address.
    v6_pool = any(isinstance(p.spec.cidr, ipaddress.IPv6Network) and not p.spec.disabled
                  for p in inputs.pools)
    by_session: dict[str, TorNeighbor] = {}
    taken: set[str] = set()
    nodes = sorted(inputs.nodes, key=lambda n: n.metadata.name)
    for peer in peers:
        chosen = selected_nodes(peer, nodes)
        if not chosen:
            notes.append(f"BGPPeer {peer.metadata.name} selects no node")
        for node in chosen:
            name = node.metadata.name
            nb = node.spec.bgp
            local = peer.spec.peer_ip
            if nb is None:
                notes.append(f"node {name} has no bgp address: skipped")
                continue
            iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = (
                nb.ipv4_address if local.version == 4 else nb.ipv6_address)
            if iface is None:
                notes.append(f"node {name} has no IPv{local.version} bgp address for "
                             f"BGPPeer {peer.metadata.name} ({local}): skipped")
                continue
            remote_as = _remote_as(peer, node, inputs.bgp)
            session = (str(iface.ip), str(local))
            nbr = TorNeighbor(
                symbol="", node=name, peers=(peer.metadata.name,), address=str(iface.ip),
                remote_as=remote_as, local_address=str(local), version=local.version,
                password=peer.spec.password, ttl_security=peer.spec.ttl_security,
                multihop=local not in iface.network, rr_client=remote_as == local_as,
                ipv6=v6_pool and local.version == 4 and nb.ipv6_address is not None)
            # One router has one session per neighbour address (FRR keys neighbours by
            # it): two BGPPeers selecting the same node must describe the same session.
            prev = by_session.get(session[0])
            if prev is not None:
                if prev.local_address != nbr.local_address:
                    raise TorConfigError(
                        f"node {name} ({session[0]}) would be peered twice, from "
                        f"{prev.local_address} (BGPPeer {prev.peers[0]}) and from "
                        f"{nbr.local_address} (BGPPeer {peer.metadata.name}); a ToR has "
                        f"one session per node: put those BGPPeers in different groups")
                if (prev.remote_as, prev.password, prev.ttl_security) != (
                        nbr.remote_as, nbr.password, nbr.ttl_security):
                    raise TorConfigError(
                        f"BGPPeers {prev.peers[0]} and {peer.metadata.name} both make the "
                        f"session {session[1]} <-> node {name} ({session[0]}) but disagree "
                        f"on its AS, password or ttlSecurity")
                by_session[session[0]] = _with_peers(prev, (*prev.peers, peer.metadata.name))
                continue
            by_session[session[0]] = nbr
    neighbors = []
    for nbr in sorted(by_session.values(), key=lambda n: (n.node, n.local_address)):
        neighbors.append(_with_symbol(nbr, _symbol(nbr.node, taken)))

    if router_id is None:
        v4 = sorted({p.spec.peer_ip for p in peers if p.spec.peer_ip.version == 4},
                    key=int)
        if not v4:
            raise TorConfigError("no IPv4 peerIP in the group to use as router ID: "
                                 "give --router-id")
        router_id = str(v4[0])
    else:
        try:
            router_id = str(ipaddress.IPv4Address(router_id))
        except ValueError:
            raise TorConfigError(f"--router-id {router_id!r} is not an IPv4 address") from None

    enabled = [p for p in inputs.pools if not p.spec.disabled]
    v4_pools = tuple(sorted((p.spec.cidr for p in enabled
                             if isinstance(p.spec.cidr, ipaddress.IPv4Network)), key=str))
    v6_pools = tuple(sorted((p.spec.cidr for p in enabled
                             if isinstance(p.spec.cidr, ipaddress.IPv6Network)), key=str))
    if not enabled:
        notes.append("no enabled IPPool: the import filters accept nothing")
    gr = inputs.bgp.spec.graceful_restart
    return TorPlan(group=group, local_as=local_as, router_id=router_id,
                   neighbors=tuple(neighbors), pools_v4=v4_pools, pools_v6=v6_pools,
                   hold_time=inputs.bgp.spec.hold_time, graceful_restart=gr.enabled,
                   restart_time=gr.restart_time, revision=inputs.revision,
                   notes=(*inputs.problems, *notes))


def _with_peers(n: TorNeighbor, peers: tuple[str, ...]) -> TorNeighbor:
    return TorNeighbor(**{**n.__dict__, "peers": peers})


def _with_symbol(n: TorNeighbor, symbol: str) -> TorNeighbor:
    return TorNeighbor(**{**n.__dict__, "symbol": symbol})


# -- rendering ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TorOptions:
    """What a configuration is made with; written in its header so `--check` can redo it."""

    group: str
    fmt: str = "bird"
    snippet: bool = False
    router_id: str | None = None
    asn: int | None = None

    def command(self) -> str:
        argv = ["fabricctl", "tor-config", "--peer-group", self.group, "--format", self.fmt]
        if self.snippet:
            argv.append("--snippet")
        if self.router_id is not None:
            argv += ["--router-id", self.router_id]
        if self.asn is not None:
            argv += ["--asn", str(self.asn)]
        return shlex.join(argv)


_GENERATED = re.compile(r"^[#!] generated by `(fabricctl tor-config [^`]*)`")


def options_from_header(text: str) -> TorOptions | None:
    """The options in a configuration's ``generated by `...``` line, or None."""
    for line in text.splitlines():
        m = _GENERATED.match(line)
        if m is None:
            continue
        p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        p.add_argument("--peer-group", required=True)
        p.add_argument("--format", choices=FORMATS, default="bird")
        p.add_argument("--snippet", action="store_true")
        p.add_argument("--router-id")
        p.add_argument("--asn", type=int)
        try:
            a, _ = p.parse_known_args(shlex.split(m.group(1))[2:])
        except (argparse.ArgumentError, ValueError):
            return None
        return TorOptions(a.peer_group, a.format, a.snippet, a.router_id, a.asn)
    return None


def _header(p: TorPlan, opts: TorOptions) -> list[str]:
    comment = COMMENT[opts.fmt]
    kind = "snippet" if opts.snippet else "configuration"
    lines = [
        f"{comment} l3fabric top-of-rack {kind} ({opts.fmt}) for peer group {p.group!r}",
        f"{comment} generated by `{opts.command()}`"
        + (f" at etcd revision {p.revision}" if p.revision else ""),
        f"{comment} import: prefixes inside the enabled IPPools only; export: BGP-learned "
        f"routes, next hop self",
    ]
    if opts.snippet and opts.fmt == "bird":
        lines += [f"{comment} include from bird.conf: it keeps its router id and device and "
                  "kernel protocols; its kernel",
                  f"{comment} protocol must export these routes (export all) and wants "
                  "`merge paths on` for ECMP"]
    elif opts.snippet:
        lines.append(f"{comment} add to frr.conf (or `vtysh -f`): the router id stays "
                     "the router's own")
    lines += [f"{comment} note: {n}" for n in p.notes]
    return lines


def _bird_string(s: str) -> str:
    if any(c in s for c in "\n\r\0"):
        raise TorConfigError("a BGP password may not contain a newline or NUL")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bird_prefix_set(pools: Sequence[IPNetwork]) -> str:
    return ", ".join(f"{p}{{{p.prefixlen},{p.max_prefixlen}}}" for p in pools)


def render_bird(p: TorPlan, snippet: bool = False, opts: TorOptions | None = None) -> str:
    """BIRD 2 configuration: filters, kernel export, a template, one protocol per node.
    ``snippet``: no router id, device or kernel protocol (the including file has them)."""
    out = _header(p, opts or TorOptions(p.group, "bird", snippet))
    out += [""] if snippet else ["", f"router id {p.router_id};", ""]
    for ver, pools in ((4, p.pools_v4), (6, p.pools_v6)):
        out.append(f"filter l3fabric_import_v{ver} {{")
        if pools:
            out.append(f"  if net ~ [ {_bird_prefix_set(pools)} ] then accept;")
        out += ["  reject;", "}", ""]
    out += [
        "filter l3fabric_export {",
        "  if source = RTS_BGP then accept;",
        "  reject;",
        "}",
    ]
    if not snippet:
        out += [
            "",
            "protocol device { scan time 10; }",
            "protocol kernel l3fabric_kernel4 {",
            "  ipv4 { import none; export filter l3fabric_export; };",
            "  merge paths on;",
            "}",
        ]
    if not snippet and (p.pools_v6 or any(n.version == 6 for n in p.neighbors)):
        out += ["protocol kernel l3fabric_kernel6 {",
                "  ipv6 { import none; export filter l3fabric_export; };",
                "  merge paths on;", "}"]
    out += ["", "template bgp l3fabric_node {", f"  local as {p.local_as};"]
    if p.hold_time:
        out.append(f"  hold time {p.hold_time}; keepalive time {max(1, p.hold_time // 3)};")
    out.append("  connect retry time 5;")
    if p.graceful_restart:
        out.append(f"  graceful restart on; graceful restart time {p.restart_time};")
    else:
        out.append("  graceful restart aware;")
    out += ["}", ""]
    for n in p.neighbors:
        out.append(f"protocol bgp {n.symbol} from l3fabric_node {{")
        out.append(f"  description {_bird_string(_describe(n))};")
        out.append(f"  neighbor {n.address} as {n.remote_as};")
        out.append(f"  source address {n.local_address};")
        if n.ttl_security:
            out.append("  ttl security on;")
            if n.ttl_security > 1:
                out.append(f"  multihop {n.ttl_security};")
        elif n.multihop:
            out.append("  multihop;")
        if n.password is not None:
            out.append(f"  password {_bird_string(n.password)};")
        if n.rr_client:
            out.append("  rr client;")
        out.append(f"  ipv{n.version} {{ import filter l3fabric_import_v{n.version}; "
                   f"export filter l3fabric_export; next hop self; }};")
        if n.ipv6:
            out.append("  ipv6 { import filter l3fabric_import_v6; "
                       "export filter l3fabric_export; next hop self; };")
        out += ["}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _describe(n: TorNeighbor) -> str:
    return f"l3fabric node {n.node} (BGPPeer {', '.join(n.peers)})"


def render_frr(p: TorPlan, snippet: bool = False, opts: TorOptions | None = None) -> str:
    """FRR (8.x) configuration for ``vtysh -f`` / ``frr.conf``: prefix lists, route maps,
    ``router bgp``. ``snippet``: no ``frr defaults`` (only valid first in frr.conf) and no
    router ID (the router's own)."""
    out = _header(p, opts or TorOptions(p.group, "frr", snippet))
    out += ["!"] if snippet else ["!", "frr defaults traditional", "!"]
    for ver, pools, kw in ((4, p.pools_v4, "ip"), (6, p.pools_v6, "ipv6")):
        name = f"L3FABRIC-POOLS-V{ver}"
        seq = 5
        for pool in pools:
            le = "" if pool.prefixlen == pool.max_prefixlen else f" le {pool.max_prefixlen}"
            out.append(f"{kw} prefix-list {name} seq {seq} permit {pool}{le}")
            seq += 5
        any_ = "0.0.0.0/0" if ver == 4 else "::/0"
        out.append(f"{kw} prefix-list {name} seq {seq} deny {any_} le {32 if ver == 4 else 128}")
        out.append("!")
        out += [f"route-map L3FABRIC-IMPORT-V{ver} permit 10",
                f" match {kw} address prefix-list {name}",
                "exit",
                f"route-map L3FABRIC-IMPORT-V{ver} deny 100",
                "exit", "!"]
    # The BGP table holds only what was learned (nothing is redistributed or declared
    # with `network`), so "export everything in it" is "export what was learned".
    out += ["route-map L3FABRIC-EXPORT permit 10", "exit", "!"]
    out.append(f"router bgp {p.local_as}")
    if not snippet:
        out.append(f" bgp router-id {p.router_id}")
    out += [" no bgp default ipv4-unicast", " bgp bestpath as-path multipath-relax"]
    if p.graceful_restart:
        out += [" bgp graceful-restart", f" bgp graceful-restart restart-time {p.restart_time}"]
    if p.hold_time:
        out.append(f" timers bgp {max(1, p.hold_time // 3)} {p.hold_time}")
    for n in p.neighbors:
        a = n.address
        out.append(f" neighbor {a} remote-as {n.remote_as}")
        out.append(f" neighbor {a} description {_describe(n)}")
        out.append(f" neighbor {a} update-source {n.local_address}")
        out.append(f" neighbor {a} timers connect 5")
        if n.password is not None:
            if any(c in n.password for c in "\n\r\0") or n.password != n.password.strip():
                raise TorConfigError("an FRR password may not contain a newline or NUL, nor "
                                     "start or end with a space")
            out.append(f" neighbor {a} password {n.password}")
        if n.ttl_security:
            out.append(f" neighbor {a} ttl-security hops {n.ttl_security}")
        elif n.multihop and n.remote_as != p.local_as:
            out.append(f" neighbor {a} ebgp-multihop 255")
    for ver in (4, 6):
        nbrs = [n for n in p.neighbors if n.version == ver or (ver == 6 and n.ipv6)]
        if not nbrs:
            continue
        out += [" !", f" address-family ipv{ver} unicast", "  maximum-paths 16",
                "  maximum-paths ibgp 16"]
        for n in nbrs:
            a = n.address
            out += [f"  neighbor {a} activate",
                    f"  neighbor {a} route-map L3FABRIC-IMPORT-V{ver} in",
                    f"  neighbor {a} route-map L3FABRIC-EXPORT out"]
            if n.rr_client:
                out += [f"  neighbor {a} route-reflector-client",
                        f"  neighbor {a} next-hop-self force"]
            else:
                out.append(f"  neighbor {a} next-hop-self")
        out.append(" exit-address-family")
    out += ["exit", "!"]
    return "\n".join(out) + "\n"


RENDERERS = {"bird": render_bird, "frr": render_frr}


def render(inputs: TorInputs, opts: TorOptions) -> str:
    """The text `opts` describe, from `inputs` (pure)."""
    p = plan(inputs, opts.group, opts.router_id, opts.asn)
    return RENDERERS[opts.fmt](p, opts.snippet, opts)


def _meaningful(text: str, fmt: str) -> list[str]:
    """The lines a router reads: comment lines (the header, its revision) left out."""
    c = COMMENT[fmt]
    return [ln for ln in text.splitlines() if not ln.startswith((c + " ", c + "\t"))]


def compare(on_router: str, current: str, fmt: str, name: str, revision: int) -> list[str]:
    """Unified diff from the router's file to what etcd describes now; [] when current."""
    return list(difflib.unified_diff(
        _meaningful(on_router, fmt), _meaningful(current, fmt), fromfile=name,
        tofile=f"etcd now (revision {revision})", lineterm="", n=1))


# -- etcd -----------------------------------------------------------------------------------

async def load_inputs(ds: Datastore) -> TorInputs:
    """Every BGPPeer, Node, IPPool and the BGPConfiguration ``default``; invalid values are
    skipped and named in ``problems`` (they show up as notes in the output)."""
    kvs, revision = await ds.list(keys.PREFIX + "config/")
    node_kvs, _ = await ds.list(keys.full(keys.NODES))
    peers: list[model.BGPPeer] = []
    nodes: list[model.Node] = []
    pools: list[model.IPPool] = []
    bgp = model.BGPConfiguration(model.Metadata(name="default"))
    problems: list[str] = []
    for kv in [*kvs, *node_kvs]:
        where = keys.parse(kv.key)
        if where is None or where.kind not in ("BGPPeer", "Node", "IPPool", "BGPConfiguration"):
            continue
        try:
            res = model.decode(kv.key, kv.value, kv.mod_revision)
        except model.ValidationError as e:
            problems.append(f"invalid value skipped: {e}")
            continue
        if isinstance(res, model.BGPPeer):
            peers.append(res)
        elif isinstance(res, model.Node):
            nodes.append(res)
        elif isinstance(res, model.IPPool):
            pools.append(res)
        elif isinstance(res, model.BGPConfiguration) and res.metadata.name == "default":
            bgp = res
    return TorInputs(tuple(peers), tuple(nodes), bgp, tuple(pools), revision, tuple(problems))


# -- command line -----------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tor-config", help="print the top-of-rack router's BGP configuration (BIRD or FRR)",
        description="Print the BGP configuration of the top-of-rack router that the "
                    "BGPPeers of one peer group describe: BGPPeers whose name starts with "
                    f"NAME or that carry the label {PEER_GROUP_LABEL}=NAME.")
    p.add_argument("--peer-group", default=None, metavar="NAME",
                   help="the BGPPeers of this ToR: name prefix or peer-group label "
                        "(required, except with --check: the file's header names it)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="the router's configuration language (default bird)")
    p.add_argument("--snippet", action="store_true", default=None,
                   help="only l3fabric's part, to include from a router's own bird.conf or "
                        "add to its frr.conf: no router id, device or kernel protocols")
    p.add_argument("--router-id", default=None,
                   help="the ToR's router ID (default: the group's lowest IPv4 peerIP)")
    p.add_argument("--asn", type=int, default=None,
                   help="the ToR's AS (default: the group's BGPPeers' asNumber)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--output", default=None, metavar="FILE",
                     help=f"write FILE (mode {OUTPUT_MODE:04o}: it holds MD5 passwords) "
                          "instead of printing")
    out.add_argument("--check", default=None, metavar="FILE",
                     help="compare FILE, as tor-config wrote it, with what etcd describes "
                          "now; exit 1 with the differing lines when it is out of date")
    p.set_defaults(func=cmd_tor_config)


def _options(args: argparse.Namespace) -> tuple[TorOptions, str | None]:
    """The options from the command line, the rest from ``--check``'s file header; and the
    checked file's text."""
    old: str | None = None
    base: TorOptions | None = None
    if args.check is not None:
        try:
            old = Path(args.check).read_text()
        except OSError as e:
            raise CliError(f"--check: {args.check}: {e.strerror or e}") from e
        base = options_from_header(old)
    group = args.peer_group or (base.group if base else None)
    if group is None:
        raise CliError("--peer-group is required" + (
            f" ({args.check} has no `generated by` header naming it)" if old else ""),
            usage=True)
    return TorOptions(
        group=group,
        fmt=args.format or (base.fmt if base else "bird"),
        snippet=args.snippet if args.snippet is not None else bool(base and base.snippet),
        router_id=args.router_id or (base.router_id if base else None),
        asn=args.asn if args.asn is not None else (base.asn if base else None)), old


def cmd_tor_config(args: argparse.Namespace) -> int:
    opts, old = _options(args)

    async def go(ds: Datastore) -> TorInputs:
        return await load_inputs(ds)

    inputs = run(args, go)
    try:
        text = render(inputs, opts)
    except TorConfigError as e:
        raise CliError(str(e)) from e
    for problem in inputs.problems:
        print(f"fabricctl: warning: {problem}", file=sys.stderr)
    if old is not None:
        diff = compare(old, text, opts.fmt, args.check, inputs.revision)
        if not diff:
            print(f"{args.check} is up to date (etcd revision {inputs.revision})")
            return 0
        sys.stdout.write("\n".join(diff) + "\n")
        changed = sum(1 for ln in diff if ln[:1] in "+-" and ln[:3] not in ("+++", "---"))
        print(f"fabricctl: {args.check} is out of date: {changed} line(s) differ; "
              f"regenerate with `{opts.command()} --output {args.check}`", file=sys.stderr)
        return 1
    if args.output is not None:
        try:
            write_file(Path(args.output), text, OUTPUT_MODE)
        except OSError as e:
            raise CliError(f"--output: {args.output}: {e.strerror or e}") from e
        print(f"wrote {args.output} (mode {OUTPUT_MODE:04o})", file=sys.stderr)
        return 0
    sys.stdout.write(text)
    return 0
