"""bgp.rib.ImportTable: filter, bounded storage (pools, max-prefix), ECMP, withdraw, peer
down, graceful restart, refresh sweep."""

from __future__ import annotations

import logging

import pytest

from bgp.rib import DEFAULT_MAX_PREFIXES, ImportTable, Path


def table() -> ImportTable:
    t = ImportTable()
    t.set_filter(["10.244.0.0/16"], ["10.244.1.0/26"], ["10.244.7.9/32"])
    return t


def test_filter_pools_own_blocks_and_own_addresses() -> None:
    t = table()
    assert t.accepts("10.244.2.0/26")
    assert t.accepts("10.244.1.5/32"), "another node's borrowed address in our block"
    assert not t.accepts("10.244.1.0/26")
    assert not t.accepts("10.244.1.0/27")
    assert not t.accepts("10.244.7.9/32")
    assert not t.accepts("192.168.0.0/24")
    assert not t.accepts("10.0.0.0/8")  # wider than the pool: not inside it
    for p in ("10.244.2.0/26", "10.244.1.0/26", "192.168.0.0/24", "10.244.1.5/32"):
        t.announce("a", p, Path("10.0.0.2"))
    assert t.table() == {"10.244.2.0/26": ("10.0.0.2",), "10.244.1.5/32": ("10.0.0.2",)}
    # The out-of-pool path is not even stored; our own block is (blocks move).
    assert t.received("a") == 4 and t.stored("a") == 3 and t.accepted("a") == 2
    assert "192.168.0.0/24" not in t.paths("a")
    # A new pool: the filter says so (the speaker asks for a refresh), the path comes again.
    assert t.set_filter(["10.244.0.0/16", "192.168.0.0/16"], ["10.244.1.0/26"])
    assert not t.set_filter(["10.244.0.0/16", "192.168.0.0/16"], ["10.244.1.0/26"])
    t.announce("a", "192.168.0.0/24", Path("10.0.0.2"))
    assert "192.168.0.0/24" in t.table()
    # A pool removed: its paths are dropped from storage, not only from the table.
    assert not t.set_filter(["10.244.0.0/16"], ["10.244.1.0/26"])
    assert "192.168.0.0/24" not in t.paths("a") and t.stored("a") == 3


def test_pool_itself_is_inside_a_supernet_is_not_stored() -> None:
    t = table()
    t.announce("a", "10.244.0.0/16", Path("10.0.0.2"))  # the pool's own CIDR: inside
    t.announce("a", "10.244.0.0/15", Path("10.0.0.2"))  # a supernet of the pool
    t.announce("a", "10.0.0.0/8", Path("10.0.0.2"))
    t.announce("a", "0.0.0.0/0", Path("10.0.0.2"))
    assert t.table() == {"10.244.0.0/16": ("10.0.0.2",)}
    assert t.paths("a").keys() == {"10.244.0.0/16"}


def test_max_prefixes_per_peer_drops_new_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    t = ImportTable(max_prefixes=3)
    t.set_filter(["10.244.0.0/16"], [])
    prefixes = [f"10.244.{i}.0/26" for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="bgp.rib"):
        stored = [t.announce("a", p, Path("10.0.0.2")) for p in prefixes]
        t.announce("b", prefixes[5], Path("10.0.0.3"))  # another peer has its own budget
    assert stored == [True, True, True, False, False, False]
    assert t.stored("a") == 3 and t.dropped("a") == 3 and t.limited("a")
    assert not t.limited("b") and t.dropped("b") == 0
    assert sorted(t.table()) == sorted([*prefixes[:3], prefixes[5]])
    assert [r.message for r in caplog.records].count(
        "peer a reached the limit of 3 prefixes: new prefixes from it are dropped "
        "(first: 10.244.3.0/26)") == 1
    assert len(caplog.records) == 1
    # A path already held is still updated at the limit (a new next hop is no new prefix).
    assert t.announce("a", prefixes[0], Path("10.0.0.9"))
    assert t.table()[prefixes[0]] == ("10.0.0.9",)
    # Out-of-pool announcements do not count against the limit, nor as dropped.
    assert not t.announce("a", "192.168.0.0/24", Path("10.0.0.2")) and t.dropped("a") == 3
    # A withdraw makes room for a new prefix again.
    t.withdraw("a", prefixes[1])
    assert t.announce("a", prefixes[4], Path("10.0.0.2")) and t.stored("a") == 3


