"""ClusterState: the syncer's events in, the indexes the calculation reads out.

Sequences of events (add, change, delete, re-add, values that do not validate) and what
the calculation then sees: a node's endpoints and blocks, the addresses in use, what
BGP exports, and which keys each policy consumer is told about. Nothing here sleeps.
"""

from __future__ import annotations

import json
from typing import Any

from test_agent_calc import aff, wep

from bgp.export import decode_block, export_prefixes, pool_cidrs
from datastore import keys, model
from datastore.fake import FakeDatastore
from datastore.syncer import Deleted, Syncer, Update
from felix_like import calc
from felix_like.state import ClusterState, decode_value
from ipam.block import AllocationAttrs, Block, affinity_of


def pool_doc(name: str, cidr: str) -> bytes:
    return json.dumps({"apiVersion": model.API_VERSION, "kind": "IPPool",
                       "metadata": {"name": name},
                       "spec": {"cidr": cidr, "blockSize": 26}}).encode()


def test_endpoints_by_node_and_by_address_follow_add_change_delete_and_readd() -> None:
    st = ClusterState()
    k1, a = wep("n1", "default", "a", "10.0.0.1/32", "fab1")
    k2, b = wep("n2", "default", "b", "10.0.0.2/32", "fab2")
    assert st.apply(Update(k1, a, 1)) and st.apply(Update(k2, b, 2))
    assert dict(st.endpoints_of("n1")) == {k1: a}
    assert st.endpoints_at("10.0.0.2") == {k2}
    assert st.addresses_in_use() == {"10.0.0.1", "10.0.0.2"}
    gen = st.generation
    # The same value again (a watch echo of what the handler reported): no change.
    assert not st.apply(Update(k1, wep("n1", "default", "a", "10.0.0.1/32", "fab1")[1], 3))
    assert st.generation == gen
    # A new address for the same key: the old one is free again.
    _, a2 = wep("n1", "default", "a", "10.0.0.9/32", "fab1")
    assert st.apply(Update(k1, a2, 4))
    assert st.endpoints_at("10.0.0.1") == set() and st.endpoints_at("10.0.0.9") == {k1}
    assert st.apply(Deleted(k1, 5))
    assert st.endpoints_of("n1") == {} and st.addresses_in_use() == {"10.0.0.2"}
    assert not st.apply(Deleted(k1, 6)), "a second delete changes nothing"
    assert st.apply(Update(k1, a, 7))
    assert dict(st.endpoints_of("n1")) == {k1: a}
    assert calc.desired_routes("n1", st) == calc.desired_routes(
        "n1", ClusterState.of({k1: a, k2: b}))
    # Two endpoints claiming one address are both found under it.
    k3, c = wep("n1", "default", "c", "10.0.0.2/32", "fab3")
    st.put(k3, c)
    assert st.endpoints_at("10.0.0.2") == {k2, k3}
    st.remove(k2)
    assert st.endpoints_at("10.0.0.2") == {k3}


def test_affinities_blocks_and_pools_make_what_bgp_exports() -> None:
    st = ClusterState()
    st.put(*aff("n1", "10.244.1.0/26", "pending"))
    assert st.confirmed_blocks("n1") == [] and export_prefixes("n1", st) == set()
    st.put(*aff("n1", "10.244.1.0/26", "confirmed"))
    assert st.confirmed_blocks("n1") == ["10.244.1.0/26"]
    other = Block.new("10.244.2.0/26", affinity_of("n2"))
    other.assign_ordinal(3, AllocationAttrs("h", node="n1"))
    bkey = keys.ipam_block("10.244.2.0/26")
    st.put(bkey, decode_block(other.to_json()))
    assert [b.cidr for b in st.blocks_of("n2")] == ["10.244.2.0/26"]
    assert export_prefixes("n1", st) == {"10.244.1.0/26", "10.244.2.3/32"}
    other.release(3)  # the borrowed address is freed: its /32 goes
    st.put(bkey, decode_block(other.to_json()))
    assert export_prefixes("n1", st) == {"10.244.1.0/26"}
    other.assign_ordinal(4, AllocationAttrs("h2", node="n1"))
    st.put(bkey, decode_block(other.to_json()))
    st.remove(keys.ipam_affinity("n1", "10.244.1.0/26"))
    assert export_prefixes("n1", st) == {"10.244.2.4/32"}
    room, orphans = st.block_room(), st.orphan_blocks()  # live views, for IPAM
    assert room == {"10.244.2.0/26": 63} and not orphans
    orphan = Block.new("10.244.3.0/26", None)
    st.put(keys.ipam_block("10.244.3.0/26"), decode_block(orphan.to_json()))
    assert room["10.244.3.0/26"] == 64 and set(orphans) == {"10.244.3.0/26"}
    st.remove(keys.ipam_block("10.244.3.0/26"))
    st.remove(bkey)
    assert export_prefixes("n1", st) == set() and st.blocks_of("n2") == []
    assert room == {} and not orphans
    pkey = keys.ippool("a")
    st.put(pkey, decode_value(pkey, pool_doc("a", "10.244.0.0/16")))
    assert pool_cidrs(st) == ["10.244.0.0/16"]
    assert [p.name for p in calc.ipam_inputs("n1", st).pools] == ["a"]
    st.remove(pkey)
    assert pool_cidrs(st) == [] and calc.ipam_inputs("n1", st).pools == ()


