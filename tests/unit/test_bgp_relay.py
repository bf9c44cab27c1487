"""bgp.relay: the adj-RIB-in it keeps for a re-attaching agent, and the real relay process
between a fake ExaBGP (its stdin) and a fake agent (a unix socket server).

The restart story: the agent dies, the relay keeps recording what the peers send, and the
next agent rebuilds its import table from the replay, with no route refresh: a peer that
ignores one (FRR 8.4 without graceful restart) costs nothing, and what a peer withdrew
meanwhile, or all of it when its session went down, is not in the replay."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_bgp_speaker import PEER, Lines, speaker

from bgp import relay
from bgp.relay import AdjRibIn
from bgp.speaker import BgpSpeaker

PEER2 = "10.99.2.2"


def ev(kind: str, peer: str = PEER, **nb: Any) -> dict[str, Any]:
    return {"type": kind, "neighbor": {
        "address": {"local": "10.99.1.1", "peer": peer}, "asn": {"local": 65001, "peer": 65000},
        **nb}}


def update(announce: dict[str, dict[str, list[str]]] | None = None,
           withdraw: dict[str, list[str]] | None = None, peer: str = PEER,
           as_path: tuple[int, ...] = (65000,)) -> dict[str, Any]:
    body: dict[str, Any] = {"attribute": {"origin": "igp",
                                          "as-path": {"0": {"value": list(as_path)}}}}
    if announce:
        body["announce"] = {f: {nh: [{"nlri": p} for p in ps] for nh, ps in by.items()}
                            for f, by in announce.items()}
    if withdraw:
        body["withdraw"] = {f: [{"nlri": p} for p in ps] for f, ps in withdraw.items()}
    return ev("update", peer, direction="receive", message={"update": body})


def feed(sp: BgpSpeaker, msgs: list[dict[str, Any]]) -> None:
    for m in msgs:
        sp.on_relay_line(json.dumps(m).encode())


def restarted_agent(tmp_path: Path, rib: AdjRibIn, states: list[dict[str, Any]]
                    ) -> tuple[BgpSpeaker, Lines]:
    """A new agent's speaker attaching to a relay that holds ``rib``."""
    sp, w = speaker(tmp_path)
    sp.set_filter(["10.244.0.0/16", "fd44::/48"], ["10.244.1.0/26"])
    sp._on_hello({"type": "relay-hello", "pid": 1, "announced": [], "rib": True})
    feed(sp, states)
    feed(sp, list(rib.replay()))
    return sp, w


def test_a_restarted_agent_rebuilds_its_table_from_the_relay_without_a_refresh(
        tmp_path: Path) -> None:
    rib = AdjRibIn()
    rib.on_event(ev("state", state="up"))
    rib.on_event(update({"ipv4 unicast": {"10.99.1.2": ["10.244.2.0/26", "10.244.3.0/26"]},
                         "ipv6 unicast": {"fd98:1::1": ["fd44::40/122"],
                                          "fe80::1": ["fd44::40/122"]}}))
    # While the agent is away: one route withdrawn, one more announced.
    rib.on_event(update(withdraw={"ipv4 unicast": ["10.244.3.0/26"]}))
    rib.on_event(update({"ipv4 unicast": {"10.99.1.2": ["10.244.4.0/26"]}}, as_path=(65000, 65002)))
    sp, w = restarted_agent(tmp_path, rib, [ev("state", state="up")])
    assert sp.in_sync
    assert sp.rib.table() == {"10.244.2.0/26": ("10.99.1.2",), "10.244.4.0/26": ("10.99.1.2",),
                              "fd44::40/122": ("fd98:1::1",)}
    assert sp.rib.paths(PEER)["10.244.4.0/26"].as_path == (65000, 65002)
    assert not [line for line in w.sent if "route-refresh" in line], w.sent


