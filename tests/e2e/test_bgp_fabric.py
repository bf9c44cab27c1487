"""BGP with the real agent: ToR racks, full mesh, route reflector; real packets.

Every node runs the real ``fabric-agent`` in its own namespace (it starts ExaBGP itself),
the ToRs are BIRD 2, pods are wired by the real CNI shim, and traffic is real ICMP. The
topologies are built by `helpers.fabric`; everything is removed at the end, also on
failure (ExaBGP outlives the agent, so the fabric runs ``fabric-agent --cleanup``).

The two-rack test reuses one topology for several checks, in order: sessions, blocks
and a borrowed /32 at the ToRs, ECMP between the ToRs, reachability, no encapsulation
on the wire, the import filter against a ToR announcing nonsense, kill -9 of an agent
(no session reset, no ping lost), and finally node removal (withdrawn everywhere).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from itertools import permutations
from pathlib import Path

import pytest
from helpers.bird import kernel_routes
from helpers.fabric import Fabric, Pod, lan, sh, two_racks, wait_for
from helpers.procs import running

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("bird", "birdc", "etcd", "tcpdump")),
    reason="needs BIRD 2 (bird2), etcd (etcd-server) and tcpdump")

R1_BLOCK = "10.244.0.0/26"  # pool r1 has exactly this one block: r1a claims it, r1b borrows
OUTSIDE = "192.168.50.0/24"  # outside every pool
PART_OF_R1_BLOCK = "10.244.0.32/27"  # a piece of r1a's own block, not a host route


@pytest.fixture
def fabric(netns: Callable[[str], str], etcd: EmbeddedEtcd,
           tmp_path: Path) -> Iterator[Fabric]:
    fab = Fabric(netns, etcd, tmp_path)
    try:
        yield fab
    finally:
        fab.close()


def all_pairs(pods: list[Pod]) -> list[tuple[Pod, Pod]]:
    return list(permutations(pods, 2))


def assert_all_reach(fab: Fabric, pods: list[Pod]) -> None:
    bad = fab.unreachable(all_pairs(pods))
    assert not bad, f"unreachable: {bad}\n{fab.diagnostics()}"


def wait_all_learn_each_other(fab: Fabric) -> None:
    """Every node learns every other node's block with its owner's address as next hop
    (straight from it on the LAN, or kept by a reflector)."""
    blocks = {n: fab.nodes[n].claimed_block() for n in fab.nodes}
    for me in fab.nodes.values():
        want = {b: f"via {fab.nodes[n].address} " for n, b in blocks.items() if n != me.name}
        wait_for(lambda m=me, w=want: all(  # type: ignore[misc]
            m.routes("81").get(b, "").startswith(v) for b, v in w.items()), 30,
            f"{me.name} learns {want}", 0.1, fab.diagnostics)


# -- two racks, AS per rack -------------------------------------------------------------


def test_two_racks_tor_peering(fabric: Fabric) -> None:
    fab = fabric
    two_racks(fab, per_rack=2, hold=9, tor_links=2,
              bogus=[OUTSIDE, R1_BLOCK, PART_OF_R1_BLOCK], bogus_to="r1a")
    fab.pool("r1", R1_BLOCK, 26, 'rack == "r1"')
    fab.pool("r2", "10.244.128.0/18", 26, 'rack == "r2"')
    tor1, tor2 = fab.tors["tor1"], fab.tors["tor2"]
    t0 = time.monotonic()
    fab.start_tors()
    fab.start_agents()
    pa = fab.add_pod("r1a", "pa")  # claims the only block of pool r1
    pb = fab.add_pod("r1b", "pb")  # no block left for r1b: borrows from r1a's block
    pc = fab.add_pod("r2a", "pc")
    pd = fab.add_pod("r2b", "pd")
    pods = [pa, pb, pc, pd]
    assert ipaddress.ip_address(pb.ip) in ipaddress.ip_network(R1_BLOCK), pb

    # Sessions: every node with its ToR only, the ToRs with each other over both links.
    for tor, names in ((tor1, ["r1a", "r1b", "tor2_0", "tor2_1"]),
                       (tor2, ["r2a", "r2b", "tor1_0", "tor1_1"])):
        for name in names:
            wait_for(lambda t=tor, n=name: t.established(n), 30,  # type: ignore[misc]
                     f"{tor.name}: session {name} established", 0.2, fab.diagnostics)
    for node in fab.nodes.values():
        status = fab.get(f"status/nodes/{node.name}")
        peers = status["status"]["bgp"]["peers"] if status else []
        assert [p["peerIP"] for p in peers] == [node.address[:-1] + "2"], peers

    # A claimed block and a borrowed /32 at both ToRs, each via its node (or ToR 1).
    c_block = fab.nodes["r2a"].claimed_block()
    d_block = fab.nodes["r2b"].claimed_block()
    want1 = {R1_BLOCK: {"10.99.10.1"}, f"{pb.ip}/32": {"10.99.11.1"}}
    wait_for(lambda: all(tor1.routes().get(p) == v for p, v in want1.items()), 20,
             "r1a's block and r1b's borrowed /32 at ToR 1", 0.2,
             lambda: tor1.birdc("show", "route"))
    wait_for(lambda: {R1_BLOCK, f"{pb.ip}/32", c_block, d_block} <= tor2.routes().keys(), 20,
             "every block and the /32 at ToR 2", 0.2, lambda: tor2.birdc("show", "route"))
    # ECMP: ToR 1 reaches rack 2's blocks over both ToR links.
    wait_for(lambda: {"10.98.0.2", "10.98.0.6"} <= set(
        re.findall(r"nexthop via (\S+)", kernel_routes(tor1.ns).get(c_block, ""))), 20,
        f"two next hops for {c_block} in ToR 1's kernel", 0.2,
        lambda: kernel_routes(tor1.ns).get(c_block, ""))
    # The borrowed /32 beats r1a's blackhole at r1a itself.
    wait_for(lambda: "10.99.10.2" in fab.nodes["r1a"].routes("81").get(f"{pb.ip}/32", ""),
             20, "the borrowed /32 learned by r1a")

    assert_all_reach(fab, pods)
    print(f"two racks: sessions, routes and reachability in {time.monotonic() - t0:.1f}s")

    check_unencapsulated_on_the_wire(fab, src=pc, dst=pa)
    check_import_filter(fab)
    check_agent_kill9_keeps_sessions_and_pings(fab, pods)
    check_node_removal_withdraws(fab, "r2b", d_block, pods)


def check_unencapsulated_on_the_wire(fab: Fabric, src: Pod, dst: Pod) -> None:
    """On ToR 1's link to r1a, the ICMP packet carries the pod addresses as its (outer)
    source and destination: the BPF filter matches the outermost IP header only."""
    tor1 = fab.tors["tor1"]
    ifname = next(line.split("@")[0].split()[1] for line in
                  sh("ip", "-n", tor1.ns, "-o", "addr", "show").splitlines()
                  if "10.99.10.2/30" in line)
    cap = subprocess.Popen(
        ["ip", "netns", "exec", tor1.ns, "tcpdump", "-n", "-l", "-i", ifname, "-c", "3",
         f"icmp and src host {src.ip} and dst host {dst.ip}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # tcpdump attaches its filter
        sh("ip", "netns", "exec", src.ns, "ping", "-c", "3", "-i", "0.2", dst.ip)
        out, err = cap.communicate(timeout=10)
    finally:
        cap.kill()
    lines = [ln for ln in out.splitlines() if "ICMP echo request" in ln]
    assert len(lines) == 3, out + err
    assert all(f"IP {src.ip} > {dst.ip}: ICMP echo request" in ln for ln in lines), lines


def check_import_filter(fab: Fabric) -> None:
    """ToR 1 announces to r1a a prefix outside every pool, r1a's own block and a piece of
    it: BIRD did send them, r1a installed none (its block stays a blackhole)."""
    tor1, r1a = fab.tors["tor1"], fab.nodes["r1a"]
    sent = tor1.routes("export", "r1a")
    assert {OUTSIDE, R1_BLOCK, PART_OF_R1_BLOCK} <= sent.keys(), tor1.birdc(
        "show", "route", "export", "r1a")
    time.sleep(0.5)
    learned = r1a.routes("81")
    assert not {OUTSIDE, R1_BLOCK, PART_OF_R1_BLOCK} & learned.keys(), learned
    fib = kernel_routes(r1a.ns)
    assert OUTSIDE not in fib and PART_OF_R1_BLOCK not in fib, fib
    assert fib.get(R1_BLOCK, "").startswith("blackhole"), fib.get(R1_BLOCK)
    # Nobody else got them, and the ToR still forwards r1a's block to r1a.
    assert OUTSIDE not in fab.nodes["r1b"].routes("81")
    assert "via 10.99.10.1" in kernel_routes(tor1.ns).get(R1_BLOCK, "")


def check_agent_kill9_keeps_sessions_and_pings(fab: Fabric, pods: list[Pod]) -> None:
    """kill -9 of r1a's agent and a restart: ExaBGP and its session live on (BIRD's
    TCP connection unchanged), and 10 ms pings to and from r1a's pod lose nothing."""
    tor1, r1a = fab.tors["tor1"], fab.nodes["r1a"]
    pa, pb, pc, pd = pods
    session = tor1.session_id("r1a")
    assert session, "no TCP connection for the established session"
    exabgp = r1a.exabgp_pid()
    monitors = [subprocess.Popen(["ip", "-n", ns, "monitor", "route"], stdout=subprocess.PIPE,
                                 text=True) for ns in (r1a.ns, tor1.ns)]
    pings = [subprocess.Popen(
        ["ip", "netns", "exec", s.ns, "ping", "-n", "-q", "-i", "0.01", "-w", "7", d.ip],
        stdout=subprocess.PIPE, text=True) for s, d in ((pc, pa), (pa, pd), (pb, pa))]
    try:
        time.sleep(1)
        r1a.kill(signal.SIGKILL)
        time.sleep(0.5)
        r1a.start(fab.etcd)
        outs = [p.communicate(timeout=30)[0] for p in pings]
    finally:
        for p in pings + monitors:
            p.kill()
    # The kernel's own routes of new veths may show up; ours (and the ToR's) must not move.
    changes = [ln for m in monitors for ln in m.communicate(timeout=10)[0].splitlines()
               if ln.strip() and "proto kernel" not in ln]
    assert r1a.exabgp_pid() == exabgp
    assert tor1.session_id("r1a") == session, "the ToR's session was reset"
    assert tor1.established("r1a")
    for out in outs:
        assert " 0% packet loss" in out, f"{out}\nroute changes: {changes}\n{r1a.log_tail()}"
    assert changes == [], f"routes changed during the restart: {changes}"
    # The restarted agent knows the session's state (replayed by the relay) ...
    def tor_peer_established() -> bool:
        st = fab.get("status/nodes/r1a")
        return bool(st) and [p["state"] for p in st["status"]["bgp"]["peers"]] == [
            "Established"]
    wait_for(tor_peer_established, 15, "r1a's NodeStatus: ToR peer Established", 0.2)
    # ... and is attached again: a new pod on r1a reaches rack 2.
    pe = fab.add_pod("r1a", "pe")
    assert not fab.unreachable([(pe, pd), (pd, pe)]), fab.diagnostics()
    assert tor1.session_id("r1a") == session


