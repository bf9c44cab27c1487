"""Containerlab topology files, read as l3fabric labs: parse, validate, derive the address plan.

A lab file is a real containerlab file (``kind: linux`` nodes). What our netns runner needs
beyond containerlab's own fields lives in node ``labels`` (all optional unless said):

``l3fabric.role``
    ``mgmt`` (exactly one: hosts etcd and the management bridge), ``router`` (BIRD),
    ``node`` (runs fabric-agent). Required on every node.
``l3fabric.asn``
    BGP AS number of a router or node. Required on routers and nodes.
``l3fabric.rack``
    rack name, informational (status, graph).
``l3fabric.rr-cluster-id``
    on a router: it is a route reflector; iBGP neighbours are its clients.
``l3fabric.pool-cidr`` / ``l3fabric.block-size`` / ``l3fabric.fabric-cidr``
    on the mgmt node: the lab's IPPool (default 10.244.0.0/16, blocks of 26) and the range
    fabric links are numbered from (default 10.77.0.0/16).
``l3fabric.pool6-cidr`` / ``l3fabric.block-size6`` / ``l3fabric.fabric6-cidr``
    on the mgmt node: an IPv6 pool makes the lab dual-stack (blocks of 122 by default);
    fabric links then also get IPv6 addresses, from ``fabric6-cidr`` (default fd77::/48),
    and every BGP session carries IPv6 unicast beside IPv4 (MP-BGP, IPv6 next hops).

Address plan (deterministic, so a file never needs more than the above):

* management: ``mgmt.ipv4-subnet`` (default 172.20.20.0/24); the bridge holds
  ``mgmt.ipv4-gw`` (default the first host); a node's ``mgmt-ipv4`` if given, else the
  mgmt node gets host 2 and the others host 10, 11, … in file order.
* fabric links: a link's ``ipv4`` list if given (containerlab's brief-link field), else
  link number *i* (1-based, file order) is ``<fabric-cidr>.<i>.0/30`` (the third octet
  of the fabric range plus *i*), first endpoint ``.1``, second ``.2``.
* in a dual-stack lab, a link's ``ipv6`` list if given, else link number *i* is
  ``<fabric6-cidr>:<i>::/64`` (the fourth group of a /48), endpoints ``::1`` and ``::2``;
* a node's BGP address (``bgp.ipv4Address``, and ``bgp.ipv6Address`` when dual-stack) is
  the address of its first fabric link; a router's id is the address of its first link.

Nothing here does I/O except :func:`load`; everything else is pure and unit tested.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: The shipped topologies (``<name>.clab.yml``), their router configs (``configs/``) and the
#: demo's policy (``demo/``). In a checkout this is a symlink to ``containerlab/``; a wheel
#: carries the files here as package data, so ``lab up NAME`` and ``lab demo`` need no checkout.
TOPOLOGIES = Path(__file__).resolve().parent / "topologies"

ROLES = ("mgmt", "router", "node")
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
LAB_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
DEFAULT_MGMT = "172.20.20.0/24"
DEFAULT_POOL = "10.244.0.0/16"
DEFAULT_BLOCK = 26
DEFAULT_FABRIC = "10.77.0.0/16"
DEFAULT_BLOCK6 = 122
DEFAULT_FABRIC6 = "fd77::/48"
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
METRICS_PORT = 9091


class TopologyError(ValueError):
    """A lab file that cannot be built; the message names the file and the field."""


@dataclass(frozen=True)
class Endpoint:
    node: str
    ifname: str
    address: ipaddress.IPv4Interface
    address6: ipaddress.IPv6Interface | None = None  # a dual-stack lab's


@dataclass(frozen=True)
class Link:
    index: int  # 1-based, file order
    a: Endpoint
    b: Endpoint

    def other(self, node: str) -> Endpoint:
        return self.b if self.a.node == node else self.a

    def mine(self, node: str) -> Endpoint:
        return self.a if self.a.node == node else self.b


@dataclass(frozen=True)
class LabNode:
    name: str
    role: str
    asn: int | None
    rack: str | None
    mgmt_ip: ipaddress.IPv4Address
    image: str = ""
    rr_cluster_id: str | None = None
    sysctls: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Session:
    """One BGP session over a link between two BGP speakers (routers and nodes)."""

    a: str
    a_ip: ipaddress.IPv4Interface
    a_asn: int
    b: str
    b_ip: ipaddress.IPv4Interface
    b_asn: int
    ipv6: bool = False  # the session also carries IPv6 unicast (a dual-stack lab)

    @property
    def ibgp(self) -> bool:
        return self.a_asn == self.b_asn


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path | None
    mgmt_subnet: ipaddress.IPv4Network
    mgmt_gw: ipaddress.IPv4Interface
    pool_cidr: ipaddress.IPv4Network
    block_size: int
    fabric_cidr: ipaddress.IPv4Network
    nodes: dict[str, LabNode]
    links: tuple[Link, ...]
    comment: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    pool6_cidr: ipaddress.IPv6Network | None = None  # set: the lab is dual-stack
    block_size6: int = DEFAULT_BLOCK6
    fabric6_cidr: ipaddress.IPv6Network | None = None

    @property
    def dual_stack(self) -> bool:
        return self.pool6_cidr is not None

    # -- views ---------------------------------------------------------------------------

    @property
    def mgmt(self) -> LabNode:
        return next(n for n in self.nodes.values() if n.role == "mgmt")

    def by_role(self, role: str) -> list[LabNode]:
        return [n for n in self.nodes.values() if n.role == role]

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{self.mgmt.mgmt_ip}:{ETCD_PORT}"

    def links_of(self, node: str) -> list[Link]:
        return [lk for lk in self.links if node in (lk.a.node, lk.b.node)]

    def fabric_address(self, node: str) -> ipaddress.IPv4Interface | None:
        """The node's BGP address: its first fabric link's address."""
        links = self.links_of(node)
        return links[0].mine(node).address if links else None

    def fabric_address6(self, node: str) -> ipaddress.IPv6Interface | None:
        """The node's IPv6 BGP address in a dual-stack lab: its first link's."""
        links = self.links_of(node)
        return links[0].mine(node).address6 if links else None

    def router_id(self, node: str) -> ipaddress.IPv4Address:
        addr = self.fabric_address(node)
        if addr is None:
            raise TopologyError(f"{self.name}: {node} has no fabric link for a router id")
        return addr.ip

    def sessions(self) -> list[Session]:
        """One session per link between two BGP speakers, in link order."""
        out = []
        for lk in self.links:
            na, nb = self.nodes[lk.a.node], self.nodes[lk.b.node]
            if na.role == "mgmt" or nb.role == "mgmt":
                continue
            if na.role == "node" and nb.role == "node":
                continue  # nodes peer through routers (nodeToNodeMesh is off in labs)
            assert na.asn is not None and nb.asn is not None
            out.append(Session(na.name, lk.a.address, na.asn, nb.name, lk.b.address, nb.asn,
                               ipv6=lk.a.address6 is not None))
        return out

    def sessions_of(self, node: str) -> list[tuple[Session, bool]]:
        """The sessions ``node`` takes part in, each with True when ``node`` is side a."""
        return [(s, s.a == node) for s in self.sessions() if node in (s.a, s.b)]


def _label(labels: dict[str, Any], key: str) -> str | None:
    v = labels.get(key)
    return None if v is None else str(v)


def _asn(text: str, where: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise TopologyError(f"{where}: l3fabric.asn {text!r} is not a number") from None
    if not 1 <= n <= 4294967295:
        raise TopologyError(f"{where}: l3fabric.asn {n} is out of range 1..4294967295")
    return n


def _net(text: str, where: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise TopologyError(f"{where}: {e}") from None


def parse(doc: Any, path: Path | None = None, comment: str = "") -> Topology:
    """Validate a loaded lab file and derive its address plan."""
    src = str(path) if path else "<topology>"
    if not isinstance(doc, dict):
        raise TopologyError(f"{src}: not a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not LAB_NAME.match(name):
        raise TopologyError(f"{src}: name {name!r} must be lower-case letters, digits and "
                            "dashes, at most 32 characters")
    topo = doc.get("topology")
    if not isinstance(topo, dict) or not isinstance(topo.get("nodes"), dict):
        raise TopologyError(f"{src}: topology.nodes is missing")
    mgmt_cfg = doc.get("mgmt") or {}
    mgmt_subnet = _net(str(mgmt_cfg.get("ipv4-subnet", DEFAULT_MGMT)), f"{src}: mgmt.ipv4-subnet")
    hosts = list(mgmt_subnet.hosts())
    if len(hosts) < 12:
        raise TopologyError(f"{src}: mgmt.ipv4-subnet {mgmt_subnet} is too small")
    gw_ip = ipaddress.IPv4Address(str(mgmt_cfg.get("ipv4-gw", hosts[0])))
    if gw_ip not in mgmt_subnet:
        raise TopologyError(f"{src}: mgmt.ipv4-gw {gw_ip} is outside {mgmt_subnet}")
    gw = ipaddress.IPv4Interface(f"{gw_ip}/{mgmt_subnet.prefixlen}")

    defaults = topo.get("defaults") or {}
    kinds = topo.get("kinds") or {}
    nodes: dict[str, LabNode] = {}
    raw_nodes: dict[str, dict[str, Any]] = {}
    next_host = 9  # hosts[9] is .10
    used_mgmt: set[ipaddress.IPv4Address] = {gw_ip}
    for nname, ncfg in topo["nodes"].items():
        where = f"{src}: node {nname}"
        if not isinstance(nname, str) or not NODE_NAME.match(nname):
            raise TopologyError(f"{where}: names are lower-case letters, digits and dashes")
        ncfg = ncfg or {}
        kind = ncfg.get("kind") or defaults.get("kind")
        merged_labels: dict[str, Any] = {}
        for layer in (defaults, kinds.get(kind) or {}, ncfg):
            merged_labels.update(layer.get("labels") or {})
        raw_nodes[nname] = ncfg
        if kind != "linux":
            raise TopologyError(f"{where}: kind {kind!r}; the lab runner builds only 'linux'")
        role = _label(merged_labels, "l3fabric.role")
        if role not in ROLES:
            raise TopologyError(f"{where}: label l3fabric.role must be one of {', '.join(ROLES)}")
        if role == "mgmt" and any(n.role == "mgmt" for n in nodes.values()):
            raise TopologyError(f"{src}: exactly one node needs l3fabric.role: mgmt "
                                f"({nname} is a second one)")
        asn_s = _label(merged_labels, "l3fabric.asn")
        if role != "mgmt" and asn_s is None:
            raise TopologyError(f"{where}: label l3fabric.asn is required on a {role}")
        sysctls = tuple(sorted((str(k), str(v)) for k, v in
                               (ncfg.get("sysctls") or {}).items()))
        mgmt_ip_s = ncfg.get("mgmt-ipv4")
        if mgmt_ip_s is not None:
            mgmt_ip = ipaddress.IPv4Address(str(mgmt_ip_s))
        elif role == "mgmt":
            mgmt_ip = hosts[1]
        else:
            while hosts[next_host] in used_mgmt:
                next_host += 1
            mgmt_ip = hosts[next_host]
            next_host += 1
        if mgmt_ip not in mgmt_subnet:
            raise TopologyError(f"{where}: mgmt-ipv4 {mgmt_ip} is outside {mgmt_subnet}")
        if mgmt_ip in used_mgmt:
            raise TopologyError(f"{where}: mgmt-ipv4 {mgmt_ip} is already used")
        used_mgmt.add(mgmt_ip)
        nodes[nname] = LabNode(
            name=nname, role=role,
            asn=_asn(asn_s, where) if asn_s is not None else None,
            rack=_label(merged_labels, "l3fabric.rack"), mgmt_ip=mgmt_ip,
            image=str(ncfg.get("image") or defaults.get("image") or ""),
            rr_cluster_id=_label(merged_labels, "l3fabric.rr-cluster-id"),
            sysctls=sysctls,
        )
    mgmts = [n for n in nodes.values() if n.role == "mgmt"]
    if len(mgmts) != 1:
        raise TopologyError(f"{src}: exactly one node needs l3fabric.role: mgmt "
                            f"(found {len(mgmts)})")
    mlabels = raw_nodes[mgmts[0].name].get("labels") or {}
    pool, block, fabric = _family_plan(mlabels, src, "", DEFAULT_POOL, DEFAULT_BLOCK,
                                       DEFAULT_FABRIC, 16)
    if pool.overlaps(fabric) or pool.overlaps(mgmt_subnet) or fabric.overlaps(mgmt_subnet):
        raise TopologyError(f"{src}: pool {pool}, fabric {fabric} and management "
                            f"{mgmt_subnet} must not overlap")

    pool6, block6, fabric6 = _ipv6_plan(mlabels, src)
    links = _parse_links(topo.get("links") or [], nodes, fabric, src, fabric6)
    for n in nodes.values():
        if n.role in ("router", "node") and not any(
                n.name in (lk.a.node, lk.b.node) for lk in links):
            raise TopologyError(f"{src}: {n.role} {n.name} has no fabric link")
    return Topology(name=name, path=path, mgmt_subnet=mgmt_subnet, mgmt_gw=gw,
                    pool_cidr=pool, block_size=block, fabric_cidr=fabric, nodes=nodes,
                    links=tuple(links), comment=comment, raw=doc, pool6_cidr=pool6,
                    block_size6=block6, fabric6_cidr=fabric6)


def _family_plan(labels: dict[str, Any], src: str, v: str, pool: str, block: int,
                 fabric: str, widest: int) -> tuple[Any, int, Any]:
    """One family's pool, block size and fabric range from the mgmt node's labels
    (``v``: "" for IPv4, "6" for IPv6); the fabric range is ``widest`` bits or wider."""
    net = ipaddress.IPv4Network if v == "" else ipaddress.IPv6Network
    nets = []
    for what, default in (("pool", pool), ("fabric", fabric)):
        text = str(labels.get(f"l3fabric.{what}{v}-cidr", default))
        try:
            nets.append(net(text, strict=True))
        except ValueError as e:
            raise TopologyError(f"{src}: {what}{v}-cidr: {e}") from None
    pool_net, fabric_net = nets
    if fabric_net.prefixlen > widest:
        raise TopologyError(f"{src}: l3fabric.fabric{v}-cidr {fabric_net} must be a "
                            f"/{widest} or larger")
    try:
        size = int(str(labels.get(f"l3fabric.block-size{v}", block)))
    except ValueError:
        raise TopologyError(f"{src}: l3fabric.block-size{v} is not a number") from None
    if not pool_net.prefixlen <= size <= pool_net.max_prefixlen:
        raise TopologyError(f"{src}: block size {size} does not fit the pool {pool_net}")
    return pool_net, size, fabric_net


def _ipv6_plan(labels: dict[str, Any], src: str
               ) -> tuple[ipaddress.IPv6Network | None, int, ipaddress.IPv6Network | None]:
    """The IPv6 pool, its block size and the IPv6 fabric range; no pool: IPv4 only."""
    if labels.get("l3fabric.pool6-cidr") is None:
        for key in ("l3fabric.block-size6", "l3fabric.fabric6-cidr"):
            if labels.get(key) is not None:
                raise TopologyError(f"{src}: {key} needs l3fabric.pool6-cidr (the lab's "
                                    "IPv6 pool) on the mgmt node")
        return None, DEFAULT_BLOCK6, None
    pool, block, fabric = _family_plan(labels, src, "6", "", DEFAULT_BLOCK6, DEFAULT_FABRIC6, 48)
    if pool.overlaps(fabric):
        raise TopologyError(f"{src}: IPv6 pool {pool} and fabric {fabric} must not overlap")
    return pool, block, fabric


def _link_addresses6(item: dict[str, Any], i: int, fabric6: ipaddress.IPv6Network | None,
                     where: str) -> list[ipaddress.IPv6Interface | None]:
    """A link's two IPv6 addresses in a dual-stack lab (given, or derived), else None."""
    given = item.get("ipv6")
    if fabric6 is None:
        if given is not None:
            raise TopologyError(f"{where}: ipv6 addresses need l3fabric.pool6-cidr (the lab's "
                                "IPv6 pool) on the mgmt node")
        return [None, None]
    if given is None:
        if i >= 1 << (64 - fabric6.prefixlen):
            raise TopologyError(f"{where}: the fabric range {fabric6} has no room for it")
        base = int(fabric6.network_address) + (i << 64)
        return [ipaddress.IPv6Interface(f"{ipaddress.IPv6Address(base + k)}/64")
                for k in (1, 2)]
    if not isinstance(given, list) or len(given) != 2:
        raise TopologyError(f"{where}: ipv6 must list one address per endpoint")
    try:
        addrs = [ipaddress.IPv6Interface(str(a)) for a in given]
    except ValueError as e:
        raise TopologyError(f"{where}: {e}") from None
    if addrs[0].network != addrs[1].network or addrs[0].ip == addrs[1].ip:
        raise TopologyError(f"{where}: {addrs[0]} and {addrs[1]} are not two addresses of "
                            "one subnet")
    return list(addrs)


