"""The nftables backend's rule counts read over netlink, on the real kernel in a namespace
made here: the same counts as libnftables' listing of the table, and the totals keep
rising through a chain rewrite whether the netlink read works or falls back to
libnftables. Counted rules with counts of their own are added with ``nft`` (``counter
packets N bytes M``): no traffic needed, and none can move them."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable

import pytest

from felix_like.policy import nft_counters
from felix_like.policy.nft import NftBackend, parse_counters
from felix_like.policy.nft_counters import Nftnl
from felix_like.policy.program import Counted, Proto, Rule, Ruleset, Verdict

ALLOW = Counted("np", "shop", "db", "ingress", 0, "allow")
DENY = Counted("default-deny", "shop", "", "ingress", None, "deny")


def _ruleset(port_proto: int) -> Ruleset:
    return Ruleset(chains={
        "pi-a": (Rule((Proto(port_proto),), Verdict("allow"), counted=ALLOW),
                 Rule((), Verdict("drop"), counted=DENY)),
        "pi-b": (Rule((), Verdict("return"), comment="not a counter"),),
    })


def _nft(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True,
                          text=True, check=True).stdout


def _add_counted(ns: str, chain: str, c: Counted, *counters: tuple[int, int]) -> None:
    counts = " ".join(f"counter packets {p} bytes {b}" for p, b in counters)
    _nft(ns, f'add rule inet l3fabric {chain} {counts} comment "{c.text}"')


def test_counts_read_over_netlink_are_what_the_listing_shows(
        netns: Callable[[str], str]) -> None:
    ns = netns("nftcnt")
    backend = NftBackend(ns)
    backend.apply(_ruleset(6))
    _add_counted(ns, "pi-a", ALLOW, (7, 420))
    _add_counted(ns, "pi-b", DENY, (3, 120), (1, 2))
    _add_counted(ns, "pi-b", ALLOW, (2**33, 2**40))
    listed = parse_counters(json.loads(_nft(ns, "-j", "list", "table", "inet", "l3fabric")))
    assert listed == {"pi-a": {ALLOW: (7, 420), DENY: (0, 0)},
                      "pi-b": {DENY: (4, 122), ALLOW: (2**33, 2**40)}}
    with Nftnl.open(ns) as reader:
        assert reader.counts(None) == listed
        assert reader.counts("pi-b") == {"pi-b": listed["pi-b"]}
        assert reader.counts("pi-none") == {}
    assert backend.read_counters() == {ALLOW: (7 + 2**33, 420 + 2**40), DENY: (4, 122)}


@pytest.fixture(params=[True, False], ids=["netlink", "fallback"])
def netlink_works(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether the netlink read works; when not, the backend lists with libnftables."""
    if not request.param:
        def refuse(self: Nftnl, chain: str | None = None) -> None:
            raise OSError(93, "Protocol not supported")
        monkeypatch.setattr(nft_counters.Nftnl, "counts", refuse)
    return bool(request.param)


def test_a_chain_rewrite_keeps_the_totals_rising(
        netns: Callable[[str], str], caplog: pytest.LogCaptureFixture,
        netlink_works: bool) -> None:
    ns = netns("nftcnt")
    backend = NftBackend(ns)
    backend.apply(_ruleset(6))
    _add_counted(ns, "pi-a", ALLOW, (7, 420))
    _add_counted(ns, "pi-a", DENY, (2, 80))
    assert backend.read_counters() == {ALLOW: (7, 420), DENY: (2, 80)}
    with caplog.at_level(logging.WARNING, logger="felix_like.policy.nft"):
        backend.apply(_ruleset(17))  # pi-a changes: flushed and refilled
        assert _nft(ns, "list", "chain", "inet", "l3fabric", "pi-a").count("counter") == 2
        assert backend.read_counters() == {ALLOW: (7, 420), DENY: (2, 80)}
        _add_counted(ns, "pi-a", ALLOW, (1, 60))
        backend.apply(_ruleset(6))
        assert backend.read_counters() == {ALLOW: (8, 480), DENY: (2, 80)}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (0 if netlink_works else 1)  # logged once, not per apply


def test_a_rewrite_of_many_chains_keeps_the_counts_of_those_it_does_not_touch(
        netns: Callable[[str], str], netlink_works: bool) -> None:
    """More than 8 chains rewritten at once are read in one read of the table: only
    theirs are kept, the untouched chain's counts stay in the kernel, counted once."""
    ns = netns("nftcnt")
    many = [Counted("np", "shop", f"p{i}", "ingress", 0, "allow") for i in range(10)]

    def ruleset(proto: int) -> Ruleset:
        chains = {f"pi-{i}": (Rule((Proto(proto),), Verdict("allow"), counted=c),)
                  for i, c in enumerate(many)}
        return Ruleset(chains={**chains, **_ruleset(6).chains})

    backend = NftBackend(ns)
    backend.apply(ruleset(6))
    for i, c in enumerate(many):
        _add_counted(ns, f"pi-{i}", c, (i + 1, 100))
    _add_counted(ns, "pi-a", ALLOW, (7, 420))
    want = {**{c: (i + 1, 100) for i, c in enumerate(many)}, ALLOW: (7, 420), DENY: (0, 0)}
    assert backend.read_counters() == want
    backend.apply(ruleset(17))  # every pi-N changes, pi-a does not
    assert backend.read_counters() == want
