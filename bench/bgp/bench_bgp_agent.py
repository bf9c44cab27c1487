"""BGP through the real agent: pod ADD → route in a remote node's FIB, and node failure.

Run as root (``python -m bench.bgp.bench_bgp_agent``). The lab is `tests/helpers/fabric.py`'s
two racks (AS per rack, BIRD ToRs reflecting for their nodes, one ToR-ToR link), every node
running the real ``fabric-agent`` (which runs ExaBGP), pods added through the real CNI
shim, etcd embedded and reached over its unix socket. Everything runs in namespaces made
here (``fabb-*``) and is removed at the end, also on failure. BGP hold time 3 s.

Measures (times from the moment the shim is exec'd, or the failure injected, until the
route is present in / gone from the remote node's kernel, polled over netlink every ms):

- ``pod_add_borrowed_32``: 50 pods on r1b, whose pool has one block owned by r1a, so every
  pod borrows an address and r1b announces it as a /32 → r2a's FIB (node → ToR 1 → ToR 2
  → node). Why this series: with a blackhole per block the remote FIB only changes when a
  block is claimed, once per 64 pods; a borrowed address changes it for every pod, and the
  path is the same (IPAM write → etcd watch → export → ExaBGP → BIRD → BIRD → ExaBGP →
  agent → netlink).
- ``pod_add_new_block``: 50 pods on r2b with ``blockSize: 31`` and an unmeasured filler
  pod after each, so every measured pod claims a new block and the block itself travels
  (r2b → r1a). This is the first-pod-on-a-node
  path, the one real clusters see with /26 blocks.
- ``node_failure``: r2a's agent killed with -9 and its ExaBGP either killed with -9 (the
  kernel closes the TCP session: the ToR sees it at once) or frozen with SIGSTOP (a hung
  or powered-off node: only the 3 s hold timer notices) → r2a's block gone from r1a's FIB.

With ``BENCH_SIM_NODES=N`` (and ``BENCH_SIM_PODS``, default 50, ``BENCH_SIM_POLICIES``,
default 200) the same lab runs inside a simulated cluster: before any agent starts, etcd
gets `bench.scale.bench_scale`'s N - 1 other nodes (Nodes, NodeStatus, labelled
WorkloadEndpoints in 50 namespaces, their blocks, affinities and handles, and the
NetworkPolicies), without its IPPool and BGPConfiguration (the lab writes its own). Every
real agent then holds the whole cluster, as it would among 1,000 nodes; nobody announces
the simulated blocks (their nodes are etcd values only). Results go to
``bgp_agent_scale.json``.

Baselines, same run: a route added over netlink in a namespace until visible in a dump
(the floor of any FIB measurement here); BIRD to BIRD — a static route enabled at ToR 2
until in ToR 1's FIB, and disabled until gone (one BGP hop, no agent, no etcd); and the
configured hold time for the silent failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bgp.bench_bgp import mkns, namespaces, pct
from bench.common import print_table, progress, write_results

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from helpers.fabric import Fabric, Node, two_racks, wait_for  # noqa: E402

from bench.scale.bench_scale import Cluster, _bulk_put  # noqa: E402
from datastore import keys  # noqa: E402
from datastore.client import Datastore, EtcdConfig  # noqa: E402
from datastore.embedded import EmbeddedEtcd  # noqa: E402
from felix_like.netlink import open_iproute  # noqa: E402

HOLD = 3
PODS = 50
R1_POOL = "10.244.0.0/26"
R2_POOL = "10.244.128.0/18"
PROBE = "10.250.0.0/24"  # outside every pool: the nodes ignore it, the ToRs carry it


class Fib:
    """One namespace's IPv4 main table, followed with ``ip monitor route``.

    Event-driven rather than polled: a netlink dump through pyroute2's netns proxy costs
    ~20 ms with 100 routes here, which would both blur the figures and steal the CPU the
    agents need. Each change is stamped when its line arrives (the pipe adds well under
    a millisecond); `wait` returns the stamp of the change that made the condition true.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._cond = threading.Condition()
        self._present: set[str] = set()
        self._stamp = time.perf_counter()
        self.added_at: dict[str, float] = {}  # prefix -> when it last appeared
        self._proc = subprocess.Popen(["ip", "-n", ns, "monitor", "route"],
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        time.sleep(0.05)  # the monitor is subscribed before the dump: no change missed
        for line in subprocess.run(["ip", "-n", ns, "route", "show"], capture_output=True,
                                   text=True, check=True).stdout.splitlines():
            self._apply(line)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _apply(self, line: str, now: float | None = None) -> None:
        if not line or line[0].isspace():
            return  # an ECMP next hop continuation
        words = line.split()
        deleted = words[0] == "Deleted"
        if deleted:
            words = words[1:]
        if words and words[0] in ("blackhole", "unreachable", "prohibit"):
            words = words[1:]
        if not words or not words[0][0].isdigit():
            return
        prefix = words[0] if "/" in words[0] else f"{words[0]}/32"
        if deleted:
            self._present.discard(prefix)
        else:
            self._present.add(prefix)
            if now is not None:
                self.added_at[prefix] = now

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            now = time.perf_counter()
            with self._cond:
                self._apply(line.rstrip("\n"), now)
                self._stamp = now
                self._cond.notify_all()

    def prefixes(self) -> set[str]:
        with self._cond:
            return set(self._present)

    def wait(self, pred: Callable[[set[str]], bool], timeout: float, what: str) -> float:
        """The time (perf_counter) of the change after which ``pred(prefixes)`` held."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            while not pred(self._present):
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise AssertionError(f"{self.ns}: timed out after {timeout}s waiting for "
                                         f"{what}")
                self._cond.wait(left)
            return self._stamp

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def stats_ms(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "p50_ms": pct(xs, 0.5) * 1e3, "p99_ms": pct(xs, 0.99) * 1e3,
            "max_ms": max(xs) * 1e3, "mean_ms": statistics.mean(xs) * 1e3}


def pod_series(fab: Fabric, node: str, tor: Fib, remote: Fib, n: int, tag: str, pool: str,
               plen: int = 32, fillers: int = 0) -> dict[str, list[float]]:
    """n pods added one by one on ``node``; per pod, seconds from the shim's exec until the
    new prefix is in the node's own ToR's FIB (``tor``), in ``remote``'s FIB, and until the
    ADD returned.

    The new prefix is the first /``plen`` inside ``pool`` that appears; it must be the
    pod's address as a /``plen``. ``fillers`` more pods after each measured one (not
    measured) fill its block, so the next one claims a new block.
    """
    net = ipaddress.ip_network(pool)

    def ours(prefixes: set[str]) -> set[str]:
        return {p for p in prefixes if (x := ipaddress.ip_network(p)).prefixlen == plen
                and x.subnet_of(net)}  # type: ignore[arg-type]

    out: dict[str, list[float]] = {"tor": [], "remote": [], "add": []}
    for i in range(n):
        for j in range(fillers if i else 0):
            fab.add_pod(node, f"{tag}{i}f{j}")
        before = ours(remote.prefixes())
        t0 = time.perf_counter()
        pending = fab.spawn_pod(node, f"{tag}{i}")
        t_fib = remote.wait(lambda now, before=before: bool(ours(now) - before),  # type: ignore[misc]
                            15, f"pod {tag}{i}'s route")
        pending.proc.wait(30)
        t_add = time.perf_counter()
        pod = pending.finish()
        new = ours(remote.prefixes()) - before
        assert new == {str(ipaddress.ip_network(f"{pod.ip}/{plen}", strict=False))}, (new, pod)
        prefix = new.pop()
        t_tor = tor.wait(lambda now, p=prefix: p in now, 5, f"{prefix} at the ToR")  # type: ignore[misc]
        out["tor"].append(tor.added_at.get(prefix, t_tor) - t0)
        out["remote"].append(t_fib - t0)
        out["add"].append(t_add - t0)
    return out


_ADD_LINE = re.compile(r" ADD \S+: .* in (\d+) ms \(([^)]*)\)$")


def add_steps(node: Node) -> dict[str, dict[str, float]]:
    """p50 / p99 ms of each step of the ADDs the node's agent logged (the CNI handler's
    line: "ADD <handle>: ... in 57 ms (read 1, ipam 12, ...)"), the total as "all"."""
    took: dict[str, list[float]] = {}
    for line in node.log.read_text().splitlines():
        m = _ADD_LINE.search(line)
        if m is None:
            continue
        took.setdefault("all", []).append(float(m[1]) / 1e3)
        for part in m[2].split(", "):
            step, _, ms = part.rpartition(" ")
            took.setdefault(step, []).append(float(ms) / 1e3)
    return {step: {"n": len(xs), "p50_ms": pct(xs, 0.5) * 1e3, "p99_ms": pct(xs, 0.99) * 1e3}
            for step, xs in took.items()}


def block_of(node: Node) -> str:
    return str(next(p for p, rest in node.routes("80").items()
                    if rest.startswith("blackhole")))


def node_failure(fab: Fabric, victim: str, observer: Fib, silent: bool) -> float:
    """Kill ``victim``'s agent (-9) and kill (-9) or freeze (SIGSTOP) its ExaBGP; seconds
    until its block is gone from the observer's FIB. The node is restored after."""
    n = fab.nodes[victim]
    block = block_of(n)
    observer.wait(lambda now: block in now, 30, f"{block} at the observer")
    pid = n.exabgp_pid()
    assert pid is not None
    n.kill(signal.SIGKILL)
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGSTOP if silent else signal.SIGKILL)
    t_gone = observer.wait(lambda now: block not in now, 30, f"{block} withdrawn")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    n.start(fab.etcd)
    observer.wait(lambda now: block in now, 30, f"{block} back at the observer")
    return t_gone - t0


