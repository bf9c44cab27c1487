"""BGP under hostile peers, and a pod route that replaces its block's blackhole.

- a BIRD peer floods 20,000 prefixes (plus pool supernets and prefixes outside every
  pool) at a node's `BgpSpeaker`: what is stored and installed stays at the per-peer
  limit, the limit is logged once and shown in the peer status, time and memory bounded;
- a BIRD peer with the wrong MD5 password never establishes (and does with the right one:
  the test is not vacuous);
- blockSize 32: the route manager replaces the one-address block's blackhole of the same
  prefix with the pod's route, rather than failing "already routed on this node".

Every figure printed here is quoted in docs/guarantees.md. Everything runs in namespaces
the test made; BIRD, ExaBGP and the speaker's owner are stopped also on failure.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.bird import Bird, BirdPeer
from helpers.exabgp import SpeakerProcess, bird_available, link, wait_for
from helpers.faults import Namespaces, sh

from bgp.config import NeighborSpec
from bgp.rib import DEFAULT_MAX_PREFIXES
from felix_like.netlink import open_iproute
from felix_like.plumbing import host_veth_name, unwire_pod, wire_pod
from felix_like.routes import RouteManager, render_routes

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not bird_available(), reason="BIRD 2 is not installed")]

POOL = "10.244.0.0/16"
BLOCK = "10.244.1.0/26"
FLOOD = 20_000


def tor_neighbor(**kw: object) -> NeighborSpec:
    base: dict[str, object] = dict(peer_ip="10.99.1.2", peer_as=65000, local_as=65001,
                                   local_address="10.99.1.1", router_id="10.99.1.1",
                                   type="node", hold_time=9, graceful_restart=0, name="tor")
    base.update(kw)
    return NeighborSpec(**base)  # type: ignore[arg-type]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def pair(namespaces: Namespaces) -> tuple[str, str]:
    tor, n1 = namespaces("tor"), namespaces("n1")
    link(tor, "10.99.1.2/30", n1, "10.99.1.1/30")
    return tor, n1


@pytest.fixture
def stop_list() -> Iterator[list[Bird | SpeakerProcess]]:
    procs: list[Bird | SpeakerProcess] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            if isinstance(p, SpeakerProcess):
                p.stop(drain=False)
            else:
                p.stop()


def flood_prefixes() -> list[str]:
    """20,000 /32s inside the pool (10.244.16.0 onwards), none in our block."""
    base = int(ipaddress.ip_address("10.244.16.0"))
    return [f"{ipaddress.ip_address(base + i)}/32" for i in range(FLOOD)]


def test_prefix_flood_is_bounded_filtered_and_logged(
        pair: tuple[str, str], tmp_path: Path, stop_list: list[Bird | SpeakerProcess]) -> None:
    tor, n1 = pair
    hostile = ["10.244.0.0/15", "10.0.0.0/8", "0.0.0.0/0",  # supernets of the pool
               "192.168.0.0/24", "172.16.5.0/24",  # outside every pool
               POOL]  # the pool's own CIDR: inside, accepted
    bird = Bird(tor, tmp_path / "bird", "10.99.0.254", 65000,
                peers=[BirdPeer("n1", "10.99.1.1", 65001, "10.99.1.2")],
                statics=[*hostile, *flood_prefixes()])
    sp = SpeakerProcess("n1", n1, tmp_path / "n1", [tor_neighbor()], [BLOCK], [POOL], [BLOCK])
    stop_list += [bird, sp]
    bird.start()
    sp.start()
    assert sp.proc is not None
    wait_for(lambda: bird.established("n1"), 30, "session with the flooding ToR")
    time.sleep(0.5)
    rss0 = rss_kib(sp.proc.pid)
    t0 = time.monotonic()

    def at_limit() -> bool:
        sp.poll()
        return len(sp.learned) >= DEFAULT_MAX_PREFIXES

    wait_for(at_limit, 40, f"{DEFAULT_MAX_PREFIXES} prefixes learned", 0.1)
    # Let the rest of the flood arrive (the count of dropped announcements settles): the
    # table must not grow beyond the limit.
    last, st = "", sp.peer_status()[0]
    while st.get("info", "") != last and time.monotonic() - t0 < 40:
        last = st.get("info", "")
        time.sleep(1.0)
        st = sp.peer_status()[0]
    took = time.monotonic() - t0
    sp.poll()
    rss1 = rss_kib(sp.proc.pid)
    learned = sp.learned
    log = (tmp_path / "n1" / "owner.log").read_text()
    print(f"flood of {FLOOD + len(hostile)} prefixes: {len(learned)} installable, "
          f"dropping settled after {took:.1f}s; owner RSS {rss0 // 1024} -> "
          f"{rss1 // 1024} MiB; peer status {st}")
    assert len(learned) == DEFAULT_MAX_PREFIXES
    assert st["state"] == "Established" and st["prefixesIn"] == DEFAULT_MAX_PREFIXES
    # Which ones: the pool CIDR itself came first (BIRD sends its statics in order) and
    # no supernet, nothing outside the pool, nothing of our block.
    pool = ipaddress.ip_network(POOL)
    for p in learned:
        net = ipaddress.ip_network(p)
        assert net.subnet_of(pool) and not net.subnet_of(  # type: ignore[arg-type]
            ipaddress.ip_network(BLOCK)), p  # type: ignore[arg-type]
    assert POOL in learned
    for p in hostile[:5]:
        assert p not in learned
    assert "max-prefix 10000 reached" in st["info"], st
    assert log.count("reached the limit of 10000 prefixes") == 1, log[-2000:]
    assert took < 40 and rss1 - rss0 < 200 * 1024, (took, rss0, rss1)


def test_md5_wrong_password_never_establishes(
        pair: tuple[str, str], tmp_path: Path, stop_list: list[Bird | SpeakerProcess]) -> None:
    tor, n1 = pair
    bird = Bird(tor, tmp_path / "bird", "10.99.0.254", 65000,
                peers=[BirdPeer("n1", "10.99.1.1", 65001, "10.99.1.2", "not-the-secret")])
    sp = SpeakerProcess("n1", n1, tmp_path / "n1", [tor_neighbor(md5_password="s3cret-md5")],
                        [BLOCK], [POOL], [BLOCK])
    stop_list += [bird, sp]
    bird.start()
    sp.start()
    deadline = time.monotonic() + 10  # > 3 connect retries each side, > the hold time
    states = set()
    while time.monotonic() < deadline:
        states.add(bird.protocol("n1")[2])
        assert not bird.established("n1"), "established with a wrong MD5 password"
        time.sleep(0.25)
    routes = bird.routes()
    assert BLOCK not in routes, routes
    st = sp.peer_status()[0]
    assert st["state"] != "Established", st
    # The kernel drops the unsigned/badly signed segments (TCP-MD5 mismatch).
    print(f"MD5 wrong password: never established in 10 s (BIRD states {sorted(states)}, "
          f"speaker {st['state']})")
    # Control: the same lab with the right password establishes.
    bird.peers = [BirdPeer("n1", "10.99.1.1", 65001, "10.99.1.2", "s3cret-md5")]
    bird.reconfigure()
    wait_for(lambda: bird.established("n1"), 30, "established with the right password")
    wait_for(lambda: BLOCK in bird.routes(), 10, "block at the ToR")


def test_block_size_32_pod_route_replaces_own_blackhole(namespaces: Namespaces) -> None:
    """The route manager, the one writer of a pod's /32, replaces the one-address block's
    blackhole at the pod's prefix; a route of another protocol there is never touched."""
    node, pod, other = namespaces("node"), namespaces("pod"), namespaces("pod")
    ip = "10.244.9.7"
    ipr = open_iproute(node)
    try:
        routes_mgr = RouteManager(ipr)
        routes_mgr.mark_in_sync()
        # The agent's blackhole of the one-address block.
        routes_mgr.set_desired(render_routes([], [f"{ip}/32"], {}))
        assert not routes_mgr.apply().failed
        assert "blackhole" in sh("ip", "-n", node, "route", "show", f"{ip}/32")
        host_if = host_veth_name("net", "c32", "eth0")
        w = wire_pod(node, f"/var/run/netns/{pod}", "eth0", host_if,
                     [ipaddress.ip_interface(f"{ip}/32")], 1400, host_routes=False)
        routes_mgr.set_desired(render_routes([(f"{ip}/32", host_if)], [f"{ip}/32"], {}))
        res = routes_mgr.apply()
        assert [r.dst for r in res.replaced] == [f"{ip}/32"] and not res.failed, res
        routes = json.loads(sh("ip", "-n", node, "-j", "route", "show", f"{ip}/32"))
        assert len(routes) == 1 and routes[0].get("dev") == host_if, routes
        assert routes[0].get("protocol") in ("80", "l3fabric") and routes[0].get("type") in (
            None, "unicast"), routes
        sh("ip", "-n", node, "addr", "add", "169.254.1.1/32", "dev", "lo")
        assert subprocess.run(["ip", "netns", "exec", node, "ping", "-c1", "-W1", ip],
                              capture_output=True).returncode == 0, "pod not reachable"
        # A blackhole not ours at another pod's prefix: the pod's route is refused.
        ip2 = "10.244.9.8"
        sh("ip", "-n", node, "route", "add", "blackhole", f"{ip2}/32", "proto", "static")
        host_if2 = host_veth_name("net", "c33", "eth0")
        w2 = wire_pod(node, f"/var/run/netns/{other}", "eth0", host_if2,
                      [ipaddress.ip_interface(f"{ip2}/32")], 1400, host_routes=False)
        routes_mgr.set_desired(render_routes(
            [(f"{ip}/32", host_if), (f"{ip2}/32", host_if2)], [f"{ip}/32"], {}))
        res = routes_mgr.apply()
        assert [r.dst for r in res.failed] == [f"{ip2}/32"], res
        assert "blackhole" in sh("ip", "-n", node, "route", "show", f"{ip2}/32")
        assert unwire_pod(node, w2.host_if, w2.addresses, host_routes=False) is True
        # A wiring that writes its own route (no route manager) meets the pod's route.
        with pytest.raises(Exception, match="already routed on this node"):
            wire_pod(node, f"/var/run/netns/{other}", "eth0",
                     host_veth_name("net", "c34", "eth0"),
                     [ipaddress.ip_interface(f"{ip}/32")], 1400)
        assert json.loads(sh("ip", "-n", node, "-j", "route", "show", f"{ip}/32"))[0]["dev"] \
            == host_if
        assert unwire_pod(node, w.host_if, w.addresses, host_routes=False) is True
    finally:
        ipr.close()
