"""bgp.config: each session's local address is the node's address on the peer's subnet."""

from __future__ import annotations

import ipaddress

from bgp.config import desired_neighbors, local_address_for, render_config
from datastore import model

RELAY = ["/usr/bin/python3", "-m", "bgp.relay", "--socket", "/run/x.sock"]
IF = ipaddress.IPv4Interface


def node(name: str, ip: str) -> model.Node:
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "Node",
                                "metadata": {"name": name},
                                "spec": {"bgp": {"ipv4Address": ip, "asNumber": 64512}}})
    assert isinstance(res, model.Node)
    return res


def peer(name: str, ip: str, on: str) -> model.BGPPeer:
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "BGPPeer",
                                "metadata": {"name": name},
                                "spec": {"peerIP": ip, "asNumber": 64512, "node": on}})
    assert isinstance(res, model.BGPPeer)
    return res


def conf() -> model.BGPConfiguration:
    res = model.parse_document({"apiVersion": model.API_VERSION, "kind": "BGPConfiguration",
                                "metadata": {"name": "default"},
                                "spec": {"nodeToNodeMesh": False}})
    assert isinstance(res, model.BGPConfiguration)
    return res


# The route-reflector lab: node1 has eth1 10.77.1.2/30 (rr1) and eth2 10.77.4.2/30 (rr2).
NODES = {"node1": node("node1", "10.77.1.2/30")}
PEERS = [peer("node1-rr1", "10.77.1.1", "node1"), peer("node1-rr2", "10.77.4.1", "node1")]
IFACES = ["172.20.22.11/24", "10.77.1.2/30", "10.77.4.2/30"]


def test_each_uplink_session_uses_that_uplinks_address() -> None:
    nb = desired_neighbors("node1", NODES, conf(), PEERS, local_addresses=IFACES)
    assert {ip: n.local_address for ip, n in nb.items()} == {
        "10.77.1.1": "10.77.1.2", "10.77.4.1": "10.77.4.2"}
    # the router id stays the BGP address on every session
    assert {n.router_id for n in nb.values()} == {"10.77.1.2"}
    text = render_config(nb, RELAY)
    rr2 = text[text.index("neighbor 10.77.4.1"):]
    assert "local-address 10.77.4.2;" in rr2.split("}")[0]


def test_without_interface_addresses_the_bgp_address_is_used() -> None:
    nb = desired_neighbors("node1", NODES, conf(), PEERS)
    assert {n.local_address for n in nb.values()} == {"10.77.1.2"}


def test_multi_hop_peer_and_longest_prefix() -> None:
    bgp = IF("10.0.0.1/24")
    ifaces = [IF("10.0.0.1/24"), IF("10.0.0.129/25"), IF("192.168.5.2/30")]
    assert local_address_for("10.9.9.9", bgp, ifaces) == "10.0.0.1"  # multi-hop
    assert local_address_for("10.0.0.200", bgp, ifaces) == "10.0.0.129"  # /25 beats /24
    assert local_address_for("10.0.0.20", bgp, ifaces) == "10.0.0.1"
    assert local_address_for("192.168.5.1", bgp, ifaces) == "192.168.5.2"
    # a tie between the BGP address's subnet and another address on it: the BGP address
    assert local_address_for("10.0.0.7", bgp, [IF("10.0.0.99/24")]) == "10.0.0.1"


def test_node_mesh_sessions_pick_the_shared_link() -> None:
    nodes = {"a": node("a", "10.1.0.1/24"), "b": node("b", "10.1.0.2/24"),
             "c": node("c", "10.2.0.3/24")}
    nb = desired_neighbors("c", nodes, local_addresses=["10.2.0.3/24", "10.1.0.3/24"])
    assert {ip: n.local_address for ip, n in nb.items()} == {
        "10.1.0.1": "10.1.0.3", "10.1.0.2": "10.1.0.3"}
    # IPv6 interface addresses are ignored, not an error
    assert desired_neighbors("c", nodes, local_addresses=["fd00::1/64"]) == desired_neighbors(
        "c", nodes)