def test_ecmp_shortest_as_path_and_withdraw() -> None:
    t = table()
    t.announce("a", "10.244.2.0/26", Path("10.0.0.2", (65000,)))
    t.announce("b", "10.244.2.0/26", Path("10.0.0.3", (65000,)))
    t.announce("c", "10.244.2.0/26", Path("10.0.0.4", (65000, 65001)))
    assert t.table() == {"10.244.2.0/26": ("10.0.0.2", "10.0.0.3")}
    t.withdraw("a", "10.244.2.0/26")
    assert t.table() == {"10.244.2.0/26": ("10.0.0.3",)}
    t.peer_down("b")
    assert t.table() == {"10.244.2.0/26": ("10.0.0.4",)}
    t.withdraw("c", "10.244.2.0/26")
    t.withdraw("zz", "10.244.2.0/26")  # unknown peer: no effect
    assert t.table() == {}


def test_graceful_restart_keeps_then_sweeps_at_eor() -> None:
    t = table()
    t.announce("a", "10.244.2.0/26", Path("10.0.0.2"))
    t.announce("a", "10.244.3.0/26", Path("10.0.0.2"))
    t.peer_down("a", restart_time=30, now=100)
    assert len(t.table()) == 2 and t.next_deadline() == 130
    t.announce("a", "10.244.2.0/26", Path("10.0.0.2"))  # re-sent after the restart
    assert t.sweep("a") == 1
    assert t.table() == {"10.244.2.0/26": ("10.0.0.2",)}
    assert t.next_deadline() is None


def test_graceful_restart_expires() -> None:
    t = table()
    t.announce("a", "10.244.2.0/26", Path("10.0.0.2"))
    t.peer_down("a", restart_time=30, now=100)
    assert not t.expire(129.9) and t.table()
    assert t.expire(130) and t.table() == {}


def test_refresh_marks_stale_and_end_sweeps() -> None:
    t = table()
    t.announce("a", "10.244.2.0/26", Path("10.0.0.2"))
    t.announce("a", "10.244.3.0/26", Path("10.0.0.2"))
    t.mark_stale("a")
    t.announce("a", "10.244.3.0/26", Path("10.0.0.2"))
    t.sweep("a")
    assert t.table() == {"10.244.3.0/26": ("10.0.0.2",)}


def test_default_limit_is_ten_thousand() -> None:
    t = ImportTable()
    t.set_filter(["10.0.0.0/8"], [])
    assert t.max_prefixes == DEFAULT_MAX_PREFIXES == 10_000
    for i in range(10_050):
        t.announce("a", f"10.{i >> 8}.{i & 255}.0/24", Path("10.0.0.2"))
    assert t.stored("a") == 10_000 and t.dropped("a") == 50 and len(t.table()) == 10_000


def pool_table(max_prefixes: int = DEFAULT_MAX_PREFIXES) -> ImportTable:
    t = ImportTable(max_prefixes)
    t.set_filter(["10.244.0.0/16"], [])
    return t


def nets(n: int, third: int = 0) -> list[str]:
    return [f"10.244.{third}.{i}/32" for i in range(n)]


def test_each_peer_has_its_own_limit() -> None:
    t = pool_table(max_prefixes=4)
    t.set_limit("a", 2)
    t.set_limit("b", 3)
    for peer, third in (("a", 1), ("b", 2), ("c", 3)):
        for p in nets(6, third):
            t.announce(peer, p, Path("10.0.0.2"))
    assert (t.limit("a"), t.limit("b"), t.limit("c")) == (2, 3, 4)  # c: the table's
    assert (t.stored("a"), t.stored("b"), t.stored("c")) == (2, 3, 4)
    assert (t.dropped("a"), t.dropped("b"), t.dropped("c")) == (4, 3, 2)
    assert len(t.table()) == 9
    # None: back to the table's limit (here a raise, 3 -> 4, of a peer that had prefixes
    # refused); forgetting a peer forgets its limit.
    assert t.set_limit("b", None) and t.limit("b") == 4
    t.set_limit("a", 5)
    t.forget("a")
    assert t.limit("a") == 4 and t.stored("a") == 0