def test_a_session_that_went_down_meanwhile_takes_its_routes_with_it(tmp_path: Path) -> None:
    rib = AdjRibIn()
    for peer in (PEER, PEER2):
        rib.on_event(ev("state", peer, state="up"))
        rib.on_event(update({"ipv4 unicast": {peer: [f"10.244.{peer[-3]}.0/26"]}}, peer=peer))
    rib.on_event(ev("state", PEER2, state="down"))
    assert PEER2 not in rib.paths
    replay = list(rib.replay())
    assert replay[-1] == {"type": "relay-replayed", "complete": {PEER: ["*"], PEER2: ["*"]}}
    assert [m["neighbor"]["address"]["peer"] for m in replay[:-1]] == [PEER]


def test_the_relay_keeps_what_the_agent_keeps_and_a_bounded_spare(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the pools up to each peer's limit (the agent's filter), and ``SPARE`` more
    of any kind: only what is inside the pools is replayed, a pool added later is served
    from the spare (a peer may ignore the refresh), a peer no longer configured is
    forgotten, and a refresh's end sweeps what it did not re-send."""
    monkeypatch.setattr(relay, "SPARE", 2)
    rib = AdjRibIn()
    rib.set_filter({"pools": ["10.244.0.0/16"], "limits": {PEER: 2}, "default": 10})
    rib.on_event(ev("state", state="up"))
    rib.on_event(update({"ipv4 unicast": {PEER: [
        "0.0.0.0/0", "10.245.1.0/26", "10.244.1.0/26", "10.244.2.0/26", "10.244.3.0/26",
        "192.168.0.0/24"]}}))
    # 10.244.1/2: inside, within the limit; then two spares: 0.0.0.0/0 and 10.245.1.0/26
    # came first; 10.244.3.0/26 (past the limit) and 192.168.0.0/24 found no room.
    assert sorted(rib.paths[PEER]) == ["0.0.0.0/0", "10.244.1.0/26", "10.244.2.0/26",
                                       "10.245.1.0/26"]
    assert rib.refused == 2
    replayed = {n["nlri"] for m in rib.replay() if m["type"] == "update"
                for by in m["neighbor"]["message"]["update"]["announce"].values()
                for ns in by.values() for n in ns}
    assert replayed == {"10.244.1.0/26", "10.244.2.0/26"}

    sp, w = speaker(tmp_path)
    feed(sp, [ev("state", state="up")])
    feed(sp, [m for m in rib.replay() if m["type"] == "update"])
    sp.set_filter(["10.244.0.0/16", "10.245.0.0/16"], ["10.244.1.0/26"])  # a pool added
    assert w.relay[-1] == "relay replay" and "route-refresh" in w.sent[-1]
    rib.set_filter(json.loads(w.relay[-2].split(None, 2)[2]))
    feed(sp, list(rib.replay()))  # the relay's answer; the peer's never comes
    assert set(sp.rib.table()) == {"10.244.2.0/26", "10.245.1.0/26"}

    rib.on_event(ev("refresh", **{"route-refresh": {"afi": "ipv4", "safi": "unicast",
                                                    "subtype": "begin"}}))
    rib.on_event(update({"ipv4 unicast": {PEER: ["10.244.2.0/26"]}}))
    rib.on_event(ev("refresh", **{"route-refresh": {"afi": "ipv4", "safi": "unicast",
                                                    "subtype": "end"}}))
    assert sorted(rib.paths[PEER]) == ["10.244.2.0/26"]
    rib.set_filter({"pools": ["10.244.0.0/16"], "limits": {}, "default": 10})
    assert rib.paths == {} and rib.size() == 0


