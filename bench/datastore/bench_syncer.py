"""The syncer's cost at the agent: CPU under NodeStatus churn, and snapshot time by size.

Against a real etcd (a throw-away member). Nothing of the agent runs but its syncer and
decoder, so the CPU time is the datastore path's alone.

- churn: a cluster of ``--nodes`` Nodes, NodeStatus and 5 endpoints each; another process
  rewrites NodeStatus at ``--rate`` writes/s. For ``--seconds``, the process CPU time of a
  syncer consuming its events, for: the whole prefix (one watch), the agent's sub-prefixes
  (one watch each), and one watch of the whole prefix filtered here before decoding.
- snapshot: ``--keys`` keys of ~435 bytes; one range request of the whole prefix against
  pages of ``--page`` keys pinned at one revision.

    .venv/bin/python -m bench.datastore.bench_syncer [--rate 100] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import time
from collections.abc import AsyncGenerator
from typing import Any, cast

from bench.common import print_table, write_results
from datastore import keys, model
from datastore.client import Datastore, DatastoreError, EtcdConfig, Put, WatchEvent
from datastore.embedded import EmbeddedEtcd
from datastore.syncer import InSync, Syncer
from felix_like.agent import WATCHED
from felix_like.state import decode_value

STATUS = {"apiVersion": "l3fabric.io/v1", "kind": "NodeStatus", "metadata": {"name": ""},
          "status": {"updated": "", "inSync": True, "version": "0.1.0",
                     "blocks": ["10.244.0.0/26"], "programmed": {"routes": 12, "block": 3},
                     "errors": [], "bgp": {"peers": [{"peer": "10.0.0.1", "state": "up",
                                                      "since": "2026-01-01T00:00:00"}]}}}


def status(node: str, n: int) -> bytes:
    doc = json.loads(json.dumps(STATUS))
    doc["metadata"]["name"] = node
    doc["status"]["updated"] = f"2026-01-01T00:00:{n % 60:02d}.{n:06d}"
    return json.dumps(doc).encode()


def endpoint(node: str, i: int) -> bytes:
    pod = f"{node}-p{i}"
    return model.encode(model.parse_document({
        "apiVersion": model.API_VERSION, "kind": "WorkloadEndpoint",
        "metadata": {"name": f"{pod}.eth0", "namespace": f"ns{i % 50}"},
        "spec": {"node": node, "pod": pod, "endpoint": "eth0", "containerID": f"c-{pod}",
                 "ipNetworks": [f"10.{i % 200}.{i % 250}.{i % 250}/32"],
                 "hostInterface": f"fab{i:011d}", "labels": {"app": f"a{i % 7}"},
                 "ports": []}}))


async def put_all(ds: Datastore, items: list[tuple[str, bytes]]) -> None:
    sem = asyncio.Semaphore(16)

    async def batch(part: list[tuple[str, bytes]]) -> None:
        async with sem:
            await ds.txn([], [Put(k, v) for k, v in part])

    await asyncio.gather(*(batch(items[i:i + 100]) for i in range(0, len(items), 100)))


def churn(endpoint_: str, nodes: int, rate: float, stop_at: float) -> None:
    """Rewrite NodeStatus round-robin at ``rate`` writes/s until ``stop_at``."""
    async def main() -> None:
        async with Datastore(EtcdConfig.from_strings(endpoint_)) as ds:
            n = 0
            start = time.monotonic()
            while time.time() < stop_at:
                node = f"n{n % nodes:04d}"
                await ds.put(keys.node_status(node), status(node, n))
                n += 1
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    asyncio.run(main())


async def consume(ds: Datastore, mode: str, seconds: float) -> tuple[float, int]:
    """CPU seconds of this process while ``mode``'s syncer follows the churn."""
    prefixes = None if mode == "whole prefix, one watch" else WATCHED
    syncer: Syncer[Any] = Syncer(ds, keys.PREFIX, decode_value, prefixes=prefixes)
    it = syncer.events()
    async for ev in it:
        if isinstance(ev, InSync):
            break
    applied = 0

    async def follow() -> None:
        nonlocal applied
        if mode == "whole prefix, filtered here":
            stream = cast(AsyncGenerator[WatchEvent, None],
                          ds.watch(keys.PREFIX, syncer.revision + 1))
            async for wev in stream:
                if wev.kv.key.startswith(syncer.prefixes):
                    applied += len(syncer.apply(wev))
        else:
            async for _ev in it:
                applied += 1

    cpu0 = time.process_time()
    task = asyncio.ensure_future(follow())
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, DatastoreError):
        await task
    await it.aclose()  # type: ignore[attr-defined]
    return cpu, applied