def test_raised_limit_takes_new_prefixes_and_asks_for_a_refresh(
        caplog: pytest.LogCaptureFixture) -> None:
    t = pool_table()
    t.set_limit("a", 3)
    with caplog.at_level(logging.WARNING, logger="bgp.rib"):
        for p in nets(5):
            t.announce("a", p, Path("10.0.0.2"))
    assert t.stored("a") == 3 and t.limited("a") and t.dropped("a") == 2
    # Raised for a peer that had prefixes refused: True (the speaker asks it for a route
    # refresh); the "reached" mark goes, the dropped count stays.
    assert t.set_limit("a", 5)
    assert not t.limited("a") and t.dropped("a") == 2 and t.stored("a") == 3
    # The next announcements are stored up to the new limit (what a refresh re-sends).
    assert [t.announce("a", p, Path("10.0.0.2")) for p in nets(6)] == [True] * 5 + [False]
    assert t.stored("a") == 5 and t.limited("a") and len(t.table()) == 5
    # Unchanged: nothing to do; raised after a hit: refresh; raised with nothing refused
    # under the current limit: no refresh.
    assert not t.set_limit("a", 5)
    assert t.set_limit("a", 6)
    assert not t.set_limit("a", 10), "nothing refused under 6 yet: no refresh needed"
    # Each limit that is hit is logged once, naming it.
    t.announce("b", "10.244.9.0/26", Path("10.0.0.3"))
    messages = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split(":")[0] for m in messages] == [
        "peer a reached the limit of 3 prefixes", "peer a reached the limit of 5 prefixes"]


def test_lowered_limit_keeps_what_is_held_and_refuses_new() -> None:
    t = pool_table()
    for p in nets(10):
        t.announce("a", p, Path("10.0.0.2"))
    assert t.stored("a") == 10 and not t.over_limit("a")
    assert not t.set_limit("a", 4), "lowering asks for nothing"
    # Nothing held is removed; the table (what the kernel gets) is unchanged.
    assert t.stored("a") == 10 and len(t.table()) == 10 and t.over_limit("a")
    assert not t.announce("a", "10.244.5.0/26", Path("10.0.0.2"))
    assert t.limited("a") and t.dropped("a") == 1
    # Paths already held are still updated (a refresh re-sending them keeps them).
    t.mark_stale("a")
    assert all(t.announce("a", p, Path("10.0.0.9")) for p in nets(10))
    assert t.sweep("a") == 0 and set(t.table().values()) == {("10.0.0.9",)}
    # Withdrawals bring it under the limit; only then is a new prefix stored again.
    for p in nets(7):
        t.withdraw("a", p)
    assert t.stored("a") == 3 and not t.over_limit("a")
    assert t.announce("a", "10.244.5.0/26", Path("10.0.0.2"))
    assert not t.announce("a", "10.244.6.0/26", Path("10.0.0.2")) and t.stored("a") == 4


def test_limit_outlives_a_session_reset_and_applies_to_the_new_session() -> None:
    t = pool_table()
    t.set_limit("a", 2)
    for p in nets(4):
        t.announce("a", p, Path("10.0.0.2"))
    t.peer_down("a")  # no graceful restart: its paths go, its limit stays
    assert t.stored("a") == 0 and t.limit("a") == 2
    for p in nets(4, 1):
        t.announce("a", p, Path("10.0.0.2"))
    assert t.stored("a") == 2


def test_refresh_and_end_of_rib_of_one_family_leave_the_other_alone() -> None:
    """A refresh asks for one family at a time: IPv6's Begin and End of RIB must neither
    mark nor sweep the peer's IPv4 paths (and a sweep of every family still works)."""
    t = ImportTable()
    t.set_filter(["10.244.0.0/16", "fd44::/48"], [], [])
    t.announce("a", "10.244.2.0/26", Path("10.0.0.2"))
    t.announce("a", "fd44::/122", Path("fd99::2"))
    t.announce("a", "fd44::40/122", Path("fd99::2"))
    t.mark_stale("a", version=6)
    t.announce("a", "fd44::40/122", Path("fd99::2"))  # re-sent; fd44::/122 was withdrawn
    assert t.sweep("a", 4) == 0  # IPv4's End-of-RIB: nothing of IPv4 was stale
    assert set(t.table()) == {"10.244.2.0/26", "fd44::/122", "fd44::40/122"}
    assert t.sweep("a", 6) == 1
    assert set(t.table()) == {"10.244.2.0/26", "fd44::40/122"}
    t.mark_stale("a")
    assert t.sweep("a") == 2 and t.table() == {}
