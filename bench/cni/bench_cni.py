"""CNI ADD/DEL latency and parallel throughput: l3fabric against Debian's ptp + host-local.

``python -m bench.cni.bench_cni [--pods 100] [--parallel 8]`` (root). Starts its own etcd
and namespaces (one node namespace per contender, pod namespaces shared), removes them
after. Both contenders are exec'd the same way (``nsenter`` into the node namespace, then
the plugin: a fork in this gRPC-using process must not run Python before exec), ours
being the real ``l3fabric`` shim talking to a `CniHandler` + `CniServer` in this process;
the reference ``ptp`` (with ``host-local`` IPAM) runs inside its node namespace.
Per contender: sequential ADD then DEL of every pod (latency p50/p99), then
``--parallel`` ADDs in flight over all pods (pods/s), then their DELs.

Targets (issue 4): ADD p50 <= 2.5x the reference; parallel pods/s >= the reference.
Results: ``bench/results/cni.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import print_table, rate, write_results
from cni.shim import write_executable
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


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] * 1000


async def _contender(exe: str, conf: dict[str, Any], node: str, pods: list[str],
                     cni_path: str, parallel: int, tag: str) -> dict[str, float]:
    text = json.dumps(conf)
    adds, dels = [], []
    for i, pod in enumerate(pods):
        adds.append(await _exec(exe, _env("ADD", f"{tag}-s{i}", pod, cni_path), text, node))
    for i, pod in enumerate(pods):
        dels.append(await _exec(exe, _env("DEL", f"{tag}-s{i}", pod, cni_path), text, node))
    sem = asyncio.Semaphore(parallel)

    async def one(cmd: str, i: int) -> None:
        async with sem:
            await _exec(exe, _env(cmd, f"{tag}-p{i}", pods[i], cni_path), text, node)

    t0 = time.perf_counter()
    await asyncio.gather(*(one("ADD", i) for i in range(len(pods))))
    add_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    await asyncio.gather(*(one("DEL", i) for i in range(len(pods))))
    del_wall = time.perf_counter() - t0
    return {"add_p50_ms": _pct(adds, 0.5), "add_p99_ms": _pct(adds, 0.99),
            "add_mean_ms": statistics.mean(adds) * 1000,
            "del_p50_ms": _pct(dels, 0.5), "del_p99_ms": _pct(dels, 0.99),
            "parallel_add_pods_per_s": rate(len(pods), add_wall),
            "parallel_del_pods_per_s": rate(len(pods), del_wall)}


async def _run(n_pods: int, parallel: int, tmp: Path, made: list[str]) -> dict[str, Any]:
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    try:
        node_l3, node_ref = _ns("l3", made), _ns("ref", made)
        pods = [_ns("pod", made) for _ in range(n_pods)]
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        python = os.path.abspath(shutil.which("python3") or "/usr/bin/python3")
        venv_py = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
        if venv_py.exists():
            python = str(venv_py)
        write_executable(bin_dir / "l3fabric", "plugin", python)
        async with Datastore(EtcdConfig.from_strings(etcd.endpoint)) as ds:
            pool = m.IPPool.from_dict({"apiVersion": m.API_VERSION, "kind": "IPPool",
                                       "metadata": {"name": "default"},
                                       "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}})
            await ds.put(m.key_for(pool), m.encode(pool))
            handler = CniHandler(node_l3, ds, IpamClient(ds, node_l3), node_netns=node_l3)
            sock = str(tmp / "agent.sock")
            server = CniServer(sock, handler.handle)
            await server.start()
            try:
                ours_conf = {"cniVersion": "1.0.0", "name": "l3net", "type": "l3fabric",
                             "agentSocket": sock, "mtu": 1500,
                             "ipam": {"type": "l3fabric-ipam"}}
                ours = await _contender(str(bin_dir / "l3fabric"), ours_conf, node_l3, pods,
                                        f"{bin_dir}:{REFERENCE}", parallel, "l3")
            finally:
                await server.stop()
        ref_conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "ptp", "mtu": 1500,
                    "ipam": {"type": "host-local", "dataDir": str(tmp / "host-local"),
                             "ranges": [[{"subnet": "10.60.0.0/16"}]]}}
        ref = await _contender(str(REFERENCE / "ptp"), ref_conf, node_ref, pods,
                               str(REFERENCE), parallel, "ref")
    finally:
        etcd.stop()
    ratios = {"add_p50": ours["add_p50_ms"] / ref["add_p50_ms"],
              "del_p50": ours["del_p50_ms"] / ref["del_p50_ms"],
              "parallel_add_throughput": ours["parallel_add_pods_per_s"]
              / ref["parallel_add_pods_per_s"]}
    return {"pods": n_pods, "parallel": parallel, "l3fabric": ours,
            "reference_ptp_host_local": ref, "ratios": ratios,
            "targets": {"add_p50_ratio_max": 2.5, "parallel_add_throughput_ratio_min": 1.0},
            "targets_met": {"add_p50": ratios["add_p50"] <= 2.5,
                            "parallel_add_throughput": ratios["parallel_add_throughput"] >= 1.0}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not (REFERENCE / "ptp").exists():
        print("bench_cni: needs root and containernetworking-plugins (/usr/lib/cni)")
        return 1
    made: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="l3fabric-bench-cni-"))
    try:
        res = asyncio.run(_run(args.pods, args.parallel, tmp, made))
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    ours, ref = res["l3fabric"], res["reference_ptp_host_local"]
    rows = [[k, ours[k], ref[k], ours[k] / ref[k] if ref[k] else 0.0] for k in ours]
    print_table(["metric", "l3fabric", "ptp+host-local", "ratio"], rows,
                title=f"CNI: {args.pods} pods, {args.parallel} parallel")
    print(f"targets met: {res['targets_met']}")
    path = write_results("cni", res)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