def check_node_removal_withdraws(fab: Fabric, name: str, block: str, pods: list[Pod]) -> None:
    """Delete the Node, release its blocks, stop its agent with --cleanup: its block goes
    from both ToRs and from every other node's kernel; the rest still reach each other."""
    exabgp = fab.nodes[name].exabgp_pid()
    res = fab.remove_node(name)
    assert exabgp is not None and not running(exabgp), "ExaBGP still runs"
    assert block in res.deleted_blocks + res.orphaned_blocks, res
    t0 = time.monotonic()

    def still_at() -> list[str]:
        where = [t.name for t in fab.tors.values() if block in t.routes()]
        return where + [n.name for n in fab.nodes.values()
                        if n.name != name and block in n.routes("81")]
    wait_for(lambda: not still_at(), 20, f"{block} withdrawn at both ToRs and every node",
             0.1, lambda: f"still at {still_at()}")
    print(f"node {name} removed: withdrawn everywhere in {time.monotonic() - t0:.2f}s")
    assert_all_reach(fab, [p for p in fab.pods.values() if p.node != name])


# -- one L2 segment: full mesh and route reflector --------------------------------------


def test_full_mesh_three_nodes(fabric: Fabric) -> None:
    fab = fabric
    lan(fab, 3)
    fab.pool("p", "10.244.0.0/16")
    fab.start_agents()
    pods = [fab.add_pod(f"n{i}", f"p{i}") for i in (1, 2, 3)]
    wait_all_learn_each_other(fab)
    for me in fab.nodes.values():
        status = fab.get(f"status/nodes/{me.name}")
        assert sorted(p["type"] for p in status["status"]["bgp"]["peers"]) == ["node-mesh"] * 2
    assert_all_reach(fab, pods)


