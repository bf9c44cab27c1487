"""nftables backend: renders a :class:`~felix_like.policy.program.Ruleset` into table
``inet l3fabric`` through libnftables' JSON API, one atomic transaction per apply.

Owned: the table ``inet l3fabric`` and everything in it; nothing else is touched (other
tables on the forward hook must accept too, PLATFORM.md).

Steady state: a diff against what this object last programmed — new sets and chains are
added, changed chains are flushed and refilled, set and map elements are added/deleted,
orphans removed last — all in ONE transaction, so the kernel never sees a half-applied
change. A pod add is a few map and set elements plus the pod's own chains.

Start-up and resync (``forget()``): we do not know what the kernel holds, so the first
apply lists the table (tersely: no set elements) and issues one transaction that
(re)declares every desired object, flushes every existing chain and map, deletes and makes
again every desired set that exists (nothing references it once the chains are flushed;
flushing and refilling a set of tens of thousands of elements in one transaction costs the
kernel 20 times more), refills them and deletes what is not desired. Why not delete and
recreate the table: that would also be atomic, but it would change the chains' handles,
and any reference from outside (a monitor, a counter reader) would break; doing it inside
one transaction gives the same all-or-nothing result while the base chains keep their
``ct state established,related accept`` in force throughout, so established connections
never see a gap. (Conntrack lives outside nftables either way.)

Address sets are concatenated ranges, ``type ipv4_addr . inet_proto; flags interval`` with
``. 0-255`` on every element, matched as ``ip saddr . meta l4proto @set``: the same
meaning as a plain prefix set. Why: before any element command (every pod add changes set
and map elements) libnftables 1.0.6 re-reads the elements of every non-concatenated
interval set in the table into its cache, ~40 us per set plus per element: 15-20 ms at
1,000 policies, on every pod add. Concatenated range sets are not re-read. A table made
with plain interval sets (an older version) is converted by the full converge, which makes
every set again.

Counters: every counted rule (a policy rule, a namespace's default deny: ``Rule.counted``)
carries an anonymous ``counter`` and a comment spelling its :class:`Counted`;
``read_counters`` sums the rules by comment. A flush or delete of a chain zeroes its rules'
counters, so an apply first reads the chains it is about to rewrite (every chain, on the
full converge, from the listing it makes anyway) and keeps their counts (``_retired``): the
totals only rise. That read of a diff's chains and a scrape's read of the table are rule
dumps over netlink (:mod:`felix_like.policy.nft_counters`), not libnftables listings:
listing even one chain makes libnftables fill its cache with every set of the table first
(~5-16 ms per chain from 1 to 1,000 policies, against 0.3-0.5 ms for the dump of that
chain), and listing the whole table costs 4-7 times its dump (1.4 s against 0.35 s at
1,000 policies, 500 endpoints). If the netlink read fails, libnftables listings do it
(logged once). Why not named counter objects, which survive a refill: with a few thousand
of them in the table, libnftables fetches every object before each rule it adds, which
tripled the time of a pod add at 1,000 policies.

Failure mode: libnftables rejects the transaction -> :class:`NftError` with its message;
nothing was changed and our record is left as it was, so the next apply retries the same
diff. If the kernel was changed behind our back, ``forget()`` (the periodic resync) repairs.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from felix_like.owned import HOST_IF_PREFIX
from felix_like.policy.program import (
    FLOWLOG_BURST,
    FLOWLOG_GROUP,
    FLOWLOG_RATE,
    MARK_ENFORCED,
    MARK_MASK,
    MARKING,
    Addr,
    Counted,
    Family,
    Icmp,
    Marked,
    NamedPort,
    Ports,
    Proto,
    Rule,
    Ruleset,
    SetSpec,
)

if TYPE_CHECKING:
    from felix_like.policy.nft_counters import Nftnl

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "l3fabric"
T = {"family": FAMILY, "table": TABLE}
BASE_CHAINS = {"forward": 0, "input": 0}
FROM_PODS, TO_PODS = "from-pods", "to-pods"
FROM_MAP, TO_MAP = "from-pod", "to-pod"

JsonCmd = dict[str, Any]


class NftError(RuntimeError):
    pass


def _ip(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _prefix(net: str) -> Any:
    addr, _, plen = net.partition("/")
    if not plen:
        return addr
    return {"prefix": {"addr": addr, "len": int(plen)}}


def _ports(ranges: tuple[tuple[int, int], ...]) -> Any:
    items: list[Any] = [lo if lo == hi else {"range": [lo, hi]} for lo, hi in ranges]
    return items[0] if len(items) == 1 else {"set": items}


def _mark_or(bit: int) -> dict[str, Any]:
    return {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), bit]}}}


CLEAR_MARKS: dict[str, Any] = {"mangle": {"key": _meta("mark"),
                          "value": {"&": [_meta("mark"), 0xFFFFFFFF & ~MARK_MASK]}}}


CLEAR_ENFORCED: dict[str, Any] = {"mangle": {"key": _meta("mark"),
                              "value": {"&": [_meta("mark"), 0xFFFFFFFF & ~MARK_ENFORCED]}}}


def render_match(m: object) -> dict[str, Any]:
    if isinstance(m, Family):
        return _match(_meta("nfproto"), "ipv4" if m.version == 4 else "ipv6")
    if isinstance(m, Proto):
        return _match(_meta("l4proto"), m.number)
    if isinstance(m, Addr):
        field = "saddr" if m.side == "src" else "daddr"
        left: Any = {"payload": {"protocol": _ip(m.version), "field": field}}
        if m.set_name is not None:
            left = {"concat": [left, _meta("l4proto")]}  # see the module docstring
            right: Any = f"@{m.set_name}"
        else:
            right = {"set": [_prefix(n) for n in m.nets]}
        return _match(left, right, "!=" if m.negate else "==")
    if isinstance(m, Ports):
        field = "dport" if m.side == "dst" else "sport"
        return _match({"payload": {"protocol": "th", "field": field}}, _ports(m.ranges),
                      "!=" if m.negate else "==")
    if isinstance(m, NamedPort):
        a = "daddr" if m.side == "dst" else "saddr"
        p = "dport" if m.side == "dst" else "sport"
        left2: dict[str, Any] = {"concat": [{"payload": {"protocol": _ip(m.version), "field": a}},
                           _meta("l4proto"), {"payload": {"protocol": "th", "field": p}}]}
        return _match(left2, f"@{m.set_name}", "!=" if m.negate else "==")
    if isinstance(m, Icmp):
        proto = "icmp" if m.version == 4 else "icmpv6"
        return _match({"payload": {"protocol": proto, "field": "type"}}, m.type)
    if isinstance(m, Marked):
        return _match({"&": [_meta("mark"), m.bit]}, 0, "!=")
    raise TypeError(f"cannot render {m!r}")


def render_rule(rule: Rule) -> list[dict[str, Any]]:
    expr = [render_match(m) for m in rule.matches]
    for m in rule.matches:  # icmp code is a separate match
        if isinstance(m, Icmp) and m.code is not None:
            proto = "icmp" if m.version == 4 else "icmpv6"
            expr.append(_match({"payload": {"protocol": proto, "field": "code"}}, m.code))
    if rule.counted is not None:
        expr.append({"counter": None})
    v = rule.verdict
    if v.kind in MARKING:
        expr += [_mark_or(MARKING[v.kind]), {"return": None}]
    elif v.kind == "count":
        if rule.counted is None:
            expr.append({"counter": None})
    elif v.kind == "clear":
        expr.append(CLEAR_ENFORCED)
    elif v.kind == "flowlog":
        expr += [{"limit": {"rate": FLOWLOG_RATE, "per": "second", "burst": FLOWLOG_BURST}},
                 {"log": {"prefix": v.target, "group": FLOWLOG_GROUP}}]
    elif v.kind == "log":
        expr.append({"log": {"prefix": v.target}})
    elif v.kind in ("jump", "goto"):
        expr.append({v.kind: {"target": v.target}})
    elif v.kind in ("drop", "return", "accept"):
        expr.append({v.kind: None})
    else:
        raise ValueError(f"unknown verdict {v.kind}")
    return expr


def _set_type(spec: SetSpec) -> list[str]:
    addr = "ipv4_addr" if spec.version == 4 else "ipv6_addr"
    if spec.kind == "port":
        return [addr, "inet_proto", "inet_service"]
    return [addr, "inet_proto"]  # a concatenated range: see the module docstring


def _set_decl(spec: SetSpec) -> dict[str, Any]:
    decl: dict[str, Any] = {**T, "name": spec.name, "type": _set_type(spec),
                            "comment": spec.what[:120]}
    if spec.kind != "port":
        decl["flags"] = ["interval"]
    return decl


ANY_PROTO = {"range": [0, 255]}


def _elem(spec: SetSpec, e: Any) -> Any:
    if spec.kind == "port":
        return {"concat": list(e)}
    return {"concat": [_prefix(e), ANY_PROTO]}


def base_chain_rules() -> dict[str, list[list[dict[str, Any]]]]:
    """The fixed part: hooks, dispatch by interface (fail closed), replies accepted."""
    est = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    fab_in = _match(_meta("iifname"), HOST_IF_PREFIX + "*")
    fab_out = _match(_meta("oifname"), HOST_IF_PREFIX + "*")
    return {
        "forward": [[est, {"accept": None}],
                    [CLEAR_MARKS], [fab_in, {"jump": {"target": FROM_PODS}}],
                    [CLEAR_MARKS], [fab_out, {"jump": {"target": TO_PODS}}]],
        "input": [[est, {"accept": None}],
                  [CLEAR_MARKS], [fab_in, {"jump": {"target": FROM_PODS}}]],
        FROM_PODS: [[{"vmap": {"key": _meta("iifname"), "data": f"@{FROM_MAP}"}}],
                    [{"drop": None}]],
        TO_PODS: [[{"vmap": {"key": _meta("oifname"), "data": f"@{TO_MAP}"}}],
                  [{"drop": None}]],
    }


@dataclass
class Programmed:
    chains: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    sets: dict[str, SetSpec] = field(default_factory=dict)
    elements: dict[str, frozenset[Any]] = field(default_factory=dict)
    from_pod: dict[str, str] = field(default_factory=dict)
    to_pod: dict[str, str] = field(default_factory=dict)


def _add(kind: str, body: dict[str, Any]) -> JsonCmd:
    return {"add": {kind: body}}


def _rules(chain: str, rules: tuple[Rule, ...]) -> list[JsonCmd]:
    out = []
    for r in rules:
        body: dict[str, Any] = {**T, "chain": chain, "expr": render_rule(r)}
        # A counted rule's comment spells its counter: read_counters finds it by that.
        comment = r.counted.text if r.counted is not None else r.comment
        if comment:
            body["comment"] = comment[:127]
        out.append(_add("rule", body))
    return out


def _has_counted(rules: Iterable[Rule]) -> bool:
    return any(r.counted is not None for r in rules)


def rewritten_chains(old: Programmed, rs: Ruleset) -> list[str]:
    """The counted chains a diff from ``old`` to ``rs`` flushes or deletes (unchanged
    chains, the same objects, are passed over first: a pod add touches a handful)."""
    out = []
    for name, rules in old.chains.items():
        new = rs.chains.get(name)
        if new is rules or (new is not None and new == rules) or not _has_counted(rules):
            continue
        out.append(name)
    return sorted(out)


def _map_elems(name: str, items: dict[str, str]) -> list[Any]:
    return [[k, {"goto": {"target": v}}] for k, v in sorted(items.items())]


def full_transaction(rs: Ruleset, existing_chains: set[str], existing_sets: set[str],
                     existing_counters: Iterable[str] = ()) -> list[JsonCmd]:
    """Converge from unknown kernel state in one transaction (see the module docstring).
    Every desired set is made again (deleted first if it exists, whatever its type, after
    every chain is flushed). Named counter objects (an older version's) are deleted last."""
    cmds: list[JsonCmd] = [_add("table", {"family": FAMILY, "name": TABLE})]
    for name, prio in BASE_CHAINS.items():
        cmds.append(_add("chain", {**T, "name": name, "type": "filter", "hook": name,
                                   "prio": prio, "policy": "accept"}))
    for name in (FROM_MAP, TO_MAP):
        cmds.append(_add("map", {**T, "name": name, "type": "ifname", "map": "verdict"}))
    fixed = base_chain_rules()
    for name in [*fixed, *rs.chains]:
        if name not in BASE_CHAINS:
            cmds.append(_add("chain", {**T, "name": name}))
    for name in sorted(existing_chains | set(fixed) | set(rs.chains)):
        cmds.append({"flush": {"chain": {**T, "name": name}}})
    for name in (FROM_MAP, TO_MAP):
        cmds.append({"flush": {"map": {**T, "name": name}}})
    for name, spec in rs.sets.items():
        # Made again rather than flushed: its chains are flushed above, so nothing
        # references it now, and the kernel flushes and refills a large interval set in
        # one transaction element by element against the whole set (17.8 s for 55,000
        # elements at 1,000 nodes, against 0.8 s to delete it and make it again).
        if name in existing_sets:
            cmds.append({"delete": {"set": {**T, "name": name}}})
        cmds.append(_add("set", _set_decl(spec)))
    for name, spec in rs.sets.items():
        if rs.elements.get(name):
            cmds.append(_add("element", {**T, "name": name, "elem": [
                _elem(spec, e) for e in sorted(rs.elements[name], key=str)]}))
    for name, rules in rs.chains.items():
        cmds.extend(_rules(name, rules))
    for name, exprs in fixed.items():
        for expr in exprs:
            cmds.append(_add("rule", {**T, "chain": name, "expr": expr}))
    if rs.from_pod:
        cmds.append(_add("element", {**T, "name": FROM_MAP,
                                     "elem": _map_elems(FROM_MAP, rs.from_pod)}))
    if rs.to_pod:
        cmds.append(_add("element", {**T, "name": TO_MAP, "elem": _map_elems(TO_MAP, rs.to_pod)}))
    for name in sorted(existing_chains - set(fixed) - set(rs.chains) - set(BASE_CHAINS)):
        cmds.append({"delete": {"chain": {**T, "name": name}}})
    for name in sorted(existing_sets - set(rs.sets) - {FROM_MAP, TO_MAP}):
        cmds.append({"delete": {"set": {**T, "name": name}}})
    for name in sorted(existing_counters):
        cmds.append({"delete": {"counter": {**T, "name": name}}})
    return cmds


def diff_transaction(old: Programmed, rs: Ruleset) -> list[JsonCmd]:
    """The minimum change from ``old`` to ``rs``; empty when nothing changed. Element sets
    and chains that are the same objects as last time (the incremental calculation keeps
    what it did not touch) are skipped without comparing their contents."""
    cmds: list[JsonCmd] = []
    for name, spec in rs.sets.items():
        new = rs.elements.get(name, frozenset())
        if old.elements.get(name) is new and name in old.sets:
            continue
        if name not in old.sets:
            cmds.append(_add("set", _set_decl(spec)))
            before: frozenset[Any] = frozenset()
        else:
            before = old.elements.get(name, frozenset())
        gone, added = before - new, new - before
        if gone:
            cmds.append({"delete": {"element": {**T, "name": name, "elem": [
                _elem(spec, e) for e in sorted(gone, key=str)]}}})
        if added:
            cmds.append(_add("element", {**T, "name": name, "elem": [
                _elem(spec, e) for e in sorted(added, key=str)]}))
    for name in rs.chains:
        if name not in old.chains:
            cmds.append(_add("chain", {**T, "name": name}))
    for name, rules in rs.chains.items():
        if name in old.chains:
            before_rules = old.chains[name]
            if before_rules is rules or before_rules == rules:
                continue
            cmds.append({"flush": {"chain": {**T, "name": name}}})
        cmds.extend(_rules(name, rules))
    for mapname, before_map, now in ((FROM_MAP, old.from_pod, rs.from_pod),
                                     (TO_MAP, old.to_pod, rs.to_pod)):
        stale = {k: v for k, v in before_map.items() if now.get(k) != v}
        fresh = {k: v for k, v in now.items() if before_map.get(k) != v}
        if stale:
            cmds.append({"delete": {"element": {**T, "name": mapname,
                                                "elem": [k for k in sorted(stale)]}}})
        if fresh:
            cmds.append(_add("element", {**T, "name": mapname,
                                         "elem": _map_elems(mapname, fresh)}))
    removed = [n for n in old.chains if n not in rs.chains]
    for name in removed:  # flush all first: removed chains may reference each other
        cmds.append({"flush": {"chain": {**T, "name": name}}})
    for name in removed:
        cmds.append({"delete": {"chain": {**T, "name": name}}})
    for name in old.sets:
        if name not in rs.sets:
            cmds.append({"delete": {"set": {**T, "name": name}}})
    return cmds


ChainCounts = dict[str, dict[Counted, tuple[int, int]]]


def add_rule_counts(found: ChainCounts, chain: str, comment: str,
                    counters: Iterable[tuple[int, int]]) -> None:
    """Add one rule's (packets, bytes) ``counters`` into ``found`` under the `Counted`
    its ``comment`` spells; a rule whose comment spells none is not ours to count."""
    counted = Counted.parse(comment)
    if counted is None:
        return
    for packets, size in counters:
        per = found.setdefault(chain, {})
        p, b = per.get(counted, (0, 0))
        per[counted] = (p + packets, b + size)


def parse_counters(out: Any) -> ChainCounts:
    """(packets, bytes) by chain and counter from a JSON listing: the counted rules, found
    by their comments; others (no comment of ours, no counter) are skipped."""
    found: ChainCounts = {}
    for obj in (out or {}).get("nftables", []):
        rule = obj.get("rule")
        if not isinstance(rule, dict) or "comment" not in rule:
            continue
        add_rule_counts(found, rule.get("chain", ""), rule["comment"], [
            (int(c.get("packets", 0)), int(c.get("bytes", 0)))
            for c in (e.get("counter") if isinstance(e, dict) else None
                      for e in rule.get("expr", ()))
            if isinstance(c, dict)])
    return found


def add_counts(into: dict[Counted, tuple[int, int]], chains: ChainCounts,
               only: Iterable[str] | None = None) -> None:
    """Add the counts of ``chains`` (of those named in ``only``) into ``into``."""
    for chain in (chains if only is None else only):
        for c, (p, b) in chains.get(chain, {}).items():
            p0, b0 = into.get(c, (0, 0))
            into[c] = (p0 + p, b0 + b)


def gather_counts(read: Callable[[str | None], ChainCounts],
                  names: list[str] | None) -> ChainCounts:
    """The counts of chains ``names`` (None: every chain) through ``read``, which reads one
    chain or (given None) the whole table: a read per chain when they are few (a policy
    change rewrites one or two), else one read of the table, of which only ``names`` are
    kept."""
    if names is None or len(names) > 8:
        every = read(None)
        return every if names is None else {n: every[n] for n in names if n in every}
    found: ChainCounts = {}
    for n in names:
        found.update(read(n))
    return found


class NftBackend:
    """Programs one network namespace. ``nft`` runs a JSON command list atomically and
    returns (rc, output, error); by default libnftables' context made inside ``netns``."""

    def __init__(self, netns: str | None = None,
                 nft: Callable[[dict[str, Any]], tuple[int, Any, str]] | None = None) -> None:
        self.netns = netns
        self._ctx: Any = None
        self._nft = nft
        self.programmed: Programmed | None = None  # None: unknown, next apply is full
        self.last_commands = 0
        self._reader: Any = None
        # Counts of rules an apply flushed or deleted (read just before), and the lock
        # that keeps a scrape from seeing them both gone and not yet kept.
        self._retired: dict[Counted, tuple[int, int]] = {}
        self._counters_lock = threading.Lock()
        # The netlink socket that reads the rules' counters (used under the lock).
        self._rules_reader: Nftnl | None = None
        self._rules_reader_failed = False  # logged once

    def _run(self, cmds: list[JsonCmd]) -> Any:
        if self._nft is None:
            import nftables

            from felix_like.netlink import run_in_netns

            # The context's netlink socket is bound to the namespace it was created in.
            self._ctx = run_in_netns(self.netns, nftables.Nftables)
            self._ctx.set_json_output(True)
            self._ctx.set_terse_output(True)  # listings without set elements
            self._nft = self._ctx.json_cmd
        rc, out, err = self._nft({"nftables": cmds})
        if rc != 0:
            raise NftError(f"nft transaction of {len(cmds)} commands failed: {err.strip()}")
        return out

    def _existing(self) -> tuple[set[str], set[str], set[str], ChainCounts]:
        """The table's chains, sets and named counters, and its rules' counts: a terse
        listing, without the sets' elements (tens of thousands at 1,000 nodes)."""
        try:
            out = self._run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError:
            return set(), set(), set(), {}  # no table yet
        chains: set[str] = set()
        sets: set[str] = set()
        counters: set[str] = set()
        for obj in (out or {}).get("nftables", []):
            if "chain" in obj:
                chains.add(obj["chain"]["name"])
            elif "counter" in obj:
                counters.add(obj["counter"]["name"])
            elif "set" in obj:
                sets.add(obj["set"]["name"])
        return chains, sets, counters, parse_counters(out)

    def forget(self) -> None:
        """Trust nothing we think we programmed: the next apply is a full converge."""
        self.programmed = None

    def apply(self, rs: Ruleset) -> int:
        """Converge to ``rs``; returns the number of commands sent (0: nothing to do)."""
        with self._counters_lock:
            retiring: dict[Counted, tuple[int, int]] = {}
            if self.programmed is None:
                chains, sets, counters, counts = self._existing()
                cmds = full_transaction(rs, chains, sets, counters)
                add_counts(retiring, counts)  # every chain is flushed
            else:
                cmds = diff_transaction(self.programmed, rs)
                going = rewritten_chains(self.programmed, rs)
                if going:
                    add_counts(retiring, self._counts(going))
            self.last_commands = len(cmds)
            if cmds:
                self._run(cmds)
                add_counts(self._retired, {"": retiring})
        self.programmed = Programmed(dict(rs.chains), dict(rs.sets), dict(rs.elements),
                                     dict(rs.from_pod), dict(rs.to_pod))
        return len(cmds)

    def _list(self, what: dict[str, Any]) -> Any:
        """One terse listing (rules, not set elements) in the reader's libnftables
        context (a scrape runs on any thread); None when it does not exist."""
        if self._reader is None:
            import nftables

            from felix_like.netlink import run_in_netns

            self._reader = run_in_netns(self.netns, nftables.Nftables)
            self._reader.set_json_output(True)
            self._reader.set_terse_output(True)
        rc, out, err = self._reader.json_cmd({"nftables": [{"list": what}]})
        if rc != 0:
            if "No such file" in err:
                return None
            raise NftError(f"listing the policy counters failed: {err.strip()}")
        return out

    def _listed_counts(self, chain: str | None) -> ChainCounts:
        """The counts of one chain's counted rules (None: every chain's) from a
        libnftables listing (one batch cannot list several chains: libnftables caches the
        first chain only)."""
        what = ({"table": {"family": FAMILY, "name": TABLE}} if chain is None
                else {"chain": {**T, "name": chain}})
        return parse_counters(self._list(what))

    def _counts(self, names: list[str] | None) -> ChainCounts:
        """The counts of the counted rules of chains ``names`` (None: every chain), read
        over netlink (`felix_like.policy.nft_counters`: rule dumps the kernel filters by
        chain, without libnftables' cache of every set); if that fails, from libnftables
        listings. Call with the lock held: the reader's socket serves one request at a
        time."""
        try:
            if self._rules_reader is None:
                from felix_like.policy.nft_counters import Nftnl

                self._rules_reader = Nftnl.open(self.netns)
            return gather_counts(self._rules_reader.counts, names)
        except (OSError, ValueError, struct.error) as e:  # NetlinkError is an OSError
            self._close_rules_reader()
            if not self._rules_reader_failed:
                self._rules_reader_failed = True
                log.warning("reading the rule counters over netlink failed (%s); listing "
                            "them with libnftables instead", e)
        return gather_counts(self._listed_counts, names)

    def _close_rules_reader(self) -> None:
        if self._rules_reader is not None:
            self._rules_reader.close()
            self._rules_reader = None

    def read_counters(self) -> dict[Counted, tuple[int, int]]:
        """Every policy counter: (packets, bytes) by what it counts, from the rules of the
        table plus what rewritten rules had counted. Reading changes nothing."""
        with self._counters_lock:
            chains = self._counts(None)
            found = dict(self._retired)
        add_counts(found, chains)
        return found

    def cleanup(self) -> None:
        """Remove our table (agent --cleanup / uninstall). Missing table is fine."""
        try:
            self._run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError as e:
            if "No such file" not in str(e):
                raise
        self.programmed = None
        with self._counters_lock:
            self._close_rules_reader()