def _parse_links(items: list[Any], nodes: dict[str, LabNode], fabric: ipaddress.IPv4Network,
                 src: str, fabric6: ipaddress.IPv6Network | None = None) -> list[Link]:
    links: list[Link] = []
    used_if: set[tuple[str, str]] = set()
    used_ip: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for i, item in enumerate(items, start=1):
        where = f"{src}: link {i}"
        eps = item.get("endpoints") if isinstance(item, dict) else None
        if not isinstance(eps, list) or len(eps) != 2:
            raise TopologyError(f"{where}: needs endpoints: [\"a:ethN\", \"b:ethM\"]")
        given = item.get("ipv4")
        if given is not None and (not isinstance(given, list) or len(given) != 2):
            raise TopologyError(f"{where}: ipv4 must list one address per endpoint")
        if given is None:
            base = int(fabric.network_address) + (i << 8)
            if base + 3 > int(fabric.broadcast_address) or i > 255:
                raise TopologyError(f"{where}: the fabric range {fabric} has no room for it")
            addrs = [ipaddress.IPv4Interface(f"{ipaddress.IPv4Address(base + k)}/30")
                     for k in (1, 2)]
        else:
            try:
                addrs = [ipaddress.IPv4Interface(str(a)) for a in given]
            except ValueError as e:
                raise TopologyError(f"{where}: {e}") from None
            if addrs[0].network != addrs[1].network:
                raise TopologyError(f"{where}: {addrs[0]} and {addrs[1]} are not in one subnet")
        addrs6 = _link_addresses6(item, i, fabric6, where)
        ends = []
        for ep, addr, addr6 in zip(eps, addrs, addrs6, strict=True):
            node, sep, ifname = str(ep).partition(":")
            if not sep or node not in nodes:
                raise TopologyError(f"{where}: endpoint {ep!r} is not <known node>:<interface>")
            if not IFNAME.match(ifname) or ifname == "eth0":
                raise TopologyError(f"{where}: interface {ifname!r} (eth0 is management; "
                                    "names are at most 15 characters)")
            if (node, ifname) in used_if:
                raise TopologyError(f"{where}: {node}:{ifname} is used twice")
            if nodes[node].role == "mgmt":
                raise TopologyError(f"{where}: the mgmt node takes no fabric links")
            for a in (addr, addr6):
                if a is not None and a.ip in used_ip:
                    raise TopologyError(f"{where}: address {a.ip} is used twice")
                if a is not None:
                    used_ip.add(a.ip)
            used_if.add((node, ifname))
            ends.append(Endpoint(node, ifname, addr, addr6))
        if ends[0].node == ends[1].node:
            raise TopologyError(f"{where}: a link joins two different nodes")
        links.append(Link(i, ends[0], ends[1]))
    return links


def header_comment(text: str) -> str:
    """The leading comment block of a file (what the topology demonstrates)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines).strip()


def load(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise TopologyError(f"{p}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TopologyError(f"{p}: not YAML: {e}") from None
    return parse(doc, p.resolve(), header_comment(text))
