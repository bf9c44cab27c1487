"""The agent's NodeStatus: written when it changes, alive through its lease.

Against the in-memory etcd: what a reader (``fabricctl node status``) finds is the key,
present while the lease is kept alive, and its content; rewrites are what every other
watcher of ``status/`` would pay for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from datastore import keys
from datastore.fake import FakeDatastore
from felix_like.agent import Agent, AgentConfig


class CountingFake(FakeDatastore):
    """Counts lease keep-alives: each is one turn of the status loop."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    async def refresh_lease(self, lease_id: int) -> None:
        self.refreshes += 1
        await super().refresh_lease(lease_id)


async def turns(fake: CountingFake, n: int) -> None:
    """Wait until the status loop has kept its lease alive ``n`` more times."""
    want = fake.refreshes + n
    for _ in range(500):
        if fake.refreshes >= want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the status loop stopped turning")


def writes(fake: FakeDatastore, key: str) -> int:
    return sum(1 for ev in fake.history if ev.kv.key == key and ev.type == "put")


async def test_node_status_is_rewritten_only_on_change_and_alive_by_its_lease(
        tmp_path: Path) -> None:
    fake = CountingFake()
    agent = Agent(AgentConfig(node="n1", socket=str(tmp_path / "agent.sock"),
                              status_interval=0.01), ds=fake)
    key = keys.node_status("n1")
    loop = asyncio.ensure_future(agent._status_loop())
    try:
        await turns(fake, 3)
        assert writes(fake, key) == 1  # three keep-alives, nothing changed: no rewrite
        first = await fake.get(key)
        assert first is not None and first.lease != 0  # alive while its lease is

        agent.config_errors["/l3fabric/v1/config/ippools/bad"] = "bad pool"
        agent._status_dirty.set()
        await turns(fake, 2)
        assert writes(fake, key) == 2
        got = await fake.get(key)
        assert got is not None
        assert json.loads(got.value)["status"]["errors"] == ["bad pool"]

        await fake.revoke_lease(got.lease)  # expired: the key went with it
        assert await fake.get(key) is None
        await turns(fake, 2)
        again = await fake.get(key)
        assert again is not None and again.lease not in (0, got.lease)
        assert writes(fake, key) == 3
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await agent.health.stop()