def baseline_netlink(ns: str, n: int) -> list[float]:
    """A route added over netlink (a handle bound in the namespace, as the agent has it)
    until the monitor reports it."""
    fib = Fib(ns)
    ipr = open_iproute(ns)
    out = []
    try:
        for i in range(n):
            p = f"10.251.{i}.0/24"
            t0 = time.perf_counter()
            ipr.route("add", dst=p, type="blackhole")
            out.append(fib.wait(lambda now, p=p: p in now, 5, p) - t0)  # type: ignore[misc]
    finally:
        ipr.close()
        fib.close()
    return out


def baseline_bird(fab: Fabric, at: Fib, n: int) -> tuple[list[float], list[float]]:
    """A static route enabled at ToR 2 → in ToR 1's FIB; disabled → gone (birdc's own
    start-up, a few ms, is included: it is on the agent's side of the comparison too as
    the shim's exec)."""
    tor2 = fab.tors["tor2"]
    up, down = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        tor2.birdc("enable", "probe0")
        up.append(at.wait(lambda now: PROBE in now, 10, "probe at ToR 1") - t0)
        t0 = time.perf_counter()
        tor2.birdc("disable", "probe0")
        down.append(at.wait(lambda now: PROBE not in now, 10, "probe gone at ToR 1") - t0)
    return up, down


