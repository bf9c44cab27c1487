"""What the agent's periodic work costs in a large cluster: the policy side of a resync.

``python -m bench.scale.bench_resync [--nodes N] [--pods-per-node P] [--policies K]``
(root: one throw-away network namespace, ``fabb-rsy-*``, removed at the end).

The cluster is `bench.scale.bench_scale`'s simulated one, decoded into a `ClusterState`
as the agent's syncer does it (`bench.scale.bench_state`); the node is the first simulated
node, whose pods the policies select. Measured, each as the CPU time of this process and
the wall time, for one node's `IncrementalCalculation` and `NftBackend` (the agent's own
objects, in a namespace made here):

- the first calculation (the agent's start) and a calculation from scratch after
  ``reset`` (what follows a fresh etcd snapshot, every ``--snapshot-interval``);
- the first apply on an empty table (the agent's first start on the node): the baseline;
- the full converge over the table as programmed, after ``forget`` (every
  ``--resync-interval``, 60 s by default), reported as a ratio to the baseline;
- an apply with nothing changed (every other apply).

Results: ``bench/results/resync.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import print_table, write_results


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def _state(nodes: int, pods: int, policies: int) -> tuple[Any, str]:
    from bench.scale.bench_scale import Cluster
    from bench.scale.bench_state import _Pages
    from datastore import keys
    from datastore.kv import KV
    from datastore.syncer import Syncer, Update
    from felix_like.agent import WATCHED
    from felix_like.state import ClusterState, decode_value

    shape = Cluster(nodes, pods, policies, 50, 0)
    prefixes = tuple(keys.PREFIX + p for p in WATCHED)
    kvs = [KV(k, v, i + 1, i + 1, 1)
           for i, (k, v) in enumerate(kv for kv in shape.values() if kv[0].startswith(prefixes))]
    syncer: Syncer[Any] = Syncer(_Pages(kvs), keys.PREFIX,  # type: ignore[arg-type]
                                 decode_value, prefixes=WATCHED)
    state = ClusterState()
    for ev in asyncio.run(syncer.resync()):
        if isinstance(ev, Update):
            state.apply(ev)
    node = min(n for n in state.nodes if state.endpoints_of(n))
    return state, node


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--pods-per-node", type=int, default=10)
    ap.add_argument("--policies", type=int, default=200)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_resync needs root (a network namespace)", file=sys.stderr)
        return 2
    from felix_like.policy.incremental import IncrementalCalculation
    from felix_like.policy.nft import NftBackend

    state, node = _state(args.nodes, args.pods_per_node, args.policies)
    calc = IncrementalCalculation(node)
    rs: Any = None

    def first() -> None:
        nonlocal rs
        rs = calc.update_from(state)

    def again() -> None:
        nonlocal rs
        calc.reset()
        rs = calc.update_from(state)

    res: dict[str, Any] = {"nodes": args.nodes, "pods_per_node": args.pods_per_node,
                           "policies": args.policies, "node": node,
                           "loadavg_at_start": os.getloadavg()}
    res["calc_first"] = _timed(first)
    res["calc_from_scratch"] = _timed(again)
    res["sets"] = len(rs.sets)
    res["elements"] = sum(len(e) for e in rs.elements.values())
    ns = f"fabb-rsy-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        nft = NftBackend(ns)
        res["apply_empty_table"] = _timed(lambda: nft.apply(rs))
        nft.forget()
        res["full_converge"] = _timed(lambda: nft.apply(rs))
        res["apply_unchanged"] = _timed(lambda: nft.apply(rs))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    base = res["apply_empty_table"][0]
    res["ratio_full_converge_to_empty_table"] = res["full_converge"][0] / base if base else 0.0
    print_table(["step (one node's policy)", "CPU s", "wall s"], [
        ["first calculation (agent start)", *res["calc_first"]],
        ["calculation from scratch (fresh snapshot)", *res["calc_from_scratch"]],
        ["nft: first apply, empty table (baseline)", *res["apply_empty_table"]],
        ["nft: full converge over the table (resync)", *res["full_converge"]],
        ["nft: apply with nothing changed", *res["apply_unchanged"]],
    ], title=f"resync: {args.nodes} nodes x {args.pods_per_node} pods, {args.policies} "
             f"policies: {res['sets']} sets, {res['elements']} elements on {node}")
    print(f"full converge / first apply on an empty table: "
          f"{res['ratio_full_converge_to_empty_table']:.2f}x")
    print(f"wrote {write_results('resync', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
