"""BGP benchmark: block announce → in the ToR's FIB, and 1,000 blocks between two ExaBGPs.

Run as root (``make bench`` or ``python -m bench.bgp.bench_bgp``). Everything runs in
namespaces made here (``fabb-*``) and removed at the end, also on failure.

- ``announce_to_tor_fib``: a BgpSpeaker (through the relay) announces one more block; time
  until the route is in BIRD's kernel table in the ToR namespace (p50/p99 over N blocks).
  Baseline, same run: a route added to that kernel directly over netlink, until visible.
- ``blocks_1000``: node 1 announces 1,000 blocks at once; time until node 2's speaker has
  installed all of them in its import table. Baseline: the same for one block.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import print_table, write_results

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from helpers.bird import Bird, BirdPeer  # noqa: E402
from helpers.exabgp import SpeakerProcess, link, run, wait_for  # noqa: E402

from bgp.config import NeighborSpec  # noqa: E402
from felix_like.netlink import delete_netns  # noqa: E402


@contextlib.contextmanager
def namespaces() -> Iterator[list[str]]:
    made: list[str] = []
    try:
        yield made
    finally:
        for ns in reversed(made):
            delete_netns(ns)


def mkns(made: list[str], tag: str) -> str:
    name = f"fabb-{tag}-{uuid.uuid4().hex[:6]}"
    run("ip", "netns", "add", name)
    made.append(name)
    run("ip", "-n", name, "link", "set", "lo", "up")
    return name


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def nb(local: str, peer: str, las: int, pas: int) -> NeighborSpec:
    return NeighborSpec(peer_ip=peer, peer_as=pas, local_as=las, local_address=local,
                        router_id=local, type="node", hold_time=9, graceful_restart=0)


def in_fib(ipr: Any, prefix: str) -> bool:
    net, plen = prefix.split("/")
    return any(r.get("dst_len") == int(plen) and r.get_attr("RTA_DST") == net
               for r in ipr.get_routes(family=2, table=254))


def bench_tor(tmp: Path, n: int = 30) -> dict[str, Any]:
    from pyroute2 import IPRoute

    with namespaces() as made:
        tor, n1 = mkns(made, "tor"), mkns(made, "n1")
        link(tor, "10.99.1.2/30", n1, "10.99.1.1/30")
        bird = Bird(tor, tmp / "bird", "10.99.0.254", 65000,
                    peers=[BirdPeer("n1", "10.99.1.1", 65001, "10.99.1.2")])
        bird.start()
        sp = SpeakerProcess("n1", n1, tmp / "n1", [nb("10.99.1.1", "10.99.1.2", 65001, 65000)],
                            ["10.244.0.0/26"])
        try:
            sp.start()
            wait_for(lambda: bird.established("n1"), 30, "session")
            ipr = IPRoute(netns=tor, flags=0)
            wait_for(lambda: in_fib(ipr, "10.244.0.0/26"), 10, "first block")
            bgp, base = [], []
            exports = ["10.244.0.0/26"]
            for i in range(1, n + 1):
                p = f"10.244.{i}.0/26"
                exports.append(p)
                t0 = time.perf_counter()
                sp.send("exports " + ",".join(exports))
                wait_for(lambda p=p: in_fib(ipr, p), 10, p, interval=0.0005)  # type: ignore[misc]
                bgp.append(time.perf_counter() - t0)
                q = f"10.245.{i}.0/26"
                t0 = time.perf_counter()
                ipr.route("add", dst=q, type="blackhole")
                wait_for(lambda q=q: in_fib(ipr, q), 10, q, interval=0.0005)  # type: ignore[misc]
                base.append(time.perf_counter() - t0)
            ipr.close()
        finally:
            sp.stop(drain=False)
            bird.stop()
    return {"n": n, "p50_ms": pct(bgp, 0.5) * 1e3, "p99_ms": pct(bgp, 0.99) * 1e3,
            "baseline_netlink_p50_ms": pct(base, 0.5) * 1e3,
            "ratio_p50": pct(bgp, 0.5) / max(pct(base, 0.5), 1e-9)}


def bench_pair(tmp: Path, count: int = 1000) -> dict[str, Any]:
    with namespaces() as made:
        a, b = mkns(made, "a"), mkns(made, "b")
        link(a, "10.0.0.1/24", b, "10.0.0.2/24")
        spa = SpeakerProcess("a", a, tmp / "a", [nb("10.0.0.1", "10.0.0.2", 64512, 64512)], [],
                             ["10.0.0.0/8"])
        spb = SpeakerProcess("b", b, tmp / "b", [nb("10.0.0.2", "10.0.0.1", 64512, 64512)], [],
                             ["10.0.0.0/8"])
        try:
            spa.start()
            spb.start()
            wait_for(lambda: any(r["state"] == "Established" for r in spa.peer_status()), 30,
                     "session", interval=0.2)
            one = "10.244.0.0/26"
            t0 = time.perf_counter()
            spa.send(f"exports {one}")
            spb.wait_learned({one: ["10.0.0.1"]}, 10)
            t_one = time.perf_counter() - t0
            blocks = [f"10.{244 + i // 256}.{i % 256}.64/26" for i in range(count)]
            want = {p: ["10.0.0.1"] for p in blocks}
            t0 = time.perf_counter()
            spa.send("exports " + ",".join(blocks))
            spb.wait_learned(want, 60)
            t_all = time.perf_counter() - t0
        finally:
            spa.stop(drain=False)
            spb.stop(drain=False)
    return {"count": count, "seconds": t_all, "per_block_ms": t_all / count * 1e3,
            "baseline_one_block_ms": t_one * 1e3,
            "ratio_to_one_block": t_all / max(t_one, 1e-9)}


def main() -> int:
    if os.geteuid() != 0:
        print("bench_bgp needs root (network namespaces)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fabb-") as d:
        tor = bench_tor(Path(d) / "tor")
        pair = bench_pair(Path(d) / "pair")
    print_table(["measure", "value"], [
        ["announce → ToR FIB p50 (ms)", tor["p50_ms"]],
        ["announce → ToR FIB p99 (ms)", tor["p99_ms"]],
        ["netlink add → FIB p50 (ms, baseline)", tor["baseline_netlink_p50_ms"]],
        [f"{pair['count']} blocks → peer's import table (s)", pair["seconds"]],
        ["1 block → peer's import table (ms, baseline)", pair["baseline_one_block_ms"]],
    ], title="BGP (ExaBGP 5 + BIRD 2, namespaces on one host)")
    path = write_results("bgp", {"announce_to_tor_fib": tor, "blocks_1000": pair})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
