"""Node-to-node BGP between ExaBGP speakers only (no ToR): full mesh, config reload without
resetting unaffected sessions, and a route-reflector topology where ExaBGP reflects."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.exabgp import SpeakerProcess, neighbor_json, run, wait_for

from bgp.config import desired_neighbors
from datastore import model

POOL = "10.244.0.0/16"


def block(i: int) -> str:
    return f"10.244.{i}.0/26"


def node(i: int, rr: str | None = None) -> model.Node:
    bgp: dict[str, Any] = {"ipv4Address": f"10.0.0.{i}/24"}
    if rr:
        bgp["routeReflectorClusterID"] = rr
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "Node",
                                "metadata": {"name": f"n{i}"}, "spec": {"bgp": bgp}})
    assert isinstance(res, model.Node)
    return res


BGPCONF = model.BGPConfiguration(model.Metadata("default"),
                                  model.BGPConfigurationSpec(hold_time=9))


def lan(netns: Callable[[str], str], n: int) -> list[str]:
    """n node namespaces on one bridge (10.0.0.i/24) in a switch namespace."""
    sw = netns("sw")
    run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", sw, "link", "set", "br0", "up")
    out = []
    for i in range(1, n + 1):
        ns = netns(f"n{i}")
        run("ip", "link", "add", f"fbm{i}", "netns", ns, "type", "veth", "peer", "name",
            f"sw{i}", "netns", sw)
        run("ip", "-n", sw, "link", "set", f"sw{i}", "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"10.0.0.{i}/24", "dev", f"fbm{i}")
        run("ip", "-n", ns, "link", "set", f"fbm{i}", "up")
        out.append(ns)
    return out


@pytest.fixture
def speakers() -> Iterator[list[SpeakerProcess]]:
    made: list[SpeakerProcess] = []
    yield made
    for sp in made:
        sp.stop(drain=False)


def start_all(nss: list[str], nodes: dict[str, model.Node], tmp: Path,
              made: list[SpeakerProcess]) -> list[SpeakerProcess]:
    for i, ns in enumerate(nss, 1):
        nb = desired_neighbors(f"n{i}", nodes, BGPCONF)
        sp = SpeakerProcess(f"n{i}", ns, tmp / f"n{i}", nb.values(), [block(i)], [POOL],
                            [block(i)])
        made.append(sp)
        sp.start()
    return made


def test_full_mesh_and_reload_keeps_unaffected_sessions(
        netns: Callable[[str], str], tmp_path: Path, speakers: list[SpeakerProcess]) -> None:
    nss = lan(netns, 3)
    nodes = {f"n{i}": node(i) for i in (1, 2, 3)}
    t0 = time.monotonic()
    sps = start_all(nss, nodes, tmp_path, speakers)
    for i, sp in enumerate(sps, 1):
        sp.wait_learned({block(j): [f"10.0.0.{j}"] for j in (1, 2, 3) if j != i}, 30)
    print(f"3-node mesh converged in {time.monotonic() - t0:.2f}s")
    assert all(r["state"] == "Established" for r in sps[0].peer_status())
    before = {peer: sps[0].session_id(peer) for peer in ("10.0.0.2", "10.0.0.3")}
    assert all(before.values()), before

    # Change only n1's session to n3 (hold time): n1-n2 must not be reset.
    nb = desired_neighbors("n1", nodes, BGPCONF)
    nb["10.0.0.3"] = dataclasses.replace(nb["10.0.0.3"], hold_time=12)
    (tmp_path / "n1-new.json").write_text(neighbor_json(nb.values()))
    sps[0].send(f"config {tmp_path / 'n1-new.json'}")

    def n3_reset() -> bool:
        st = {r["peerIP"]: r for r in sps[0].peer_status()}
        return bool(st["10.0.0.3"]["state"] == "Established"
                    and sps[0].session_id("10.0.0.3") not in (before["10.0.0.3"], set()))
    wait_for(n3_reset, 20, "n1-n3 re-established with the new hold time", interval=0.3)
    after = {r["peerIP"]: r for r in sps[0].peer_status()}
    assert sps[0].session_id("10.0.0.2") == before["10.0.0.2"], "n1-n2 was reset"
    assert after["10.0.0.2"]["state"] == "Established"
    sps[0].wait_learned({block(2): ["10.0.0.2"], block(3): ["10.0.0.3"]}, 20)

    # Export changes are incremental: a new block and a borrowed /32 reach both peers.
    sps[0].send(f"exports {block(1)},10.244.9.0/26,10.244.2.7/32")
    for i in (2, 3):
        want = {block(1): ["10.0.0.1"], "10.244.9.0/26": ["10.0.0.1"],
                "10.244.2.7/32": ["10.0.0.1"], block(5 - i): [f"10.0.0.{5 - i}"]}
        sps[i - 1].wait_learned(want, 10)


def test_route_reflector_four_nodes(netns: Callable[[str], str], tmp_path: Path,
                                    speakers: list[SpeakerProcess]) -> None:
    nss = lan(netns, 4)
    nodes = {f"n{i}": node(i, rr="1.1.1.1" if i == 1 else None) for i in (1, 2, 3, 4)}
    assert set(desired_neighbors("n2", nodes, BGPCONF)) == {"10.0.0.1"}
    t0 = time.monotonic()
    sps = start_all(nss, nodes, tmp_path, speakers)
    # Every client learns every other node's block, with the originating node as next hop,
    # although it only peers with the reflector.
    for i, sp in enumerate(sps, 1):
        sp.wait_learned({block(j): [f"10.0.0.{j}"] for j in (1, 2, 3, 4) if j != i}, 30)
    print(f"4-node route-reflector topology converged in {time.monotonic() - t0:.2f}s")
    # A client withdraws its block: the reflector withdraws the reflected copies.
    sps[3].send("exports ")
    sps[1].wait_learned({block(1): ["10.0.0.1"], block(3): ["10.0.0.3"]}, 10)
    sps[2].wait_learned({block(1): ["10.0.0.1"], block(2): ["10.0.0.2"]}, 10)
