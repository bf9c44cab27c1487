"""etcd's watch fan-out: how many agents' watches one member serves, at what event rate.

Every agent holds one connection to etcd and a watch on each prefix it mirrors (the 16 of
`felix_like.agent.WATCHED`). This bench stands in for ``W`` agents: ``W`` clients, each
with its own connection and those 16 watches, spread over two processes, against one
throw-away member (`EmbeddedEtcd`, the Debian binary). A writer process meanwhile puts
``--endpoint-rate`` WorkloadEndpoints/s (which every watcher receives) and
``--status-rate`` NodeStatus/s (under a prefix no agent watches: etcd still has to match
them against every watch).

Measured per size, over ``--seconds``: the delay from each endpoint put's sending (the
writer's clock; the same clock as the watchers') to its arrival at every watcher, p50 /
p99; etcd's CPU
(share of one core) and RSS; the watchers' CPU. The baseline is the same with one watcher,
measured in the same run: the ratios say what the fan-out costs. On a two-core machine the
watcher processes (Python) compete with etcd for the cores; their CPU is reported so the
reader can tell which side ran out.

    .venv/bin/python -m bench.datastore.bench_watchers [--watchers 1,100,300] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from typing import Any

from bench.common import print_table, progress, write_results
from bench.datastore.bench_syncer import endpoint, status
from datastore import keys
from datastore.client import Datastore, EtcdConfig
from datastore.embedded import EmbeddedEtcd
from felix_like.agent import WATCHED

PROCESSES = 2
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


PROBE = keys.workload("probe", "default", "probe", "eth0")


def watcher_process(endpoint_url: str, clients: int, start: Any, ready: Any,
                    seconds: float) -> dict[str, Any]:
    """``clients`` agents' watches; returns (revision, arrival) of every endpoint event.

    Ready once every client has seen the probe key (which the bench writes after every
    process has started its watches): its watches exist, however long etcd took."""

    async def run() -> dict[str, Any]:
        stores = [Datastore(EtcdConfig.from_strings(endpoint_url)) for _ in range(clients)]
        for ds in stores:
            await ds.__aenter__()
        rev = await stores[0].revision() + 1
        arrivals: list[tuple[int, float]] = []
        workloads = keys.full(keys.WORKLOADS)
        probed: set[int] = set()

        async def follow(i: int, ds: Datastore, prefix: str) -> None:
            async for ev in ds.watch(prefix, rev):
                if prefix != workloads:
                    continue
                if ev.kv.key == PROBE:
                    probed.add(i)
                else:
                    arrivals.append((ev.revision, time.monotonic()))

        tasks = [asyncio.create_task(follow(i, ds, keys.full(p)))
                 for i, ds in enumerate(stores) for p in WATCHED]
        ready.put("watching")
        deadline = time.monotonic() + 300
        while len(probed) < clients and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        failed = sum(1 for t in tasks if t.done())
        ready.put((len(probed), failed))
        while not start.is_set():
            await asyncio.sleep(0.05)
        c0 = time.process_time()
        await asyncio.sleep(seconds + 2.0)
        cpu = time.process_time() - c0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ds in stores:
            await ds.__aexit__(None, None, None)
        return {"arrivals": arrivals, "cpu_s": cpu, "probed": len(probed), "failed": failed}

    return asyncio.run(run())


async def _write(url: str, seconds: float, endpoint_rate: float,
                 status_rate: float) -> dict[int, float]:
    """Puts at the two rates for ``seconds``; when each endpoint put was sent, by the
    revision etcd gave it."""
    committed: dict[int, float] = {}
    async with Datastore(EtcdConfig.from_strings(url)) as ds:
        t0 = time.monotonic()
        n_ep = n_st = 0
        while (now := time.monotonic()) - t0 < seconds:
            due_ep = int((now - t0) * endpoint_rate) - n_ep
            due_st = int((now - t0) * status_rate) - n_st
            for _ in range(max(0, due_st)):
                await ds.put(keys.node_status(f"sim{n_st % 1000}"),
                             status(f"sim{n_st % 1000}", n_st))
                n_st += 1
            for _ in range(max(0, due_ep)):
                node = f"sim{n_ep % 1000}"
                sent = time.monotonic()
                rev = await ds.put(keys.workload(node, f"ns{n_ep % 50}",
                                                f"{node}-p{n_ep}", "eth0"),
                                   endpoint(node, n_ep))
                committed[rev] = sent
                n_ep += 1
            await asyncio.sleep(0.005)
    return committed


async def _put_probe(url: str) -> None:
    async with Datastore(EtcdConfig.from_strings(url)) as ds:
        await ds.put(PROBE, b"{}")


def measure(etcd: EmbeddedEtcd, watchers: int, seconds: float, endpoint_rate: float,
            status_rate: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    procs = min(PROCESSES, watchers)
    share = [watchers // procs + (1 if i < watchers % procs else 0) for i in range(procs)]
    with ctx.Manager() as mgr:
        start, ready = mgr.Event(), mgr.Queue()
        with ctx.Pool(procs) as pool:
            pending = pool.starmap_async(
                watcher_process, [(etcd.endpoint, n, start, ready, seconds) for n in share])
            for _ in share:
                ready.get(timeout=120)
            asyncio.run(_put_probe(etcd.endpoint))
            answers = [ready.get(timeout=330) for _ in share]
            assert etcd.proc is not None
            etcd_pid = etcd.proc.pid
            e_cpu0, t0 = _cpu_s(etcd_pid), time.monotonic()
            start.set()
            committed = asyncio.run(_write(etcd.endpoint, seconds, endpoint_rate,
                                           status_rate))
            e_cpu = (_cpu_s(etcd_pid) - e_cpu0) / (time.monotonic() - t0)
            etcd_rss = _rss_mib(etcd_pid)
            results = pending.get(timeout=seconds + 120)
    watching = sum(a[0] for a in answers)
    failed = sum(a[1] for a in answers)
    delays = [at - committed[rev] for r in results for rev, at in r["arrivals"]
              if rev in committed]
    expected = len(committed) * watchers
    delays.sort()

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p * len(delays)))] * 1e3 if delays else 0.0

    return {"watchers": watchers, "watches": watchers * len(WATCHED),
            "watchers_ready": watching, "watches_failed": failed,
            "endpoint_puts": len(committed), "deliveries": len(delays),
            "missing": expected - len(delays),
            "delay_p50_ms": pct(0.5), "delay_p99_ms": pct(0.99),
            "delay_mean_ms": statistics.mean(delays) * 1e3 if delays else 0.0,
            "etcd_cpu_share": e_cpu, "etcd_rss_mib": etcd_rss,
            "watchers_cpu_share": sum(r["cpu_s"] for r in results) / (seconds + 2.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--watchers", default="1,100,300",
                    help="sizes, comma-separated; the first is the baseline (default 1)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--endpoint-rate", type=float, default=20.0)
    ap.add_argument("--status-rate", type=float, default=100.0)
    ap.add_argument("--output", default="watchers")
    args = ap.parse_args()
    sizes = [int(x) for x in args.watchers.split(",")]
    rows: list[dict[str, Any]] = []
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    try:
        for w in sizes:
            with progress(f"{w} watchers ({w * len(WATCHED)} watches) for {args.seconds:.0f} s"):
                rows.append(measure(etcd, w, args.seconds, args.endpoint_rate,
                                    args.status_rate))
    finally:
        etcd.stop()
    base = rows[0]
    for r in rows:
        r["delay_p50_ratio"] = r["delay_p50_ms"] / base["delay_p50_ms"] \
            if base["delay_p50_ms"] else 0.0
        r["etcd_cpu_ratio"] = r["etcd_cpu_share"] / base["etcd_cpu_share"] \
            if base["etcd_cpu_share"] else 0.0
    print_table(["watchers", "ready", "watches", "deliveries", "missing", "p50 ms", "p99 ms",
                 "p50 ÷ base", "etcd CPU", "etcd RSS MiB", "watchers CPU"],
                [[r["watchers"], r["watchers_ready"], r["watches"], r["deliveries"], r["missing"],
                  r["delay_p50_ms"], r["delay_p99_ms"], r["delay_p50_ratio"],
                  f"{r['etcd_cpu_share']:.0%}", r["etcd_rss_mib"],
                  f"{r['watchers_cpu_share']:.0%}"] for r in rows],
                title=f"etcd watch fan-out: {args.endpoint_rate:.0f} endpoint puts/s (every "
                      f"watcher gets them), {args.status_rate:.0f} NodeStatus puts/s (none "
                      f"does), one member")
    print(f"results: {write_results(args.output, {'rows': rows, 'args': vars(args)})}")


if __name__ == "__main__":
    main()
