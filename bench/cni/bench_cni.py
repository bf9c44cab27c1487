"""CNI ADD/DEL latency and parallel throughput: l3fabric against Debian's ptp + host-local.

``python -m bench.cni.bench_cni [--pods 100] [--parallel 8] [--agent process|in-process]``
(root). Starts its own etcd and namespaces (one node namespace per contender, pod
namespaces shared), removes them after. Both contenders are exec'd the same way
(``nsenter`` into the node namespace, then the plugin: a fork in this gRPC-using process
must not run Python before exec), ours being the real ``l3fabric`` shim talking to a
`CniHandler` + `CniServer` -- by default in a process of its own, like fabric-agent
(``--agent in-process``: in this process, whose event loop also execs every plugin of both
contenders); the reference ``ptp`` (with ``host-local`` IPAM) runs inside its node
namespace. The shim runs with the interpreter ``fabricctl install-cni`` picks by default
(`cni.shim.pick_interpreter`: ``/usr/bin/python3`` when it runs the shim), so that this
measures what gets installed; ``--shim-python PATH`` names another.
Per contender: sequential ADD then DEL of every pod (latency p50/p99), then
``--parallel`` ADDs in flight over all pods (pods/s), then their DELs -- interleaved
between the two contenders (see `_compare`), so that both see the same load from
whatever else runs on the machine.

Targets (issue 4): ADD p50 <= 2.5x the reference; parallel pods/s >= the reference.
Results: ``bench/results/cni.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import print_table, rate, write_results
from cni.shim import pick_interpreter, write_executable
from datastore import model as m
from datastore.client import Datastore, EtcdConfig
from datastore.embedded import EmbeddedEtcd
from felix_like.cni_handler import CniHandler
from felix_like.cni_server import CniServer
from ipam.allocator import IpamClient

REFERENCE = Path("/usr/lib/cni")


def _ns(tag: str, made: list[str]) -> str:
    name = f"fabb-{tag}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    made.append(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


async def _exec(exe: str, env: dict[str, str], conf: str, node: str) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net=/var/run/netns/{node}", exe, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(conf.encode())
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{exe} {env['CNI_COMMAND']} failed: {out.decode()} {err.decode()}")
    return dt


def _env(cmd: str, cid: str, pod: str, cni_path: str) -> dict[str, str]:
    return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{pod}",
            "CNI_IFNAME": "eth0", "CNI_PATH": cni_path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}"}


def _cpu(agent_pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, of its reaped children (the plugins,
    the exec'd IPAM plugin) and of the running agent process, if any, so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    if agent_pid is not None:
        with open(f"/proc/{agent_pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] * 1000


@dataclass(frozen=True)
class _Plugin:
    """One contender: how to exec it, and where its pods are."""

    tag: str
    exe: str
    conf: str  # the network config, JSON
    node: str
    cni_path: str
    pods: list[str]
    agent_pid: int | None = None  # ours, when the agent runs in a process of its own

    async def call(self, cmd: str, cid: str, i: int) -> float:
        env = _env(cmd, f"{self.tag}-{cid}", self.pods[i], self.cni_path)
        return await _exec(self.exe, env, self.conf, self.node)

    async def parallel(self, cmd: str, cid: str, parallel: int) -> tuple[float, float]:
        """``cmd`` for every pod, ``parallel`` in flight: (wall seconds, CPU seconds)."""
        sem = asyncio.Semaphore(parallel)

        async def one(i: int) -> None:
            async with sem:
                await self.call(cmd, f"{cid}{i}", i)

        t0, c0 = time.perf_counter(), _cpu(self.agent_pid)
        await asyncio.gather(*(one(i) for i in range(len(self.pods))))
        return time.perf_counter() - t0, _cpu(self.agent_pid) - c0


async def _compare(ours: _Plugin, ref: _Plugin, parallel: int) -> dict[str, dict[str, float]]:
    """Both contenders measured under the same background load, on this shared machine:
    the sequential ADDs (then DELs) alternate between them pod by pod (each in pods of
    its own), and the parallel runs go in the order ours, ref, ref, ours (each an ADD of
    every pod, then their DELs); a contender's throughput is its pods over its wall time
    in both runs."""
    n = len(ours.pods)
    seq: dict[str, dict[str, list[float]]] = {p.tag: {"ADD": [], "DEL": []} for p in (ours, ref)}
    for cmd in ("ADD", "DEL"):
        for i in range(n):
            for p in ((ours, ref) if i % 2 == 0 else (ref, ours)):
                seq[p.tag][cmd].append(await p.call(cmd, f"s{i}", i))
    par: dict[str, dict[str, list[tuple[float, float]]]] = {
        p.tag: {"ADD": [], "DEL": []} for p in (ours, ref)}
    for run, p in enumerate((ours, ref, ref, ours)):
        for cmd in ("ADD", "DEL"):
            par[p.tag][cmd].append(await p.parallel(cmd, f"p{run}-", parallel))
    out = {}
    for p in (ours, ref):
        adds, dels = seq[p.tag]["ADD"], seq[p.tag]["DEL"]
        pods = {cmd: n * len(runs) for cmd, runs in par[p.tag].items()}
        wall = {cmd: sum(w for w, _ in runs) for cmd, runs in par[p.tag].items()}
        cpu = {cmd: sum(c for _, c in runs) for cmd, runs in par[p.tag].items()}
        out[p.tag] = {
            "add_p50_ms": _pct(adds, 0.5), "add_p99_ms": _pct(adds, 0.99),
            "add_mean_ms": statistics.mean(adds) * 1000,
            "del_p50_ms": _pct(dels, 0.5), "del_p99_ms": _pct(dels, 0.99),
            "parallel_add_pods_per_s": rate(pods["ADD"], wall["ADD"]),
            "parallel_del_pods_per_s": rate(pods["DEL"], wall["DEL"]),
            # Where parallel throughput goes on a small machine: CPU per pod, everything
            # this benchmark, its children and our agent spent (kernel work in kworkers
            # excluded).
            "parallel_add_cpu_ms_per_pod": cpu["ADD"] / pods["ADD"] * 1000,
            "parallel_del_cpu_ms_per_pod": cpu["DEL"] / pods["DEL"] * 1000}
    return out


async def _serve_agent(sock: str, node: str, endpoint: str) -> None:
    """The agent side alone (``--serve-agent``): a CniHandler + CniServer on ``sock`` until
    stdin closes."""
    async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
        handler = CniHandler(node, ds, IpamClient(ds, node), node_netns=node)
        server = CniServer(sock, handler.handle)
        await server.start()
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await server.stop()


@contextlib.asynccontextmanager
async def _agent_side(how: str, sock: str, node: str,
                      endpoint: str) -> AsyncIterator[int | None]:
    """Our CniHandler + CniServer serving ``sock``: in a process of its own (``process``,
    as fabric-agent runs: the agent does not share a CPU and a GIL with the runtime that
    execs the plugins), or in this benchmark's own process and event loop
    (``in-process``, which also does every exec of both contenders). Yields the agent
    process's pid (None in-process)."""
    if how == "in-process":
        async with _serve_in_process(sock, node, endpoint):
            yield None
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.cni.bench_cni", "--serve-agent", sock, node, endpoint,
        stdin=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]))
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's agent process did not start")
            await asyncio.sleep(0.05)
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _serve_in_process(sock: str, node: str, endpoint: str) -> AsyncIterator[None]:
    async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
        handler = CniHandler(node, ds, IpamClient(ds, node), node_netns=node)
        server = CniServer(sock, handler.handle)
        await server.start()
        try:
            yield
        finally:
            await server.stop()


