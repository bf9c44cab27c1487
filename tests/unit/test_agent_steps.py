"""The agent, stepped against fakes: events in, one apply, the kernel's routes out.

A fake kernel (the route manager's netlink handle) and a policy applier that records the
state it is given stand in for the dataplane; the datastore's events are fed by hand in
the order the syncer would emit them, and each step runs one apply. Nothing here sleeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_agent_calc import aff, wep
from test_routes_unit import PROTO_STATIC, FakeKernel

from bgp.export import export_prefixes
from datastore.syncer import Deleted, Update
from felix_like.agent import Agent, AgentConfig
from felix_like.routes import PodRouteRefused, RouteManager
from felix_like.state import ClusterState


class FakePolicy:
    """Records how many endpoints of the node the state it was last applied with held."""

    def __init__(self) -> None:
        self.state: Any = None
        self.applies = 0
        self.forgotten: set[str] = set()
        self.flushed: list[tuple[set[str], bool]] = []  # forget_pending_flows calls

    def set_state(self, st: Any) -> None:
        self.state = st

    def forget_addresses(self, nets: Any) -> None:
        self.forgotten.update(nets)

    def apply(self) -> None:
        self.applies += 1

    def forget_pending_flows(self, state_complete: bool = True) -> int:
        self.flushed.append((set(self.forgotten), state_complete))
        return len(self.forgotten)


def stepped_agent(kernel: FakeKernel, tmp_path: Path) -> tuple[Agent, FakePolicy]:
    """An agent whose first snapshot is in (empty), etcd and BGP steps done."""
    agent = Agent(AgentConfig(node="n1", socket=str(tmp_path / "agent.sock")))
    agent.routes = RouteManager(kernel)
    agent.routes.mark_in_sync()
    policy = FakePolicy()
    agent.policy = policy  # type: ignore[assignment]
    agent.syncer.in_sync = True
    agent._synced.set()

    async def no_bgp(st: Any) -> None:
        pass

    agent.bgp.on_state = no_bgp  # type: ignore[method-assign]
    for step in ("etcd", "bgp", "snapshot"):
        agent.readiness.done(step)
    return agent, policy


async def test_a_reported_pod_is_routed_by_the_apply_of_its_report(tmp_path: Path) -> None:
    kernel = FakeKernel(links={"lo": 1, "fab1": 7})
    agent, policy = stepped_agent(kernel, tmp_path)
    key, a = wep("n1", "default", "a", "10.244.0.5/32", "fab1")
    await agent.endpoint_added(key, a)  # what the CNI handler does before answering ADD
    assert kernel.forwards("10.244.0.5") == "dev fab1"
    assert policy.applies == 1 and isinstance(policy.state, ClusterState)
    assert dict(policy.state.endpoints_of("n1")) == {key: a}
    # The watch echo of the endpoint the handler then writes changes nothing.
    assert not agent.cluster.apply(Update(key, wep("n1", "default", "a", "10.244.0.5/32",
                                                   "fab1")[1], 9))
    # DEL: reported removed, the route goes in that apply; the echo changes nothing.
    await agent.endpoint_removed(key)
    assert kernel.forwards("10.244.0.5") == "unreachable"
    assert not agent.cluster.apply(Deleted(key, 10))


async def test_a_pod_in_a_one_address_block_replaces_its_blackhole(tmp_path: Path) -> None:
    kernel = FakeKernel(links={"lo": 1, "fab1": 7})
    agent, _ = stepped_agent(kernel, tmp_path)
    agent.cluster.apply(Update(*aff("n1", "10.244.0.7/32", "confirmed"), 3))
    await agent.apply()
    assert kernel.forwards("10.244.0.7") == "drop"
    await agent.endpoint_added(*wep("n1", "default", "a", "10.244.0.7/32", "fab1"))
    assert kernel.forwards("10.244.0.7") == "dev fab1"


async def test_a_pod_whose_address_another_route_holds_fails_its_add(tmp_path: Path) -> None:
    """A route of another protocol at the pod's prefix is never touched: the report fails
    (the handler then answers ADD with an error and undoes it)."""
    kernel = FakeKernel(links={"lo": 1, "fab1": 7})
    kernel.put("10.244.0.9/32", PROTO_STATIC, oif=1)
    agent, _ = stepped_agent(kernel, tmp_path)
    key, a = wep("n1", "default", "a", "10.244.0.9/32", "fab1")
    with pytest.raises(PodRouteRefused, match=r"10\.244\.0\.9 is already routed on this node"):
        await agent.endpoint_added(key, a)
    await agent.endpoint_removed(key)
    assert kernel.forwards("10.244.0.9") == "dev lo"
    assert agent._route_retry is not None  # the refused route is retried later, not now
    agent._route_retry.cancel()


async def test_a_refused_policy_apply_is_counted_and_retried(tmp_path: Path) -> None:
    kernel = FakeKernel(links={"lo": 1})
    agent, policy = stepped_agent(kernel, tmp_path)

    def refuse() -> None:
        raise OSError("nft: transaction refused")

    policy.apply = refuse  # type: ignore[method-assign]
    await agent.apply()
    text = agent.metrics.render().decode()
    assert "l3fabric_policy_apply_failures_total 1.0" in text
    assert agent._dirty.is_set()  # tried again at the next apply
    assert agent.readiness.reason().startswith("waiting for the first policy apply; last error")


async def test_the_agents_own_ipam_writes_are_in_its_state_before_the_watch_echoes_them(
        tmp_path: Path) -> None:
    """A borrowed address and a newly confirmed block are what this node announces; the
    allocator's committed transactions put them into the agent's state at once (through
    the syncer), so the ADD's own apply exports them. No watch event is fed here."""
    from datastore.fake import FakeDatastore
    from ipam.allocator import IpamClient
    from ipam.testing import put_nodes, put_pool

    kernel = FakeKernel(links={"lo": 1})
    agent, _ = stepped_agent(kernel, tmp_path)
    ds = FakeDatastore()
    await put_pool(ds, "p", "10.0.0.0/28", 28)
    await put_nodes(ds, ["n1", "n2"])
    await IpamClient(ds, "n2").auto_assign("h2", namespace="ns", pod="p2")  # n2's block
    n1 = IpamClient(ds, "n1", on_commit=agent._ipam_committed, claim_ahead=False)
    (got,) = await n1.auto_assign("h1", namespace="ns", pod="p1")
    assert got.borrowed
    assert export_prefixes("n1", agent.cluster) == {f"{got.address}/32"}
    assert agent._dirty.is_set()  # and an apply is asked for, ADD or not
    await n1.release_by_handle("h1")
    assert export_prefixes("n1", agent.cluster) == set()

    # A block of its own: its affinity confirmed is announced and blackholed at once.
    await put_pool(ds, "q", "10.1.0.0/28", 30)
    n1.invalidate()  # read the new pool
    (own,) = await n1.auto_assign("h3", namespace="ns", pod="p3")
    assert not own.borrowed
    assert export_prefixes("n1", agent.cluster) == {own.block}
    await agent.apply()
    assert kernel.forwards(own.address) == "drop"