def test_nodes_joining_later_learn_the_blocks_announced_before_them(fabric: Fabric) -> None:
    """A cluster grows: n1 starts alone and claims its block with no BGP neighbour at all,
    then n2 joins, then n3. ExaBGP gives an API route only to the neighbours it has when
    the command comes, so the joiners once never learned the blocks announced before
    them (n2 had no route to n1's pod, n3 none to n1's or n2's)."""
    fab = fabric
    lan(fab, 3)
    fab.pool("p", "10.244.0.0/16")
    joiners = {n: fab.nodes[n] for n in ("n2", "n3")}
    for n in joiners:
        fab.delete(f"nodes/{n}")
    fab.start_agents(["n1"])
    pods = [fab.add_pod("n1", "p1")]
    for name, old in joiners.items():
        fab.add_node(name, old.ns, old.ip)  # the operator adds the node as it joins
        fab.start_agents([name])
        pods.append(fab.add_pod(name, f"p{name[1]}"))
    wait_all_learn_each_other(fab)
    assert_all_reach(fab, pods)


def test_route_reflector_four_nodes(fabric: Fabric) -> None:
    fab = fabric
    lan(fab, 4, rr={"n1": "1.1.1.1"})
    fab.pool("p", "10.244.0.0/16")
    fab.start_agents()
    pods = [fab.add_pod(f"n{i}", f"p{i}") for i in (1, 2, 3, 4)]
    # Clients peer only with the reflector, yet learn every block with the owner's address
    # as next hop (the reflector keeps it).
    wait_all_learn_each_other(fab)
    for name in ("n2", "n3", "n4"):
        peers = fab.get(f"status/nodes/{name}")["status"]["bgp"]["peers"]
        assert [(p["peerIP"], p["type"]) for p in peers] == [("10.0.0.1", "rr")], peers
    assert_all_reach(fab, pods)
