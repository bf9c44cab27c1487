"""bgp.config: neighbour tables for mesh, explicit peers and route reflectors, and the text."""

from __future__ import annotations

from typing import Any

import pytest

from bgp.config import desired_neighbors, diff_neighbors, render_config, render_neighbor
from datastore import model

RELAY = ["/usr/bin/python3", "-m", "bgp.relay", "--socket", "/run/x.sock"]


def node(name: str, ip: str, asn: int | None = None, rr: str | None = None,
         labels: dict[str, str] | None = None) -> model.Node:
    bgp: dict[str, Any] = {"ipv4Address": ip}
    if asn:
        bgp["asNumber"] = asn
    if rr:
        bgp["routeReflectorClusterID"] = rr
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "Node",
                                "metadata": {"name": name, "labels": labels or {}},
                                "spec": {"bgp": bgp}})
    assert isinstance(res, model.Node)
    return res


def peer(name: str, **spec: Any) -> model.BGPPeer:
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "BGPPeer",
                                "metadata": {"name": name}, "spec": spec})
    assert isinstance(res, model.BGPPeer)
    return res


def bgpconf(**spec: Any) -> model.BGPConfiguration:
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "BGPConfiguration",
                                "metadata": {"name": "default"}, "spec": spec})
    assert isinstance(res, model.BGPConfiguration)
    return res


NODES = {f"n{i}": node(f"n{i}", f"10.0.0.{i}/24", labels={"rack": "a" if i < 3 else "b"})
         for i in range(1, 5)}


def test_full_mesh_by_default() -> None:
    nb = desired_neighbors("n1", NODES)
    assert sorted(nb) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    n2 = nb["10.0.0.2"]
    assert (n2.type, n2.peer_as, n2.local_as, n2.router_id, n2.local_address) == (
        "node-mesh", 64512, 64512, "10.0.0.1", "10.0.0.1")
    assert n2.ibgp and not n2.rr_client


def test_mesh_off_only_explicit_peers_by_node_and_selector() -> None:
    peers = [peer("tor-a", peerIP="10.9.0.1", asNumber=65000, nodeSelector="rack == 'a'"),
             peer("special", peerIP="10.9.0.9", asNumber=65009, node="n4"),
             peer("everyone", peerIP="10.9.0.7", asNumber=65007)]
    cfg = bgpconf(nodeToNodeMesh=False)
    assert sorted(desired_neighbors("n1", NODES, cfg, peers)) == ["10.9.0.1", "10.9.0.7"]
    n4 = desired_neighbors("n4", NODES, cfg, peers)
    assert sorted(n4) == ["10.9.0.7", "10.9.0.9"]
    assert n4["10.9.0.9"].type == "node" and n4["10.9.0.7"].type == "global"


def test_as_per_node_hold_time_graceful_restart_md5_ttl() -> None:
    nodes = {"a": node("a", "10.1.1.1/30", asn=65001), "b": node("b", "10.1.2.1/30", 65002)}
    cfg = bgpconf(holdTime=9, gracefulRestart={"enabled": True, "restartTime": 30})
    peers = [peer("tor", peerIP="10.1.1.2", asNumber=65000, node="a", password="s3cret",
                  ttlSecurity=1)]
    nb = desired_neighbors("a", nodes, cfg, peers)
    assert nb["10.1.2.1"].peer_as == 65002 and nb["10.1.2.1"].local_as == 65001
    tor = nb["10.1.1.2"]
    assert (tor.hold_time, tor.graceful_restart, tor.md5_password, tor.ttl_security) == (
        9, 30, "s3cret", 1)
    text = render_config(nb, RELAY)
    block = text[text.index("neighbor 10.1.1.2"):]
    for want in ("local-as 65001;", "peer-as 65000;", "hold-time 9;", 'md5-password "s3cret";',
                 "outgoing-ttl 255;", "incoming-ttl 255;",
                 "manual-eor true;",  # the speaker sends End-of-RIB after its exports
                 "capability { route-refresh; graceful-restart 30; }",
                 "api { processes [ relay ]; neighbor-changes; "
                 "receive { parsed; update; refresh; } }"):
        assert want in block
    assert "run /usr/bin/python3 -m bgp.relay --socket /run/x.sock;" in text
    assert "encoder json;" in text


def test_route_reflectors_peer_with_everyone_clients_only_with_reflectors() -> None:
    nodes = dict(NODES)
    nodes["n1"] = node("n1", "10.0.0.1/24", rr="1.1.1.1")
    nodes["n2"] = node("n2", "10.0.0.2/24", rr="1.1.1.1")
    rr = desired_neighbors("n1", nodes)
    assert {ip: n.type for ip, n in rr.items()} == {
        "10.0.0.2": "rr-mesh", "10.0.0.3": "rr-client", "10.0.0.4": "rr-client"}
    assert rr["10.0.0.3"].rr_client and rr["10.0.0.3"].cluster_id == "1.1.1.1"
    assert not rr["10.0.0.2"].rr_client
    client = desired_neighbors("n3", nodes)
    assert {ip: n.type for ip, n in client.items()} == {"10.0.0.1": "rr", "10.0.0.2": "rr"}