async def test_a_pod_deleted_before_the_first_policy_apply_has_its_flows_forgotten(
        tmp_path: Path) -> None:
    """A DEL just after the agent restarted, before it is in sync: this process never
    programmed the pod, yet the next policy apply deletes the flows of its addresses
    (their conntrack entries would let the address's next pod into established flows)."""
    kernel = FakeKernel(links={"lo": 1, "fab1": 7})
    agent, policy = stepped_agent(kernel, tmp_path)
    key, a = wep("n1", "default", "a", "10.244.0.5/32", "fab1")
    agent.cluster.apply(Update(key, a, 3))  # from the snapshot, not reported by an ADD
    agent.syncer.in_sync = False  # the snapshot is not complete: no policy apply yet
    await agent.endpoint_removed(key)
    assert policy.applies == 0 and policy.forgotten == set()
    agent.syncer.in_sync = True
    await agent.apply()
    assert policy.applies == 1 and policy.forgotten == {"10.244.0.5/32"}


async def test_the_stop_deletes_the_flows_of_a_pod_deleted_since_the_last_apply(
        tmp_path: Path) -> None:
    """The agent stops right after a DEL whose policy apply did not run (here: not in
    sync; in the soak: the apply's iptables-restore killed by the stop signal): the stop
    has the policy delete the flows of the pod's addresses, and says the state is not
    complete, so that nothing missing from it is taken for deleted."""
    kernel = FakeKernel(links={"lo": 1, "fab1": 7})
    agent, policy = stepped_agent(kernel, tmp_path)
    key, a = wep("n1", "default", "a", "10.244.0.5/32", "fab1")
    agent.cluster.apply(Update(key, a, 3))
    agent.syncer.in_sync = False
    await agent.endpoint_removed(key)
    assert policy.applies == 0 and policy.flushed == []
    await agent._forget_pending_flows()
    assert policy.flushed == [({"10.244.0.5/32"}, False)]
