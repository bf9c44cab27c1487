"""One node running ExaBGP through BgpSpeaker, peering with a BIRD top-of-rack router.

Real ExaBGP, real BIRD, real kernel routes at the ToR. The speaker's owner runs as a
separate process (`helpers.exabgp`), so the test can kill -9 it like a crashed agent.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.bird import Bird, BirdPeer, kernel_routes
from helpers.exabgp import SpeakerProcess, bird_available, link, wait_for

from bgp.config import NeighborSpec

pytestmark = pytest.mark.skipif(not bird_available(), reason="BIRD 2 is not installed")

BLOCK = "10.244.1.0/26"
POOL = "10.244.0.0/16"
TOR_POOL_PREFIX = "10.244.99.0/26"  # inside the pool: must be learned
OUTSIDE = "192.168.50.0/24"  # outside every pool: must not be
PART_OF_OURS = "10.244.1.0/27"  # a piece of our own block: must not be


def tor_neighbor(**kw: object) -> NeighborSpec:
    base: dict[str, object] = dict(peer_ip="10.99.1.2", peer_as=65000, local_as=65001,
                                   local_address="10.99.1.1", router_id="10.99.1.1",
                                   type="node", hold_time=9, graceful_restart=20, name="tor")
    base.update(kw)
    return NeighborSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
def rack(netns: Callable[[str], str], tmp_path: Path) -> Iterator[tuple[Bird, SpeakerProcess]]:
    tor, n1 = netns("tor"), netns("n1")
    link(tor, "10.99.1.2/30", n1, "10.99.1.1/30")
    bird = Bird(tor, tmp_path / "bird", "10.99.0.254", 65000,
                peers=[BirdPeer("n1", "10.99.1.1", 65001, "10.99.1.2")],
                statics=[TOR_POOL_PREFIX, OUTSIDE, PART_OF_OURS])
    sp = SpeakerProcess("n1", n1, tmp_path / "n1", [tor_neighbor()], [BLOCK], [POOL], [BLOCK])
    bird.start()
    try:
        yield bird, sp
    finally:
        sp.stop(drain=False)
        bird.stop()


def test_announce_import_filter_and_survive_owner_and_exabgp_kill(
        rack: tuple[Bird, SpeakerProcess], netns: Callable[[str], str]) -> None:
    bird, sp = rack
    t0 = time.monotonic()
    sp.start()
    # The block reaches BIRD and the ToR's kernel, with the node as next hop.
    wait_for(lambda: bird.routes().get(BLOCK) == {"10.99.1.1"}, 30, "block at the ToR")
    wait_for(lambda: "via 10.99.1.1" in kernel_routes(bird.ns).get(BLOCK, ""), 5,
             "block in the ToR's FIB")
    # Only the pool prefix is imported: not the outside one, not a piece of our block.
    sp.wait_learned({TOR_POOL_PREFIX: ["10.99.1.2"]})
    print(f"session up and routes exchanged in {time.monotonic() - t0:.2f}s")
    st = sp.peer_status()
    assert st[0]["peerIP"] == "10.99.1.2" and st[0]["state"] == "Established"
    assert st[0]["prefixesIn"] == 1 and st[0]["prefixesOut"] == 1

    # kill -9 of the owner (the agent): ExaBGP and the BGP session live on.
    session = bird.session_id("n1")
    assert session, "no TCP connection for the established session"
    exabgp = sp.exabgp_pid()
    sp.kill9()
    time.sleep(1.0)
    assert bird.session_id("n1") == session and bird.established("n1")
    sp.start()  # a new owner adopts the running ExaBGP, the relay re-attaches
    sp.wait_learned({TOR_POOL_PREFIX: ["10.99.1.2"]})
    assert sp.exabgp_pid() == exabgp
    assert bird.session_id("n1") == session, "the session at the ToR was reset"
    # Exports changed after the re-attach are still incremental.
    sp.send(f"exports {BLOCK},10.244.1.64/26")
    wait_for(lambda: "10.244.1.64/26" in bird.routes(), 10, "second block at the ToR")
    sp.send(f"exports {BLOCK}")
    wait_for(lambda: "10.244.1.64/26" not in bird.routes(), 10, "second block withdrawn")
    assert bird.session_id("n1") == session

    # A route the ToR withdraws is removed from the import table.
    bird.statics = [OUTSIDE, PART_OF_OURS]
    bird.reconfigure()
    sp.wait_learned({})
    bird.statics = [TOR_POOL_PREFIX, OUTSIDE, PART_OF_OURS]
    bird.reconfigure()
    sp.wait_learned({TOR_POOL_PREFIX: ["10.99.1.2"]})

    # ExaBGP killed: the speaker restarts it and the routes come back both ways.
    os.kill(exabgp, signal.SIGKILL)
    wait_for(lambda: sp.exabgp_pid() != exabgp, 10, "a new exabgp")
    wait_for(lambda: bird.established("n1") and bird.routes().get(BLOCK) == {"10.99.1.1"},
             30, "session and block back at the ToR")
    sp.wait_learned({TOR_POOL_PREFIX: ["10.99.1.2"]})

    # A drain withdraws the block before ExaBGP stops.
    sp.stop(drain=True)
    wait_for(lambda: BLOCK not in bird.routes(), 10, "block withdrawn after drain")
