"""iptables + ipset backend (``--policy-backend iptables``): the same Ruleset as nftables,
rendered as ``iptables-restore --noflush`` / ``ip6tables-restore --noflush`` input for the
``filter`` table plus ``ipset restore`` scripts.

Owned: every ``filter`` chain whose name starts with ``fab-``, one jump each from
``FORWARD`` and ``INPUT`` (inserted at position 1), and every ipset whose name starts with
``fab-``. Nothing else is touched: ``--noflush`` leaves other chains alone, and a ``:chain``
line flushes only that chain.

Mapping from the nftables model: verdict maps become a linear ``-i IF -g chain`` list in
``fab-from-pods``/``fab-to-pods`` (then ``-j DROP``: unknown ``fab*`` interfaces fail
closed); "allow"/"pass" are a MARK rule followed by ``-m mark ... -j RETURN``; named sets
are ipsets (``hash:net``; named ports ``hash:ip,port`` matched with ``dst,dst``); an inline
address list longer than one becomes its own ipset. Families go to iptables and ip6tables
separately.

Order of an apply (each step atomic on its own, together safe): ipset creations and element
changes, then one iptables-restore per family (all chain changes of the batch at once), then
removal of ipsets nothing references any more. On a full sync sets are refilled through a
temporary set and ``ipset swap``, so a set is never seen empty.

Counters: a counted rule's comment spells its :class:`Counted`; ``read_counters`` sums the
rules' own counters by comment (``iptables-save -c``). A restore zeroes the counters of the
chains it rewrites, so just before it those chains' counts are read and kept
(``_retired``): the totals only rise, also across the full rewrite of every resync.

Failure mode: a failed restore raises :class:`IptablesError` with the tool's message; the
record of what is programmed is only updated on success, so the next apply retries.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from felix_like.netlink import netns_path
from felix_like.owned import HOST_IF_PREFIX
from felix_like.policy.program import (
    FLOWLOG_BURST,
    FLOWLOG_GROUP,
    FLOWLOG_RATE,
    MARK_ENFORCED,
    MARK_MASK,
    MARKING,
    PROTOCOL_NAMES,
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
)

log = logging.getLogger(__name__)

PREFIX = "fab-"
FWD, INPUT, FROM_PODS, TO_PODS = "fab-fwd", "fab-input", "fab-from-pods", "fab-to-pods"
#: iptables' wildcard for every pod's host veth.
PODS = HOST_IF_PREFIX + "+"

Runner = Callable[[Sequence[str], str], str]


class IptablesError(RuntimeError):
    pass


def subprocess_runner(netns: str | None) -> Runner:
    def run(cmd: Sequence[str], stdin: str) -> str:
        full = list(cmd) if netns is None else ["nsenter", f"--net={netns_path(netns)}", *cmd]
        p = subprocess.run(full, input=stdin, capture_output=True, text=True)
        if p.returncode != 0:
            raise IptablesError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    return run


def chain_name(name: str) -> str:
    return name if name.startswith(PREFIX) else PREFIX + name


def set_name(name: str) -> str:
    return PREFIX + name


def _q(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


@dataclass(frozen=True)
class IpsetSpec:
    name: str
    version: int
    kind: str  # "net" | "port"


@dataclass
class _Render:
    version: int
    extra_sets: dict[str, tuple[IpsetSpec, frozenset[str]]] = field(default_factory=dict)

    def addr(self, m: Addr) -> list[str] | None:
        flag = "src" if m.side == "src" else "dst"
        neg = ["!"] if m.negate else []
        if m.set_name is not None:
            return ["-m", "set", *neg, "--match-set", set_name(m.set_name), flag]
        if len(m.nets) == 1:
            return [*neg, "-s" if m.side == "src" else "-d", m.nets[0]]
        name = f"{PREFIX}i{self.version}-" + hashlib.sha1(
            ",".join(m.nets).encode()).hexdigest()[:12]
        self.extra_sets[name] = (IpsetSpec(name, self.version, "net"), frozenset(m.nets))
        return ["-m", "set", *neg, "--match-set", name, flag]

    def rule_variants(self, rule: Rule) -> list[list[str]] | None:
        """Argument lists (their OR) for the matches, or None if not for this family."""
        args: list[str] = []
        positive_ports: list[list[str]] = []
        for m in rule.matches:
            if isinstance(m, Family | Addr | NamedPort | Icmp) and m.version != self.version:
                return None
            if isinstance(m, Family):
                continue
            if isinstance(m, Proto):
                if m.number == 58:
                    args += ["-p", "ipv6-icmp"]
                else:
                    args += ["-p", PROTOCOL_NAMES.get(m.number, str(m.number))]
            elif isinstance(m, Addr):
                a = self.addr(m)
                if a is not None:
                    args += a
            elif isinstance(m, Ports):
                flag = "--dports" if m.side == "dst" else "--sports"
                chunks = [m.ranges[i:i + 7] for i in range(0, len(m.ranges), 7)]
                texts = [",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in c)
                         for c in chunks]
                if m.negate:
                    for t in texts:
                        args += ["-m", "multiport", "!", flag, t]
                else:
                    positive_ports = [["-m", "multiport", flag, t] for t in texts]
            elif isinstance(m, NamedPort):
                flags = "dst,dst" if m.side == "dst" else "src,src"
                neg = ["!"] if m.negate else []
                args += ["-m", "set", *neg, "--match-set", set_name(m.set_name), flags]
            elif isinstance(m, Icmp):
                code = "" if m.code is None else f"/{m.code}"
                if m.version == 4:
                    args += ["-m", "icmp", "--icmp-type", f"{m.type}{code}"]
                else:
                    args += ["-m", "icmp6", "--icmpv6-type", f"{m.type}{code}"]
            elif isinstance(m, Marked):
                args += ["-m", "mark", "--mark", f"{m.bit:#x}/{m.bit:#x}"]
            else:
                raise TypeError(f"cannot render {m!r}")
        if positive_ports:
            return [args + p for p in positive_ports]
        return [args]

    def rule_lines(self, chain: str, rule: Rule) -> list[str]:
        variants = self.rule_variants(rule)
        if variants is None:
            return []
        # A counted rule's comment spells its counter (Counted.text): read_counters finds
        # the rule's packet counts by it.
        text = rule.counted.text if rule.counted is not None else rule.comment
        comment = ["-m", "comment", "--comment", _q(text[:200])] if text else []
        v = rule.verdict
        lines: list[str] = []
        for args in variants:
            head = ["-A", chain, *args, *comment]
            if v.kind in MARKING:
                bit = MARKING[v.kind]
                lines.append(" ".join([*head, "-j", "MARK", "--set-xmark", f"{bit:#x}/{bit:#x}"]))
                lines.append(" ".join(["-A", chain, "-m", "mark", "--mark", f"{bit:#x}/{bit:#x}",
                                       "-j", "RETURN"]))
            elif v.kind == "log":
                lines.append(" ".join([*head, "-j", "LOG", "--log-prefix", _q(v.target[:28])]))
            elif v.kind == "flowlog":
                lines.append(" ".join([
                    "-A", chain, *args, "-m", "limit", "--limit", f"{FLOWLOG_RATE}/sec",
                    "--limit-burst", str(FLOWLOG_BURST), "-j", "NFLOG", "--nflog-group",
                    str(FLOWLOG_GROUP), "--nflog-prefix", _q(v.target)]))
            elif v.kind == "count":  # no target: the rule only counts
                lines.append(" ".join(head))
            elif v.kind == "clear":
                lines.append(" ".join([*head, "-j", "MARK", "--set-xmark",
                                       f"0x0/{MARK_ENFORCED:#x}"]))
            elif v.kind == "jump":
                lines.append(" ".join([*head, "-j", chain_name(v.target)]))
            elif v.kind == "goto":
                lines.append(" ".join([*head, "-g", chain_name(v.target)]))
            elif v.kind in ("drop", "return", "accept"):
                lines.append(" ".join([*head, "-j", v.kind.upper()]))
            else:
                raise ValueError(f"unknown verdict {v.kind}")
        return lines


# chain name -> (the rules rendered, their lines, the extra ipsets they needed)
RenderCache = dict[str, tuple[tuple[Rule, ...], tuple[str, ...],
                              dict[str, tuple[IpsetSpec, frozenset[str]]]]]


def render_chains(rs: Ruleset, version: int, cache: RenderCache | None = None,
                  ) -> tuple[dict[str, tuple[str, ...]],
                             dict[str, tuple[IpsetSpec, frozenset[str]]]]:
    """Chain name -> rule lines (without the ``:chain`` header) for one family, and the
    extra ipsets the inline address lists needed. With ``cache``, a chain whose rules are
    the same object as last time is not rendered again (and its lines keep their identity,
    so the caller's diff can skip it)."""
    r = _Render(version)
    extra = r.extra_sets
    clear = f"-j MARK --set-xmark 0x0/{MARK_MASK:#x}"
    out: dict[str, tuple[str, ...]] = {
        FWD: (f"-A {FWD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
              f"-A {FWD} {clear}", f"-A {FWD} -i {PODS} -j {FROM_PODS}",
              f"-A {FWD} {clear}", f"-A {FWD} -o {PODS} -j {TO_PODS}"),
        INPUT: (f"-A {INPUT} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                f"-A {INPUT} {clear}", f"-A {INPUT} -i {PODS} -j {FROM_PODS}"),
        FROM_PODS: (*(f"-A {FROM_PODS} -i {i} -g {chain_name(c)}"
                      for i, c in sorted(rs.from_pod.items())), f"-A {FROM_PODS} -j DROP"),
        TO_PODS: (*(f"-A {TO_PODS} -o {i} -g {chain_name(c)}"
                    for i, c in sorted(rs.to_pod.items())), f"-A {TO_PODS} -j DROP"),
    }
    fresh: RenderCache = {}
    for name, rules in rs.chains.items():
        cn = chain_name(name)
        hit = cache.get(name) if cache is not None else None
        if hit is not None and hit[0] is rules:
            out[cn] = hit[1]
            extra.update(hit[2])
            fresh[name] = hit
            continue
        r.extra_sets = {}
        lines: list[str] = []
        for rule in rules:
            lines.extend(r.rule_lines(cn, rule))
        out[cn] = tuple(lines)
        extra.update(r.extra_sets)
        fresh[name] = (rules, out[cn], r.extra_sets)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    return out, extra


def _ipset_element(spec: IpsetSpec, e: Any) -> str:
    if spec.kind == "port":
        ip, proto, port = e
        return f"{ip},{PROTOCOL_NAMES.get(proto, str(proto))}:{port}"
    return str(e)


def _ipset_create(spec: IpsetSpec, name: str | None = None) -> str:
    typ = "hash:ip,port" if spec.kind == "port" else "hash:net"
    fam = "inet" if spec.version == 4 else "inet6"
    return f"create {name or spec.name} {typ} family {fam} -exist"


_SAVED_RULE = re.compile(r'^\[(\d+):(\d+)\] -A (\S+) .*?--comment (?:"([^"]*)"|(\S+))')

#: Counts by counter, per chain: what ``iptables-save -c`` shows of our counted rules.
ChainCounts = dict[str, dict[Counted, tuple[int, int]]]


def parse_saved_counters(text: str) -> ChainCounts:
    """The counted rules of ``iptables-save -c`` output, summed by chain and counter."""
    out: ChainCounts = {}
    for line in text.splitlines():
        m = _SAVED_RULE.match(line)
        if m is None or not m.group(3).startswith(PREFIX):
            continue
        counted = Counted.parse(m.group(4) if m.group(4) is not None else m.group(5))
        if counted is None:
            continue
        per = out.setdefault(m.group(3), {})
        p, b = per.get(counted, (0, 0))
        per[counted] = (p + int(m.group(1)), b + int(m.group(2)))
    return out


def _add_counts(into: dict[Counted, tuple[int, int]],
                counts: dict[Counted, tuple[int, int]]) -> None:
    for c, (p, b) in counts.items():
        p0, b0 = into.get(c, (0, 0))
        into[c] = (p0 + p, b0 + b)


_RENDERED_COMMENT = re.compile(r'--comment "([^"]*)"')
_LISTED_RULE = re.compile(r"^\s*(\d+)\s+(\d+)\s.*?/\* (.*?) \*/", re.M)


def _has_counted(lines: tuple[str, ...]) -> bool:
    """Whether any of our rendered rule lines is a counted rule."""
    for ln in lines:
        m = _RENDERED_COMMENT.search(ln)
        if m is not None and Counted.parse(m.group(1)) is not None:
            return True
    return False


@dataclass
class _State:
    chains: dict[int, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    sets: dict[str, IpsetSpec] = field(default_factory=dict)
    elements: dict[str, frozenset[str]] = field(default_factory=dict)


class IptablesBackend:
    def __init__(self, netns: str | None = None, run: Runner | None = None) -> None:
        self.netns = netns
        self.run = run or subprocess_runner(netns)
        self.programmed: _State | None = None
        self.last_commands = 0
        # Renderings of unchanged chains and element sets are reused (by object identity).
        self._chain_cache: dict[int, RenderCache] = {4: {}, 6: {}}
        self._elem_cache: dict[str, tuple[frozenset[Any], frozenset[str]]] = {}
        # Rewriting a chain zeroes its rules' counters: what they had counted is kept here
        # (read just before the rewrite), so the policy counters only ever rise.
        self._retired: dict[Counted, tuple[int, int]] = {}
        self._counters_lock = threading.Lock()

    def forget(self) -> None:
        self.programmed = None

    def _desired(self, rs: Ruleset) -> _State:
        st = _State()
        elem_cache: dict[str, tuple[frozenset[Any], frozenset[str]]] = {}
        for spec in rs.sets.values():
            ips = IpsetSpec(set_name(spec.name), spec.version, spec.kind)
            st.sets[ips.name] = ips
            src = rs.elements.get(spec.name, frozenset())
            hit = self._elem_cache.get(spec.name)
            if hit is None or hit[0] is not src:
                hit = (src, frozenset(_ipset_element(ips, e) for e in src))
            elem_cache[spec.name] = hit
            st.elements[ips.name] = hit[1]
        self._elem_cache = elem_cache
        for v in (4, 6):
            chains, extra = render_chains(rs, v, self._chain_cache[v])
            st.chains[v] = chains
            for name, (ips, elems) in extra.items():
                st.sets[name] = ips
                st.elements[name] = elems
        return st

    def _save(self, version: int) -> str:
        return self.run(["iptables-save" if version == 4 else "ip6tables-save",
                         "-c", "-t", "filter"], "")

    def _existing(self, version: int, text: str | None = None) -> tuple[set[str], bool, bool]:
        text = self._save(version) if text is None else text
        chains = {ln[1:].split()[0] for ln in text.splitlines()
                  if ln.startswith(":") and ln[1:].startswith(PREFIX)}
        return chains, f"-A FORWARD -j {FWD}" in text, f"-A INPUT -j {INPUT}" in text

    def _chain_counts(self, version: int, chain: str) -> dict[Counted, tuple[int, int]]:
        """The counted rules of one chain (``iptables -L CHAIN -v -x -n``: a few ms,
        where a save of the whole table takes hundreds at 1,000 policies)."""
        text = self.run(["iptables" if version == 4 else "ip6tables", "-t", "filter", "-L",
                         chain, "-v", "-x", "-n"], "")
        found: dict[Counted, tuple[int, int]] = {}
        for m in _LISTED_RULE.finditer(text):
            counted = Counted.parse(m.group(3))
            if counted is not None:
                _add_counts(found, {counted: (int(m.group(1)), int(m.group(2)))})
        return found

    def read_counters(self) -> dict[Counted, tuple[int, int]]:
        """Every policy counter: (packets, bytes) by what it counts, from the rules'
        counters (``iptables-save -c``, which changes nothing) plus what rewritten rules
        had counted before."""
        with self._counters_lock:
            found = dict(self._retired)
            for v in (4, 6):
                for counts in parse_saved_counters(self._save(v)).values():
                    _add_counts(found, counts)
        return found

    def apply(self, rs: Ruleset) -> int:
        want = self._desired(rs)
        old = self.programmed
        full = old is None
        existing_sets: set[str] = set()
        if full:
            out = self.run(["ipset", "list", "-n"], "")
            existing_sets = {n for n in out.split() if n.startswith(PREFIX)}
        # 1. ipsets: create and fill (swap on a full sync), before any rule uses them.
        pre: list[str] = []
        for name, spec in want.sets.items():
            elems = want.elements[name]
            if full:
                tmp = PREFIX + "tmp-" + hashlib.sha1(name.encode()).hexdigest()[:10]
                pre.append(_ipset_create(spec))
                pre.append(_ipset_create(spec, tmp))
                pre.append(f"flush {tmp}")
                pre.extend(f"add {tmp} {e} -exist" for e in sorted(elems))
                pre.append(f"swap {tmp} {name}")
                pre.append(f"destroy {tmp}")
                continue
            assert old is not None
            if name not in old.sets:
                pre.append(_ipset_create(spec))
            before = old.elements.get(name, frozenset())
            if before is elems:
                continue
            pre.extend(f"del {name} {e} -exist" for e in sorted(before - elems))
            pre.extend(f"add {name} {e} -exist" for e in sorted(elems - before))
        # 2. chains, per family, one restore each.
        restores: dict[int, str] = {}
        rewritten: dict[int, set[str]] = {}  # chains whose counters the restore zeroes
        for v in (4, 6):
            chains = want.chains[v]
            if full:
                present, fwd_hooked, in_hooked = self._existing(v)
                before_chains: dict[str, tuple[str, ...]] = {c: () for c in present}
                changed = set(chains)
            else:
                assert old is not None
                before_chains = old.chains[v]
                fwd_hooked = in_hooked = True
                changed = {c for c, lines in chains.items()
                           if before_chains.get(c) is not lines and before_chains.get(c) != lines}
            stale = sorted(set(before_chains) - set(chains))
            if not changed and not stale and fwd_hooked and in_hooked:
                continue
            rewritten[v] = {c for c in (changed & set(before_chains)) | set(stale)
                            if full or _has_counted(before_chains[c])}
            lines = ["*filter"]
            lines += [f":{c} - [0:0]" for c in sorted(changed | set(stale))]
            for c in sorted(changed):
                lines.extend(chains[c])
            if not fwd_hooked:
                lines.append(f"-I FORWARD 1 -j {FWD}")
            if not in_hooked:
                lines.append(f"-I INPUT 1 -j {INPUT}")
            lines += [f"-X {c}" for c in stale]
            lines.append("COMMIT")
            restores[v] = "\n".join(lines) + "\n"
        # 3. ipsets nothing references any more.
        post: list[str] = []
        gone = (existing_sets if full else set(old.sets if old else ())) - set(want.sets)
        post.extend(f"destroy {n}" for n in sorted(gone))
        if pre:
            self.run(["ipset", "restore"], "\n".join(pre) + "\n")
        for v, text in restores.items():
            with self._counters_lock:
                retiring: dict[Counted, tuple[int, int]] = {}
                if full and rewritten[v]:  # every chain: one save of the table
                    for chain, counts in parse_saved_counters(self._save(v)).items():
                        if chain in rewritten[v]:
                            _add_counts(retiring, counts)
                for chain in () if full else sorted(rewritten[v]):  # a few: one list each
                    _add_counts(retiring, self._chain_counts(v, chain))
                self.run(["iptables-restore" if v == 4 else "ip6tables-restore",
                          "--noflush"], text)
                _add_counts(self._retired, retiring)
        if post:
            self.run(["ipset", "restore"], "\n".join(post) + "\n")
        self.programmed = want
        self.last_commands = len(pre) + sum(t.count("\n") for t in restores.values()) + len(post)
        return self.last_commands

    def cleanup(self) -> None:
        """Remove our hooks, chains and ipsets. Missing state is fine."""
        for v in (4, 6):
            present, fwd_hooked, in_hooked = self._existing(v)
            lines = ["*filter"]
            if fwd_hooked:
                lines.append(f"-D FORWARD -j {FWD}")
            if in_hooked:
                lines.append(f"-D INPUT -j {INPUT}")
            lines += [f":{c} - [0:0]" for c in sorted(present)]
            lines += [f"-X {c}" for c in sorted(present)]
            lines.append("COMMIT")
            if len(lines) > 2:
                self.run(["iptables-restore" if v == 4 else "ip6tables-restore", "--noflush"],
                         "\n".join(lines) + "\n")
        out = self.run(["ipset", "list", "-n"], "")
        names = [n for n in out.split() if n.startswith(PREFIX)]
        if names:
            self.run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in names))
        self.programmed = None
