"""bgp.speaker.BgpSpeaker without ExaBGP: what it writes to the relay when a session comes
up (End-of-RIB after the exports, manual-eor), and the peer status of a peer at its
max-prefix limit. The relay connection is a fake writer that records the lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bgp.config import NeighborSpec
from bgp.speaker import BgpSpeaker, _PeerState

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
