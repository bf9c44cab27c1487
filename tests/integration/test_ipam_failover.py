"""IPAM across an etcd leader failure: 1,000 allocations while the leader of three dies."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from datastore.client import Datastore, EtcdConfig
from ipam.allocator import IpamClient
from ipam.check import check
from ipam.snapshot import load_snapshot
from ipam.testing import put_nodes, put_pool
from ipam.values import IpamError
from tests.helpers.etcd_cluster import etcd_cluster

TOTAL = 1000
WORKERS = 4
KILL_AFTER = 300


async def test_leader_killed_during_allocations() -> None:
    with etcd_cluster(3) as cluster:
        cfg = EtcdConfig.from_strings(cluster.endpoints, timeout=1.0)
        async with Datastore(cfg) as ds:
            await put_pool(ds, "default", "10.244.0.0/16", 26)
            nodes = [f"n{i}" for i in range(WORKERS)]
            await put_nodes(ds, nodes)
            done = 0
            killed = asyncio.Event()
            got: list[tuple[str, int, str]] = []
            errors: list[str] = []

            async def worker(w: int) -> IpamClient:
                nonlocal done
                client = IpamClient(ds, nodes[w], unavailable_budget=15.0)
                for i in range(TOTAL // WORKERS):
                    handle = f"k8s.w{w}-{i}.eth0"
                    try:
                        for a in await client.auto_assign(handle, namespace="ns", pod="p"):
                            got.append((a.address, a.seq, handle))
                    except IpamError as e:  # allowed, if it says what happened
                        assert str(e), "an IPAM error must explain itself"
                        errors.append(f"{handle}: {e}")
                    done += 1
                    if done == KILL_AFTER:
                        killed.set()
                return client

            async def killer() -> str:
                await killed.wait()
                leader = await asyncio.to_thread(cluster.leader)
                leader.kill(signal.SIGKILL)
                return leader.name

            results = await asyncio.gather(killer(), *(worker(w) for w in range(WORKERS)))
            clients = results[1:]
            # A block claimed ahead in the background may still be in flight: let each
            # allocator finish it (what the agent does at shutdown) before judging etcd.
            for c in clients:
                await c.aclose()
            assert len(got) + len(errors) == TOTAL
            assert [k for k, n in Counter(a for a, _, _ in got).items() if n > 1] == []
            # The allocations that succeeded are exactly what the blocks hold.
            snap = await load_snapshot(ds)
            held = {blk.address(o): at.handle for blk in snap.parsed.values()
                    for o, at in blk.allocated()}
            assert {a: h for a, _, h in got} == held
            assert [r.problem for r in await check(ds, claim_grace=0)] == []
            retried = sum(c.stats.unavailable_retries for c in clients)  # type: ignore[union-attr]
            print(f"leader {results[0]} killed; {len(got)} ok, {len(errors)} errors, "
                  f"{retried} retries after unavailability")
            assert len(errors) <= 10, errors[:5]