def load_simulated(etcd: EmbeddedEtcd, shape: Cluster) -> dict[str, Any]:
    """Write the simulated cluster but its IPPool and BGPConfiguration (the lab's own)."""
    skip = {keys.ippool("default"), keys.bgp_config()}

    async def load() -> tuple[int, int]:
        async with Datastore(EtcdConfig.from_strings(etcd.endpoint)) as ds:
            with progress("writing the simulated cluster to etcd") as shown:
                return await _bulk_put(ds, ((k, v) for k, v in shape.values()
                                            if k not in skip), shown)

    t0 = time.perf_counter()
    n, size = asyncio.run(load())
    return {"nodes": shape.nodes, "pods_per_node": shape.pods_per_node,
            "policies": shape.policies, "keys": n, "value_bytes": size,
            "load_s": time.perf_counter() - t0}


def run(tmp: Path, pods: int, failures: int, sim: Cluster | None = None) -> dict[str, Any]:
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    fibs: list[Fib] = []
    simulated: dict[str, Any] = {}
    try:
        if sim is not None:
            simulated = load_simulated(etcd, sim)
            print(f"simulated cluster written: {simulated['keys']} keys in "
                  f"{simulated['load_s']:.1f} s", flush=True)
        with namespaces() as made:
            fab = Fabric(lambda tag: mkns(made, tag), etcd, tmp)
            try:
                two_racks(fab, per_rack=2, hold=HOLD, tor_links=1)
                fab.tors["tor2"].probes = [PROBE]
                fab.pool("r1", R1_POOL, 26, 'rack == "r1"')  # one block
                # Two addresses per block (a /32 block would collide with the pod's /32
                # route): with one filler pod after each measured one, every measured pod
                # claims a new block.
                fab.pool("r2", R2_POOL, 31, 'rack == "r2"')
                fab.start_tors()
                t_agents = time.perf_counter()
                # Each agent decodes the whole simulated cluster at start (2 cores shared).
                with progress(f"waiting for the {len(fab.nodes)} agents' readiness"):
                    fab.start_agents(timeout=40 if sim is None else 300)
                if sim is not None:
                    simulated["agents_ready_s"] = time.perf_counter() - t_agents
                fab.add_pod("r1a", "warm1")  # claims r1's only block
                fab.add_pod("r2a", "warm2")
                for tor in fab.tors.values():
                    for sess in tor.peers:
                        wait_for(functools.partial(tor.established, sess.name), 30,
                                 f"{tor.name} {sess.name}", 0.2)
                r1a, r2a, tor1 = (Fib(fab.nodes["r1a"].ns), Fib(fab.nodes["r2a"].ns),
                                  Fib(fab.tors["tor1"].ns))
                fibs += [r1a, r2a, tor1]
                warm = block_of(fab.nodes["r2a"])
                r1a.wait(lambda now: warm in now, 30, "warm-up block at r1a")

                nl = baseline_netlink(mkns(made, "nl"), 30)
                bird_up, bird_down = baseline_bird(fab, tor1, 20)
                tor2 = Fib(fab.tors["tor2"].ns)
                fibs.append(tor2)
                borrowed = pod_series(fab, "r1b", tor1, r2a, pods, "b", R1_POOL)
                blocks = pod_series(fab, "r2b", tor2, r1a, pods, "k", R2_POOL, 31, fillers=1)
                steps = {n: add_steps(fab.nodes[n]) for n in ("r1b", "r2b")}
                killed = [node_failure(fab, "r2a", r1a, silent=False) for _ in range(failures)]
                frozen = [node_failure(fab, "r2a", r1a, silent=True) for _ in range(failures)]
            finally:
                for f in fibs:
                    f.close()
                fab.close()
    finally:
        etcd.stop()
    base = pct(bird_up, 0.5)

    def series(x: dict[str, list[float]]) -> dict[str, Any]:
        return {**stats_ms(x["remote"]), "to_own_tor_p50_ms": pct(x["tor"], 0.5) * 1e3,
                "to_own_tor_p99_ms": pct(x["tor"], 0.99) * 1e3,
                "add_p50_ms": pct(x["add"], 0.5) * 1e3, "add_p99_ms": pct(x["add"], 0.99) * 1e3,
                "ratio_p50_to_bird_hop": pct(x["remote"], 0.5) / base}
    return {
        "pods": pods, "hold_time_s": HOLD, "simulated_cluster": simulated,
        "pod_add_borrowed_32": {**series(borrowed), "agent_add_steps": steps["r1b"]},
        "pod_add_new_block": {**series(blocks), "agent_add_steps": steps["r2b"]},
        "node_failure_kill9": {**stats_ms(killed),
                               "ratio_p50_to_bird_withdraw": pct(killed, 0.5)
                               / pct(bird_down, 0.5)},
        "node_failure_silent": {**stats_ms(frozen),
                                "ratio_p50_to_hold_time": pct(frozen, 0.5) / HOLD},
        "baseline_netlink_add_to_fib": stats_ms(nl),
        "baseline_bird_to_bird_announce": stats_ms(bird_up),
        "baseline_bird_to_bird_withdraw": stats_ms(bird_down),
    }