def test_node_without_bgp_address_has_no_sessions_and_is_skipped() -> None:
    bare = model.parse_document({"apiVersion": model.API_VERSION, "kind": "Node",
                                 "metadata": {"name": "bare"}})
    assert isinstance(bare, model.Node)
    nodes = {**NODES, "bare": bare}
    assert desired_neighbors("bare", nodes) == {}
    assert len(desired_neighbors("n1", nodes)) == 3
    assert desired_neighbors("ghost", nodes) == {}


def test_diff_names_only_the_sessions_a_change_touches() -> None:
    old = desired_neighbors("n1", NODES)
    nodes = {k: v for k, v in NODES.items() if k != "n4"}
    nodes["n3"] = node("n3", "10.0.0.3/24", asn=65003)
    nodes["n5"] = node("n5", "10.0.0.5/24")
    d = diff_neighbors(old, desired_neighbors("n1", nodes))
    assert (d.added, d.removed, d.changed) == (
        frozenset({"10.0.0.5"}), frozenset({"10.0.0.4"}), frozenset({"10.0.0.3"}))
    assert diff_neighbors(old, desired_neighbors("n1", NODES)).unchanged


def test_render_is_deterministic_and_rejects_injection() -> None:
    nb = desired_neighbors("n1", NODES)
    assert render_config(nb, RELAY) == render_config(dict(reversed(nb.items())), RELAY)
    assert render_config(nb, RELAY).index("10.0.0.2") < render_config(nb, RELAY).index(
        "10.0.0.4")
    with pytest.raises(ValueError):
        render_config(nb, ["/bin/sh", "-c", "rm -rf /;"])
    bad = desired_neighbors("n1", NODES, None,
                            [peer("p", peerIP="10.9.9.9", asNumber=1, password='a"b')])
    with pytest.raises(ValueError):
        render_config(bad, RELAY)


def test_max_prefixes_per_peer_else_the_configurations_for_every_session() -> None:
    peers = [peer("tor", peerIP="10.9.0.1", asNumber=65000, node="n1", maxPrefixes=50),
             peer("other", peerIP="10.9.0.2", asNumber=65000)]
    # Defaults: 10,000 for every session.
    nb = desired_neighbors("n1", NODES, None, peers)
    assert {ip: n.max_prefixes for ip, n in nb.items()} == {
        "10.0.0.2": 10_000, "10.0.0.3": 10_000, "10.0.0.4": 10_000,
        "10.9.0.1": 50, "10.9.0.2": 10_000}
    # The configuration's maxPrefixes: the mesh and BGPPeers without one of their own.
    cfg = bgpconf(maxPrefixes=4321)
    nb2 = desired_neighbors("n1", NODES, cfg, peers)
    assert {ip: n.max_prefixes for ip, n in nb2.items()} == {
        "10.0.0.2": 4321, "10.0.0.3": 4321, "10.0.0.4": 4321, "10.9.0.1": 50, "10.9.0.2": 4321}
    # Route-reflector sessions too.
    nodes = {**NODES, "n1": node("n1", "10.0.0.1/24", rr="1.1.1.1")}
    assert {n.max_prefixes for n in desired_neighbors("n3", nodes, cfg).values()} == {4321}
    # The limit is the import table's, not ExaBGP's: not rendered, and no session changes.
    assert render_config(nb, RELAY) == render_config(nb2, RELAY)
    assert "4321" not in render_config(nb2, RELAY)
    assert diff_neighbors(nb, nb2).unchanged


def test_a_node_with_an_ipv6_address_carries_ipv6_over_its_sessions() -> None:
    def node(name: str, v4: str, v6: str | None = None) -> model.Node:
        bgp: dict[str, object] = {"ipv4Address": v4}
        if v6:
            bgp["ipv6Address"] = v6
        return model.parse_document({"apiVersion": "l3fabric.io/v1", "kind": "Node",
                                     "metadata": {"name": name}, "spec": {"bgp": bgp}})

    nodes = {"n1": node("n1", "10.99.0.1/30", "fd99::1/64"), "n2": node("n2", "10.99.0.2/30")}
    mine = desired_neighbors("n1", nodes)["10.99.0.2"]
    assert mine.ipv6
    assert "family { ipv4 unicast; ipv6 unicast; }" in render_neighbor(mine)
    theirs = desired_neighbors("n2", nodes)["10.99.0.1"]
    assert not theirs.ipv6
    assert "family { ipv4 unicast; }" in render_neighbor(theirs)
