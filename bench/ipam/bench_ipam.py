"""IPAM allocation rate against the raw etcd CAS rate, measured in the same run.

Run: ``python -m bench.ipam.bench_ipam [--allocs N] [--procs P]``. Starts its own
single-member etcd (loopback, temp data dir), then measures:

* raw CAS: sequential ``txn(compare mod == rev, put)`` on one key per process, with one
  process and with P processes at once - the ceiling an allocator built on CAS can reach;
* IPAM: ``IpamClient.auto_assign`` with one process and with P processes (one per node, as
  with one agent per node), counting etcd round trips per allocation.

Prints a table and writes ``bench/results/ipam.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from typing import Any

from bench.common import print_table, rate, write_results
from datastore.client import Compare, Datastore, EtcdConfig, Put
from datastore.embedded import EmbeddedEtcd
from ipam.testing import churn_worker, put_nodes, put_pool


def cas_worker(endpoint: str, worker: int, count: int, value_size: int = 0) -> dict[str, Any]:
    """Sequential CAS on one key. With ``value_size`` each txn also writes a second small
    key and the value has that many bytes: the shape of an IPAM write (block + handle)."""
    async def run() -> dict[str, Any]:
        async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
            key = f"/l3fabric/v1/bench/cas/{worker}"
            rev = await ds.put(key, b"0")
            pad = b"x" * value_size
            t0 = time.perf_counter()
            for i in range(count):
                extra = [Put(f"{key}/h{i}", b'{"handle":"x"}')] if value_size else []
                res = await ds.txn([Compare(key, "mod", "==", rev)],
                                   [Put(key, str(i).encode() + pad), *extra])
                assert res.succeeded
                rev = res.revision
            return {"elapsed": time.perf_counter() - t0, "count": count}
    return asyncio.run(run())


# A /26 block with half of its 64 addresses allocated is about this big in JSON.
BLOCK_BYTES = 4500


def _parallel(fn: Any, args: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(args)) as pool:
        return list(pool.starmap(fn, args))


async def _setup(endpoint: str, nodes: list[str]) -> None:
    async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
        await put_pool(ds, "bench", "10.128.0.0/12", 26)
        await put_nodes(ds, nodes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allocs", type=int, default=2000, help="allocations per scenario")
    ap.add_argument("--procs", type=int, default=8)
    args = ap.parse_args(argv)
    n, p = args.allocs, args.procs
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    try:
        ep = etcd.endpoint
        nodes = [f"bench-{i}" for i in range(p + 1)]
        asyncio.run(_setup(ep, nodes))
        cas1 = cas_worker(ep, 0, n)
        casp = _parallel(cas_worker, [(ep, w + 1, n // p) for w in range(p)])
        shaped1 = cas_worker(ep, 100, n, BLOCK_BYTES)
        shapedp = _parallel(cas_worker, [(ep, 101 + w, n // p, BLOCK_BYTES) for w in range(p)])
        alloc1 = churn_worker(ep, nodes[0], 0, n)
        allocp = _parallel(churn_worker, [(ep, nodes[w + 1], w + 1, n // p) for w in range(p)])
    finally:
        etcd.stop()

    def wall(rs: list[dict[str, Any]]) -> float:
        return max(r["elapsed"] for r in rs)

    cas1_rate = rate(n, cas1["elapsed"])
    casp_rate = rate(sum(r["count"] for r in casp), wall(casp))
    a1_rate = rate(alloc1["allocations"], alloc1["elapsed"])
    ap_allocs = sum(r["allocations"] for r in allocp)
    ap_rate = rate(ap_allocs, wall(allocp))
    rt1 = alloc1["round_trips"] / alloc1["allocations"]
    rtp = sum(r["round_trips"] for r in allocp) / ap_allocs
    cfg1 = (alloc1["round_trips"] + alloc1["config_requests"]) / alloc1["allocations"]
    cfgp = sum(r["round_trips"] + r["config_requests"] for r in allocp) / ap_allocs
    sh1_rate = rate(n, shaped1["elapsed"])
    shp_rate = rate(sum(r["count"] for r in shapedp), wall(shapedp))
    failures = len(alloc1["failures"]) + sum(len(r["failures"]) for r in allocp)
    rows = [
        ["1 process", n, round(cas1_rate), round(sh1_rate), round(a1_rate),
         a1_rate / cas1_rate, a1_rate / sh1_rate, rt1, cfg1, alloc1["conflicts"]],
        [f"{p} processes", ap_allocs, round(casp_rate), round(shp_rate), round(ap_rate),
         ap_rate / casp_rate, ap_rate / shp_rate, rtp, cfgp,
         sum(r["conflicts"] for r in allocp)],
    ]
    print_table(["scenario", "allocs", "cas/s", "cas4k/s", "allocs/s", "ratio",
                 "ratio4k", "rt/alloc", "rt/alloc+cfg", "conflicts"], rows,
                title="IPAM allocation vs raw etcd CAS (cas4k: CAS of a block-sized value "
                      "+ a handle put)")
    path = write_results("ipam", {
        "params": {"allocs": n, "procs": p, "pool": "10.128.0.0/12", "blockSize": 26,
                   "block_sized_value_bytes": BLOCK_BYTES},
        "single": {"cas_per_s": cas1_rate, "allocs_per_s": a1_rate,
                   "ratio": a1_rate / cas1_rate, "round_trips_per_alloc": rt1,
                   "cas_block_sized_per_s": sh1_rate, "ratio_block_sized": a1_rate / sh1_rate,
                   "round_trips_per_alloc_incl_config": cfg1,
                   "conflicts": alloc1["conflicts"]},
        "concurrent": {"cas_per_s": casp_rate, "allocs_per_s": ap_rate,
                       "ratio": ap_rate / casp_rate, "round_trips_per_alloc": rtp,
                       "cas_block_sized_per_s": shp_rate,
                       "ratio_block_sized": ap_rate / shp_rate,
                       "round_trips_per_alloc_incl_config": cfgp,
                       "conflicts": sum(r["conflicts"] for r in allocp)},
        "failures": failures,
        "target": {"ratio": 0.8, "round_trips_per_alloc": 1.0},
    })
    print(f"results: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
