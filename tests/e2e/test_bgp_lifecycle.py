"""BGP changes made while the agents run (real agents, BIRD ToRs, real pings).

Most e2e tests configure everything before the agents start; these change things under
running agents and check what a user sees: sessions at the ToR, routes in BIRD's table
and in the nodes' FIBs, pings between pods.

- a ToR BGPPeer added after the pods exist (the ToR learns the node's borrowed /32),
  the communities changed (the ToR sees them, no session reset), a borrowed address
  released (its /32 withdrawn everywhere, the address answers on its new node), the
  BGPPeer removed (session gone, nothing learned over it left in the node's FIB);
- a ToR BGPPeer removed while the node's agent restarts: the new agent must drop the
  routes its predecessor installed from that peer at once, not at the next datastore
  event or the 60 s resync (the speaker tells the agent its import table is in sync also
  when that table is empty, as it has been since the start);
- on a LAN mesh: holdTime, a node's AS number, nodeToNodeMesh off and on again, a
  node's BGP address changed, and the pool disabled: every node learns every block via
  its owner's current address, and the pods reach each other.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.fabric import API, Fabric, Pod, lan, sh, two_racks, wait_for

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("bird", "birdc", "etcd")),
    reason="needs BIRD 2 (bird2) and etcd (etcd-server)")

R1_BLOCK = "10.244.0.0/26"  # pool r1 has exactly this one block: r1a claims it, r1b borrows
R2_POOL = "10.244.128.0/18"


@pytest.fixture
def fabric(netns: Callable[[str], str], etcd: EmbeddedEtcd,
           tmp_path: Path) -> Iterator[Fabric]:
    with Fabric(netns, etcd, tmp_path) as fab:  # everything it made goes, also on failure
        yield fab


def racks_without_peer(fab: Fabric, node: str) -> None:
    """`two_racks` (one link between the ToRs), its pools, and no BGPPeer for ``node``
    yet (its ToR has the session configured and waits); ToRs and agents started."""
    two_racks(fab, per_rack=2, hold=9, tor_links=1)
    fab.pool("r1", R1_BLOCK, 26, 'rack == "r1"')
    fab.pool("r2", R2_POOL, 26, 'rack == "r2"')
    fab.delete(f"config/bgppeers/tor-{node}")
    fab.start_tors()
    fab.start_agents()


def reach(fab: Fabric, *pairs: tuple[Pod, Pod]) -> None:
    bad = fab.unreachable(pairs)
    assert not bad, f"unreachable: {bad}\n{fab.diagnostics()}"


def test_a_tor_peer_added_changed_and_removed_at_run_time(fabric: Fabric) -> None:
    fab = fabric
    racks_without_peer(fab, "r1b")
    tor1, tor2 = fab.tors["tor1"], fab.tors["tor2"]
    pa = fab.add_pod("r1a", "pa")
    pb = fab.add_pod("r1b", "pb")  # borrowed from r1a's block: a /32 only r1b announces
    pc = fab.add_pod("r2a", "pc")
    host = f"{pb.ip}/32"

    fab.bgp_peer("tor-r1b", "10.99.11.2", 65001, "r1b")
    wait_for(lambda: tor1.established("r1b"), 30, "tor1: session r1b", 0.2, fab.diagnostics)
    wait_for(lambda: tor1.routes().get(host) == {"10.99.11.1"} and host in tor2.routes(), 20,
             f"{host} at both ToRs", 0.2, lambda: tor1.birdc("show", "route"))
    reach(fab, (pb, pc), (pc, pb), (pa, pb))

    # Communities: every route re-announced with them, no session reset.
    sessions_before = {n: tor1.session_id(n) for n in ("r1a", "r1b")}
    assert all(sessions_before.values()), sessions_before
    fab.bgp_config(nodeToNodeMesh=False, holdTime=9, communities=["65001:100"])
    for prefix in (R1_BLOCK, host):
        wait_for(lambda p=prefix: "(65001,100)" in tor1.birdc(  # type: ignore[misc]
            "show", "route", "all", p), 20, f"{prefix} with community 65001:100 at tor1",
            0.2, lambda: tor1.birdc("show", "route", "all"))
    assert {n: tor1.session_id(n) for n in sessions_before} == sessions_before, (
        "a session was reset")
    assert all(tor1.established(n) for n in sessions_before)

    # The borrowed address released: its /32 goes; given to a pod on r1a it answers there.
    fab.del_pod("pb")
    wait_for(lambda: not ({host} & (tor1.routes().keys() | tor2.routes().keys()
                                    | fab.nodes["r1a"].routes("81").keys())), 20,
             f"{host} withdrawn at both ToRs and r1a", 0.2, fab.diagnostics)
    pe = fab.add_pod("r1a", "pe", ip=pb.ip)
    reach(fab, (pc, pe), (pe, pc))

    # The peer removed: the session goes, and what r1b learned over it leaves its FIB.
    pf = fab.add_pod("r1b", "pf")
    wait_for(lambda: f"{pf.ip}/32" in tor2.routes(), 20, "pf's /32 at tor2", 0.2)
    fab.delete("config/bgppeers/tor-r1b")
    wait_for(lambda: not tor1.established("r1b"), 30, "tor1: r1b down", 0.2, fab.diagnostics)
    wait_for(lambda: f"{pf.ip}/32" not in tor1.routes() | tor2.routes(), 20,
             "pf's /32 withdrawn", 0.2, lambda: tor1.birdc("show", "route"))
    wait_for(lambda: not fab.nodes["r1b"].routes("81"), 20, "r1b's FIB: nothing learned",
             0.2, lambda: str(fab.nodes["r1b"].routes("81")))
    # The NodeStatus is written on change, by its own task: the peer leaves it too.
    wait_for(lambda: fab.get("status/nodes/r1b")["status"]["bgp"]["peers"] == [], 10,
             "r1b's NodeStatus without the peer", 0.2,
             lambda: str(fab.get("status/nodes/r1b")["status"]["bgp"]))


def test_a_tor_peer_removed_while_the_agent_restarts_leaves_nothing_in_the_fib(
        fabric: Fabric) -> None:
    fab = fabric
    racks_without_peer(fab, "r1b")
    tor1 = fab.tors["tor1"]
    r1b = fab.nodes["r1b"]
    pa = fab.add_pod("r1a", "pa")
    pc = fab.add_pod("r2a", "pc")
    fab.bgp_peer("tor-r1b", "10.99.11.2", 65001, "r1b")
    pb = fab.add_pod("r1b", "pb")
    wait_for(lambda: {R1_BLOCK} < r1b.routes("81").keys(), 30,
             "r1b learns r1a's block and rack 2's via tor1", 0.2, fab.diagnostics)
    reach(fab, (pb, pc), (pa, pb))

    r1b.kill(signal.SIGTERM)
    fab.delete("config/bgppeers/tor-r1b")
    r1b.start(fab.etcd)
    wait_for(lambda: not tor1.established("r1b"), 30, "tor1: r1b down", 0.2, fab.diagnostics)
    wait_for(lambda: not r1b.routes("81"), 20, "r1b's FIB: nothing learned", 0.2,
             lambda: f"{r1b.routes('81')}\n{r1b.log_tail()}")

    # And back: the peer added again, r1b reaches rack 2 again.
    fab.bgp_peer("tor-r1b", "10.99.11.2", 65001, "r1b")
    wait_for(lambda: tor1.established("r1b"), 30, "tor1: r1b up", 0.2, fab.diagnostics)
    reach(fab, (pb, pc), (pc, pb))


# -- a LAN mesh --------------------------------------------------------------------------


def node_doc(name: str, ip: str, asn: int | None = None) -> dict[str, Any]:
    bgp: dict[str, Any] = {"ipv4Address": ip}
    if asn is not None:
        bgp["asNumber"] = asn
    return {"apiVersion": API, "kind": "Node", "metadata": {"name": name},
            "spec": {"bgp": bgp}}


def learned_via(fab: Fabric) -> dict[str, dict[str, str]]:
    """node -> learned prefix -> its (first) next hop, from the node's FIB."""
    return {n: {p: r.split()[1] for p, r in node.routes("81").items()}
            for n, node in fab.nodes.items()}


