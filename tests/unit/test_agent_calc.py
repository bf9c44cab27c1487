"""The agent's calculation: decoded datastore state in, this node's routes out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from datastore import keys, model
from felix_like import calc
from felix_like.agent import Agent, AgentConfig
from felix_like.routes import PROTO_L3FABRIC, Route
from felix_like.state import Affinity, ClusterState, consumed, decode_value


def wep(node: str, ns: str, pod: str, ip: str, host_if: str) -> tuple[str, Any]:
    key = keys.workload(node, ns, pod, "eth0")
    obj = {"apiVersion": model.API_VERSION, "kind": "WorkloadEndpoint",
           "metadata": {"name": f"{pod}.eth0", "namespace": ns},
           "spec": {"node": node, "pod": pod, "endpoint": "eth0", "containerID": "c" + pod,
                    "ipNetworks": [ip], "hostInterface": host_if}}
    return key, model.decode(key, json.dumps(obj).encode())


def aff(node: str, cidr: str, state: str) -> tuple[str, Any]:
    key = keys.ipam_affinity(node, cidr)
    return key, decode_value(key, json.dumps({"state": state, "time": 1.0}).encode())


def test_routes_for_local_pods_and_confirmed_blocks_only() -> None:
    state = dict([
        wep("n1", "default", "a", "10.244.0.5/32", "fab00000000001"),
        wep("n2", "default", "b", "10.244.0.70/32", "fab00000000002"),  # another node
        aff("n1", "10.244.0.0/26", "confirmed"),
        aff("n1", "10.244.1.0/26", "pending"),  # never advertised nor blackholed
        aff("n2", "10.244.0.64/26", "confirmed"),
    ])
    assert calc.desired_routes("n1", ClusterState.of(state)) == {
        Route("10.244.0.5/32", "local", dev="fab00000000001", proto=PROTO_L3FABRIC),
        Route("10.244.0.0/26", "blackhole", proto=PROTO_L3FABRIC),
    }


def test_learned_routes_join_and_never_override_local() -> None:
    state = dict([wep("n1", "default", "a", "10.244.0.5/32", "fabx"),
                  aff("n1", "10.244.0.0/26", "confirmed")])
    routes = calc.desired_routes("n1", ClusterState.of(state), {"10.244.0.64/26": ("10.99.1.2",),
                                               "10.244.0.0/26": ("10.99.1.2",)})
    by_dst = {r.dst: r for r in routes}
    assert by_dst["10.244.0.64/26"].kind == "bgp"
    assert by_dst["10.244.0.0/26"].kind == "blackhole"


def test_decode_value_validates_models_and_ignores_internals() -> None:
    assert decode_value(keys.ipam_handle("net.c1.eth0"), b"{}") is None
    assert decode_value(keys.node_status("n1"), b"garbage") is None
    with pytest.raises(ValueError, match="config/ippools/p"):
        decode_value(keys.ippool("p"), b'{"kind": "IPPool"')
    # What IPAM decides with is consumed, though it lives under ipam/ too.
    res = decode_value(keys.ipam_reservation("r1"), json.dumps({
        "apiVersion": model.API_VERSION, "kind": "IPReservation", "metadata": {"name": "r1"},
        "spec": {"reservedCIDRs": ["10.0.0.0/30"]}}).encode())
    assert isinstance(res, model.IPReservation)
    cfg = decode_value(keys.full(keys.IPAM_CONFIG), json.dumps({
        "apiVersion": model.API_VERSION, "kind": "IPAMConfig", "metadata": {"name": "default"},
        "spec": {"strictAffinity": True}}).encode())
    assert isinstance(cfg, model.IPAMConfig) and cfg.spec.strict_affinity
    with pytest.raises(ValueError, match="ipam/reservations/r1"):
        decode_value(keys.ipam_reservation("r1"), b"{")
    assert not consumed(keys.ipam_handle("net.c1.eth0"))
    assert not consumed(keys.node_status("n1"))
    assert consumed(keys.ipam_block("10.0.0.0/26"))
    assert consumed(keys.ipam_reservation("r1"))
    a = decode_value(keys.ipam_affinity("n1", "fd00::/122"), b'{"state":"confirmed"}')
    assert a == Affinity("n1", "fd00::/122", "confirmed")


async def test_applies_queued_behind_a_running_one_share_the_next(tmp_path: Path) -> None:
    """8 parallel ADDs each ask for an apply: the first runs, the 7 that queued behind it
    are all served by the next one, which started after they asked. A failed apply
    serves nobody else: the next waiter runs its own, which serves the rest."""
    agent = Agent(AgentConfig(node="n1", socket=str(tmp_path / "agent.sock")))
    runs: list[int] = []
    fail_on: set[int] = set()

    async def apply_locked() -> None:
        runs.append(agent._apply_requests)  # requests made when it started
        await asyncio.sleep(0.01)
        if len(runs) in fail_on:
            raise RuntimeError("apply failed (test)")

    agent._apply_locked = apply_locked  # type: ignore[method-assign]
    await asyncio.gather(*(agent.apply() for _ in range(8)))
    assert runs == [1, 8]

    runs.clear()
    base = agent._apply_requests
    fail_on.add(2)
    got = await asyncio.gather(*(agent.apply() for _ in range(4)), return_exceptions=True)
    assert [type(g).__name__ for g in got] == ["NoneType", "RuntimeError", "NoneType",
                                                "NoneType"]
    assert runs == [base + 1, base + 4, base + 4]


def test_ipam_inputs_hold_every_endpoints_addresses_with_the_reported_ones() -> None:
    """Addresses of WorkloadEndpoints (any node) are in use for IPAM; an endpoint the CNI
    handler reported removed no longer counts, one it reported added does."""
    st = ClusterState.of(dict([wep("n1", "default", "a", "10.0.0.1/32", "fab1"),
                               wep("n2", "default", "b", "10.0.0.2/32", "fab2"),
                               wep("n1", "default", "c", "10.0.0.3/32", "fab3")]))
    assert calc.ipam_inputs("n1", st).in_use == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    st.remove(keys.workload("n1", "default", "c", "eth0"))
    st.put(*wep("n1", "default", "d", "10.0.0.4/32", "fab4"))
    assert calc.ipam_inputs("n1", st).in_use == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}


async def test_refused_routes_are_retried_after_a_pause_that_doubles(tmp_path: Path) -> None:
    """A route the kernel keeps refusing (a link-local gateway without its interface, say)
    is retried after 0.5 s, then 1 s, ... up to 30 s, not by a full apply every few
    milliseconds; a second failure while a retry is due schedules nothing more."""
    agent = Agent(AgentConfig(node="n1", socket=str(tmp_path / "agent.sock")))
    agent._retry_routes_later()
    agent._retry_routes_later()
    assert agent._route_backoff == 0.5 and not agent._dirty.is_set()
    await asyncio.sleep(0.3)
    assert not agent._dirty.is_set()
    await asyncio.sleep(0.4)
    assert agent._dirty.is_set()
    agent._dirty.clear()
    for want in (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0):
        agent._retry_routes_later()
        assert agent._route_backoff == want
        assert agent._route_retry is not None
        agent._route_retry.cancel()
        agent._route_retry = None
