"""CNI ADD/DEL latency and parallel throughput: l3fabric against Debian's ptp + host-local.

``python -m bench.cni.bench_cni [--pods 100] [--parallel 8]
[--agent process|in-process|fabric-agent]`` (root). Starts its own etcd and namespaces (one
node namespace per contender, pod namespaces shared), removes them after. Both contenders
are exec'd the same way (``nsenter`` into the node namespace, then the plugin: a fork in
this gRPC-using process must not run Python before exec), ours being the real ``l3fabric``
shim talking to our agent side, which is one of:

- ``process`` (default): a bare `CniHandler` + `CniServer` in a process of its own, as
  fabric-agent runs: the CNI path alone (shim, handler, IPAM, veth and route), which the
  targets below are for;
- ``in-process``: the same in this process, whose event loop also execs every plugin of
  both contenders;
- ``fabric-agent``: the real agent, started as the tests start it (``ip netns exec <node>
  .venv/bin/fabric-agent --node … --node-ip …``, ready on ``/readyz``) in a node namespace
  set up as the tests set up a node (``ip_forward`` on, an uplink veth with a /30 to a stub
  namespace; no other route anywhere). Each ADD then also waits for the agent's
  ``apply()`` (desired routes, route manager, nftables policy, BGP exports) -- what a user
  comparing us with Calico runs. Its CPU per pod counts the agent, the ExaBGP it starts
  and ExaBGP's relay. Afterwards the agent gets SIGTERM and ``fabric-agent --cleanup``
  stops ExaBGP, as the tests do. Results: ``bench/results/cni_fabric_agent.json`` (so
  that ``make bench``, which runs both, keeps both).

The reference ``ptp`` (with ``host-local`` IPAM) runs inside its node namespace. The shim
runs with the interpreter ``fabricctl install-cni`` picks by default
(`cni.shim.pick_interpreter`: ``/usr/bin/python3`` when it runs the shim), so that this
measures what gets installed; ``--shim-python PATH`` names another.
Per contender: sequential ADD then DEL of every pod (latency p50/p99), then
``--parallel`` ADDs in flight over all pods (pods/s), then their DELs -- interleaved
between the two contenders (see `_compare`), so that both see the same load from
whatever else runs on the machine.

Targets: ADD p50 <= 2.5x the reference; parallel pods/s >= the reference.
Results: ``bench/results/cni.json`` (``cni_fabric_agent.json`` with ``--agent
fabric-agent``); ``agent`` and ``agent_processes`` in it say which agent side ran and whose
CPU was counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import print_table, progress, rate, write_results
from cni.shim import pick_interpreter, write_executable
from datastore import model as m
from datastore.client import Datastore, EtcdConfig
from datastore.embedded import EmbeddedEtcd
from felix_like.cni_handler import CniHandler
from felix_like.cni_server import CniServer
from felix_like.netlink import delete_netns, run_in_netns
from ipam.allocator import IpamClient

REFERENCE = Path("/usr/lib/cni")
# --agent fabric-agent: the console script beside this interpreter (.venv/bin), the metrics
# port inside the node namespace (no clash with anything), the node's uplink /30.
AGENT_BIN = Path(sys.executable).parent / "fabric-agent"
AGENT_METRICS_PORT = 9091
NODE_IP, UPLINK_PEER_IP = "10.99.1.1/30", "10.99.1.2/30"


def _ns(tag: str, made: list[str]) -> str:
    name = f"fabb-{tag}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    made.append(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def _del_ns(name: str) -> None:
    """Delete a namespace of ours, killing first any process still inside it (as the tests'
    ``netns`` fixture does): only after a failed run is there one."""
    delete_netns(name)


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


def _cpu(agent_pids: Iterable[int] = ()) -> float:
    """CPU seconds (user + system) of this process, of its reaped children (the plugins,
    the exec'd IPAM plugin) and of the running agent processes, if any, so far. An agent
    process counts with the children it reaped (``cutime``/``cstime``), and must still
    run: one that died would make the difference meaningless, so that raises."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    for pid in agent_pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        if fields[0] == "Z":
            raise RuntimeError(f"agent process {pid} exited during the run")
        total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
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
    agent_pids: tuple[int, ...] = ()  # ours, when the agent runs in processes of its own

    async def call(self, cmd: str, cid: str, i: int) -> float:
        env = _env(cmd, f"{self.tag}-{cid}", self.pods[i], self.cni_path)
        return await _exec(self.exe, env, self.conf, self.node)

    async def parallel(self, cmd: str, cid: str, parallel: int) -> tuple[float, float]:
        """``cmd`` for every pod, ``parallel`` in flight: (wall seconds, CPU seconds)."""
        sem = asyncio.Semaphore(parallel)

        async def one(i: int) -> None:
            async with sem:
                await self.call(cmd, f"{cid}{i}", i)

        t0, c0 = time.perf_counter(), _cpu(self.agent_pids)
        await asyncio.gather(*(one(i) for i in range(len(self.pods))))
        return time.perf_counter() - t0, _cpu(self.agent_pids) - c0


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
                      etcd: EmbeddedEtcd) -> AsyncIterator[tuple[int, ...]]:
    """Our agent side serving ``sock``: a CniHandler + CniServer in a process of its own
    (``process``, as fabric-agent runs: the agent does not share a CPU and a GIL with the
    runtime that execs the plugins), or in this benchmark's own process and event loop
    (``in-process``, which also does every exec of both contenders), or the real agent
    (``fabric-agent``, see `_fabric_agent`). Yields the pids whose CPU counts as the
    agent's (none in-process)."""
    if how == "in-process":
        async with _serve_in_process(sock, node, etcd.endpoint):
            yield ()
        return
    if how == "fabric-agent":
        async with _fabric_agent(sock, node, etcd.unix_endpoint) as pids:
            yield pids
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.cni.bench_cni", "--serve-agent", sock, node, etcd.endpoint,
        stdin=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]))
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's agent process did not start")
            await asyncio.sleep(0.05)
        yield (proc.pid,)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _node_uplink(node: str, made: list[str]) -> None:
    """Give ``node`` what the tests give a node namespace (`tests/helpers/fabric.py`:
    ``Fabric.node_ns`` and a link): ``ip_forward`` on inside it, and an uplink veth with
    `NODE_IP` to a stub namespace holding the other end of the /30. No route is added
    anywhere but the kernel's connected /30s, nothing touches the root namespace, and the
    stub leads nowhere."""
    subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    stub = _ns("up", made)
    tag = uuid.uuid4().hex[:6]
    a, b = f"fbb{tag}a", f"fbb{tag}b"  # not fab*: fabric-agent --cleanup removes those
    subprocess.run(["ip", "link", "add", a, "netns", node, "type", "veth", "peer", "name", b,
                    "netns", stub], check=True)
    for ns, dev, ip in ((node, a, NODE_IP), (stub, b, UPLINK_PEER_IP)):
        subprocess.run(["ip", "-n", ns, "addr", "add", ip, "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)


def agent_get(node: str, path: str) -> tuple[int, str]:
    """GET ``path`` of the agent's HTTP endpoint (``/readyz``, ``/metrics``) from inside
    ``node``: (status, body); (0, "") when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxy

    def get() -> tuple[int, str]:
        try:
            with opener.open(f"http://127.0.0.1:{AGENT_METRICS_PORT}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), ""
        except OSError:
            return 0, ""
    return run_in_netns(node, get)


def _readyz(node: str) -> int:
    """The agent's ``/readyz`` status, read from inside ``node`` (0: no answer)."""
    return agent_get(node, "/readyz")[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (ExaBGP, started by the agent in a session of its
    own, is still its child; the relay is ExaBGP's)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _proc_name(pid: int) -> str:
    """``fabric-agent``, ``exabgp``, ``bgp.relay``: the script or module a process runs."""
    argv = [a.decode(errors="replace") for a in _cmdline(pid).split(b"\0") if a]
    if len(argv) > 1 and Path(argv[0]).name.startswith("python"):
        argv = argv[2:] if argv[1] == "-m" else argv[1:]
    return Path(argv[0]).name if argv else str(pid)


def _exabgp_pid(sock: str, node: str) -> int | None:
    """The ExaBGP the agent started: its pid file beside the CNI socket, as the tests read
    it (`tests/helpers/fabric.py` ``Node.exabgp_pid``)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((Path(sock).parent / f"bgp-{node}" / "exabgp.pid").read_text())
        if b"exabgp" in _cmdline(pid):
            return pid
    return None


async def _until(pred: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


@contextlib.asynccontextmanager
async def _fabric_agent(sock: str, node: str, unix_endpoint: str
                        ) -> AsyncIterator[tuple[int, ...]]:
    """The real ``fabric-agent`` in ``node``, started as the tests start it
    (`tests/helpers/fabric.py` ``Node.spawn``/``start``: ``ip netns exec``, which execs the
    agent, so the pid is the agent's; etcd over its unix socket, so no network path leads
    out of the node namespace), ready once ``/readyz`` says 200. Yields the agent's pid,
    ExaBGP's and the relay's (ExaBGP is started by the agent once in sync, the relay by
    ExaBGP: both are waited for, so that the set counted is complete from the first run).

    Teardown, also after a failure: SIGTERM to the agent (SIGKILL after 10 s), then
    ``fabric-agent --cleanup --socket`` in the node (it stops ExaBGP, removes our routes,
    veths and nft table), as the tests' ``Node.cleanup``; any process of the agent's tree
    still there after that is killed by pid."""
    log_path = Path(sock).parent / "fabric-agent.log"
    with open(log_path, "ab") as logf:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", node, str(AGENT_BIN), "--node", node,
            "--etcd-endpoints", unix_endpoint, "--socket", sock,
            "--metrics-addr", f"127.0.0.1:{AGENT_METRICS_PORT}", "--node-ip", NODE_IP,
            stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
    seen: dict[int, bytes] = {proc.pid: b""}

    def log_tail() -> str:
        with contextlib.suppress(OSError):
            return log_path.read_text()[-2000:]
        return ""

    try:
        async def ready() -> bool:
            if proc.returncode is not None:
                raise RuntimeError(f"fabric-agent exited ({proc.returncode}):\n{log_tail()}")
            return await asyncio.to_thread(_readyz, node) == 200
        with progress("waiting for fabric-agent's /readyz"):
            if not await _until(ready, 60):
                raise RuntimeError(f"fabric-agent not ready after 60 s:\n{log_tail()}")

        async def exabgp_with_relay() -> bool:
            pid = _exabgp_pid(sock, node)
            return pid is not None and len(_tree(pid)) > 1
        with progress("waiting for fabric-agent's ExaBGP and its relay"):
            started = await _until(exabgp_with_relay, 20)
        if not started:
            print(f"bench_cni: fabric-agent's ExaBGP or its relay did not start; CPU counts "
                  f"{', '.join(_proc_name(p) for p in _tree(proc.pid))}", file=sys.stderr)
        pids = _tree(proc.pid)
        exabgp = _exabgp_pid(sock, node)
        if exabgp is not None and exabgp not in pids:  # reparented: not the agent's child
            pids += _tree(exabgp)
        seen.update((p, _cmdline(p)) for p in pids)
        yield tuple(pids)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        cleanup = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", node, str(AGENT_BIN), "--cleanup", "--socket", sock,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(cleanup.communicate(), 60)
            if cleanup.returncode != 0:
                print(f"bench_cni: fabric-agent --cleanup failed: {err.decode()[-500:]}",
                      file=sys.stderr)
            else:
                print(f"fabric-agent --cleanup: {out.decode().strip()}")
        except TimeoutError:
            cleanup.kill()
            await cleanup.wait()
        # Belt and braces: a process of the agent's tree that outlived the cleanup (the
        # same pid running the same command line as when it was counted).
        await asyncio.sleep(0.2)
        others = [pid for pid, cmd in seen.items() if pid != proc.pid and cmd]
        for pid in others:
            if _cmdline(pid) == seen[pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        async def reaped() -> bool:  # orphans of the agent: init reaps them, soon
            return not any(os.path.exists(f"/proc/{pid}") for pid in others)
        await _until(reaped, 5)


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
        if agent == "fabric-agent":
            _node_uplink(node_l3, made)
        async with _agent_side(agent, sock, node_l3, etcd) as agent_pids:
            agent_processes = [_proc_name(p) for p in agent_pids]
            res = await _compare(
                _Plugin("l3", str(bin_dir / "l3fabric"), json.dumps(ours_conf), node_l3,
                        f"{bin_dir}:{REFERENCE}", pods_l3, agent_pids),
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
    return {"pods": n_pods, "parallel": parallel, "agent": agent,
            # whose CPU counts in our parallel_*_cpu_ms_per_pod besides this process's
            "agent_processes": agent_processes, "shim_python": python,
            "l3fabric": ours,
            "reference_ptp_host_local": ref, "ratios": ratios,
            "targets": {"add_p50_ratio_max": 2.5, "parallel_add_throughput_ratio_min": 1.0},
            "targets_met": {"add_p50": ratios["add_p50"] <= 2.5,
                            "parallel_add_throughput": ratios["parallel_add_throughput"] >= 1.0}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--agent", choices=("process", "in-process", "fabric-agent"),
                    default="process",
                    help="our agent side: a bare CNI handler in a process of its own "
                         "(default), the same in this process, or the real fabric-agent "
                         "(results in cni_fabric_agent.json)")
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
    if args.agent == "fabric-agent" and not AGENT_BIN.exists():
        print(f"bench_cni: {AGENT_BIN} is missing (make setup)")
        return 1
    made: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="l3fabric-bench-cni-"))
    try:
        res = asyncio.run(_run(args.pods, args.parallel, tmp, made, args.agent,
                               args.shim_python))
    finally:
        for name in reversed(made):
            _del_ns(name)
        shutil.rmtree(tmp, ignore_errors=True)
    ours, ref = res["l3fabric"], res["reference_ptp_host_local"]
    rows = [[k, ours[k], ref[k], ours[k] / ref[k] if ref[k] else 0.0] for k in ours]
    print_table(["metric", "l3fabric", "ptp+host-local", "ratio"], rows,
                title=f"CNI: {args.pods} pods, {args.parallel} parallel, agent {args.agent}")
    print(f"targets met: {res['targets_met']}")
    path = write_results("cni_fabric_agent" if args.agent == "fabric-agent" else "cni", res)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