def sessions(fab: Fabric) -> dict[tuple[str, str], tuple[str, str]]:
    """(node, peer) -> (state, since) from the NodeStatus of every node."""
    out = {}
    for n in fab.nodes:
        for p in fab.get(f"status/nodes/{n}")["status"]["bgp"]["peers"]:
            out[(n, p["peerIP"])] = (p["state"], p["since"])
    return out


def change_and_wait_for_new_sessions(fab: Fabric, change: Callable[[], None],
                                     nodes: set[str]) -> None:
    """Apply ``change`` and wait until every session of ``nodes`` is Established again
    since the change (a changed definition re-establishes a session: until then the
    FIBs may still show the old state). NodeStatus gives ``since`` to the second, so the
    change waits until the clock is past every current session's second."""
    def now() -> str:
        return datetime.now(UTC).isoformat(timespec="seconds")
    latest = max((since for _, since in sessions(fab).values()), default="")
    wait_for(lambda: now() > latest, 5, "the next second", 0.05)
    t0 = now()
    change()

    def renewed() -> bool:
        mine = {k: v for k, v in sessions(fab).items() if k[0] in nodes}
        return bool(mine) and all(st == "Established" and since >= t0
                                  for st, since in mine.values())
    wait_for(renewed, 30, f"new sessions of {sorted(nodes)}", 0.2,
             lambda: str(sessions(fab)))


