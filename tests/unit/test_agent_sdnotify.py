"""The agent's readiness and liveness reach systemd over a real notify socket.

The test binds the unix datagram socket systemd would pass as ``$NOTIFY_SOCKET`` and reads
what the agent sends. The agent is stepped as in test_agent_steps.py (fake kernel, events
fed by hand, one apply per step): ``READY=1`` must arrive only from the apply that follows
the first complete snapshot, with the dataplane already programmed, and only once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_agent_calc import aff
from test_agent_steps import FakePolicy
from test_routes_unit import FakeKernel

from datastore.syncer import Update
from felix_like.agent import Agent, AgentConfig
from felix_like.routes import RouteManager
from felix_like.sdnotify import SystemdNotifier, keep_alive


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its path (short: sun_path holds 108 bytes)."""
    d = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    try:
        yield s, path
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


def received(s: socket.socket) -> list[dict[str, str]]:
    """Every datagram waiting on ``s`` (sends are synchronous: nothing is in flight)."""
    out = []
    while True:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


def agent_before_snapshot(kernel: FakeKernel, tmp_path: Path,
                          notifier: SystemdNotifier) -> Agent:
    """An agent registered (etcd) with BGP started, its first snapshot not yet in."""
    agent = Agent(AgentConfig(node="n1", socket=str(tmp_path / "agent.sock")),
                  notifier=notifier)
    agent.routes = RouteManager(kernel)
    agent.policy = FakePolicy()  # type: ignore[assignment]

    async def no_bgp(st: Any) -> None:
        pass

    agent.bgp.on_state = no_bgp  # type: ignore[method-assign]
    for step in ("etcd", "bgp"):
        agent.readiness.done(step)
    return agent


async def test_ready_is_sent_once_after_the_first_in_sync_apply(
        notify_socket: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = notify_socket
    kernel = FakeKernel(links={"lo": 1})
    agent = agent_before_snapshot(kernel, tmp_path, SystemdNotifier(path))

    # Events of the snapshot arrive and are applied before it is complete: not ready.
    agent.cluster.apply(Update(*aff("n1", "10.244.0.0/26", "confirmed"), 3))
    await agent.apply()
    assert received(sock) == []
    assert not agent.readiness.ready

    # The snapshot is complete (what the agent does on the syncer's InSync), then one apply.
    agent.syncer.in_sync = True
    agent.readiness.done("snapshot")
    agent._synced.set()
    agent.routes.mark_in_sync()
    await agent.apply()
    msgs = received(sock)
    assert [m.get("READY") for m in msgs] == ["1"]
    assert msgs[0]["STATUS"].startswith("ready")
    # READY=1 came with the dataplane programmed: the block's blackhole is in the kernel.
    assert kernel.forwards("10.244.0.1") == "drop"

    # Later applies send nothing more.
    agent.cluster.apply(Update(*aff("n1", "10.244.0.64/26", "confirmed"), 4))
    await agent.apply()
    assert received(sock) == []


async def test_no_ready_while_the_policy_cannot_be_programmed(
        notify_socket: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = notify_socket
    agent = agent_before_snapshot(FakeKernel(links={"lo": 1}), tmp_path, SystemdNotifier(path))

    class RefusingPolicy(FakePolicy):
        def apply(self) -> None:
            raise RuntimeError("nft: table refused")

    agent.policy = RefusingPolicy()  # type: ignore[assignment]
    agent.syncer.in_sync = True
    agent.readiness.done("snapshot")
    agent.routes.mark_in_sync()
    with contextlib.suppress(Exception):
        await agent.apply()
    assert [m for m in received(sock) if "READY" in m] == []
    agent.policy = FakePolicy()  # type: ignore[assignment]
    await agent.apply()
    assert [m.get("READY") for m in received(sock)] == ["1"]


async def test_watchdog_pings_and_status_follow_readiness(
        notify_socket: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = notify_socket
    # WATCHDOG_USEC of 2 ms: a ping every millisecond, so the test waits for no clock.
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000"})
    assert notifier.watchdog_interval is not None
    agent = agent_before_snapshot(FakeKernel(links={"lo": 1}), tmp_path, notifier)
    task = asyncio.create_task(keep_alive(notifier, agent.readiness.reason))
    loop = asyncio.get_running_loop()
    seen: list[dict[str, str]] = []
    try:
        async with asyncio.timeout(10):
            while sum("WATCHDOG" in m for m in seen) < 3:
                data = await loop.sock_recv(sock, 4096)
                seen.append(dict(ln.split("=", 1) for ln in data.decode().splitlines()))
            statuses = [m["STATUS"] for m in seen if "STATUS" in m]
            assert statuses and "snapshot" in statuses[0]  # what start-up waits for
            agent.readiness.done("snapshot")
            agent.readiness.done("routes")
            agent.readiness.done("policy")
            while not any(m.get("STATUS") == "ready" for m in seen):
                data = await loop.sock_recv(sock, 4096)
                seen.append(dict(ln.split("=", 1) for ln in data.decode().splitlines()))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert all(m == {"WATCHDOG": "1"} or set(m) == {"STATUS"} for m in seen)


def test_environment_is_read_and_taken_out() -> None:
    env = {"NOTIFY_SOCKET": "@l3fabric-x", "WATCHDOG_USEC": "30000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = SystemdNotifier.from_environ(env, unset=True)
    assert n.enabled and n.watchdog_interval == 15.0
    assert env == {"PATH": "/bin"}  # ExaBGP, started by the agent, inherits none of them
    # Variables inherited from another process (WATCHDOG_PID not ours): no watchdog.
    other = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000",
                                          "WATCHDOG_PID": "1"})
    assert other.enabled and other.watchdog_interval is None
    off = SystemdNotifier.from_environ({})
    assert not off.enabled and not off.ready() and not off.watchdog()


def test_abstract_socket_address() -> None:
    name = f"l3fabric-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert SystemdNotifier("@" + name).ready()
        assert s.recv(100) == b"READY=1"


def test_a_gone_socket_never_stops_the_agent(tmp_path: Path) -> None:
    assert not SystemdNotifier(str(tmp_path / "nobody-listens")).watchdog()
