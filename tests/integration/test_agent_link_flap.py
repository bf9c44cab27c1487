"""A short flap of a node's uplink, with the BGP session kept, costs its pods no more than
the flap: the agent restores the routes the kernel dropped with the link as it comes up.

Lab: a BIRD ToR and two real agents (`helpers.faults.build_rack`), the ToR configured with
``check link off`` (as a ToR with BFD or short flaps is), so a 1.5 s flap does not end the
session and nothing is re-announced. When n1's end of its uplink goes down, the kernel
deletes the routes through it, n2's block learned over BGP among them, and for IPv4 says
nothing (no RTM_DELROUTE). The agent sees the link come back (RTM_NEWLINK), re-reads the
kernel and puts the route back at once: waiting for its periodic resync (60 s) would cut
the pods on n1 off from n2's for that long.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.bird import Bird
from helpers.fabric import Fabric, Pod, wait_for
from helpers.faults import add_pod, build_rack, reach

from datastore.embedded import EmbeddedEtcd
from felix_like.kernel_events import (
    LinkChange,
    MonitorEvent,
    RouteDeleted,
    open_monitor,
    parse_monitor,
)
from felix_like.netlink import IFF_UP

pytestmark = pytest.mark.integration


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def interface_with(ns: str, address: str) -> str:
    for link in json.loads(sh("ip", "-n", ns, "-j", "addr", "show")):
        if any(a.get("local") == address for a in link.get("addr_info", [])):
            return str(link["ifname"])
    raise AssertionError(f"no interface holds {address} in {ns}")


def bgp_connections(ns: str) -> set[tuple[str, str]]:
    """(local, peer) of the established TCP connections of port 179 in ``ns``: a reset
    changes a port."""
    out = sh("ip", "netns", "exec", ns, "ss", "-Htn", "state", "established",
             "( sport = :179 or dport = :179 )")
    return {(f[-2], f[-1]) for f in (line.split() for line in out.splitlines()) if f}


@pytest.fixture
def rack(netns: Callable[[str], str], etcd: EmbeddedEtcd,
         tmp_path: Path) -> Iterator[tuple[Fabric, Bird, Pod, Pod]]:
    fab = Fabric(netns, etcd, tmp_path)
    try:
        tor = build_rack(fab, netns, nodes=2)
        tor.check_link = False
        tor.start()
        fab.start_agents()
        for n in ("n1", "n2"):
            wait_for(lambda n=n: tor.established(n), 30, f"ToR session {n}", 0.2,  # type: ignore[misc]
                     fab.diagnostics)
        a, b = add_pod(fab, "n1", "a", netns), add_pod(fab, "n2", "b", netns)
        wait_for(lambda: reach(a.ns, b.ip, 1), 30, "a reaches b", 0.2, fab.diagnostics)
        yield fab, tor, a, b
    finally:
        fab.close()


def test_a_short_uplink_flap_with_the_session_kept_restores_the_learned_routes_at_once(
        rack: tuple[Fabric, Bird, Pod, Pod]) -> None:
    fab, tor, a, b = rack
    n1 = fab.nodes["n1"]
    blk2 = fab.nodes["n2"].claimed_block()
    wait_for(lambda: blk2 in n1.routes("81"), 20, f"n2's block {blk2} learned by n1")
    uplink = interface_with(n1.ns, n1.address)
    sessions = bgp_connections(n1.ns)
    assert sessions, "no BGP session in n1"

    sh("ip", "-n", n1.ns, "link", "set", uplink, "down")
    time.sleep(1.5)
    # The premise: the kernel took the learned route with the link.
    assert blk2 not in n1.routes("81"), n1.routes("81")
    sh("ip", "-n", n1.ns, "link", "set", uplink, "up")
    t_up = time.monotonic()
    # Bounded waits: the old behaviour (the periodic resync, ~60 s) fails them.
    wait_for(lambda: blk2 in n1.routes("81"), 3, f"{blk2} back in n1's FIB", 0.01,
             fab.diagnostics)
    t_route = time.monotonic() - t_up
    wait_for(lambda: reach(a.ns, b.ip, 1), 3, "a reaches b again", 0.05, fab.diagnostics)
    t_ping = time.monotonic() - t_up
    print(f"uplink flap of 1.5 s: learned route back {t_route:.3f} s after the link came up, "
          f"first ping answered after {t_ping:.3f} s")
    assert bgp_connections(n1.ns) == sessions, "the BGP session was reset: not the case tested"
    assert tor.established("n1")
    assert "link " + uplink + " up: routes read again" in n1.log.read_text()


def test_the_monitor_reads_the_kernels_link_and_route_notifications(
        netns: Callable[[str], str]) -> None:
    """What the agent's reader gets from a real kernel: a link's state as it goes down and
    up, and the deletion of a route of ours (IPv4 by hand, IPv6 with its link)."""
    ns = netns("mon")
    sh("ip", "-n", ns, "link", "add", "up1", "type", "veth", "peer", "name", "up1p")
    sh("ip", "-n", ns, "addr", "add", "10.99.1.1/30", "dev", "up1")
    sh("ip", "-n", ns, "addr", "add", "fd99::1/64", "dev", "up1", "nodad")
    sh("ip", "-n", ns, "link", "set", "up1", "up")
    sh("ip", "-n", ns, "link", "set", "up1p", "up")
    sh("ip", "-n", ns, "route", "add", "10.244.9.0/26", "via", "10.99.1.2", "proto", "81")
    sh("ip", "-n", ns, "route", "add", "fd00:0:0:9::/64", "via", "fd99::2", "proto", "81")
    sock = open_monitor(ns)
    try:
        sh("ip", "-n", ns, "route", "del", "10.244.9.0/26", "proto", "81")
        sh("ip", "-n", ns, "link", "set", "up1", "down")
        sh("ip", "-n", ns, "link", "set", "up1", "up")
        events: list[MonitorEvent] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                isinstance(e, LinkChange) and e.name == "up1" and e.flags & IFF_UP
                for e in events):
            try:
                events += parse_monitor(sock.recv(65536))
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        sock.close()
    deleted = {(e.dst, e.proto, e.table) for e in events if isinstance(e, RouteDeleted)}
    assert ("10.244.9.0/26", 81, 254) in deleted
    assert ("fd00:0:0:9::/64", 81, 254) in deleted  # IPv6 tells, with the link
    states = [e.usable for e in events if isinstance(e, LinkChange) and e.name == "up1"]
    assert states[0] == 0 and states[-1] & IFF_UP, states
