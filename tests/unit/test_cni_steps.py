"""A pod ADD and DEL through the CNI handler and the agent, stepped against fakes.

The in-memory etcd (`datastore.fake.FakeDatastore`), a fake kernel (the route manager's
netlink handle) and a wiring stand-in that only creates the veth in that kernel: what
the runtime gets back, what etcd holds, and where the kernel sends the pod's address,
with the datastore's watch events fed to the agent by hand. Nothing here sleeps.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_agent_steps import FakePolicy, stepped_agent
from test_routes_unit import PROTO_STATIC, FakeKernel

from datastore import keys, model
from datastore.fake import FakeDatastore
from datastore.syncer import Deleted, Syncer, Update
from felix_like import plumbing
from felix_like.agent import Agent
from felix_like.cni_handler import CniHandler
from felix_like.state import decode_value
from ipam.allocator import IpamClient

CONF = json.dumps({"cniVersion": "1.0.0", "name": "l3net", "type": "l3fabric",
                   "ipam": {"type": "l3fabric-ipam"}})


def env(command: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p1",
            "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1",
            "PATH": "/usr/bin"}


def fake_wiring(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The veth appears in the fake kernel; the wiring writes no route (the agent's route
    manager owns them)."""

    def wire(node_ns: str | None, netns: str, ifname: str, host_if: str, hosts: Any,
             mtu: int, *, host_routes: bool = True, **_: Any) -> plumbing.WiredPod:
        assert not host_routes, "the route manager owns the pod's routes"
        kernel.links[host_if] = idx = 100 + len(kernel.links)
        return plumbing.WiredPod(host_if, idx, ifname, 2, "02:00:00:00:00:01", 1500,
                                 tuple(hosts), ())

    def unwire(node_ns: str | None, host_if: str, hosts: Any, *, host_routes: bool = True,
               on_routes_removed: Any = None, **_: Any) -> bool:
        assert not host_routes
        if on_routes_removed is not None:
            on_routes_removed()
        return kernel.links.pop(host_if, None) is not None

    monkeypatch.setattr(plumbing, "wire_pod", wire)
    monkeypatch.setattr(plumbing, "unwire_pod", unwire)


@dataclass
class Node:
    ds: FakeDatastore
    kernel: FakeKernel
    agent: Agent
    policy: FakePolicy
    handler: CniHandler
    watch: Callable[[], list[bool]]  # feeds the agent what etcd's watch sent since


async def node_with_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    """Node n1 with pool 10.244.0.0/16 in etcd, its agent in sync, and its CNI handler."""
    ds = FakeDatastore()
    pool = model.parse_document({"apiVersion": model.API_VERSION, "kind": "IPPool",
                                 "metadata": {"name": "p"},
                                 "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}})
    await ds.put(model.key_for(pool), model.encode(pool))
    kernel = FakeKernel(links={"lo": 1})
    fake_wiring(kernel, monkeypatch)
    agent, policy = stepped_agent(kernel, tmp_path)
    syncer: Syncer[Any] = Syncer(ds, keys.PREFIX, decode_value)
    seen = 0

    def watch() -> list[bool]:
        nonlocal seen
        out = []
        for wev in ds.history[seen:]:
            for ev in syncer.apply(wev):
                if isinstance(ev, Update | Deleted):
                    out.append(agent.cluster.apply(ev))
        seen = len(ds.history)
        return out

    for ev in await syncer.resync():
        if isinstance(ev, Update | Deleted):
            agent.cluster.apply(ev)
    seen = len(ds.history)
    ipam = IpamClient(ds, "n1", inputs=agent._ipam_inputs, claim_ahead=False)
    return Node(ds, kernel, agent, policy, CniHandler("n1", ds, ipam, dataplane=agent), watch)


async def test_add_and_del_route_the_pod_through_the_route_manager(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = await node_with_pool(tmp_path, monkeypatch)
    ds, kernel, agent, policy, handler, watch = (n.ds, n.kernel, n.agent, n.policy,
                                                 n.handler, n.watch)
    code, out, err = await handler.handle("l3fabric", env("ADD"), CONF)
    assert code == 0, (out, err)
    address = str(ipaddress.ip_interface(json.loads(out)["ips"][0]["address"]).ip)
    host_if = plumbing.host_veth_name("l3net", "c1", "eth0")
    # Routed before ADD answered, by the route manager; the policy saw the endpoint.
    assert kernel.forwards(address) == f"dev {host_if}"
    key = keys.workload("n1", "ns1", "p1", "eth0")
    assert key in policy.state.endpoints_of("n1")
    assert await ds.get(key) is not None
    # The watch brings the block, its affinity and the endpoint, whose echo changes nothing.
    changed = watch()
    assert changed and not changed[-1]
    await agent.apply()
    assert kernel.forwards(address) == f"dev {host_if}"
    assert agent.cluster.confirmed_blocks("n1") == ["10.244.0.0/26"]

    code, out, err = await handler.handle("l3fabric", env("DEL"), CONF)
    assert code == 0, (out, err)
    assert kernel.forwards(address) == "drop"  # the block's blackhole: the pod is gone
    assert host_if not in kernel.links and await ds.get(key) is None
    assert key not in agent.cluster.endpoints


async def test_an_add_whose_address_another_route_holds_fails_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A route of another protocol on the address IPAM hands out: the ADD fails as a
    wiring failure (102), the route stays, and the veth, endpoint and address are gone."""
    n = await node_with_pool(tmp_path, monkeypatch)
    n.kernel.put("10.244.0.0/32", PROTO_STATIC, oif=1)
    code, out, _ = await n.handler.handle("l3fabric", env("ADD"), CONF)
    assert code == 1 and json.loads(out)["code"] == 102, out
    assert "10.244.0.0 is already routed on this node" in json.loads(out)["msg"]
    assert n.kernel.forwards("10.244.0.0") == "dev lo"
    assert list(n.kernel.links) == ["lo"]
    assert await n.ds.get(keys.workload("n1", "ns1", "p1", "eth0")) is None
    assert n.agent.cluster.endpoints == {}
    assert await n.handler.ipam.release_ips(["10.244.0.0"]) == []  # not held