def test_a_respawned_relay_knows_part_of_a_live_session_and_nothing_is_swept(
        tmp_path: Path) -> None:
    """The relay died and ExaBGP respawned it while the session stayed up: it saw no "up",
    so it knows only what came since. The agent (still running) keeps what it held, asks
    the peer for a refresh, and is in sync once the peer's refresh ends."""
    sp, w = speaker(tmp_path)
    feed(sp, [ev("state", state="up"),
              update({"ipv4 unicast": {PEER: ["10.244.2.0/26", "10.244.3.0/26"]}})])
    rib = AdjRibIn()  # the new relay: only what came after its start
    rib.on_event(update({"ipv4 unicast": {PEER: ["10.244.5.0/26"]}}))
    sp._on_hello({"type": "relay-hello", "pid": 2, "announced": [], "rib": True})
    feed(sp, list(rib.replay()))
    assert set(sp.rib.table()) == {"10.244.2.0/26", "10.244.3.0/26", "10.244.5.0/26"}
    assert w.sent[-1] == f"neighbor {PEER} announce route-refresh ipv4 unicast"
    assert not sp.in_sync
    feed(sp, [ev("refresh", **{"route-refresh": {"afi": "ipv4", "subtype": "begin"}}),
              update({"ipv4 unicast": {PEER: ["10.244.2.0/26", "10.244.5.0/26"]}}),
              ev("refresh", **{"route-refresh": {"afi": "ipv4", "subtype": "end"}})])
    assert sp.in_sync and set(sp.rib.table()) == {"10.244.2.0/26", "10.244.5.0/26"}


def test_an_unanswered_refresh_never_empties_the_table(tmp_path: Path) -> None:
    """A peer that ignores our route refresh (FRR 8.4 with enhanced route refresh and no
    graceful restart) and sends no End-of-RIB: after the sync timeout what we hold stays."""
    now = [0.0]
    sp, w = speaker(tmp_path, now=lambda: now[0])
    feed(sp, [ev("state", state="up"), update({"ipv4 unicast": {PEER: ["10.244.2.0/26"]}})])
    sp._on_hello({"type": "relay-hello", "pid": 2, "announced": [], "rib": True})
    feed(sp, list(AdjRibIn().replay()))  # a respawned relay that saw nothing yet
    assert "route-refresh" in w.sent[-1]
    now[0] = 10.0
    sp._mark_in_sync("timeout")
    assert sp.rib.table() == {"10.244.2.0/26": (PEER,)}


def wait(cond: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.02)


def test_the_relay_process_replays_to_the_next_agent_what_came_while_none_was_attached(
        tmp_path: Path) -> None:
    """The real ``python -m bgp.relay``: events written to its stdin (as ExaBGP does)
    while no agent listens are replayed, after the hello and the states, to the agent
    that connects; its ``relay filter`` line is not passed to ExaBGP, commands are."""
    path = str(tmp_path / "bgp.sock")
    relay = subprocess.Popen([sys.executable, "-m", "bgp.relay", "--socket", path,
                              "--retry", "0.05"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert relay.stdin is not None and relay.stdout is not None
    try:
        for m in (ev("state", state="up"),
                  update({"ipv4 unicast": {PEER: [f"10.244.{i}.0/26" for i in range(2, 200)]}}),
                  update(withdraw={"ipv4 unicast": ["10.244.7.0/26"]})):
            relay.stdin.write((json.dumps(m) + "\n").encode())
        relay.stdin.flush()
        time.sleep(0.2)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(10)
        conn, _ = srv.accept()
        conn.settimeout(10)
        buf = b""
        while b'"relay-replayed"' not in buf:
            data = conn.recv(1 << 16)
            assert data, buf[-300:]
            buf += data
        msgs = [json.loads(x) for x in buf.splitlines()]
        assert msgs[0]["type"] == "relay-hello" and msgs[0]["rib"] is True
        assert msgs[1]["type"] == "state" and msgs[1]["neighbor"]["state"] == "up"
        sp, _ = speaker(tmp_path)
        sp._on_hello(msgs[0])
        feed(sp, msgs[1:])
        assert sp.in_sync and len(sp.rib.table()) == 197
        assert "10.244.7.0/26" not in sp.rib.table()
        conn.sendall(b'relay filter {"pools":["10.244.0.0/24"],"limits":{},"default":5}\n'
                     b"announce route 10.244.1.0/26 next-hop self\n")
        assert relay.stdout.readline() == b"announce route 10.244.1.0/26 next-hop self\n"
        conn.close()
        srv.close()
    finally:
        relay.kill()
        relay.wait(5)
