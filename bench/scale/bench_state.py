"""What the agent's copy of a cluster costs: decoding a snapshot into its `ClusterState`.

``python -m bench.scale.bench_state [--nodes N] [--pods-per-node P] [--policies K]``
(no root, no etcd). The keys and values are `bench.scale.bench_scale`'s simulated
cluster, only the sub-prefixes the agent watches (`felix_like.agent.WATCHED`). In a fresh
process each, measured by its VmRSS and CPU time (utime + stime):

- the agent's path: the syncer's paged snapshot (`Syncer.resync`, pages served from
  memory as etcd would serve them, decoded by `felix_like.state`'s decoder) and every
  event applied to a `ClusterState`;
- the baseline, same run: ``json.loads`` of every value, kept in a dict by key (the
  floor of any decoder, and what holding the cluster as plain parsed JSON would cost).

Reported: memory and CPU per key, and both as ratios to the baseline. Results in
``bench/results/state.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import print_table, write_results


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class _Pages:
    """Serves ``list_page`` from memory, in key order, as etcd pages a snapshot."""

    def __init__(self, kvs: list[Any]) -> None:
        self.kvs = sorted(kvs, key=lambda kv: kv.key)
        self.keys = [kv.key for kv in self.kvs]

    async def list_page(self, prefix: str, start: str = "", revision: int = 0,
                        limit: int = 0) -> Any:
        from datastore.kv import Page

        i = bisect.bisect_left(self.keys, start or prefix)
        out = []
        while i < len(self.kvs) and self.keys[i].startswith(prefix) and len(out) < limit:
            out.append(self.kvs[i])
            i += 1
        more = i < len(self.kvs) and self.keys[i].startswith(prefix)
        return Page(out, len(self.kvs), more)


def _measure(how: str, nodes: int, pods: int, policies: int) -> dict[str, Any]:
    """In this process: build the keys, then decode them ``how`` ("agent" or "json")."""
    from bench.scale.bench_scale import Cluster
    from datastore import keys
    from datastore.kv import KV
    from datastore.syncer import Syncer, Update
    from felix_like.agent import WATCHED
    from felix_like.state import ClusterState, decode_value

    shape = Cluster(nodes, pods, policies, 50, 0)
    prefixes = tuple(keys.PREFIX + p for p in WATCHED)
    kvs = [KV(k, v, i + 1, i + 1, 1)
           for i, (k, v) in enumerate(kv for kv in shape.values() if kv[0].startswith(prefixes))]
    raw = sum(len(kv.key) + len(kv.value) for kv in kvs)
    pages = _Pages(kvs)  # before the measure: the raw values are etcd's, not the agent's
    rss0, cpu0 = _rss_mib(), _cpu_s()
    held: Any
    if how == "agent":
        syncer: Syncer[Any] = Syncer(pages, keys.PREFIX,  # type: ignore[arg-type]
                                     decode_value, prefixes=WATCHED)
        state = ClusterState()
        for ev in asyncio.run(syncer.resync()):
            if isinstance(ev, Update):
                state.apply(ev)
        held = (syncer, state)
    else:
        held = {kv.key: json.loads(kv.value) for kv in kvs}
    cpu = _cpu_s() - cpu0
    rss = _rss_mib() - rss0
    del held
    return {"keys": len(kvs), "raw_mib": raw / 2**20, "cpu_s": cpu, "rss_mib": rss}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--pods-per-node", type=int, default=50)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--only", choices=("agent", "json"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only:
        print(json.dumps(_measure(args.only, args.nodes, args.pods_per_node, args.policies)))
        return 0
    res: dict[str, Any] = {"nodes": args.nodes, "pods_per_node": args.pods_per_node,
                           "policies": args.policies, "loadavg_at_start": os.getloadavg()}
    for how in ("json", "agent"):  # each in a fresh process: RSS is the process's
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "bench.scale.bench_state", "--only", how,
             "--nodes", str(args.nodes), "--pods-per-node", str(args.pods_per_node),
             "--policies", str(args.policies)],
            check=True, capture_output=True, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        res[how] = {**json.loads(out.stdout), "wall_s": time.perf_counter() - t0}
    a, j = res["agent"], res["json"]
    n = a["keys"]
    res["ratios"] = {"cpu_vs_json": a["cpu_s"] / j["cpu_s"] if j["cpu_s"] else 0.0,
                     "rss_vs_json": a["rss_mib"] / j["rss_mib"] if j["rss_mib"] else 0.0}
    print_table(["measure", "agent's ClusterState", "json.loads (baseline)", "ratio"], [
        ["CPU to decode (s)", a["cpu_s"], j["cpu_s"], res["ratios"]["cpu_vs_json"]],
        ["CPU per key (us)", a["cpu_s"] / n * 1e6, j["cpu_s"] / n * 1e6, ""],
        ["RSS held (MiB)", a["rss_mib"], j["rss_mib"], res["ratios"]["rss_vs_json"]],
        ["RSS per key (bytes)", a["rss_mib"] * 2**20 / n, j["rss_mib"] * 2**20 / n, ""],
    ], title=f"state: {args.nodes} nodes x {args.pods_per_node} pods, {args.policies} "
             f"policies: {n} watched keys, {a['raw_mib']:.1f} MiB of keys and values")
    print(f"wrote {write_results('state', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
