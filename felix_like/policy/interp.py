"""A packet interpreter over the rendered :class:`~felix_like.policy.program.Ruleset`.

It executes the same program the backends install (base chain, dispatch maps, marks,
jump/goto/return), so tests of the calculation need no root and no kernel: the fake
dataplane of STYLE rule 8. It is also what ``fabricctl policy explain`` uses to show the
path a packet takes through this node's chains.

Failure mode: none; unknown chains or sets are programming errors and raise KeyError.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from felix_like.owned import HOST_IF_PREFIX
from felix_like.policy.program import (
    MARK_ENFORCED,
    MARK_MASK,
    MARKING,
    Addr,
    Family,
    Icmp,
    Marked,
    NamedPort,
    Ports,
    Proto,
    Rule,
    Ruleset,
)
from felix_like.policy.staged import staged_head

log = logging.getLogger(__name__)

TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: int = TCP
    dport: int | None = None
    sport: int | None = 40000
    icmp_type: int | None = None
    icmp_code: int | None = None
    iif: str | None = None  # None: not one of our interfaces (uplink, another node)
    oif: str | None = None
    established: bool = False

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.src).version


@dataclass
class Result:
    allowed: bool
    trace: list[str] = field(default_factory=list)
    decided_by: str = ""  # comment of the rule that decided, when one did
    staged: list[str] = field(default_factory=list)  # what staged policies would do


class _Drop(Exception):
    pass


class Interpreter:
    """Evaluates packets against one ruleset; set contents are parsed once."""

    def __init__(self, rs: Ruleset) -> None:
        self.rs = rs
        self._staged_heads = {staged_head(i, d) for i in rs.endpoints for d in ("in", "out")}
        self._nets: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}

    def _set_nets(self, name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        nets = self._nets.get(name)
        if nets is None:
            nets = [ipaddress.ip_network(e) for e in self.rs.elements[name]]
            self._nets[name] = nets
        return nets

    def locate(self, ip: str) -> str | None:
        """The host interface of the local endpoint holding ``ip``."""
        addr = ipaddress.ip_address(ip)
        for iface, ep in self.rs.endpoints.items():
            if any(addr in ipaddress.ip_network(a, strict=False) for a in ep.addresses):
                return iface
        return None

    def packet(self, src: str, dst: str, proto: int = TCP, dport: int | None = None,
               **kw: object) -> Packet:
        """A packet with iif/oif filled in from where the addresses live on this node."""
        return Packet(src, dst, proto, dport, iif=kw.pop("iif", self.locate(src)),  # type: ignore[arg-type]
                      oif=kw.pop("oif", self.locate(dst)), **kw)  # type: ignore[arg-type]

    # --- evaluation ---------------------------------------------------------------------

    def evaluate(self, pkt: Packet, hook: str = "forward") -> Result:
        res = Result(True)
        if pkt.established:
            res.trace.append("ct state established,related: accept")
            return res
        marks = [0]
        try:
            if pkt.iif is not None and pkt.iif.startswith(HOST_IF_PREFIX):
                marks[0] &= ~MARK_MASK
                self._dispatch(self.rs.from_pod, pkt.iif, pkt, marks, res, "from-pod")
            if hook == "forward" and pkt.oif is not None and pkt.oif.startswith(HOST_IF_PREFIX):
                marks[0] &= ~MARK_MASK
                self._dispatch(self.rs.to_pod, pkt.oif, pkt, marks, res, "to-pod")
        except _Drop:
            res.allowed = False
            return res
        res.trace.append(f"{hook}: policy accept")
        return res

    def _dispatch(self, vmap: dict[str, str], iface: str, pkt: Packet, marks: list[int],
                  res: Result, what: str) -> None:
        chain = vmap.get(iface)
        if chain is None:
            res.trace.append(f"{what}: {iface} is not a known endpoint: drop (fail closed)")
            res.decided_by = f"unknown interface {iface}"
            raise _Drop
        res.trace.append(f"{what}: {iface} -> goto {chain}")
        self._run(chain, pkt, marks, res, depth=0)

    def _run(self, chain: str, pkt: Packet, marks: list[int], res: Result, depth: int,
             staged: bool = False) -> None:
        """Run ``chain``; ``staged``: within the staged pipeline, which decides nothing
        (its allows are not the decision, its verdicts go to ``Result.staged``)."""
        if depth > 32:
            raise RecursionError(f"chain loop at {chain}")
        for rule in self.rs.chains[chain]:
            if not all(self._match(m, pkt, marks[0]) for m in rule.matches):
                continue
            v = rule.verdict
            label = f"{chain}: {rule.comment or _describe(rule)}"
            if v.kind == "drop":
                res.trace.append(f"{label}: drop")
                res.decided_by = rule.comment or chain
                raise _Drop
            if v.kind == "return":
                res.trace.append(f"{label}: return")
                if rule.comment and not staged:
                    res.decided_by = rule.comment
                return
            if v.kind in ("allow", "pass"):
                res.trace.append(f"{label}: {v.kind}")
                if not staged:
                    res.decided_by = rule.comment
                marks[0] |= MARKING[v.kind]
                return
            if v.kind in MARKING:  # a staged policy's verdict: marked, never enforced
                would = v.kind.replace("staged-", "would ")
                res.trace.append(f"{label}: {would}")
                res.staged.append(f"{would}: {rule.comment}")
                marks[0] |= MARKING[v.kind]
                return
            if v.kind == "count":
                res.trace.append(f"{label}: count")
                if rule.counted is not None and rule.counted.action == "would-deny":
                    res.staged.append(f"would deny: {rule.comment}")
                continue
            if v.kind == "flowlog":
                continue
            if v.kind == "clear":
                marks[0] &= ~MARK_ENFORCED
                continue
            if v.kind == "log":
                res.trace.append(f"{label}: log")
                continue
            if v.kind == "jump":
                self._run(v.target, pkt, marks, res, depth + 1,
                          staged or v.target in self._staged_heads)
                continue
            if v.kind == "goto":
                self._run(v.target, pkt, marks, res, depth + 1, staged)
                return
            raise ValueError(f"unknown verdict {v.kind}")

    def _match(self, m: object, pkt: Packet, mark: int) -> bool:
        if isinstance(m, Marked):
            return bool(mark & m.bit)
        if isinstance(m, Family):
            return pkt.version == m.version
        if isinstance(m, Proto):
            return pkt.proto == m.number
        if isinstance(m, Icmp):
            return (pkt.version == m.version and pkt.icmp_type == m.type
                    and (m.code is None or pkt.icmp_code == m.code))
        if isinstance(m, Addr):
            if pkt.version != m.version:
                return False
            ip = ipaddress.ip_address(pkt.src if m.side == "src" else pkt.dst)
            nets = (self._set_nets(m.set_name) if m.set_name is not None
                    else _parse_nets(m.nets))
            return any(ip in n for n in nets) != m.negate
        if isinstance(m, Ports):
            port = pkt.dport if m.side == "dst" else pkt.sport
            if port is None:
                return False
            return any(lo <= port <= hi for lo, hi in m.ranges) != m.negate
        if isinstance(m, NamedPort):
            if pkt.version != m.version:
                return False
            text = pkt.dst if m.side == "dst" else pkt.src
            port = pkt.dport if m.side == "dst" else pkt.sport
            hit = (str(ipaddress.ip_address(text)), pkt.proto, port) in self.rs.elements[m.set_name]
            return hit != m.negate
        raise TypeError(f"unknown match {m!r}")


@functools.lru_cache(maxsize=4096)
def _parse_nets(nets: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in nets]


def _describe(rule: Rule) -> str:
    return " ".join(type(m).__name__.lower() for m in rule.matches) or "always"


def allowed(rs: Ruleset, src: str, dst: str, proto: int = TCP, dport: int | None = None,
            **kw: object) -> bool:
    """Convenience for tests: the verdict for a new connection through this node."""
    it = Interpreter(rs)
    return it.evaluate(it.packet(src, dst, proto, dport, **kw)).allowed


def chains_reachable(rs: Ruleset) -> Iterable[str]:
    """Every chain reachable from the dispatch maps (a consistency check for tests)."""
    todo = [*rs.from_pod.values(), *rs.to_pod.values()]
    seen: set[str] = set()
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        for r in rs.chains[c]:
            if r.verdict.kind in ("jump", "goto"):
                todo.append(r.verdict.target)
    return seen