def main() -> int:
    if os.geteuid() != 0:
        print("bench_bgp_agent needs root (network namespaces)", file=sys.stderr)
        return 1
    pods = int(os.environ.get("BENCH_PODS", PODS))
    failures = int(os.environ.get("BENCH_FAILURES", 3))
    sim_nodes = int(os.environ.get("BENCH_SIM_NODES", 0))
    sim = Cluster(sim_nodes, int(os.environ.get("BENCH_SIM_PODS", 50)),
                  int(os.environ.get("BENCH_SIM_POLICIES", 200)), 50, 0) if sim_nodes else None
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fabb-") as d:
        res = run(Path(d), pods, failures, sim)
    # Other work on the machine shifts every figure, the baselines too: recorded with them.
    res["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    b, k = res["pod_add_borrowed_32"], res["pod_add_new_block"]
    f9, fs = res["node_failure_kill9"], res["node_failure_silent"]
    nl = res["baseline_netlink_add_to_fib"]
    bu, bd = res["baseline_bird_to_bird_announce"], res["baseline_bird_to_bird_withdraw"]
    print_table(["measure", "n", "p50 ms", "p99 ms", "max ms"], [
        ["pod ADD → remote FIB, borrowed /32 (r1b → r2a)", b["n"], b["p50_ms"], b["p99_ms"],
         b["max_ms"]],
        ["pod ADD → remote FIB, new block (r2b → r1a)", k["n"], k["p50_ms"], k["p99_ms"],
         k["max_ms"]],
        ["  of which: → own ToR's FIB, borrowed /32", b["n"], b["to_own_tor_p50_ms"],
         b["to_own_tor_p99_ms"], ""],
        ["  of which: → own ToR's FIB, new block", k["n"], k["to_own_tor_p50_ms"],
         k["to_own_tor_p99_ms"], ""],
        ["  the ADD itself returns, borrowed /32", b["n"], b["add_p50_ms"], b["add_p99_ms"],
         ""],
        ["  the ADD itself returns, new block", k["n"], k["add_p50_ms"], k["add_p99_ms"], ""],
        ["node kill -9 → block gone at r1a", f9["n"], f9["p50_ms"], f9["p99_ms"], f9["max_ms"]],
        [f"node frozen → block gone at r1a (hold {HOLD} s)", fs["n"], fs["p50_ms"],
         fs["p99_ms"], fs["max_ms"]],
        ["baseline: netlink add → FIB", nl["n"], nl["p50_ms"], nl["p99_ms"], nl["max_ms"]],
        ["baseline: BIRD → BIRD → FIB (announce)", bu["n"], bu["p50_ms"], bu["p99_ms"],
         bu["max_ms"]],
        ["baseline: BIRD → BIRD → FIB (withdraw)", bd["n"], bd["p50_ms"], bd["p99_ms"],
         bd["max_ms"]],
    ], title="BGP through the real agent (ExaBGP 5 + BIRD 2 ToRs, namespaces on one host)"
       + (f", inside a simulated cluster of {sim.nodes} nodes x {sim.pods_per_node} pods, "
          f"{sim.policies} policies" if sim else ""))
    for what, x in (("borrowed /32 (r1b)", b), ("new block + fillers (r2b)", k)):
        st = x["agent_add_steps"]
        print(f"agent's ADD steps, {what}, p50 / p99 ms: " + ", ".join(
            f"{step} {v['p50_ms']:.0f} / {v['p99_ms']:.0f}" for step, v in st.items()))
    print(f"ratios: borrowed /32 p50 = {b['ratio_p50_to_bird_hop']:.1f}x one BIRD hop, new "
          f"block = {k['ratio_p50_to_bird_hop']:.1f}x; silent failure = "
          f"{fs['ratio_p50_to_hold_time']:.2f}x the hold time")
    path = write_results("bgp_agent_scale" if sim else "bgp_agent", res)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
