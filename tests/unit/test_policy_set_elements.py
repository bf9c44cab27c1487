"""Set membership reaches the kernel element by element, and ends where a full converge would.

Any sequence of set contents (sets coming and going, elements added and removed, unchanged
sets kept as the same object, as the incremental calculation keeps them), applied through
each backend against a fake kernel that interprets what it is sent (nft's JSON, ``ipset
restore`` lines): after every apply the kernel's sets equal what a full converge of the
same ruleset leaves on an empty kernel, a set that existed before and after is never
flushed or swapped, and it gets exactly one element command per element that changed.
The fake nft refuses what the kernel refuses (deleting an element that is not there,
adding to a set that does not exist), in one all-or-nothing transaction.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from felix_like.policy.iptables import IptablesBackend
from felix_like.policy.nft import NftBackend
from felix_like.policy.program import Ruleset, SetSpec

SPECS = {"s-net4": SetSpec("s-net4", 4, "net", "app == 'a'"),
         "s-port4": SetSpec("s-port4", 4, "port", "role == 'r'"),
         "s-net6": SetSpec("s-net6", 6, "net", "app == 'b'")}


def universe(spec: SetSpec) -> list[Any]:
    if spec.kind == "port":
        return [(f"10.0.0.{i}", 6, port) for i in range(4) for port in (80, 443)]
    if spec.version == 6:
        return [f"fd00::{i}/128" for i in range(8)]
    return [f"10.0.0.{i}/32" for i in range(6)] + ["10.0.1.0/28"]


# One step per set: None (the set goes away), "same" (the object of the last step), or
# the indexes into its universe of its new elements.
step_st = st.fixed_dictionaries({name: st.one_of(
    st.none(), st.just("same"), st.sets(st.integers(0, 7), max_size=8)) for name in SPECS})


def rulesets(steps: Sequence[dict[str, Any]]) -> list[Ruleset]:
    out: list[Ruleset] = []
    last: dict[str, frozenset[Any]] = {}
    for step in steps:
        elements: dict[str, frozenset[Any]] = {}
        for name, what in step.items():
            if what is None or (what == "same" and name not in last):
                continue
            if what == "same":
                elements[name] = last[name]
            else:
                u = universe(SPECS[name])
                elements[name] = frozenset(u[i] for i in what if i < len(u))
        last = elements
        out.append(Ruleset(sets={n: SPECS[n] for n in elements}, elements=dict(elements)))
    return out


class FakeNft:
    """The sets of table ``inet l3fabric`` as nft JSON commands leave them."""

    def __init__(self) -> None:
        self.sets: dict[str, set[str]] = {}
        self.types: dict[str, list[str]] = {}
        self.sent: list[list[dict[str, Any]]] = []

    def __call__(self, doc: dict[str, Any]) -> tuple[int, Any, str]:
        cmds = doc["nftables"]
        if len(cmds) == 1 and "list" in cmds[0]:
            return 0, {"nftables": [{"set": {"name": n, "type": t}}
                                    for n, t in self.types.items()]}, ""
        self.sent.append(cmds)
        sets, types = copy.deepcopy(self.sets), dict(self.types)
        for cmd in cmds:
            (verb, body), = cmd.items()
            (kind, obj), = body.items()
            name = obj.get("name")
            if kind == "set":
                if verb == "add" and name not in sets:
                    sets[name], types[name] = set(), obj["type"]
                elif verb == "flush":
                    sets[name].clear()
                elif verb == "delete":
                    if name not in sets:
                        return 1, None, f"Error: no such set {name}"
                    del sets[name], types[name]
            elif kind == "element" and name in SPECS:
                if name not in sets:
                    return 1, None, f"Error: no such set {name}"
                for e in obj["elem"]:
                    key = json.dumps(e, sort_keys=True)
                    if verb == "delete":
                        if key not in sets[name]:
                            return 1, None, f"Error: no such element in {name}"
                        sets[name].discard(key)
                    else:
                        sets[name].add(key)
        self.sets, self.types = sets, types
        return 0, None, ""

    def element_commands(self, cmds: list[dict[str, Any]], name: str) -> int:
        """Elements added to or deleted from ``name`` by ``cmds``."""
        n = 0
        for cmd in cmds:
            ((_, body),) = cmd.items()
            (kind, obj), = body.items()
            if kind == "element" and obj.get("name") == name:
                n += len(obj["elem"])
        return n

    def rewrote(self, cmds: list[dict[str, Any]], name: str) -> bool:
        return any(kind == "set" and verb in ("flush", "delete") and obj.get("name") == name
                   for cmd in cmds for verb, body in cmd.items() for kind, obj in body.items())


class FakeIpset:
    """Our ipsets as ``ipset restore`` lines leave them; iptables itself is not modelled."""

    def __init__(self) -> None:
        self.sets: dict[str, set[str]] = {}
        self.sent: list[list[str]] = []

    def __call__(self, argv: Sequence[str], stdin: str) -> str:
        if list(argv[:2]) == ["ipset", "list"]:
            return "\n".join(self.sets)
        if list(argv[:2]) != ["ipset", "restore"]:
            return ""  # iptables-save, iptables-restore: chains are not what this tests
        lines = stdin.splitlines()
        self.sent.append(lines)
        for line in lines:
            verb, name, *rest = line.split()
            if verb == "create":
                self.sets.setdefault(name, set())
            elif verb == "flush":
                self.sets[name].clear()
            elif verb == "add":
                self.sets[name].add(rest[0])
            elif verb == "del":
                self.sets[name].discard(rest[0])
            elif verb == "swap":
                self.sets[name], self.sets[rest[0]] = self.sets[rest[0]], self.sets[name]
            elif verb == "destroy":
                del self.sets[name]
        return ""


def full_nft(rs: Ruleset) -> dict[str, set[str]]:
    fake = FakeNft()
    NftBackend(nft=fake).apply(rs)
    return fake.sets


def full_ipset(rs: Ruleset) -> dict[str, set[str]]:
    fake = FakeIpset()
    IptablesBackend(run=fake).apply(rs)
    return fake.sets


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step_st, min_size=1, max_size=12))
def test_nft_sets_change_element_by_element_and_end_as_a_full_converge(
        steps: list[dict[str, Any]]) -> None:
    fake = FakeNft()
    backend = NftBackend(nft=fake)
    before = Ruleset()
    for i, rs in enumerate(rulesets(steps)):
        backend.apply(rs)  # NftError if the kernel would have refused the transaction
        assert fake.sets == full_nft(rs)
        if i == 0:
            before = rs
            continue
        cmds = fake.sent[-1] if fake.sent and backend.last_commands else []
        for name, new in rs.elements.items():
            if name not in before.elements:
                continue
            old = before.elements[name]
            assert not fake.rewrote(cmds, name)
            assert fake.element_commands(cmds, name) == len(old ^ new)
        before = rs


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step_st, min_size=1, max_size=12))
def test_ipsets_change_element_by_element_and_end_as_a_full_converge(
        steps: list[dict[str, Any]]) -> None:
    fake = FakeIpset()
    backend = IptablesBackend(run=fake)
    before = Ruleset()
    for i, rs in enumerate(rulesets(steps)):
        sent = len(fake.sent)
        backend.apply(rs)
        assert fake.sets == full_ipset(rs)
        if i > 0:
            lines = [ln for batch in fake.sent[sent:] for ln in batch]
            changed = sum(len(before.elements[n] ^ rs.elements[n])
                          for n in rs.elements if n in before.elements)
            created = sum(len(rs.elements[n]) for n in rs.elements if n not in before.elements)
            assert sum(ln.split()[0] in ("add", "del") for ln in lines) == changed + created
            assert not any(ln.split()[0] in ("flush", "swap") for ln in lines)
        before = rs


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step_st, min_size=2, max_size=6))
def test_a_full_converge_over_a_programmed_table_ends_as_on_an_empty_one(
        steps: list[dict[str, Any]]) -> None:
    """The periodic resync's converge (`forget`, then apply) over sets the kernel already
    holds: the same sets as a converge on an empty kernel, each set made again (deleted
    and added) rather than flushed and refilled, which is 20 times slower for a large
    interval set."""
    fake = FakeNft()
    backend = NftBackend(nft=fake)
    rss = rulesets(steps)
    for rs in rss[:-1]:
        backend.apply(rs)
    held = set(fake.sets)
    backend.forget()
    backend.apply(rss[-1])
    assert fake.sets == full_nft(rss[-1])
    last = fake.sent[-1]
    assert not any(verb == "flush" and kind == "set"
                   for cmd in last for verb, body in cmd.items() for kind in body)
    for name in held & set(rss[-1].sets):
        assert {"delete": {"set": {"family": "inet", "table": "l3fabric", "name": name}}} \
            in last