def test_mesh_changes_at_run_time(fabric: Fabric) -> None:
    fab = fabric
    lan(fab, 3)
    addr = {n: node.address for n, node in fab.nodes.items()}  # as each node's peers see it
    fab.pool("p", "10.244.0.0/16")
    fab.start_agents()
    pods = [fab.add_pod(n, f"p-{n}") for n in addr]
    blocks = {n: node.claimed_block() for n, node in fab.nodes.items()}

    def converged() -> bool:
        lv = learned_via(fab)
        return all(lv[me] == {blocks[o]: addr[o] for o in fab.nodes if o != me}
                   for me in fab.nodes)

    def check(what: str) -> None:
        wait_for(converged, 30, f"{what}: every block via its owner", 0.2,
                 lambda: f"{learned_via(fab)}\n{fab.diagnostics()}")
        bad = fab.unreachable([(a, b) for a in pods for b in pods if a is not b])
        assert not bad, f"{what}: unreachable {bad}"

    check("start")
    change_and_wait_for_new_sessions(fab, lambda: fab.bgp_config(holdTime=12), set(fab.nodes))
    check("holdTime changed")
    change_and_wait_for_new_sessions(
        fab, lambda: fab.put("nodes/n2", node_doc("n2", addr["n2"] + "/24", 65010)), {"n2"})
    assert {p["asNumber"] for p in fab.get("status/nodes/n2")["status"]["bgp"]["peers"]} \
        == {64512}
    check("n2's AS changed")
    fab.bgp_config(holdTime=12, nodeToNodeMesh=False)
    wait_for(lambda: not any(learned_via(fab).values()), 30, "mesh off: nothing learned",
             0.2, lambda: str(learned_via(fab)))
    change_and_wait_for_new_sessions(
        fab, lambda: fab.bgp_config(holdTime=12, nodeToNodeMesh=True), set(fab.nodes))
    check("mesh on again")
    n3 = fab.nodes["n3"]
    ifname = next(line.split()[1].split("@")[0] for line in
                  sh("ip", "-n", n3.ns, "-o", "addr").splitlines() if "10.0.0.3/24" in line)
    sh("ip", "-n", n3.ns, "addr", "add", "10.0.0.13/24", "dev", ifname)
    change_and_wait_for_new_sessions(
        fab, lambda: fab.put("nodes/n3", node_doc("n3", "10.0.0.13/24")), {"n3"})
    addr["n3"] = "10.0.0.13"
    check("n3's address changed")
    # Disabling the pool (the first step before deleting it) stops new addresses, not
    # the traffic of the pods holding one: the nodes once dropped the blocks learned in a
    # disabled pool. Every agent has seen the change when its ADD is refused.
    fab.put("config/ippools/p", {"apiVersion": API, "kind": "IPPool", "metadata": {"name": "p"},
                                 "spec": {"cidr": "10.244.0.0/16", "disabled": True}})
    for n in fab.nodes:
        proc = fab.spawn_pod(n, f"refused-{n}").proc
        assert proc.stdout is not None
        out = proc.stdout.read()  # its stdin is closed already
        assert proc.wait(60) != 0 and '"code": 100' in out, out
    check("pool disabled")
