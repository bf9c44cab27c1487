"""The nftables backend's full converge over a table the kernel already holds (the
periodic resync): the kernel's sets end exactly as the ruleset says, stale elements gone,
sets no longer wanted deleted, whatever was there before."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from felix_like.policy.nft import NftBackend
from felix_like.policy.program import Ruleset, SetSpec


def _ruleset(sets: dict[str, list[str]]) -> Ruleset:
    specs = {n: SetSpec(n, 6 if ":" in "".join(e) else 4, "net", n) for n, e in sets.items()}
    return Ruleset(sets=specs, elements={n: frozenset(e) for n, e in sets.items()})


def _kernel_sets(ns: str) -> dict[str, set[str]]:
    out = json.loads(subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "l3fabric"],
        capture_output=True, text=True, check=True).stdout)
    found: dict[str, set[str]] = {}
    for obj in out["nftables"]:
        s = obj.get("set")
        if s is None or not s["name"].startswith("t-"):
            continue
        elems: set[str] = set()
        for e in s.get("elem", ()):
            addr = e["concat"][0]
            elems.add(f"{addr['prefix']['addr']}/{addr['prefix']['len']}"
                      if isinstance(addr, dict) else f"{addr}/{32 if '.' in addr else 128}")
        found[s["name"]] = elems
    return found


def test_a_full_converge_over_a_programmed_table_leaves_exactly_the_ruleset(
        netns: Callable[[str], str]) -> None:
    ns = netns("nftc")
    before = {"t-a": [f"10.1.{i // 250}.{i % 250}/32" for i in range(3000)],
              "t-b": ["10.2.0.0/24", "10.3.0.1/32"], "t-gone": ["10.9.0.1/32"],
              "t-v6": ["fd00::1/128", "fd00::2/128"]}
    after = {"t-a": [f"10.1.{i // 250}.{i % 250}/32" for i in range(1000, 4000)],
             "t-b": ["10.3.0.1/32"], "t-v6": ["fd00::2/128"], "t-new": ["10.4.0.0/16"]}
    first = NftBackend(ns)
    first.apply(_ruleset(before))
    assert _kernel_sets(ns) == {n: set(e) for n, e in before.items()}
    # A new agent process (or the periodic resync): nothing known of what the kernel holds.
    again = NftBackend(ns)
    again.apply(_ruleset(after))
    assert _kernel_sets(ns) == {n: set(e) for n, e in after.items()}
    again.forget()
    again.apply(_ruleset(after))  # the same ruleset again: the same kernel state
    assert _kernel_sets(ns) == {n: set(e) for n, e in after.items()}
