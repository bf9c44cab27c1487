"""The agent recovering on its own: readiness and its reason, endpoints whose interface is
gone, and routes the kernel dropped. Against a fake kernel (`test_routes_unit.FakeKernel`)."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from test_agent_calc import wep
from test_routes_unit import FakeKernel

from felix_like import calc
from felix_like.agent import Agent, AgentConfig
from felix_like.kernel_events import (
    IFF_LOWER_UP,
    AddressChange,
    KernelChanges,
    LinkChange,
    RouteDeleted,
    kernel_changes,
    parse_monitor,
)
from felix_like.metrics import Readiness
from felix_like.netlink import IFF_UP, RTM_DELROUTE
from felix_like.routes import PROTO_L3FABRIC, PROTO_L3FABRIC_BGP, RouteManager


def test_readiness_names_the_first_step_not_done_and_its_last_error() -> None:
    t = [100.0]
    r = Readiness(now=lambda: t[0])
    assert not r.ready
    assert r.reason() == "waiting for etcd (schema check and node registration)"
    r.failed("etcd", "etcd unavailable: connection refused")
    t[0] += 4
    assert r.reason() == ("waiting for etcd (schema check and node registration); last error "
                          "4 s ago: etcd unavailable: connection refused")
    r.done("etcd")
    r.done("bgp")
    r.done("routes")  # out of order: the reason still names the first step not done
    r.failed("snapshot", "etcd: snapshot failed: deadline exceeded")
    assert r.reason() == ("waiting for the first etcd snapshot; last error 0 s ago: "
                          "etcd: snapshot failed: deadline exceeded")
    r.done("snapshot")
    assert r.reason() == "waiting for the first policy apply"
    r.done("policy")
    assert r.ready and r.reason() == "ready"
    r.failed("snapshot", "etcd: watch broken")  # later outages keep it ready
    assert r.ready
    with pytest.raises(ValueError):
        r.done("bogus")


def test_kernel_changes_a_link_coming_up_routes_deleted_and_veths_coming_and_going() -> None:
    links = {2: IFF_UP | IFF_LOWER_UP, 7: IFF_UP | IFF_LOWER_UP}
    up1 = "up1"
    down = [LinkChange(2, up1, 0), AddressChange(socket.AF_INET6, 2, True),
            RouteDeleted(socket.AF_INET6, "fd00:1::/122", PROTO_L3FABRIC_BGP, 254)]
    assert kernel_changes(down, links) == KernelChanges(deleted={"fd00:1::/122"})
    assert links[2] == 0
    # Administratively up, then the carrier: each is a link coming up.
    assert kernel_changes([LinkChange(2, up1, IFF_UP)], links).came_up == [up1]
    assert kernel_changes([LinkChange(2, up1, IFF_UP | IFF_LOWER_UP)], links).came_up == [up1]
    assert kernel_changes([LinkChange(2, up1, IFF_UP | IFF_LOWER_UP)], links).came_up == []
    # Pod veths come and go: not a reason to read every route again. A veth deleted in
    # the burst has vanished, with its routes, even if one of its name is made again
    # (a retried ADD replacing the pod's veth); it has appeared if it exists at the end.
    got = kernel_changes([LinkChange(9, "fab123", 0), LinkChange(9, "fab123", IFF_UP),
                           LinkChange(7, "fabold", 0, deleted=True),
                           LinkChange(8, "fabshort", 0), LinkChange(8, "fabshort", 0, True),
                           LinkChange(10, "fabagain", 0, True), LinkChange(11, "fabagain", 0)],
                          links)
    assert got == KernelChanges(appeared={"fab123", "fabagain"},
                                vanished={("fabold", 7), ("fabshort", 8), ("fabagain", 10)})
    assert 7 not in links and 8 not in links and 10 not in links
    # Only our protocols in the main table; IPv4 addresses only.
    other = [RouteDeleted(socket.AF_INET, "10.0.0.0/24", 2, 254),
             RouteDeleted(socket.AF_INET, "10.244.1.5/32", PROTO_L3FABRIC, 255),
             AddressChange(socket.AF_INET, 2, False)]
    assert kernel_changes(other, links) == KernelChanges(addresses=True)


def gauge(agent: Agent) -> float | None:
    return agent.metrics.registry.get_sample_value("l3fabric_endpoints_without_interface")


class FakePolicy:
    def set_state(self, st: dict[str, Any]) -> None:
        pass

    def apply(self) -> None:
        pass


def agent_on(kernel: FakeKernel, tmp_path: Path, state: dict[str, Any]) -> Agent:
    """An agent in sync with ``state`` whose dataplane is ``kernel``; etcd, BGP and the
    snapshot steps done, as after its start."""
    agent = Agent(AgentConfig(node="n1", socket=str(tmp_path / "agent.sock")))
    agent.routes = RouteManager(kernel)
    agent.routes.mark_in_sync()
    agent.policy = FakePolicy()  # type: ignore[assignment]
    agent.syncer.current.update(state)
    for key, value in state.items():
        agent.cluster.put(key, value)
    agent.syncer.in_sync = True

    async def no_bgp(st: Any) -> None:
        pass

    agent.bgp.on_state = no_bgp  # type: ignore[method-assign]
    for step in ("etcd", "bgp", "snapshot"):
        agent.readiness.done(step)
    return agent


async def test_an_endpoint_without_its_interface_is_reported_once_and_does_not_block_ready(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel(links={"lo": 1, "fabok": 7})
    agent = agent_on(kernel, tmp_path, dict([
        wep("n1", "default", "a", "10.244.0.1/32", "fabok"),
        wep("n1", "default", "gone", "10.244.0.2/32", "fabgone")]))
    caplog.set_level(logging.INFO)
    for _ in range(3):
        await agent._apply_locked()
    assert agent.readiness.ready, agent.readiness.reason()
    assert kernel.forwards("10.244.0.1") == "dev fabok"
    assert agent.without_interface == {"workloads/n1/default.gone.eth0": "fabgone"}
    assert gauge(agent) == 1
    assert agent.status_object()["status"]["errors"] == [
        "endpoint workloads/n1/default.gone.eth0: host interface fabgone does not exist"]
    lines = [r.getMessage() for r in caplog.records if "fabgone" in r.getMessage()]
    assert lines == ["endpoint workloads/n1/default.gone.eth0: its host interface fabgone "
                     "does not exist; its routes wait for it (a stale endpoint?)"]
    assert agent._route_retry is None, "a missing interface was scheduled for a retry"

    # The veth appears (RTM_NEWLINK): its route goes in at once.
    kernel.links["fabgone"] = 9
    await agent._follow_kernel(KernelChanges(appeared={"fabgone"}))
    assert agent._dirty.is_set()
    await agent._apply_locked()
    assert kernel.forwards("10.244.0.2") == "dev fabgone"
    assert agent.without_interface == {}
    assert gauge(agent) == 0
    assert "endpoint workloads/n1/default.gone.eth0: no longer waiting for interface " \
           "fabgone" in caplog.text

    # A pod's veth deleted behind the agent's back (no DEL): the kernel takes its route
    # silently; on the RTM_DELLINK the endpoint is reported at once.
    del kernel.links["fabok"]
    del kernel.table["10.244.0.1/32"]
    await agent._follow_kernel(KernelChanges(vanished={("fabok", 7)}))
    assert agent._dirty.is_set()
    await agent._apply_locked()
    assert agent.without_interface == {"workloads/n1/default.a.eth0": "fabok"}
    assert gauge(agent) == 1


async def test_a_veth_replaced_under_its_name_gets_its_route_back(tmp_path: Path) -> None:
    """A runtime's retried ADD replaces a pod's veth by one of the same name: the kernel
    dropped the route with the old veth, silently for IPv4, and the route manager's record
    still matches what is desired. The deletion in the burst drops the record, so the
    apply adds the route through the new veth, not at the next periodic resync."""
    kernel = FakeKernel(links={"lo": 1, "fabpod": 7})
    agent = agent_on(kernel, tmp_path, dict([
        wep("n1", "default", "a", "10.244.0.1/32", "fabpod")]))
    await agent._apply_locked()
    assert kernel.forwards("10.244.0.1") == "dev fabpod"
    del kernel.table["10.244.0.1/32"]  # the old veth went, and its route with it
    kernel.links["fabpod"] = 8  # a new veth of the same name
    batch = [LinkChange(7, "fabpod", 0, deleted=True), LinkChange(8, "fabpod", IFF_UP)]
    await agent._follow_kernel(kernel_changes(batch, {7: IFF_UP}))
    assert agent._dirty.is_set()
    await agent._apply_locked()
    assert kernel.forwards("10.244.0.1") == "dev fabpod"
    assert agent.without_interface == {}


async def test_a_veths_deletion_reported_after_the_pod_was_routed_through_its_new_one(
        tmp_path: Path) -> None:
    """A repeated ADD replaces the pod's veth under its name (index 7 -> 8) and its apply
    routes the pod through the new one; the old veth's RTM_DELLINK is read after that
    apply. The route through the new veth stays in the record: the ADD's check that its
    route is in the kernel holds (it failed 102, "another endpoint holds its address")."""
    kernel = FakeKernel(links={"lo": 1, "fabpod": 7})
    agent = agent_on(kernel, tmp_path, dict([
        wep("n1", "default", "a", "10.244.0.1/32", "fabpod")]))
    await agent._apply_locked()
    del kernel.table["10.244.0.1/32"]
    kernel.links["fabpod"] = 8
    key, new = wep("n1", "default", "a", "10.244.0.2/32", "fabpod")
    agent.cluster.put(key, new)
    await agent._apply_locked()
    assert kernel.forwards("10.244.0.2") == "dev fabpod"
    batch = [LinkChange(7, "fabpod", 0, deleted=True), LinkChange(8, "fabpod", IFF_UP)]
    await agent._follow_kernel(kernel_changes(batch, {7: IFF_UP}))
    (want,) = [r for r in calc.desired_routes("n1", agent.cluster) if r.kind == "local"]
    assert agent.routes.is_programmed(want)
    # The deletion of the veth the route went through still drops it from the record.
    await agent._follow_kernel(KernelChanges(vanished={("fabpod", 8)}))
    assert not agent.routes.is_programmed(want)


async def test_a_refused_route_holds_readiness_back_and_the_reason_says_which(
        tmp_path: Path) -> None:
    kernel = FakeKernel(links={"lo": 1, "fabok": 7})
    kernel.put("10.244.0.1/32", 4, oif=1)  # a static route of someone else's in the way
    agent = agent_on(kernel, tmp_path, dict([
        wep("n1", "default", "a", "10.244.0.1/32", "fabok")]))
    await agent._apply_locked()
    assert not agent.readiness.ready
    reason = agent.readiness.reason()
    assert reason.startswith("waiting for the first route apply; last error 0 s ago: "
                             "1 route(s) refused; first: route add 10.244.0.1/32 dev fabok "
                             "proto 80 failed: "), reason
    assert "another protocol" in reason
    assert agent._route_retry is not None
    agent._route_retry.cancel()
    del kernel.table["10.244.0.1/32"]
    await agent._apply_locked()
    assert agent.readiness.ready


async def test_routes_lost_with_a_link_come_back_when_it_comes_up(tmp_path: Path) -> None:
    kernel = FakeKernel(links={"lo": 1, "up1": 2})
    agent = agent_on(kernel, tmp_path, {})
    agent.routes.set_desired(set())
    learned = {"10.244.9.0/26": ("10.99.0.2",)}
    agent.bgp.speaker.learned.update(learned)
    agent.bgp.speaker.in_sync = True  # type: ignore[misc]
    await agent._apply_locked()
    assert kernel.forwards("10.244.9.1") == "via 10.99.0.2"
    del kernel.table["10.244.9.0/26"]  # up1 went down: the kernel said nothing
    await agent._follow_kernel(KernelChanges(came_up=["up1"]))  # ... and came up
    await agent._apply_locked()
    assert kernel.forwards("10.244.9.1") == "via 10.99.0.2"


def test_a_malformed_notification_is_skipped_and_the_next_one_read() -> None:
    def msg(mtype: int, body: bytes) -> bytes:
        size = 16 + len(body)
        return struct.pack("=IHHII", size, mtype, 0, 0, 0) + body + b"\0" * (-size % 4)

    def rta(kind: int, payload: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)

    rtmsg = struct.pack("=BBBBBBBBI", socket.AF_INET, 26, 0, 0, 254, PROTO_L3FABRIC_BGP,
                        0, 1, 0)
    bad = msg(RTM_DELROUTE, rtmsg + rta(1, b"\x0a\xf4\x01"))  # a 3-byte IPv4 address
    good = msg(RTM_DELROUTE, rtmsg + rta(1, bytes([10, 244, 1, 0])))
    assert parse_monitor(bad + good) == [
        RouteDeleted(socket.AF_INET, "10.244.1.0/26", PROTO_L3FABRIC_BGP, 254)]