async def bench_churn(etcd: EmbeddedEtcd, nodes: int, rate: float,
                      seconds: float) -> list[list[Any]]:
    rows = []
    async with Datastore(EtcdConfig.from_strings(etcd.endpoint, timeout=10)) as ds:
        items = [(keys.node_status(f"n{n:04d}"), status(f"n{n:04d}", 0))
                 for n in range(nodes)]
        items += [(keys.workload(f"n{n:04d}", f"ns{i % 50}", f"n{n:04d}-p{i}", "eth0"),
                   endpoint(f"n{n:04d}", i)) for n in range(nodes) for i in range(5)]
        await put_all(ds, items)
        for mode in ("whole prefix, one watch", "sub-prefixes, one watch each",
                     "whole prefix, filtered here"):
            stop_at = time.time() + seconds + 3
            writer = multiprocessing.get_context("spawn").Process(target=churn,
                                             args=(etcd.endpoint, nodes, rate, stop_at))
            writer.start()
            try:
                await asyncio.sleep(1)  # the writer is up to speed
                cpu, applied = await consume(ds, mode, seconds)
            finally:
                writer.join()
            rows.append([mode, cpu, 100 * cpu / seconds, applied])
    return rows


async def bench_snapshot(etcd: EmbeddedEtcd, n: int, page: int) -> list[list[Any]]:
    async with Datastore(EtcdConfig.from_strings(etcd.endpoint, timeout=60)) as ds:
        await ds.delete_prefix(keys.PREFIX)
        pad = "x" * 330
        await put_all(ds, [(keys.full(f"workloads/n{i % 1000:04d}/ns.p{i:07d}.eth0"),
                            json.dumps({"i": i, "pad": pad}).encode()) for i in range(n)])
        rows: list[list[Any]] = []
        t0 = time.monotonic()
        try:
            kvs, _ = await ds.list(keys.PREFIX)
            rows.append([n, "one range request", time.monotonic() - t0, len(kvs)])
        except DatastoreError as e:
            rows.append([n, "one range request", time.monotonic() - t0, f"fails: {e}"[:70]])
        syncer: Syncer[Any] = Syncer(ds, keys.PREFIX, lambda k, v: None, page_size=page)
        t0 = time.monotonic()
        kvs, _ = await syncer.snapshot()
        rows.append([n, f"pages of {page}", time.monotonic() - t0, len(kvs)])
        return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--keys", type=int, nargs="*", default=[50_000, 160_000])
    ap.add_argument("--page", type=int, default=5000)
    args = ap.parse_args()
    etcd = EmbeddedEtcd.temporary()
    etcd.extra_args = (*etcd.extra_args, "--quota-backend-bytes", str(4 << 30))
    etcd.start()
    try:
        churn_rows = asyncio.run(bench_churn(etcd, args.nodes, args.rate, args.seconds))
        snap_rows = [r for n in args.keys
                     for r in asyncio.run(bench_snapshot(etcd, n, args.page))]
    finally:
        etcd.stop()
    print_table(["syncer", "CPU s", "% of a core", "events out"], churn_rows,
                title=f"{args.nodes} nodes, {args.rate:.0f} NodeStatus writes/s, "
                      f"{args.seconds:.0f} s")
    print()
    print_table(["keys", "snapshot", "seconds", "keys read"], snap_rows,
                title="snapshot of ~435-byte keys")
    write_results("syncer", {"churn": churn_rows, "snapshot": snap_rows})


if __name__ == "__main__":
    main()