async def _run(n_pods: int, parallel: int, tmp: Path, made: list[str],
               agent: str = "process", shim_python: str | None = None) -> dict[str, Any]:
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    try:
        node_l3, node_ref = _ns("l3", made), _ns("ref", made)
        pods_l3 = [_ns("pod", made) for _ in range(n_pods)]
        pods_ref = [_ns("pod", made) for _ in range(n_pods)]
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        python = shim_python or pick_interpreter()
        write_executable(bin_dir / "l3fabric", "plugin", python)
        async with Datastore(EtcdConfig.from_strings(etcd.endpoint)) as ds:
            pool = m.IPPool.from_dict({"apiVersion": m.API_VERSION, "kind": "IPPool",
                                       "metadata": {"name": "default"},
                                       "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}})
            await ds.put(m.key_for(pool), m.encode(pool))
        sock = str(tmp / "agent.sock")
        ours_conf = {"cniVersion": "1.0.0", "name": "l3net", "type": "l3fabric",
                     "agentSocket": sock, "mtu": 1500, "ipam": {"type": "l3fabric-ipam"}}
        ref_conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "ptp", "mtu": 1500,
                    "ipam": {"type": "host-local", "dataDir": str(tmp / "host-local"),
                             "ranges": [[{"subnet": "10.60.0.0/16"}]]}}
        async with _agent_side(agent, sock, node_l3, etcd.endpoint) as agent_pid:
            res = await _compare(
                _Plugin("l3", str(bin_dir / "l3fabric"), json.dumps(ours_conf), node_l3,
                        f"{bin_dir}:{REFERENCE}", pods_l3, agent_pid),
                _Plugin("ref", str(REFERENCE / "ptp"), json.dumps(ref_conf), node_ref,
                        str(REFERENCE), pods_ref),
                parallel)
        ours, ref = res["l3"], res["ref"]
    finally:
        etcd.stop()
    ratios = {"add_p50": ours["add_p50_ms"] / ref["add_p50_ms"],
              "del_p50": ours["del_p50_ms"] / ref["del_p50_ms"],
              "parallel_add_throughput": ours["parallel_add_pods_per_s"]
              / ref["parallel_add_pods_per_s"]}
    return {"pods": n_pods, "parallel": parallel, "agent": agent, "shim_python": python,
            "l3fabric": ours,
            "reference_ptp_host_local": ref, "ratios": ratios,
            "targets": {"add_p50_ratio_max": 2.5, "parallel_add_throughput_ratio_min": 1.0},
            "targets_met": {"add_p50": ratios["add_p50"] <= 2.5,
                            "parallel_add_throughput": ratios["parallel_add_throughput"] >= 1.0}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--agent", choices=("process", "in-process"), default="process",
                    help="where our agent side runs (default: its own process, as in a "
                         "deployment)")
    ap.add_argument("--shim-python", metavar="PATH",
                    help="the shim's interpreter (default: the one `fabricctl install-cni` "
                         "picks, /usr/bin/python3 if it runs the shim)")
    ap.add_argument("--serve-agent", nargs=3, metavar=("SOCK", "NODE", "ETCD"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_agent:
        asyncio.run(_serve_agent(*args.serve_agent))
        return 0
    if os.geteuid() != 0 or not (REFERENCE / "ptp").exists():
        print("bench_cni: needs root and containernetworking-plugins (/usr/lib/cni)")
        return 1
    made: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="l3fabric-bench-cni-"))
    try:
        res = asyncio.run(_run(args.pods, args.parallel, tmp, made, args.agent,
                               args.shim_python))
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    ours, ref = res["l3fabric"], res["reference_ptp_host_local"]
    rows = [[k, ours[k], ref[k], ours[k] / ref[k] if ref[k] else 0.0] for k in ours]
    print_table(["metric", "l3fabric", "ptp+host-local", "ratio"], rows,
                title=f"CNI: {args.pods} pods, {args.parallel} parallel, agent {args.agent}")
    print(f"targets met: {res['targets_met']}")
    path = write_results("cni", res)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
