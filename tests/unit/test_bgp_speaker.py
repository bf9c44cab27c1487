"""bgp.speaker.BgpSpeaker without ExaBGP: what it writes to the relay when a session comes
up (End-of-RIB after the exports, manual-eor), the peer status of a peer at its
max-prefix limit, and a per-peer limit changed at run time (applied without a reload,
a raise asks the peer for a route refresh, shown in the status and the metrics). The
relay connection is a fake writer that records the lines."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from bgp.config import NeighborSpec
from bgp.glue import BgpController
from bgp.speaker import BgpSpeaker, _PeerState
from felix_like.metrics import Metrics

PEER = "10.99.1.2"


class Lines:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def write(self, data: bytes) -> None:
        self.sent += data.decode().splitlines()


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
    sp.exports = {"10.244.1.0/26"}
    w.sent += [sp._announce_line("10.244.1.0/26")]  # what _sync_exports wrote at attach
    sp._on_line(event(state="up"))
    assert w.sent == ["announce route 10.244.1.0/26 next-hop self",
                      f"neighbor {PEER} announce eor ipv4 unicast"]
    assert sp.peer_status()[0]["state"] == "Established"
    sp._on_line(event(state="down"))
    assert w.sent[-1].endswith("announce eor ipv4 unicast") and len(w.sent) == 2


def test_peer_at_max_prefix_shows_it(tmp_path: Path) -> None:
    sp, _ = speaker(tmp_path, max_prefixes=2)
    sp._on_line(event(state="up"))
    nlri = [{"nlri": f"10.244.{i}.0/26"} for i in range(2, 7)]
    sp._on_line(event(type="update", message={"update": {
        "attribute": {"as-path": {"0": {"value": [65000]}}},
        "announce": {"ipv4 unicast": {PEER: nlri}}}}))
    row = sp.peer_status()[0]
    assert row["prefixesIn"] == 2
    assert row["info"] == "max-prefix 2 reached: 3 announcements dropped"
    assert sp.prefixes_dropped() == {PEER: 3}


def announce(sp: BgpSpeaker, prefixes: list[str]) -> None:
    sp._on_line(event(type="update", message={"update": {
        "attribute": {"as-path": {"0": {"value": [65000]}}},
        "announce": {"ipv4 unicast": {PEER: [{"nlri": p} for p in prefixes]}}}}))


def test_limit_change_applies_without_reload_and_a_raise_refreshes(tmp_path: Path) -> None:
    sp, w = speaker(tmp_path)
    base = sp.neighbors[PEER]
    assert asyncio.run(sp.set_neighbors({PEER: dataclasses.replace(base, max_prefixes=3)}))
    text = sp.conf_path.read_text()
    sp._on_line(event(state="up"))
    announce(sp, [f"10.244.{i}.0/26" for i in range(2, 8)])
    row = sp.peer_status()[0]
    assert (row["prefixesIn"], row["maxPrefixes"]) == (3, 3)
    assert row["info"] == "max-prefix 3 reached: 3 announcements dropped"
    # Raised: ExaBGP's configuration is the same text (no reload, no session reset), and
    # the peer is asked to send its routes again, which now fit.
    w.sent.clear()
    changed = asyncio.run(sp.set_neighbors({PEER: dataclasses.replace(base, max_prefixes=10)}))
    assert not changed and sp.conf_path.read_text() == text
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
    sp._on_line(event(state="up"))
    announce(sp, [f"10.244.{i}.0/26" for i in range(2, 7)])
    assert ctl.peer_status()[0]["maxPrefixes"] == 2
    text = metrics.render().decode()
    assert f'l3fabric_bgp_max_prefixes{{peer="{PEER}"}} 2.0' in text
    assert f'l3fabric_bgp_prefixes_dropped{{peer="{PEER}"}} 3.0' in text
