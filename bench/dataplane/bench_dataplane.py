"""Dataplane: single-stream TCP pod -> pod across racks, and the agent's memory.

Three paths, each measured with iperf3 (one stream, ``--seconds`` per run, median of
``--runs``; the runs of the three are interleaved so drift hits all of them alike):

* ``l3fabric``: the leaf-spine lab with agents; a pod on node1 (rack r1) sends to a pod
  on node3 (rack r2) through node1, leaf1, a spine, leaf2, node3 -- pods wired by the
  CNI plugin, routes from BGP, the policy table in place;
* ``static``: the same topology with ``--no-agents``; the two pods wired by hand the way
  the CNI plugin wires them (veth, /32 host route, 169.254.1.1 gateway, same MTU) and
  static routes along the same hops (through spine1), installed inside the node and
  router namespaces. The ratio l3fabric/static is what l3fabric costs (target >= 0.95);
* ``veth``: two namespaces joined by one veth pair: the machine's ceiling.

Memory: resident set (VmRSS, and PSS, which splits shared pages fairly) of every node's
fabric-agent, its ExaBGP and the process-API relay ExaBGP runs, read from /proc after the
traffic runs (target: agent + ExaBGP <= 100 MiB per node).

Safety (PLATFORM.md): everything runs in namespaces made here (labs under a private state
directory, named uniquely; the veth pair's two namespaces); iperf3 servers bind to the
pod's (or veth's) address; every iperf3 run is bounded by a timeout; the root namespace
gets no route and no forwarding. Everything is removed afterwards, also on failure.

Run as root: ``python -m bench.dataplane.bench_dataplane [--runs 3] [--seconds 5]``.
Writes ``bench/results/dataplane.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.common import print_table, write_results
from fabricctl.lab import runner, topology
from fabricctl.lab.state import LabState

REPO = Path(__file__).resolve().parents[2]
FABRICCTL = str(runner.BIN_DIR / "fabricctl")
SRC_NODE, DST_NODE = "node1", "node3"
PATH_HOPS = ["node1", "leaf1", "spine1", "leaf2", "node3"]  # the static lab's path
STATIC_SRC, STATIC_DST = "10.244.200.1", "10.244.201.1"
VETH_A, VETH_B = "192.168.251.1", "192.168.251.2"
PORT = 5201
MIB = 1024 * 1024


def lab_doc(prefix: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (REPO / "containerlab/leaf-spine.clab.yml").read_text())
    doc["name"] = f"{prefix}{uuid.uuid4().hex[:6]}"
    return doc


def sh(*cmd: str) -> None:
    runner.sh(*cmd)


# -- pods wired by hand (the static lab has no agent, hence no CNI) -----------------------


def static_pod(st: LabState, node: str, pod: str, ip: str, mtu: int) -> str:
    """A pod namespace wired as docs/architecture.md §5 says, recorded in the lab state
    first (so `lab down` removes it and `lab exec default/<pod>` reaches it). Returns the
    host veth."""
    netns = runner.pod_netns_name(st.lab, "default", pod)
    node_ns = st.nodes[node]["netns"]
    host_if = f"fab{uuid.uuid4().hex[:11]}"
    st.pods[f"default/{pod}"] = {"node": node, "netns": netns, "labels": {}, "ips": [ip]}
    st.save()
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", node_ns, "link", "add", host_if, "mtu", str(mtu), "address",
       "ee:ee:ee:ee:ee:ee", "type", "veth", "peer", "name", "eth0", "netns", netns)
    for key in (f"net.ipv4.conf.{host_if}.proxy_arp=1",
                f"net.ipv4.neigh.{host_if}.proxy_delay=0",
                f"net.ipv4.conf.{host_if}.forwarding=1"):
        sh("ip", "netns", "exec", node_ns, "sysctl", "-qw", key)
    sh("ip", "-n", node_ns, "link", "set", host_if, "up")
    sh("ip", "-n", node_ns, "route", "add", f"{ip}/32", "dev", host_if, "scope", "link")
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    sh("ip", "-n", netns, "link", "set", "eth0", "mtu", str(mtu), "up")
    sh("ip", "-n", netns, "addr", "add", f"{ip}/32", "dev", "eth0")
    sh("ip", "-n", netns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    sh("ip", "-n", netns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0",
       "onlink")
    sh("ip", "-n", netns, "neigh", "replace", "169.254.1.1", "lladdr", "ee:ee:ee:ee:ee:ee",
       "dev", "eth0", "nud", "permanent")
    return host_if


def static_routes(topo: topology.Topology, st: LabState, dst: str, hops: list[str]) -> None:
    """``dst/32`` along ``hops`` (the last hop holds the pod): each hop routes to the next
    hop's address on the link between them. Inside the lab's namespaces only."""
    for a, b in itertools.pairwise(hops):
        link = next(lk for lk in topo.links_of(a) if lk.other(a).node == b)
        sh("ip", "-n", st.nodes[a]["netns"], "route", "add", f"{dst}/32", "via",
           str(link.mine(b).address.ip))


def pod_mtu(st: LabState, pod: str) -> int:
    out = runner.sh("ip", "-n", st.pods[pod]["netns"], "-j", "link", "show", "eth0").stdout
    return int(json.loads(out)[0]["mtu"])


# -- iperf3 -------------------------------------------------------------------------------


def lab_exec(st: LabState, where: str, *cmd: str) -> list[str]:
    return [FABRICCTL, "lab", "exec", "--lab", st.lab, where, "--", *cmd]


def iperf(server: list[str], client: list[str], dst: str, seconds: float) -> float:
    """One single-stream run; Gbit/s received. The server takes one test (-1), bound to
    ``dst``; both sides are killed if they outlive their time. A run that reports no
    result (the server was not listening yet, say) is retried, at most 5 times."""
    last = ""
    for _ in range(5):
        srv = subprocess.Popen([*server, "iperf3", "-s", "-1", "-B", dst, "-p", str(PORT)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        try:
            listen = [*server, "ss", "-Hltn", f"src {dst}:{PORT}"]
            deadline = time.monotonic() + 10
            while (not subprocess.run(listen, capture_output=True, text=True).stdout.strip()
                   and time.monotonic() < deadline and srv.poll() is None):
                time.sleep(0.05)
            p = subprocess.run([*client, "iperf3", "-c", dst, "-p", str(PORT),
                                "-t", str(seconds), "-J"],
                               capture_output=True, text=True, timeout=seconds + 20)
            try:
                doc = json.loads(p.stdout)
                return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
            except (ValueError, KeyError, TypeError):
                last = (p.stdout[-300:] + p.stderr[-300:]).strip()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(srv.pid, 9)
            srv.wait(timeout=5)
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 to {dst} gave no result: {last}")


# -- memory -------------------------------------------------------------------------------


def _proc_kib(pid: int, fname: str, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{fname}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory(st: LabState) -> dict[str, dict[str, float]]:
    """Per node: RSS and PSS (MiB) of the agent, ExaBGP and the relay in its namespace."""
    out: dict[str, dict[str, float]] = {}
    for node, info in sorted(st.nodes.items()):
        if info.get("role") != "node":
            continue
        row: dict[str, float] = {}
        for pid in runner._netns_pids(info["netns"]):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            kind = ("agent" if b"fabric-agent" in cmdline else
                    "exabgp" if b"exabgp" in cmdline else
                    "relay" if b"bgp.relay" in cmdline else None)
            if kind is None:
                continue
            row[f"{kind}_rss"] = row.get(f"{kind}_rss", 0) + _proc_kib(
                pid, "status", "VmRSS") / 1024
            row[f"{kind}_pss"] = row.get(f"{kind}_pss", 0) + _proc_kib(
                pid, "smaps_rollup", "Pss") / 1024
        out[node] = {k: round(v, 1) for k, v in sorted(row.items())}
    return out


# -- the three set-ups --------------------------------------------------------------------


@contextlib.contextmanager
def veth_pair(mtu: int) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"dpb-{tag}-a", f"dpb-{tag}-b"
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", a, "link", "add", "v", "mtu", str(mtu), "type", "veth",
           "peer", "name", "v", "netns", b)
        for ns, ip in ((a, VETH_A), (b, VETH_B)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", "v")
            sh("ip", "-n", ns, "link", "set", "v", "up")
        yield a, b
    finally:
        for ns in (a, b):
            runner.sh("ip", "netns", "del", ns, check=False)


def wait_ping(st: LabState, src: str, dst: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(runner.exec_argv(st, src, ["ping", "-c1", "-W1", dst]),
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"lab {st.lab}: {src} cannot reach {dst}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_dataplane: needs root (network namespaces); skipped")
        return 0
    state_home = tempfile.mkdtemp(prefix="dp", dir="/tmp")
    os.environ["XDG_STATE_HOME"] = state_home
    labs: list[LabState] = []
    try:
        # l3fabric: agents, CNI, BGP
        topo_a = topology.parse(lab_doc("dpa"))
        st_a = runner.up(topo_a, wait=90)
        labs.append(st_a)
        runner.pod_add(st_a, SRC_NODE, "default", "src")
        dst = runner.pod_add(st_a, DST_NODE, "default", "dst")
        a_dst = dst["ips"][0]
        wait_ping(st_a, "default/src", a_dst)
        mtu = pod_mtu(st_a, "default/src")

        # static: no agents, the same wiring by hand, static routes along the same hops
        topo_s = topology.parse(lab_doc("dps"))
        st_s = runner.up(topo_s, start_agents=False, wait=90)
        labs.append(st_s)
        static_pod(st_s, SRC_NODE, "src", STATIC_SRC, mtu)
        static_pod(st_s, DST_NODE, "dst", STATIC_DST, mtu)
        static_routes(topo_s, st_s, STATIC_DST, PATH_HOPS)
        static_routes(topo_s, st_s, STATIC_SRC, PATH_HOPS[::-1])
        wait_ping(st_s, "default/src", STATIC_DST)

        runs: dict[str, list[float]] = {"l3fabric": [], "static": [], "veth": []}
        with veth_pair(mtu) as (va, vb):
            setups = {
                "l3fabric": (lab_exec(st_a, "default/dst"), lab_exec(st_a, "default/src"),
                             a_dst),
                "static": (lab_exec(st_s, "default/dst"), lab_exec(st_s, "default/src"),
                           STATIC_DST),
                "veth": (["ip", "netns", "exec", vb], ["ip", "netns", "exec", va], VETH_B),
            }
            for i in range(args.runs):
                for name, (server, client, ip) in setups.items():
                    gbps = iperf(server, client, ip, args.seconds)
                    runs[name].append(round(gbps, 2))
                    print(f"  run {i + 1}/{args.runs} {name:<8} {gbps:6.2f} Gbit/s",
                          file=sys.stderr, flush=True)
        mem = memory(st_a)
    finally:
        for st in labs:
            problems = runner.down(st)
            if problems:
                print(f"lab {st.lab} not fully removed: {problems}", file=sys.stderr)
        if all(LabState.load(st.lab) is None for st in labs):
            shutil.rmtree(state_home, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio_static = med["l3fabric"] / med["static"] if med["static"] else 0.0
    ratio_veth = med["l3fabric"] / med["veth"] if med["veth"] else 0.0
    print_table(["path", "median Gbit/s", "runs", "l3fabric / this"],
                [["l3fabric (agents, BGP)", med["l3fabric"], runs["l3fabric"], 1.0],
                 ["static routes, no agent", med["static"], runs["static"], ratio_static],
                 ["bare veth pair", med["veth"], runs["veth"], ratio_veth]],
                title=f"single-stream TCP pod -> pod across racks ({SRC_NODE} -> {DST_NODE}), "
                      f"MTU {mtu}, {args.seconds:g} s per run")
    print()
    rows: list[list[Any]] = []
    together_by_node: dict[str, float] = {}
    for node, m in mem.items():
        together = m.get("agent_rss", 0) + m.get("exabgp_rss", 0)
        together_by_node[node] = together
        rows.append([node, m.get("agent_rss", 0), m.get("exabgp_rss", 0),
                     m.get("relay_rss", 0), together, together <= 100,
                     m.get("agent_pss", 0) + m.get("exabgp_pss", 0)])
    print_table(["node", "agent RSS", "ExaBGP RSS", "relay RSS", "agent+ExaBGP",
                 "<= 100 MiB", "agent+ExaBGP PSS"], rows,
                title="resident memory per node (MiB, after the traffic runs)")
    worst = max(together_by_node.values(), default=0.0)
    results: dict[str, Any] = {
        "throughput_gbps": {"median": med, "runs": runs, "seconds_per_run": args.seconds,
                            "mtu": mtu, "path": f"{SRC_NODE} -> {DST_NODE} across racks"},
        "ratio_vs_static": round(ratio_static, 3), "target_ratio_vs_static": 0.95,
        "meets_throughput_target": ratio_static >= 0.95,
        "ratio_vs_veth": round(ratio_veth, 3),
        "memory_mib": mem, "worst_agent_plus_exabgp_rss_mib": round(worst, 1),
        "target_memory_mib": 100, "meets_memory_target": worst <= 100,
        # other work on the machine makes single-stream figures noisy: say how busy it was
        "loadavg_after": os.getloadavg(),
    }
    print(write_results("dataplane", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
