"""Set-up helpers shared by the IPAM tests and ``bench/ipam``: write pools, nodes, config.

Not used by the agent. Values are the framed objects ``datastore.model`` validates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from datastore import keys
from datastore.client import Datastore
from datastore.model import API_VERSION


def framed(kind: str, name: str, spec: Mapping[str, Any] | None = None,
           labels: Mapping[str, str] | None = None) -> bytes:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta}
    if spec is not None:
        obj["spec"] = dict(spec)
    return json.dumps(obj).encode()


async def put_pool(ds: Datastore, name: str, cidr: str, block_size: int | None = None, *,
                   disabled: bool = False, node_selector: str = "") -> None:
    spec: dict[str, Any] = {"cidr": cidr}
    if block_size is not None:
        spec["blockSize"] = block_size
    if disabled:
        spec["disabled"] = True
    if node_selector:
        spec["nodeSelector"] = node_selector
    await ds.put(keys.ippool(name), framed("IPPool", name, spec))


async def put_nodes(ds: Datastore, names: Iterable[str],
                    labels: Mapping[str, str] | None = None) -> None:
    for n in names:
        await ds.put(keys.node(n), framed("Node", n, None, labels))


async def put_ipam_config(ds: Datastore, *, strict_affinity: bool = False,
                          max_blocks_per_host: int = 0, release_cooldown: int = 0) -> None:
    spec = {"strictAffinity": strict_affinity, "maxBlocksPerHost": max_blocks_per_host,
            "releaseCooldownSeconds": release_cooldown}
    await ds.put(keys.full(keys.IPAM_CONFIG), framed("IPAMConfig", "default", spec))


async def put_reservation(ds: Datastore, name: str, cidrs: Iterable[str]) -> None:
    await ds.put(keys.ipam_reservation(name),
                 framed("IPReservation", name, {"reservedCIDRs": list(cidrs)}))


def churn_worker(endpoints: str, node: str, worker: int, count: int, release_every: int = 0,
                 seed: int = 0) -> dict[str, Any]:
    """One allocator process (tests, benchmark): ``count`` auto-assigns on ``node``, and
    after every ``release_every``-th a release of a random earlier handle of this worker.
    Handles and pod names have the length of real ones (a CNI handle holds a 64-hex
    container ID; a Deployment's pod name two hashes), so block values do too.

    Runs its own event loop and Datastore. Returns what it was handed (address, seq,
    handle, block), the handles it released, failures, timing and round trips.
    """
    import asyncio
    import hashlib
    import random
    import time

    from datastore.client import EtcdConfig
    from ipam.allocator import IpamClient
    from ipam.values import IpamError

    async def run() -> dict[str, Any]:
        rng = random.Random(seed * 1000 + worker)
        assigned: list[tuple[str, int, str, str]] = []
        released: list[str] = []
        failures: list[str] = []
        live: list[str] = []
        async with Datastore(EtcdConfig.from_strings(endpoints)) as ds:
            client = IpamClient(ds, node, inputs=None)
            # The connection is opened before the clock starts, as in the benchmark's CAS
            # loop: a running agent's is open already.
            await ds.revision()
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(count):
                cid = hashlib.sha256(f"{seed}-{worker}-{i}".encode()).hexdigest()
                handle = f"l3fabric.{cid}.eth0"
                try:
                    got = await client.auto_assign(handle, namespace="default",
                                                   pod=f"web-{cid[:10]}-{cid[10:15]}")
                except IpamError as e:
                    failures.append(f"{handle}: {e}")
                    continue
                assigned.extend((a.address, a.seq, handle, a.block) for a in got)
                live.append(handle)
                if release_every and (i + 1) % release_every == 0 and live:
                    victim = live.pop(rng.randrange(len(live)))
                    await client.release_by_handle(victim)
                    released.append(victim)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
            await client.aclose()
            return {"node": node, "worker": worker, "assigned": assigned,
                    "released": released, "failures": failures, "elapsed": elapsed, "cpu": cpu,
                    "round_trips": client.stats.round_trips,
                    "background_round_trips": client.stats.background_round_trips,
                    "claims": client.stats.claims, "claims_ahead": client.stats.claims_ahead,
                    "config_requests": client.config_requests,
                    "allocations": client.stats.allocations,
                    "conflicts": client.stats.conflicts, "releases": client.stats.releases,
                    "block_bytes": client.stats.block_bytes,
                    "block_writes": client.stats.block_writes}

    return asyncio.run(run())