async def test_an_invalid_value_keeps_the_last_good_one() -> None:
    """The syncer emits no Update for a value that does not validate: the state keeps the
    pool as it was until a valid value or a delete."""
    ds = FakeDatastore()
    syncer: Syncer[Any] = Syncer(ds, keys.PREFIX, decode_value)
    st = ClusterState()

    def feed(events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, Update | Deleted):
                st.apply(ev)

    pkey = keys.ippool("a")
    await ds.put(pkey, pool_doc("a", "10.244.0.0/16"))
    await ds.put(keys.ipam_handle("h1"), b"{}")  # not read by the calculation
    feed(await syncer.resync())
    assert pool_cidrs(st) == ["10.244.0.0/16"]
    assert keys.ipam_handle("h1") not in st.values
    await ds.put(pkey, b'{"kind": "IPPool"')
    feed(syncer.apply(ds.history[-1]))
    assert pool_cidrs(st) == ["10.244.0.0/16"] and pkey in syncer.errors
    await ds.put(pkey, pool_doc("a", "10.245.0.0/16"))
    feed(syncer.apply(ds.history[-1]))
    assert pool_cidrs(st) == ["10.245.0.0/16"]
    await ds.delete(pkey)
    feed(syncer.apply(ds.history[-1]))
    assert pool_cidrs(st) == []
    # Re-created with garbage: nothing is in force (its old life is not inherited).
    await ds.put(pkey, b"garbage")
    feed(await syncer.resync())
    assert pool_cidrs(st) == []


def test_each_policy_consumer_is_told_the_keys_changed_since_it_last_looked() -> None:
    st = ClusterState()
    k1, a = wep("n1", "default", "a", "10.0.0.1/32", "fab1")
    first, second = st.policy_log(), st.policy_log()
    st.put(k1, a)
    st.put(*aff("n1", "10.244.1.0/26", "confirmed"))  # not a policy input
    assert first.take() == {k1}
    st.remove(k1)
    assert first.take() == {k1} and second.take() == {k1}
    assert first.take() == set()
    assert dict(st.policy_items()) == {}


def test_bgp_neighbours_inputs_change_only_with_nodes_peers_and_bgp_config() -> None:
    """What the full mesh is drawn from moves with Nodes, BGP configuration and peers, not
    with a pod's events (the BGP controller draws its neighbours again only then)."""
    st = ClusterState()
    st.put(*wep("n1", "default", "a", "10.0.0.1/32", "fab1"))
    st.put(*aff("n1", "10.244.1.0/26", "confirmed"))
    assert st.bgp_generation == 0
    nkey = keys.node("n2")
    node = decode_value(nkey, json.dumps({
        "apiVersion": model.API_VERSION, "kind": "Node", "metadata": {"name": "n2"},
        "spec": {"bgp": {"ipv4Address": "10.99.0.2/24"}}}).encode())
    st.put(nkey, node)
    assert st.bgp_generation == 1 and st.nodes["n2"] == node
    st.put(nkey, node)
    assert st.bgp_generation == 1, "an equal value is no change"
    st.remove(nkey)
    assert st.bgp_generation == 2 and "n2" not in st.nodes
