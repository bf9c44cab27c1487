"""IPAM allocation rate against the raw etcd CAS rate, measured in the same run.

Run: ``python -m bench.ipam.bench_ipam [--allocs N] [--procs P] [--rounds R]``. Starts its
own single-member etcd (loopback, temp data dir on disk, so fsync is real) and measures,
with one process and with P processes at once:

* **raw CAS** (the baseline of the target): one etcd transaction per operation,
  ``txn(compare mod_revision(key) == last, put key <small value>)`` with a value of a few
  bytes, one key per process. No read before it: the revision to compare comes from the
  previous transaction's response - the fastest one-round-trip CAS there is, through the
  same client (``Datastore.txn``) the allocator uses;
* **IPAM**: ``IpamClient.auto_assign`` of one address per call (one process per node, as
  with one agent per node), every node starting without blocks, so block claims are
  included. Round trips per allocation are the etcd requests allocations waited for (claims
  on demand included); the total adds claims made ahead in the background and config reads.

* **allocation-shaped CAS**: the transaction an allocation sends, with none of the
  allocator's work around it: compare the block's mod_revision and the handle's absence,
  put a block value of the mean size the IPAM part of the same round wrote and a handle
  record of real length (a new key each time), and read both back on failure. Its rate over
  the raw CAS rate is the **ceiling** of the ratio for any client that writes the block
  docs/architecture.md §4 describes (handle and pod information per address): what etcd
  charges for the bigger transaction alone.

The three alternate in R rounds of N operations each (CAS, IPAM, shaped CAS, CAS, ...; with
P processes each does N/P, 250 by default) and rates are totals over the rounds, so load
from elsewhere on the machine hits all alike; the spread of the per-round ratios is
reported. For information only, a CAS whose value has the size of a full /26 plus a small
second key shows what the value size alone costs at its largest.

Prints a table and writes ``bench/results/ipam.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import time
from typing import Any

from bench.common import print_table, rate, write_results
from datastore import keys
from datastore.client import Compare, Datastore, EtcdConfig, Get, Put
from datastore.embedded import EmbeddedEtcd
from ipam.block import Block
from ipam.testing import churn_worker, put_nodes, put_pool
from ipam.values import HandleEntry, HandleRecord

BASELINE = ("raw CAS = txn(compare mod_revision == last, put a ~4-byte value), one key per "
            "process, no read before it; same client as the allocator")


def cas_worker(endpoint: str, worker: int, count: int, value_size: int = 0) -> dict[str, Any]:
    """Sequential CAS on one key. With ``value_size`` each txn also writes a second small
    key and the value has that many bytes: the shape of an IPAM write (block + handle)."""
    async def run() -> dict[str, Any]:
        async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
            key = f"/l3fabric/v1/bench/cas/{worker}"
            rev = await ds.put(key, b"0")
            pad = b"x" * value_size
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(count):
                extra = [Put(f"{key}/h{i}", b'{"handle":"x"}')] if value_size else []
                res = await ds.txn([Compare(key, "mod", "==", rev)],
                                   [Put(key, str(i).encode() + pad), *extra])
                assert res.succeeded
                rev = res.revision
            return {"elapsed": time.perf_counter() - t0, "count": count,
                    "cpu": time.process_time() - c0}
    return asyncio.run(run())


def alloc_txn_worker(endpoint: str, worker: int, count: int,
                     block_bytes: int) -> dict[str, Any]:
    """Sequential transactions of an allocation's shape (see the module's doc), one block
    key per process: what an allocation costs etcd and the client library, and nothing
    else."""
    async def run() -> dict[str, Any]:
        async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
            key = f"/l3fabric/v1/bench/txn/{worker}"
            rev = await ds.put(key, b"0")
            block = b"x" * block_bytes
            handles = []  # made before the clock starts: only the transactions are timed
            for i in range(count):
                handle = f"l3fabric.{hashlib.sha256(f'{worker}-{i}'.encode()).hexdigest()}.eth0"
                record = HandleRecord(handle, (HandleEntry("10.128.0.0/26", i % 64, 1 + i // 64,
                                                           f"10.128.0.{i % 64}"),))
                handles.append((f"/l3fabric/v1/bench/txn-handles/{handle}", record.to_json()))
            t0, c0 = time.perf_counter(), time.process_time()
            for hkey, hvalue in handles:
                res = await ds.txn([Compare(key, "mod", "==", rev),
                                    Compare(hkey, "create", "==", 0)],
                                   [Put(key, block), Put(hkey, hvalue)],
                                   [Get(key), Get(hkey)])
                assert res.succeeded
                rev = res.revision
            return {"elapsed": time.perf_counter() - t0, "count": count,
                    "cpu": time.process_time() - c0}
    return asyncio.run(run())


def _parallel(fn: Any, args: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(args)) as pool:
        return list(pool.starmap(fn, args))


async def _setup(endpoint: str, nodes: list[str]) -> None:
    async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
        await put_pool(ds, "bench", "10.128.0.0/12", 26)
        await put_nodes(ds, nodes)


async def _block_sizes(endpoint: str) -> dict[str, float]:
    """Value sizes of the blocks in etcd at the end of the run (a full /26 is the largest)."""
    async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
        kvs, _ = await ds.list(keys.full(keys.IPAM_BLOCKS))
    sizes = [len(kv.value) for kv in kvs]
    full = [len(kv.value) for kv in kvs if not Block.from_json(kv.value).unallocated]
    return {"blocks": len(sizes), "mean_bytes": sum(sizes) / len(sizes) if sizes else 0.0,
            "full_block_bytes": max(full) if full else 0.0}


class _Scenario:
    """Totals of one scenario (1 process or P processes) over its rounds."""

    def __init__(self) -> None:
        self.cas_ops = 0
        self.cas_s = 0.0
        self.allocs = 0
        self.alloc_s = 0.0
        self.round_trips = 0
        self.background = 0
        self.claims = 0
        self.claims_ahead = 0
        self.config_requests = 0
        self.conflicts = 0
        self.failures = 0
        self.round_ratios: list[float] = []
        self.block_bytes = 0
        self.block_writes = 0
        self.cas_cpu = 0.0
        self.alloc_cpu = 0.0
        self.txn_ops = 0
        self.txn_s = 0.0
        self.txn_cpu = 0.0
        self.ceilings: list[float] = []

    @staticmethod
    def mean_block_bytes(alloc: list[dict[str, Any]]) -> int:
        """The mean size of the block values ``alloc`` wrote."""
        written = sum(int(r["block_bytes"]) for r in alloc)
        return written // max(1, sum(int(r["block_writes"]) for r in alloc))

    def add_shaped(self, cas: list[dict[str, Any]], txn: list[dict[str, Any]]) -> None:
        n = sum(r["count"] for r in txn)
        wall = max(r["elapsed"] for r in txn)
        self.txn_ops += n
        self.txn_s += wall
        self.txn_cpu += sum(r["cpu"] for r in txn)
        self.ceilings.append(rate(n, wall) / rate(sum(r["count"] for r in cas),
                                                  max(r["elapsed"] for r in cas)))

    def add(self, cas: list[dict[str, Any]], alloc: list[dict[str, Any]]) -> None:
        cas_wall = max(r["elapsed"] for r in cas)
        alloc_wall = max(r["elapsed"] for r in alloc)
        cas_n = sum(r["count"] for r in cas)
        alloc_n = sum(r["allocations"] for r in alloc)
        self.cas_ops += cas_n
        self.cas_s += cas_wall
        self.allocs += alloc_n
        self.alloc_s += alloc_wall
        self.round_trips += sum(r["round_trips"] for r in alloc)
        self.background += sum(r["background_round_trips"] for r in alloc)
        self.claims += sum(r["claims"] for r in alloc)
        self.claims_ahead += sum(r["claims_ahead"] for r in alloc)
        self.config_requests += sum(r["config_requests"] for r in alloc)
        self.conflicts += sum(r["conflicts"] for r in alloc)
        self.failures += sum(len(r["failures"]) for r in alloc)
        self.cas_cpu += sum(r["cpu"] for r in cas)
        self.alloc_cpu += sum(r["cpu"] for r in alloc)
        self.block_bytes += sum(r["block_bytes"] for r in alloc)
        self.block_writes += sum(r["block_writes"] for r in alloc)
        self.round_ratios.append(rate(alloc_n, alloc_wall) / rate(cas_n, cas_wall))

    @property
    def cas_rate(self) -> float:
        return rate(self.cas_ops, self.cas_s)

    @property
    def alloc_rate(self) -> float:
        return rate(self.allocs, self.alloc_s)

    @property
    def txn_rate(self) -> float:
        return rate(self.txn_ops, self.txn_s)

    def summary(self, full_rate: float) -> dict[str, Any]:
        n = max(self.allocs, 1)
        return {"cas_per_s": self.cas_rate, "allocs_per_s": self.alloc_rate,
                "ratio": self.alloc_rate / self.cas_rate,
                "ratio_per_round": self.round_ratios,
                "alloc_shaped_cas_per_s": self.txn_rate,
                "ceiling": self.txn_rate / self.cas_rate,
                "ceiling_per_round": self.ceilings,
                "allocs_per_alloc_shaped_cas": self.alloc_rate / self.txn_rate,
                "round_trips_per_alloc": self.round_trips / n,
                "round_trips_per_alloc_total":
                    (self.round_trips + self.background + self.config_requests) / n,
                "background_round_trips_per_alloc": self.background / n,
                "claims": self.claims, "claims_ahead": self.claims_ahead,
                "cas_full_block_sized_per_s": full_rate,
                "client_cpu_us_per_cas": 1e6 * self.cas_cpu / max(self.cas_ops, 1),
                "client_cpu_us_per_alloc_shaped_cas": 1e6 * self.txn_cpu / max(self.txn_ops, 1),
                "client_cpu_us_per_alloc": 1e6 * self.alloc_cpu / n,
                "conflicts": self.conflicts, "failures": self.failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allocs", type=int, default=2000,
                    help="allocations (and CAS operations) per round and scenario")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternations of CAS and IPAM per scenario")
    args = ap.parse_args(argv)
    n, p, rounds = args.allocs, args.procs, max(1, args.rounds)
    per = n
    # Fresh nodes in every round: each starts without blocks, as in a one-shot run.
    single_nodes = [f"bench-s{r}" for r in range(rounds)]
    multi_nodes = [[f"bench-r{r}-{w}" for w in range(p)] for r in range(rounds)]
    one, many = _Scenario(), _Scenario()
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    try:
        ep = etcd.endpoint
        asyncio.run(_setup(ep, single_nodes + [x for r in multi_nodes for x in r]))
        for r in range(rounds):
            cas = cas_worker(ep, r, per)
            alloc = churn_worker(ep, single_nodes[r], r, per)
            one.add([cas], [alloc])
            txn = alloc_txn_worker(ep, r, per, one.mean_block_bytes([alloc]))
            one.add_shaped([cas], [txn])
        for r in range(rounds):
            base = 1000 + 100 * r
            casp = _parallel(cas_worker, [(ep, base + w, per // p) for w in range(p)])
            allocp = _parallel(churn_worker, [(ep, multi_nodes[r][w], base + w, per // p)
                                              for w in range(p)])
            many.add(casp, allocp)
            mean = many.mean_block_bytes(allocp)
            txnp = _parallel(alloc_txn_worker, [(ep, base + w, per // p, mean)
                                                for w in range(p)])
            many.add_shaped(casp, txnp)
        sizes = asyncio.run(_block_sizes(ep))
        mean = (one.block_bytes + many.block_bytes) // max(1, one.block_writes
                                                             + many.block_writes)
        full = int(sizes["full_block_bytes"])
        sizes["mean_written_bytes"] = mean
        full1 = cas_worker(ep, 51, per, full)
        fullp = _parallel(cas_worker, [(ep, 70 + w, per // p, full) for w in range(p)])
    finally:
        etcd.stop()

    def prate(rs: list[dict[str, Any]]) -> float:
        return rate(sum(r["count"] for r in rs), max(r["elapsed"] for r in rs))

    s1 = one.summary(rate(per, full1["elapsed"]))
    sp = many.summary(prate(fullp))
    rows = []
    for name, sc, s in (("1 process", one, s1), (f"{p} processes", many, sp)):
        rr, cr = s["ratio_per_round"], s["ceiling_per_round"]
        rows.append([name, sc.allocs, round(s["cas_per_s"]), round(s["allocs_per_s"]),
                     s["ratio"], f"{min(rr):.2f}-{max(rr):.2f}",
                     round(s["alloc_shaped_cas_per_s"]), s["ceiling"],
                     f"{min(cr):.2f}-{max(cr):.2f}", s["round_trips_per_alloc"],
                     s["round_trips_per_alloc_total"], f'{s["claims_ahead"]}/{s["claims"]}',
                     round(s["cas_full_block_sized_per_s"]),
                     f'{s["client_cpu_us_per_cas"]:.0f}/'
                     f'{s["client_cpu_us_per_alloc_shaped_cas"]:.0f}/'
                     f'{s["client_cpu_us_per_alloc"]:.0f}',
                     s["conflicts"]])
    print_table(["scenario", "allocs", "cas/s", "allocs/s", "ratio", "per round", "txn/s",
                 "ceiling", "per round", "rt/alloc", "rt total", "ahead", "casFull/s",
                 "cpu us cas/txn/alloc", "conflicts"], rows,
                title=f"IPAM allocation vs raw etcd CAS ({rounds} alternating rounds)\n"
                      f"baseline: {BASELINE}\n"
                      f"txn: the allocation's own transaction without the allocator (block "
                      f"value of the round's mean size, mean {mean} bytes; real handle "
                      f"record); ceiling = txn/s / cas/s\n"
                      f"casFull (information only): CAS of a {full}-byte value (full /26 "
                      f"block) + a small second put; cpu: client process CPU per CAS / per "
                      f"shaped txn / per allocation\n"
                      f"rt/alloc: etcd requests allocations waited for; rt total: also claims "
                      f"made ahead in the background and config reads; ahead: claims made "
                      f"ahead / all claims")
    failures = one.failures + many.failures
    path = write_results("ipam", {
        "params": {"allocs": n, "procs": p, "rounds": rounds, "pool": "10.128.0.0/12",
                   "blockSize": 26},
        "baseline": BASELINE,
        "block_values": sizes,
        "single": s1,
        "concurrent": sp,
        "failures": failures,
        "target": {"ratio": 0.8, "round_trips_per_alloc": 1.0},
    })
    print(f"results: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
