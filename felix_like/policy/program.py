"""The packet-filter program the policy calculation produces (pure values, no logic).

Owned here: the backend-neutral intermediate representation (matches, verdicts, rules,
address sets, the :class:`Ruleset` of a node) that :mod:`felix_like.policy.ruleset` and
:mod:`felix_like.policy.incremental` build, :mod:`felix_like.policy.nft` and
:mod:`felix_like.policy.iptables` render, and :mod:`felix_like.policy.interp` executes. The
shape of the program and its invariants are described in :mod:`felix_like.policy.ruleset`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

MARK_ALLOW = 0x10000
MARK_PASS = 0x20000
# The staged pipeline's own verdicts (felix_like.policy.ruleset: staged policies), so a
# staged policy never sets a bit the enforced chains read.
MARK_STAGED_ALLOW = 0x40000
MARK_STAGED_DENY = 0x80000
MARK_STAGED_PASS = 0x100000
MARK_ENFORCED = MARK_ALLOW | MARK_PASS
MARK_MASK = MARK_ENFORCED | MARK_STAGED_ALLOW | MARK_STAGED_DENY | MARK_STAGED_PASS

#: Verdicts that set a mark bit and return (a policy chain's decision for its caller).
MARKING = {"allow": MARK_ALLOW, "pass": MARK_PASS, "staged-allow": MARK_STAGED_ALLOW,
           "staged-deny": MARK_STAGED_DENY, "staged-pass": MARK_STAGED_PASS}

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
    """``allow``/``pass`` and the ``staged-*`` ones (:data:`MARKING`): set the mark and
    return; ``log``: log and continue; ``count``: nothing but the rule's counter, continue;
    ``clear``: clear the enforced marks (:data:`MARK_ENFORCED`) and continue;
    ``flowlog``: send the packet to the flow log's NFLOG group, rate-limited in the
    kernel, with prefix ``target`` (:attr:`Counted.short`), and continue;
    ``jump``/``goto``: to ``target``; ``drop``, ``return``."""

    kind: str
    target: str = ""


DROP = Verdict("drop")
RETURN = Verdict("return")
ALLOW = Verdict("allow")
PASS = Verdict("pass")
COUNT = Verdict("count")
CLEAR = Verdict("clear")
STAGED_ALLOW = Verdict("staged-allow")
#: A staged GNP rule's action -> its verdict in the staged pipeline (Log: COUNT).
STAGED_VERDICTS = {"Allow": STAGED_ALLOW, "Deny": Verdict("staged-deny"),
                   "Pass": Verdict("staged-pass")}


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: Verdict
    comment: str = ""  # the policy rule this came from, for explain and the backends
    counted: Counted | None = None  # the policy counter its packets add to


#: What a staged policy's rule would have done (counted, never enforced).
WOULD = {"allow": "would-allow", "deny": "would-deny", "pass": "would-pass",
         "log": "would-log"}


@dataclass(frozen=True)
class Counted:
    """One series of ``l3fabric_policy_packets_total``/``_bytes_total``: a policy rule (or
    a namespace's default deny) in one direction, whatever endpoints share it, so the
    cardinality follows the policies, never the pods.

    ``text`` is its one canonical spelling, which is also how a backend finds it again in
    the kernel (the nft counter's comment, the iptables rule's comment):
    ``np/NS/NAME ingress[0] allow``, ``gnp/NAME egress[2] deny``,
    ``default-deny/NS ingress deny``; staged policies are ``snp/``/``sgnp/`` and act
    ``would-…``."""

    kind: str  # np | gnp | snp | sgnp | default-deny | staged-default-deny
    namespace: str  # "" for a global policy
    policy: str  # the policy's name ("" for a default deny)
    direction: str  # ingress | egress
    rule: int | None  # the rule's index in its direction (None: a default deny)
    action: str  # allow | deny | pass | log | would-allow | would-deny | ...

    @property
    def text(self) -> str:
        ref = "/".join(p for p in (self.kind, self.namespace, self.policy) if p)
        where = self.direction if self.rule is None else f"{self.direction}[{self.rule}]"
        return f"{ref} {where} {self.action}"

    @property
    def short(self) -> str:
        """A short name of it (a hash): the nft counter's name and the flow log prefix."""
        return "c-" + hashlib.sha1(self.text.encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str) -> Counted | None:
        """The counter ``text`` spells, or None when it is not one."""
        parts = text.split()
        if len(parts) != 3:
            return None
        ref, where, action = parts
        kind, _, rest = ref.partition("/")
        direction, _, index = where.partition("[")
        if direction not in ("ingress", "egress") or not rest:
            return None
        rule = int(index.rstrip("]")) if index.rstrip("]").isdigit() else None
        if kind in ("np", "snp"):
            ns, _, name = rest.partition("/")
            return cls(kind, ns, name, direction, rule, action) if name else None
        if kind in ("gnp", "sgnp"):
            return cls(kind, "", rest, direction, rule, action)
        if kind in ("default-deny", "staged-default-deny"):
            return cls(kind, rest, "", direction, None, action)
        return None

    def labels(self) -> dict[str, str]:
        """The metric's labels: policy, namespace (or "global"), rule, direction, action."""
        staged = self.kind.startswith("s")
        if self.kind.endswith("default-deny"):
            policy = "(staged default deny)" if staged else "(default deny)"
        else:
            policy = f"staged:{self.policy}" if staged else self.policy
        return {"policy": policy, "namespace": self.namespace or "global",
                "rule": "" if self.rule is None else str(self.rule),
                "direction": self.direction, "action": self.action}


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

#: The NFLOG group of the flow log (felix_like.policy.flowlog reads it), and the kernel's
#: limit per logging rule: a flood costs the agent at most this many records per second
#: per rule before its own limit.
FLOWLOG_GROUP = 4242
FLOWLOG_RATE, FLOWLOG_BURST = 20, 50


def with_flow_logs(rules: list[Rule], allowed: bool = False) -> list[Rule]:
    """``rules`` with a flow-log rule before each counted deny (enforced or staged), and
    with ``allowed`` before each enforced allow too: the same matches, logging, then the
    rule itself."""
    logged = ("deny", "would-deny", "allow") if allowed else ("deny", "would-deny")
    out: list[Rule] = []
    for r in rules:
        if r.counted is not None and r.counted.action in logged:
            out.append(Rule(r.matches, Verdict("flowlog", r.counted.short), r.comment))
        out.append(r)
    return out


def ipset_members(nets: tuple[str, ...]) -> list[str]:
    """The members of an ipset of ``nets``: hash:net holds no /0, so it goes in as its two
    halves."""
    out: list[str] = []
    for n in nets:
        net = ipaddress.ip_network(n)
        out.extend(str(s) for s in (net.subnets() if net.prefixlen == 0 else [net]))
    return out
