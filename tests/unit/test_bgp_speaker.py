"""bgp.speaker.BgpSpeaker without ExaBGP: what it writes to the relay when a session comes
up (End-of-RIB after the exports, manual-eor), the peer status of a peer at its
max-prefix limit, and a per-peer limit changed at run time (applied without a reload,
a raise asks the peer for a route refresh, shown in the status and the metrics). The
relay connection is a fake writer that records the lines."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bgp.config import NeighborSpec
from bgp.controller import BgpController
from bgp.exabgp import RELOADS_BEFORE_RESTART
from bgp.speaker import BgpSpeaker, _PeerState
from felix_like.metrics import Metrics

PEER = "10.99.1.2"


class Lines:
    """ExaBGP's commands in ``sent``; the relay's own (``relay filter``) in ``relay``."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.relay: list[str] = []

    def write(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            (self.relay if line.startswith("relay ") else self.sent).append(line)

    async def drain(self) -> None:
        pass


def speaker(tmp_path: Path, **kw: Any) -> tuple[BgpSpeaker, Lines]:
    sp = BgpSpeaker("n1", netns=None, socket_path=str(tmp_path / "s.sock"), workdir=tmp_path,
                    exabgp_bin="/nonexistent", **kw)
    sp.neighbors = {PEER: NeighborSpec(PEER, 65000, 65001, "10.99.1.1", "10.99.1.1", "node")}
    sp.peers = {PEER: _PeerState(0)}
    sp.set_filter(["10.244.0.0/16"], ["10.244.1.0/26"])
    w = Lines()
    sp._writer = w  # type: ignore[assignment]
    return sp, w


def event(**nb: Any) -> bytes:
    return json.dumps({"type": nb.pop("type", "state"), "neighbor": {
        "address": {"local": "10.99.1.1", "peer": PEER}, **nb}}).encode()


def test_end_of_rib_is_sent_when_the_session_comes_up(tmp_path: Path) -> None:
    sp, w = speaker(tmp_path)
    asyncio.run(sp.set_exports({"10.244.1.0/26"}))
    assert w.sent == ["announce route 10.244.1.0/26 next-hop self"]
    sp.on_relay_line(event(state="up"))
    # The exports again (a neighbour configured after they went out has none of them;
    # one that has them drops the repeat), then the End-of-RIB.
    assert w.sent[1:] == ["announce route 10.244.1.0/26 next-hop self",
                          f"neighbor {PEER} announce eor ipv4 unicast"]
    assert sp.peer_status()[0]["state"] == "Established"
    sp.on_relay_line(event(state="down"))
    assert len(w.sent) == 3


def test_exports_wait_for_a_neighbour_and_reach_it_when_it_comes_up(tmp_path: Path) -> None:
    """The first node of a cluster claims its block before it has any BGP neighbour:
    ExaBGP would reject the announcement (and forget it), so nothing is sent; the block
    goes out when the neighbour added later comes up."""
    sp, w = speaker(tmp_path)
    sp.neighbors, sp.peers = {}, {}
    asyncio.run(sp.set_exports({"10.244.1.0/26", "10.244.9.7/32"}))
    sp.set_filter(["10.244.0.0/16", "10.245.0.0/16"], ["10.244.1.0/26"])
    assert w.sent == []
    assert set(sp.announced) == {"10.244.1.0/26", "10.244.9.7/32"}
    sp.neighbors = {PEER: NeighborSpec(PEER, 65000, 65001, "10.99.1.1", "10.99.1.1", "node")}
    sp.peers = {PEER: _PeerState(0)}
    sp.on_relay_line(event(state="up"))
    assert w.sent == ["announce route 10.244.1.0/26 next-hop self",
                      "announce route 10.244.9.7/32 next-hop self",
                      f"neighbor {PEER} announce eor ipv4 unicast"]


def test_a_rejected_command_is_named_in_the_log(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    sp, _ = speaker(tmp_path)
    asyncio.run(sp.set_exports({"10.244.1.0/26", "10.244.2.0/26"}))
    with caplog.at_level(logging.WARNING, logger="bgp.speaker"):
        sp.on_relay_line(b"done\n")
        sp.on_relay_line(b"error\n")
    assert "'announce route 10.244.2.0/26 next-hop self'" in caplog.text
    assert "10.244.1.0/26" not in caplog.text


def test_peer_at_max_prefix_shows_it(tmp_path: Path) -> None:
    sp, _ = speaker(tmp_path, max_prefixes=2)
    sp.on_relay_line(event(state="up"))
    nlri = [{"nlri": f"10.244.{i}.0/26"} for i in range(2, 7)]
    sp.on_relay_line(event(type="update", message={"update": {
        "attribute": {"as-path": {"0": {"value": [65000]}}},
        "announce": {"ipv4 unicast": {PEER: nlri}}}}))
    row = sp.peer_status()[0]
    assert row["prefixesIn"] == 2
    assert row["info"] == "max-prefix 2 reached: 3 announcements dropped"
    assert sp.prefixes_dropped() == {PEER: 3}


def announce(sp: BgpSpeaker, prefixes: list[str]) -> None:
    sp.on_relay_line(event(type="update", message={"update": {
        "attribute": {"as-path": {"0": {"value": [65000]}}},
        "announce": {"ipv4 unicast": {PEER: [{"nlri": p} for p in prefixes]}}}}))


def test_limit_change_applies_without_reload_and_a_raise_refreshes(tmp_path: Path) -> None:
    sp, w = speaker(tmp_path)
    base = sp.neighbors[PEER]
    assert asyncio.run(sp.set_neighbors({PEER: dataclasses.replace(base, max_prefixes=3)}))
    text = sp.exabgp.conf_path.read_text()
    sp.on_relay_line(event(state="up"))
    announce(sp, [f"10.244.{i}.0/26" for i in range(2, 8)])
    row = sp.peer_status()[0]
    assert (row["prefixesIn"], row["maxPrefixes"]) == (3, 3)
    assert row["info"] == "max-prefix 3 reached: 3 announcements dropped"
    # Raised: ExaBGP's configuration is the same text (no reload, no session reset), and
    # the peer is asked to send its routes again, which now fit.
    w.sent.clear()
    changed = asyncio.run(sp.set_neighbors({PEER: dataclasses.replace(base, max_prefixes=10)}))
    assert not changed and sp.exabgp.conf_path.read_text() == text
    assert w.sent == [f"neighbor {PEER} announce route-refresh ipv4 unicast"]
    row = sp.peer_status()[0]
    assert row["maxPrefixes"] == 10 and "info" not in row
    announce(sp, [f"10.244.{i}.0/26" for i in range(2, 8)])
    assert sp.peer_status()[0]["prefixesIn"] == 6
    assert len(sp.rib.table()) == 6
    # Lowered below what is held: kept, new ones refused, shown; no refresh asked.
    w.sent.clear()
    assert not asyncio.run(sp.set_neighbors({PEER: dataclasses.replace(base, max_prefixes=2)}))
    assert w.sent == []
    announce(sp, ["10.244.9.0/26"])
    row = sp.peer_status()[0]
    assert (row["prefixesIn"], row["maxPrefixes"]) == (6, 2)
    assert row["info"] == ("max-prefix 2 reached: 4 announcements dropped, 6 held (kept "
                           "when the limit was lowered)")
    # No limit of its own: the speaker's default.
    asyncio.run(sp.set_neighbors({PEER: base}))
    assert sp.peer_status()[0]["maxPrefixes"] == 10_000


def test_metrics_show_each_peers_limit_beside_the_drops(tmp_path: Path) -> None:
    metrics = Metrics()
    ctl = BgpController("n1", netns=None, socket_path=str(tmp_path / "s.sock"),
                        workdir=tmp_path, exabgp_bin="/nonexistent", metrics=metrics)
    sp = ctl.speaker
    sp.set_filter(["10.244.0.0/16"], [])
    sp._writer = Lines()  # type: ignore[assignment]
    asyncio.run(sp.set_neighbors({PEER: NeighborSpec(
        PEER, 65000, 65001, "10.99.1.1", "10.99.1.1", "node", max_prefixes=2)}))
    sp.on_relay_line(event(state="up"))
    announce(sp, [f"10.244.{i}.0/26" for i in range(2, 7)])
    assert ctl.peer_status()[0]["maxPrefixes"] == 2
    text = metrics.render().decode()
    assert f'l3fabric_bgp_max_prefixes{{peer="{PEER}"}} 2.0' in text
    assert f'l3fabric_bgp_prefixes_dropped_total{{peer="{PEER}"}} 3.0' in text
    assert f'l3fabric_bgp_peer_up{{peer="{PEER}"}} 1.0' in text
    # The peer is deleted: every series of it goes (none keeps reporting it up).
    asyncio.run(sp.set_neighbors({}))
    text = metrics.render().decode()
    assert PEER not in text, text
    assert "l3fabric_exabgp_restarts_total 0.0" in text


# A stand-in for ExaBGP's signal handling: its SIGUSR1 handler comes only after a start-up
# delay (before it, the signal's default action kills the process), and the first reload
# is dropped as ExaBGP drops one while updates are queued; the log is its stdout.
STAND_IN = """
import signal, sys, time
time.sleep(0.5)
reloads = 0
def usr1(*_):
    global reloads
    reloads += 1
    print("dropped" if reloads == 1 else "configuration   performing reload of exabgp 5",
          flush=True)
signal.signal(signal.SIGUSR1, usr1)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def _stand_in(tmp_path: Path, script: str, clock: list[float]) -> BgpSpeaker:
    """A speaker whose "ExaBGP" is ``script`` (its log is the script's stdout)."""
    exe = tmp_path / "exabgp"
    exe.write_text(f"#!{sys.executable}\n{script}")
    exe.chmod(0o755)
    return BgpSpeaker("n1", netns=None, socket_path=str(tmp_path / "s.sock"),
                      workdir=tmp_path, exabgp_bin=str(exe), now=lambda: clock[0])


def _wait_ready(sp: BgpSpeaker) -> None:
    deadline = time.monotonic() + 10
    while "ready" not in sp.exabgp.log_path.read_text():
        assert time.monotonic() < deadline and sp.running()
        time.sleep(0.05)


def test_a_reload_waits_for_the_handler_and_a_dropped_one_is_signalled_again(
        tmp_path: Path) -> None:
    clock = [0.0]
    sp = _stand_in(tmp_path, STAND_IN, clock)
    sp.exabgp.launch()
    try:
        sp.exabgp.reload()  # too early: it would have killed the process
        assert sp.exabgp.reload_pending and sp.running()

        def log() -> str:
            return sp.exabgp.log_path.read_text()

        _wait_ready(sp)
        sp.exabgp.reload()  # what the supervisor does while a reload is pending
        assert not sp.exabgp.reload_pending
        time.sleep(0.3)
        assert log().splitlines()[-1] == "dropped"
        sp.exabgp.check_reload_seen(clock[0] + 1)  # too soon to tell
        assert sp.exabgp.reloads_repeated == 0
        clock[0] += 5
        sp.exabgp.check_reload_seen(clock[0])  # not in the log: signalled again
        assert sp.exabgp.reloads_repeated == 1
        time.sleep(0.3)
        clock[0] += 5
        sp.exabgp.check_reload_seen(clock[0])
        assert sp.exabgp.reloads_repeated == 1 and sp.exabgp.reload_unseen is None
        assert log().count("performing reload") == 1 and sp.running()
    finally:
        assert sp.exabgp.proc is not None
        sp.exabgp.proc.kill()
        sp.exabgp.proc.wait()


def test_a_config_change_during_the_restart_backoff_starts_exabgp_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ExaBGP died and waits for its restart; a config change meanwhile starts it. The
    restart must then find it running: a second one could not bind the BGP port, would
    die in a loop, and the first would run unsupervised."""
    exe = tmp_path / "exabgp"
    exe.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    exe.chmod(0o755)
    sp = BgpSpeaker("n1", netns=None, socket_path=str(tmp_path / "s.sock"),
                    workdir=tmp_path, exabgp_bin=str(exe))
    sp.exabgp.text = "config"
    procs: list[subprocess.Popen[bytes]] = []

    async def scenario() -> None:
        sp.exabgp.launch()
        assert sp.exabgp.proc is not None
        procs.append(sp.exabgp.proc)
        sp.exabgp.proc.kill()
        task = asyncio.create_task(sp._supervise())
        while sp.exabgp.pid is not None:  # the supervisor saw it die: now in its 1 s backoff
            await asyncio.sleep(0.05)
        sp.exabgp.launch()  # what set_config does when ExaBGP is not running
        assert sp.exabgp.proc is not None
        procs.append(sp.exabgp.proc)
        await asyncio.sleep(1.6)
        sp._stopping = True
        await task

    with caplog.at_level(logging.INFO, logger="bgp.exabgp"):
        try:
            asyncio.run(scenario())
        finally:
            for p in procs + ([sp.exabgp.proc] if sp.exabgp.proc else []):
                p.kill()
                p.wait()
    assert caplog.text.count("started exabgp") == 2
    assert sp.exabgp.proc is procs[1] and sp.exabgp.restarts == 1


def test_the_owner_is_told_when_the_import_table_is_in_sync_even_if_it_is_empty(
        tmp_path: Path) -> None:
    """A restarted agent keeps the BGP routes its predecessor installed until the import
    table is in sync (the agent reads ``in_sync``). When nothing is learned any more (the
    only peer was removed while the agent was down) the table is empty before and after,
    and the owner must still be told: else the stale routes stay in the FIB until the
    next datastore event or the periodic resync."""
    calls: list[tuple[dict[str, tuple[str, ...]], bool]] = []

    async def run() -> None:
        sp, _ = speaker(tmp_path)
        sp.on_learned = lambda table: calls.append((table, sp.in_sync))
        sp.neighbors, sp.peers = {}, {}
        sp._on_hello({"type": "relay-hello", "pid": 1, "announced": []})
        await asyncio.sleep(0)
        sp._mark_in_sync("timeout")
        await asyncio.sleep(0)
    asyncio.run(run())
    assert calls and calls[-1] == ({}, True), calls


def test_a_reflector_sends_a_client_the_reflected_routes_before_its_end_of_rib(
        tmp_path: Path) -> None:
    """Client B's session resets (a changed definition: ExaBGP gives it a new, empty
    adj-rib-out). B must get the routes reflected from client A again, and before our
    End-of-RIB: a graceful-restart B sweeps what it held from us at the End-of-RIB, so
    routes reflected after it (on a later loop turn) would flap, and, with the "down" and
    "up" in one read, routes not sent again would be lost for good."""
    a, b = "10.0.0.2", "10.0.0.3"

    def ev(peer: str, **nb: Any) -> bytes:
        return json.dumps({"type": nb.pop("type", "state"), "neighbor": {
            "address": {"local": "10.0.0.1", "peer": peer}, **nb}}).encode()

    async def run() -> list[str]:
        sp, w = speaker(tmp_path)
        sp.neighbors = {ip: NeighborSpec(ip, 64512, 64512, "10.0.0.1", "10.0.0.1",
                                         "rr-client", rr_client=True, cluster_id="1.1.1.1")
                        for ip in (a, b)}
        sp.peers = {ip: _PeerState(0) for ip in (a, b)}
        sp.on_relay_line(ev(a, state="up"))
        sp.on_relay_line(ev(b, state="up"))
        sp.on_relay_line(ev(a, type="update", message={"update": {"announce": {
            "ipv4 unicast": {a: [{"nlri": "10.244.2.0/26"}]}}}}))
        await asyncio.sleep(0)
        assert any(f"neighbor {b} announce route 10.244.2.0/26" in x for x in w.sent), w.sent
        n = len(w.sent)
        sp.on_relay_line(ev(b, state="down"))
        sp.on_relay_line(ev(b, state="up"))
        await asyncio.sleep(0)
        return w.sent[n:]
    sent = asyncio.run(run())
    eor = sent.index(f"neighbor {b} announce eor ipv4 unicast")
    assert any(f"neighbor {b} announce route 10.244.2.0/26" in x for x in sent[:eor]), sent


def test_ipv6_blocks_go_with_the_nodes_ipv6_next_hop_and_families_are_separate(
        tmp_path: Path) -> None:
    """A dual-stack node: IPv6 prefixes are announced with its IPv6 address as next hop
    (never ``self``, an IPv4-mapped one) and only once it has one; refresh requests ask
    for IPv6 before IPv4, End-of-RIB goes for both families, and an IPv6 End-of-RIB does
    not end the wait for a complete table."""
    sp, w = speaker(tmp_path)
    sp.neighbors = {PEER: dataclasses.replace(sp.neighbors[PEER], ipv6=True)}
    sp.set_filter(["10.244.0.0/16", "fd44::/48"], ["10.244.1.0/26", "fd44::/122"])
    asyncio.run(sp.set_exports({"10.244.1.0/26", "fd44::/122"}))
    assert w.sent == ["announce route 10.244.1.0/26 next-hop self"]  # no IPv6 next hop yet
    sp.nexthop6 = "fd99::1"
    asyncio.run(sp.set_exports({"10.244.1.0/26", "fd44::/122"}))
    assert w.sent[1:] == ["announce route fd44::/122 next-hop fd99::1"]
    sp.on_relay_line(event(state="up"))
    assert w.sent[-2:] == [f"neighbor {PEER} announce eor ipv4 unicast",
                           f"neighbor {PEER} announce eor ipv6 unicast"]
    assert sp._refresh_all() == [f"neighbor {PEER} announce route-refresh ipv6 unicast",
                                 "announce route-refresh ipv4 unicast"]
    sp.nexthop6 = None  # the Node lost its ipv6Address: the IPv6 block is withdrawn
    asyncio.run(sp.set_exports({"10.244.1.0/26", "fd44::/122"}))
    assert w.sent[-1] == "withdraw route fd44::/122"
    # An IPv6 End-of-RIB leaves the peer pending; IPv4's (asked for last) completes it.
    sp.peers[PEER].refresh_pending = True
    sp.on_relay_line(event(type="update", message={"eor": {"afi": "ipv6", "safi": "unicast"}}))
    assert sp.peers[PEER].refresh_pending
    sp.on_relay_line(event(type="update", message={"eor": {"afi": "ipv4", "safi": "unicast"}}))
    assert not sp.peers[PEER].refresh_pending


@pytest.mark.parametrize("order", [("fe80::1", "fd98::1"), ("fd98::1", "fe80::1")])
def test_a_global_next_hop_wins_over_its_link_local_twin(tmp_path: Path,
                                                         order: tuple[str, str]) -> None:
    """BIRD sends a global and a link-local IPv6 next hop on a direct session and ExaBGP
    lists the prefix under both: the route is installed via the global one (a link-local
    gateway needs an interface the update does not name: the kernel said EINVAL)."""
    sp, _ = speaker(tmp_path)
    sp.set_filter(["fd44::/48"], [])
    sp.on_relay_line(event(state="up"))
    sp.on_relay_line(event(type="update", message={"update": {
        "attribute": {"as-path": {"0": {"value": [65000]}}},
        "announce": {"ipv6 unicast": {nh: [{"nlri": "fd44::40/122"}] for nh in order}}}}))
    assert sp.rib.table() == {"fd44::40/122": ("fd98::1",)}


@pytest.mark.parametrize(("offered", "interface", "chosen"), [
    (["fd98::1", "::"], "up1", "fd98::1"),              # `::` never wins
    (["::", "fd98::1"], "up1", "fd98::1"),              # whatever the order
    (["::"], "up1", None),                              # `::` alone: nothing usable
    (["fe80::1"], "up1", "fe80::1%up1"),                # link-local: the session's device
    (["::", "fe80::1"], "up1", "fe80::1%up1"),
    (["fe80::1"], None, None),                          # and none without a device
    (["fe80::1", "fd98::1"], "up1", "fd98::1"),         # a global one is preferred
    (["fd98::1", "fe80::1"], "up1", "fd98::1"),
    (["fd98::9", "fd98::1"], "up1", "fd98::1"),         # several: the same one either way
    (["0.0.0.0", "10.99.1.2"], None, "10.99.1.2"),
])
def test_the_next_hop_chosen_for_an_offered_set(offered: list[str], interface: str | None,
                                                chosen: str | None) -> None:
    from bgp.speaker import choose_nexthop

    assert choose_nexthop(offered, lambda: interface) == chosen


def test_an_unspecified_next_hop_is_never_installed_and_a_link_local_one_gets_its_device(
        tmp_path: Path) -> None:
    """FRR lists ``fd98::1`` then ``::`` (the table kept ``('::',)``, which the kernel
    refused with EINVAL), or only a link-local address while its global one is not ready
    (installed with no device: refused too). The link-local next hop gets the interface
    holding the session's local address."""
    sp, _ = speaker(tmp_path)
    asked: list[str] = []
    sp.interface_of = lambda address: asked.append(address) or "up1"
    sp.set_filter(["fd44::/48"], [])
    sp.on_relay_line(event(state="up"))

    def offer(prefix: str, *nexthops: str) -> None:
        sp.on_relay_line(event(type="update", message={"update": {
            "attribute": {"as-path": {"0": {"value": [65000]}}},
            "announce": {"ipv6 unicast": {nh: [{"nlri": prefix}] for nh in nexthops}}}}))

    offer("fd44::40/122", "fd98::1", "::")
    offer("fd44::80/122", "fe80::2")
    assert sp.rib.table() == {"fd44::40/122": ("fd98::1",), "fd44::80/122": ("fe80::2%up1",)}
    assert asked == ["10.99.1.1"]  # the session's local address, looked up when needed
    offer("fd44::40/122", "::")  # replaces the usable one: nothing to install now
    assert sp.rib.table() == {"fd44::80/122": ("fe80::2%up1",)}


def test_a_route_with_a_link_local_next_hop_is_not_reflected(tmp_path: Path) -> None:
    """Its next hop means something only on the link it came over: reflected to another
    client it would be a gateway that client cannot reach (and ExaBGP refuses the
    scoped address)."""
    a, b = "10.0.0.2", "10.0.0.3"

    def ev(peer: str, **nb: Any) -> bytes:
        return json.dumps({"type": nb.pop("type", "state"), "neighbor": {
            "address": {"local": "10.0.0.1", "peer": peer}, **nb}}).encode()

    async def run() -> list[str]:
        sp, w = speaker(tmp_path)
        sp.interface_of = lambda address: "eth0"
        sp.set_filter(["fd44::/48"], [])
        sp.neighbors = {ip: NeighborSpec(ip, 64512, 64512, "10.0.0.1", "10.0.0.1",
                                         "rr-client", rr_client=True, cluster_id="1.1.1.1",
                                         ipv6=True)
                        for ip in (a, b)}
        sp.peers = {ip: _PeerState(0) for ip in (a, b)}
        sp.on_relay_line(ev(a, state="up"))
        sp.on_relay_line(ev(b, state="up"))
        sp.on_relay_line(ev(a, type="update", message={"update": {"announce": {
            "ipv6 unicast": {"fe80::2": [{"nlri": "fd44::40/122"}],
                             "fd98::2": [{"nlri": "fd44::80/122"}]}}}}))
        await asyncio.sleep(0)
        assert sp.rib.table() == {"fd44::40/122": ("fe80::2%eth0",),
                                  "fd44::80/122": ("fd98::2",)}
        return w.sent
    sent = asyncio.run(run())
    assert any(f"neighbor {b} announce route fd44::80/122 next-hop fd98::2" in x for x in sent)
    assert not any("fd44::40/122" in x for x in sent), sent


# ExaBGP with a peer that never comes up and updates queued for it: it drops every
# reload; SIGALRM (its restart) reads the config whatever is queued.
STUCK = """
import signal, sys, time
def usr1(*_):
    print("reactor         scheduling reload", flush=True)
def alrm(*_):
    print("reactor         performing restart of exabgp 5", flush=True)
signal.signal(signal.SIGUSR1, usr1)
signal.signal(signal.SIGALRM, alrm)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_reloads_dropped_again_and_again_make_exabgp_restart_its_bgp_side(
        tmp_path: Path) -> None:
    """With a neighbour down (its updates stay queued), the fifth reload dropped in a row
    becomes a restart of ExaBGP's BGP side; with every neighbour Established (the queue
    drains, however slowly) reloads are only signalled again: no session reset."""
    clock = [0.0]
    sp = _stand_in(tmp_path, STUCK, clock)
    sp.neighbors = {PEER: NeighborSpec(PEER, 65000, 65001, "10.99.1.1", "10.99.1.1", "node")}
    sp.peers[PEER] = _PeerState(0.0)
    sp.peers[PEER].state = "Established"
    sp.exabgp.launch()
    try:
        def log() -> str:
            return sp.exabgp.log_path.read_text()

        _wait_ready(sp)
        sp.exabgp.reload()
        for _ in range(RELOADS_BEFORE_RESTART + 2):  # every neighbour up: no restart
            time.sleep(0.2)
            clock[0] += 5
            sp.exabgp.check_reload_seen(clock[0])
        assert sp.exabgp.bgp_restarts == 0 and "restart" not in log()
        sp.peers[PEER].state = "Active"  # the neighbour goes down: its updates stay queued
        sp.exabgp.dropped_in_a_row = 0
        sp.exabgp.reloads_repeated = 0
        for _ in range(RELOADS_BEFORE_RESTART):
            time.sleep(0.2)
            clock[0] += 5
            sp.exabgp.check_reload_seen(clock[0])
        assert sp.exabgp.reloads_repeated == RELOADS_BEFORE_RESTART - 1
        assert sp.exabgp.bgp_restarts == 1
        time.sleep(0.3)
        assert log().count("scheduling reload") == 2 * RELOADS_BEFORE_RESTART + 2
        assert log().splitlines()[-1].endswith("performing restart of exabgp 5")
        clock[0] += 5
        sp.exabgp.check_reload_seen(clock[0])  # the restart took the config: done
        assert sp.exabgp.reload_unseen is None and sp.exabgp.dropped_in_a_row == 0
        assert sp.exabgp.bgp_restarts == 1 and sp.running()
    finally:
        assert sp.exabgp.proc is not None
        sp.exabgp.proc.kill()
        sp.exabgp.proc.wait()
