"""bgp.rib.ImportTable: filter, ECMP, withdraw, peer down, graceful restart, refresh sweep."""

from __future__ import annotations

from bgp.rib import ImportTable, Path


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
    assert t.received("a") == 4 and t.accepted("a") == 2
    # A new pool makes a kept path installable without a refresh.
    t.set_filter(["10.244.0.0/16", "192.168.0.0/16"], ["10.244.1.0/26"])
    assert "192.168.0.0/24" in t.table()


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
