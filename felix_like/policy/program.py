"""The packet-filter program the policy calculation produces (pure values, no logic).

Owned here: the backend-neutral intermediate representation (matches, verdicts, rules,
address sets, the :class:`Ruleset` of a node) that :mod:`felix_like.policy.ruleset` and
:mod:`felix_like.policy.incremental` build, :mod:`felix_like.policy.nft` and
:mod:`felix_like.policy.iptables` render, and :mod:`felix_like.policy.interp` executes. The
shape of the program and its invariants are described in :mod:`felix_like.policy.ruleset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MARK_ALLOW = 0x10000
MARK_PASS = 0x20000
MARK_MASK = MARK_ALLOW | MARK_PASS

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}
PROTOCOL_NAMES = {v: k.lower() for k, v in PROTOCOLS.items()}


# --- the IR ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    version: int  # 4 or 6


@dataclass(frozen=True)
class Proto:
    number: int


@dataclass(frozen=True)
class Addr:
    """``side`` address in named set ``set_name`` (family from the set) or in inline ``nets``."""

    side: str  # "src" | "dst"
    version: int
    set_name: str | None = None
    nets: tuple[str, ...] = ()
    negate: bool = False


@dataclass(frozen=True)
class Ports:
    side: str
    ranges: tuple[tuple[int, int], ...]
    negate: bool = False


@dataclass(frozen=True)
class NamedPort:
    """``<side> address . l4proto . <side> port`` in a named-port set."""

    side: str
    version: int
    set_name: str
    negate: bool = False


@dataclass(frozen=True)
class Icmp:
    version: int
    type: int
    code: int | None = None


@dataclass(frozen=True)
class Marked:
    bit: int


Match = Family | Proto | Addr | Ports | NamedPort | Icmp | Marked


@dataclass(frozen=True)
class Verdict:
    """``allow``/``pass``: set the mark and return; ``log``: log and continue;
    ``jump``/``goto``: to ``target``; ``drop``, ``return``."""

    kind: str
    target: str = ""


DROP = Verdict("drop")
RETURN = Verdict("return")
ALLOW = Verdict("allow")
PASS = Verdict("pass")


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: Verdict
    comment: str = ""  # the policy rule this came from, for explain and the backends


@dataclass(frozen=True)
class SetSpec:
    name: str
    version: int
    kind: str  # "net": addresses/prefixes; "port": (address, protocol, port)
    what: str  # the canonical selector text it was derived from (a comment)


@dataclass(frozen=True)
class LocalEndpoint:
    key: str
    iface: str
    namespace: str
    pod: str
    addresses: tuple[str, ...]  # CIDRs as stored
    ingress_policies: tuple[str, ...]  # chain order, for explain: "gnp/NAME", "np/NS/NAME"
    egress_policies: tuple[str, ...]


@dataclass
class Ruleset:
    """The desired policy state of one node. ``chains`` holds every regular chain (name ->
    rules); the base chains and dispatch chains are fixed and rendered by the backends."""

    chains: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    sets: dict[str, SetSpec] = field(default_factory=dict)
    elements: dict[str, frozenset[Any]] = field(default_factory=dict)
    from_pod: dict[str, str] = field(default_factory=dict)  # iface -> fo-<iface>
    to_pod: dict[str, str] = field(default_factory=dict)  # iface -> fi-<iface>
    endpoints: dict[str, LocalEndpoint] = field(default_factory=dict)  # by iface
    host_addresses: tuple[str, ...] = ()


HOST_SETS = {4: "host4", 6: "host6"}
