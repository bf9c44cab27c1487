"""One real fabric-agent inside a simulated cluster: what the agent costs as the cluster grows.

``python -m bench.scale.bench_scale [--nodes 100] [--pods-per-node 10] [--policies 20]
[--namespaces 50] [--churn-seconds 10] [--endpoint-rate 20] [--status-rate 100]
[--adds 20] [--probes 10]`` (root).

The cluster is etcd values only, written in bulk (100 puts per transaction, 16 in flight)
into a private etcd (`EmbeddedEtcd`, loopback and its unix socket), every value built by
the model's encoders (`datastore.model`, `ipam.block.Block`, `ipam.values.HandleRecord`,
`ipam.affinity`), so the agent reads what real nodes write: ``--nodes`` - 1 other Nodes
with their NodeStatus, ``--pods-per-node`` WorkloadEndpoints each (labels ``app``, ``role``
spread over ``--namespaces`` Namespaces), their IPAM blocks, affinities and handles in one
IPPool, ``--policies`` Kubernetes NetworkPolicies selecting by those labels, and a
BGPConfiguration without the node-to-node mesh plus one BGPPeer for the real node (toward
its uplink stub, where no BGP speaker answers: ExaBGP runs, its session stays down).

Then ONE real ``fabric-agent`` starts in a node namespace exactly as ``bench.cni.bench_cni
--agent fabric-agent`` starts it (its `_fabric_agent`, `_node_uplink` and `_Plugin` are
reused), and this measures:

- start -> ``/readyz`` 200 (polled every 20 ms), and the agent's own CPU time (utime +
  stime) by then, which a machine loaded by other work does not stretch;
- VmRSS (and VmHWM) of the agent and of its ExaBGP separately, at ready and after churn;
- the agent's CPU (utime + stime of its own pid, % of one core) over ``--churn-seconds``
  while a separate process (``--churn-worker``, this module) rewrites remote
  WorkloadEndpoints at ``--endpoint-rate``/s (their ``role`` label moves, so set
  membership changes) and other nodes' NodeStatus at ``--status-rate``/s; the same window
  idle first, for the agent's floor;
- local CNI ADD p50/p99 through the real shim, idle and under that churn, each ADD
  alternating with Debian's ``ptp`` + ``host-local`` ADD in a node namespace of its own,
  the baseline of the same run;
- remote pod -> local rules: a WorkloadEndpoint written on another node, whose labels a
  policy of a local pod selects, until its address is an element of the agent's nft set
  (``nft -j list set inet l3fabric …`` in the node namespace, polled every 10 ms), idle
  and under churn; and until it is gone again after the delete.

Everything it made (namespaces, the agent, its ExaBGP, the churn process, etcd and its
data) is removed at the end, also on failure, Ctrl-C or SIGTERM.
Results: ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cni import bench_cni as cni
from bench.common import Progress, print_table, progress, write_results
from cni.shim import pick_interpreter, write_executable
from datastore import keys
from datastore import model as m
from datastore.client import Datastore, EtcdConfig, Put
from datastore.embedded import EmbeddedEtcd
from felix_like.netlink import run_in_netns
from ipam.affinity import CONFIRMED, affinity_value
from ipam.block import AllocationAttrs, Block, affinity_of
from ipam.values import HandleEntry, HandleRecord

POOL = ipaddress.IPv4Network("10.128.0.0/10")
BLOCK: int = 26
BLOCK_ADDRS: int = 2 ** (32 - BLOCK)
NET = "l3net"  # the CNI network name: handles are <network>.<containerID>.<ifname>
ADD_NS = "bench"  # bench_cni's pods are in this Kubernetes namespace (its `_env`)
ADD_LABELS = {"app": "app-0", "role": "role-0"}  # selected by policy 0, in ADD_NS
APPS, ROLES = 20, 10
TXN_OPS, IN_FLIGHT = 100, 16
NFT_POLL = 0.01


def _doc(kind: str, name: str, body: dict[str, Any], namespace: str | None = None,
         labels: dict[str, str] | None = None, api: str = m.API_VERSION,
         field: str = "spec") -> tuple[str, bytes]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    res = m.parse_document({"apiVersion": api, "kind": kind, "metadata": meta, field: body})
    return m.key_for(res), m.encode(res)


@dataclass(frozen=True)
class Cluster:
    """The simulated cluster's shape; node 0 is the real agent's (not simulated)."""

    nodes: int
    pods_per_node: int
    policies: int
    namespaces: int
    probes: int

    def ns(self, i: int) -> str:
        return ADD_NS if i % self.namespaces == 0 else f"ns-{i % self.namespaces:03d}"

    def node(self, k: int) -> str:
        return f"sim-{k:05d}"

    def blocks_of(self, k: int) -> int:
        """Blocks per simulated node (node 1 holds one more, for the probes' addresses)."""
        per = -(-self.pods_per_node // BLOCK_ADDRS)
        return per + (1 if k == 1 else 0)

    def block_cidr(self, index: int) -> str:
        return str(ipaddress.IPv4Network((int(POOL.network_address) + index * BLOCK_ADDRS,
                                          BLOCK)))

    def first_block(self, k: int) -> int:
        """Block index of node ``k``'s first block (node 1's extra one comes first)."""
        per = -(-self.pods_per_node // BLOCK_ADDRS)
        return (k - 1) * per + (1 if k > 1 else 0)

    def pod(self, k: int, j: int, gen: int = 0) -> tuple[str, str, dict[str, str]]:
        """(namespace, pod name, labels) of pod ``j`` on node ``k``; ``gen`` moves its role."""
        labels = {"app": f"app-{j % APPS}", "role": f"role-{(k + j + gen) % ROLES}",
                  "pod-template-hash": f"{(k * 7919 + j) % 99991:05x}"}
        return self.ns(k * self.pods_per_node + j), f"p-{k}-{j}", labels

    def address(self, k: int, j: int) -> str:
        base = self.first_block(k) + (1 if k == 1 else 0)
        return str(POOL.network_address + base * BLOCK_ADDRS + j)

    def endpoint(self, k: int, j: int, gen: int = 0, address: str | None = None,
                 labels: dict[str, str] | None = None, ns: str | None = None,
                 pod: str | None = None) -> tuple[str, bytes]:
        pns, pname, plabels = self.pod(k, j, gen)
        cid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{k}.{j}").hex
        body = {"node": self.node(k), "pod": pod or pname, "endpoint": "eth0",
                "containerID": cid, "ipNetworks": [f"{address or self.address(k, j)}/32"],
                "mac": "ee:ee:ee:ee:ee:ee", "hostInterface": f"fab{cid[:11]}",
                "labels": labels or plabels}
        return _doc("WorkloadEndpoint", f"{pod or pname}.eth0", body, ns or pns)

    def status(self, k: int, gen: int = 0) -> tuple[str, bytes]:
        blocks = [self.block_cidr(self.first_block(k) + b) for b in range(self.blocks_of(k))]
        body = {"updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "inSync": True, "version": "bench", "bgp": {"peers": []}, "blocks": blocks,
                "programmed": {"routes": self.pods_per_node + gen % 2, "policies": 4},
                "errors": []}
        return _doc("NodeStatus", self.node(k), body, field="status")

    def values(self) -> Iterator[tuple[str, bytes]]:
        """Every key and value of the simulated cluster."""
        yield _doc("IPPool", "default", {"cidr": str(POOL), "blockSize": BLOCK})
        yield _doc("BGPConfiguration", "default", {"nodeToNodeMesh": False})
        for i in range(self.namespaces):
            yield _namespace(self.ns(i), i)
        for p in range(self.policies):
            ingress: dict[str, Any] = {"from": [{"podSelector": {"matchLabels": {
                "role": f"role-{p % ROLES}"}}}], "ports": [{"port": 8000 + p % 10}]}
            if p % 4 == 3:
                ingress["from"].append({"namespaceSelector": {"matchLabels": {
                    "team": f"t{p % 5}"}}})
            yield _doc("NetworkPolicy", f"pol-{p}", {
                "podSelector": {"matchLabels": {"app": f"app-{p % APPS}"}},
                "ingress": [ingress], "policyTypes": ["Ingress"]},
                namespace=self.ns(p), api="networking.k8s.io/v1")
        # The probe's: a local pod labelled app=probe-target admits role=probe-client.
        yield _doc("NetworkPolicy", "probe", {
            "podSelector": {"matchLabels": {"app": "probe-target"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "probe-client"}}}]}],
            "policyTypes": ["Ingress"]}, namespace=ADD_NS, api="networking.k8s.io/v1")
        now = time.time()
        for k in range(1, self.nodes):
            node = self.node(k)
            ip = ipaddress.IPv4Address("10.100.0.0") + k
            yield _doc("Node", node, {"bgp": {"ipv4Address": f"{ip}/16"}},
                       labels={"rack": f"r{k // 40}"})
            yield self.status(k)
            blocks: list[Block] = []
            for b in range(self.blocks_of(k)):
                cidr = self.block_cidr(self.first_block(k) + b)
                blocks.append(Block.new(cidr, affinity_of(node)))
                yield keys.ipam_affinity(node, cidr), affinity_value(CONFIRMED, now)
            for j in range(self.pods_per_node):
                ns, pod, _ = self.pod(k, j)
                cid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{k}.{j}").hex
                handle = f"{NET}.{cid}.eth0"
                blk = blocks[(1 if k == 1 else 0) + j // BLOCK_ADDRS]
                ordinal = j % BLOCK_ADDRS
                blk.assign_ordinal(ordinal, AllocationAttrs(handle, ns, pod, node, now))
                yield keys.ipam_handle(handle), HandleRecord(handle, (HandleEntry(
                    blk.cidr, ordinal, blk.sequence[ordinal], self.address(k, j)),)).to_json()
                yield self.endpoint(k, j)
            for blk in blocks:
                yield keys.ipam_block(blk.cidr), blk.to_json()


def _namespace(name: str, i: int) -> tuple[str, bytes]:
    res = m.parse_document({"apiVersion": m.API_VERSION, "kind": "Namespace",
                            "metadata": {"name": name, "labels": {"team": f"t{i % 5}"}}})
    return m.key_for(res), m.encode(res)


async def _bulk_put(ds: Datastore, kvs: Iterator[tuple[str, bytes]],
                    shown: Progress | None = None) -> tuple[int, int]:
    """Write every (key, value), TXN_OPS per transaction, IN_FLIGHT at once: (keys, bytes).
    ``shown``: the progress line that says how many keys are written so far."""
    sem = asyncio.Semaphore(IN_FLIGHT)
    tasks: list[asyncio.Task[Any]] = []
    count = size = 0

    async def one(batch: list[Put]) -> None:
        try:
            await ds.txn([], batch, [])
        finally:
            sem.release()

    batch: list[Put] = []
    for k, v in kvs:
        batch.append(Put(k, v))
        count, size = count + 1, size + len(k) + len(v)
        if len(batch) == TXN_OPS:
            await sem.acquire()
            tasks.append(asyncio.create_task(one(batch)))
            batch = []
            if shown is not None:
                shown.note = f"{count:,} keys"
    if batch:
        await sem.acquire()
        tasks.append(asyncio.create_task(one(batch)))
    await asyncio.gather(*tasks)
    return count, size


# -- the churn process ------------------------------------------------------------------


async def _churn(endpoint: str, shape: Cluster, ep_rate: float, st_rate: float) -> None:
    """Rewrite remote endpoints (their role moves) and NodeStatus at the given rates until
    stdin closes; print what was written, as JSON."""
    done = asyncio.Event()
    counts = {"endpoint_writes": 0, "status_writes": 0}

    async def paced(rate: float, what: str, write: Any) -> None:
        if rate <= 0:
            return
        t0, n = time.monotonic(), 0
        while not done.is_set():
            await write(n)
            n += 1
            counts[what] = n
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), delay)

    others = shape.nodes - 1
    async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
        async def ep(n: int) -> None:
            k = 2 + n * 7 % max(1, others - 1)  # node 1's pods stay still for the probes
            await ds.put(*shape.endpoint(k, n % shape.pods_per_node, gen=n + 1))

        async def st(n: int) -> None:
            await ds.put(*shape.status(1 + n % others, gen=n // others + 1))

        async def stop() -> None:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            done.set()
        t0 = time.monotonic()
        await asyncio.gather(stop(), paced(ep_rate, "endpoint_writes", ep),
                             paced(st_rate, "status_writes", st))
        counts_out = {**counts, "seconds": time.monotonic() - t0}
    print(json.dumps(counts_out), flush=True)


@contextlib.asynccontextmanager
async def _churning(endpoint: str, shape: Cluster, ep_rate: float, st_rate: float,
                    out: dict[str, Any]) -> AsyncIterator[None]:
    """The churn process for the block's duration; its counts land in ``out``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.scale.bench_scale", "--churn-worker", endpoint,
        "--nodes", str(shape.nodes), "--pods-per-node", str(shape.pods_per_node),
        "--namespaces", str(shape.namespaces), "--endpoint-rate", str(ep_rate),
        "--status-rate", str(st_rate), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]),
        start_new_session=True)
    try:
        await asyncio.sleep(1.0)  # connected and at its pace
        if proc.returncode is not None:
            raise RuntimeError("the churn process exited")
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), 10)
            with contextlib.suppress(ValueError):
                out.update(json.loads(stdout.decode().strip().splitlines()[-1]))
        except (TimeoutError, IndexError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


# -- measuring the agent ----------------------------------------------------------------


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0])
    return out


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` itself, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mib(kib: dict[str, int]) -> dict[str, float]:
    return {"rss_mib": kib.get("VmRSS", 0) / 1024, "hwm_mib": kib.get("VmHWM", 0) / 1024}


def _pct(xs: Sequence[float], q: float) -> float:
    return cni._pct(xs, q) if xs else 0.0


def _counters(node: str) -> dict[str, float]:
    """The agent's event and apply counters (its ``/metrics``, read inside ``node``):
    ``l3fabric_datastore_events_total`` and ``l3fabric_dataplane_apply_seconds`` count and
    sum, by label."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get() -> str:
        with opener.open(f"http://127.0.0.1:{cni.AGENT_METRICS_PORT}/metrics", timeout=5) as r:
            return str(r.read().decode())
    out: dict[str, float] = {}
    for line in run_in_netns(node, get).splitlines():
        if line.startswith(("l3fabric_datastore_events_total",
                            "l3fabric_dataplane_apply_seconds_count",
                            "l3fabric_dataplane_apply_seconds_sum")):
            name, _, value = line.rpartition(" ")
            out[name.replace("l3fabric_", "")] = float(value)
    return out


async def _cpu_window(pids: dict[str, int], seconds: float, node: str) -> dict[str, Any]:
    """% of one core each process spent over ``seconds``, and what the agent's counters
    moved by meanwhile."""
    c0 = {n: _cpu_s(p) for n, p in pids.items()}
    m0 = await asyncio.to_thread(_counters, node)
    t0 = time.monotonic()
    with progress(f"measuring the agent's CPU over {seconds:g} s"):
        await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    m1 = await asyncio.to_thread(_counters, node)
    out: dict[str, Any] = {n: (_cpu_s(p) - c0[n]) / dt * 100 for n, p in pids.items()}
    out["counters"] = {k: v - m0.get(k, 0.0) for k, v in m1.items() if v != m0.get(k, 0.0)}
    return out


async def _adds(ours: cni._Plugin, ref: cni._Plugin, tag: str) -> dict[str, list[float]]:
    """Sequential ADDs alternating between the contenders, then every DEL (not timed)."""
    out: dict[str, list[float]] = {ours.tag: [], ref.tag: []}
    n = len(ours.pods)
    for i in range(n):
        for p in ((ours, ref) if i % 2 == 0 else (ref, ours)):
            out[p.tag].append(await p.call("ADD", f"{tag}{i}", i))
    for i in range(n):
        for p in (ours, ref):
            await p.call("DEL", f"{tag}{i}", i)
    return out


def _element_holds(e: Any, addr: ipaddress.IPv4Address) -> bool:
    """Whether one set element of nft's JSON covers ``addr``: an address, a prefix or a
    range, possibly the first part of a concatenation (our sets are ``ipv4_addr .
    inet_proto``, `felix_like.policy.nft`) or wrapped with its counters."""
    if isinstance(e, dict) and "elem" in e:
        e = e["elem"].get("val")
    if isinstance(e, dict) and "concat" in e:
        e = e["concat"][0]
    if isinstance(e, str):
        return e == str(addr)
    if isinstance(e, dict) and "prefix" in e:
        return addr in ipaddress.IPv4Network(f"{e['prefix']['addr']}/{e['prefix']['len']}")
    if isinstance(e, dict) and "range" in e:
        lo, hi = (ipaddress.IPv4Address(x) for x in e["range"])
        return lo <= addr <= hi
    return False


def _elements_hold(doc: Any, addr: ipaddress.IPv4Address) -> bool:
    return any(_element_holds(e, addr) for item in doc.get("nftables", [])
               for e in item.get("set", {}).get("elem", []))


async def _nft(node: str, *what: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", node, "nft", "-j", "list", *what,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return json.loads(out) if proc.returncode == 0 and out.strip() else {}


async def _sets_holding(node: str, addr: ipaddress.IPv4Address) -> list[str]:
    doc = await _nft(node, "sets", "inet")
    names = [i["set"]["name"] for i in doc.get("nftables", []) if "set" in i
             and i["set"].get("table") == "l3fabric"
             and i["set"].get("type") in ("ipv4_addr", ["ipv4_addr", "inet_proto"])]
    found = []
    for name in names:
        if _elements_hold(await _nft(node, "set", "inet", "l3fabric", name), addr):
            found.append(name)
    return found


async def _until_in_sets(node: str, sets: list[str], addr: ipaddress.IPv4Address,
                         present: bool, timeout: float = 10) -> float | None:
    """Seconds until ``addr`` is (``present``) or is no more an element of any of ``sets``
    (None after ``timeout``); ``sets`` empty: every ipv4 set, slower."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if sets:
            docs = [await _nft(node, "set", "inet", "l3fabric", s) for s in sets]
            held = any(_elements_hold(d, addr) for d in docs)
        else:
            held = bool(await _sets_holding(node, addr))
        if held == present:
            return time.perf_counter() - t0
        await asyncio.sleep(NFT_POLL)
    return None


async def _probes(ds: Datastore, node: str, shape: Cluster, first: int, count: int,
                  sets: list[str]) -> tuple[dict[str, list[float]], list[str], list[str]]:
    """Remote probe endpoints on node 1 (role=probe-client, in ADD_NS): seconds from the
    put until the address is in the agent's set, and from the delete until it is gone.
    The first call finds which sets hold it (``sets`` empty) and returns them, then the
    addresses never seen."""
    out: dict[str, list[float]] = {"add": [], "delete": []}
    missed: list[str] = []
    for i in range(first, first + count):
        addr = ipaddress.IPv4Address(shape.address(1, 0)) - BLOCK_ADDRS + i
        key, value = shape.endpoint(1, 0, address=str(addr), ns=ADD_NS, pod=f"probe-{i}",
                                    labels={"app": "probe", "role": "probe-client"})
        t0 = time.perf_counter()
        await ds.put(key, value)
        got = await _until_in_sets(node, sets, addr, True)
        if got is None:
            missed.append(str(addr))
        else:
            out["add"].append(time.perf_counter() - t0)
            if not sets:
                sets = await _sets_holding(node, addr)
        t0 = time.perf_counter()
        await ds.delete(key)
        if got is not None and await _until_in_sets(node, sets, addr, False) is not None:
            out["delete"].append(time.perf_counter() - t0)
        await asyncio.sleep(0.2)
    return out, sets, missed


# -- the run ------------------------------------------------------------------------------


async def _readiness(node: str, t0: float, out: dict[str, float]) -> None:
    while True:
        if await asyncio.to_thread(cni._readyz, node) == 200:
            out["ready_s"] = time.perf_counter() - t0
            return
        await asyncio.sleep(0.02)


def _exabgp_of(run_dir: Path) -> int | None:
    """The ExaBGP whose command line names the node's run dir (its configuration is
    there), so that no other node's ExaBGP on this machine is counted."""
    want = str(run_dir).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            cmd = cni._cmdline(int(proc.name))
            if b"exabgp" in cmd and want in cmd and b"bgp.relay" not in cmd:
                return int(proc.name)
    return None


def _code() -> dict[str, Any]:
    """Which agent ran: the commit, and the agent's files changed in the working tree."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    return {"head": git("rev-parse", "--short", "HEAD"),
            "changed": git("status", "--porcelain", "--", "felix_like", "datastore", "ipam",
                           "bgp", "cni").splitlines()}


def _etcd_status(etcd: EmbeddedEtcd) -> dict[str, Any]:
    r = subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "endpoint", "status",
                        "-w", "json"], capture_output=True, text=True, check=False)
    out: dict[str, Any] = {}
    with contextlib.suppress(ValueError, IndexError, KeyError):
        st = json.loads(r.stdout)[0]["Status"]
        out = {"db_size_mib": st["dbSize"] / 2**20,
               "db_size_in_use_mib": st.get("dbSizeInUse", 0) / 2**20,
               "revision": st["header"]["revision"]}
    if etcd.proc is not None:
        out.update({f"etcd_{k}": v for k, v in _mib(_status_kib(etcd.proc.pid)).items()})
    return out


async def _run(shape: Cluster, args: argparse.Namespace, tmp: Path, made: list[str]
               ) -> dict[str, Any]:
    res: dict[str, Any] = {"nodes": shape.nodes, "pods_per_node": shape.pods_per_node,
                           "policies": shape.policies, "namespaces": shape.namespaces,
                           "endpoint_rate": args.endpoint_rate, "status_rate": args.status_rate,
                           "churn_seconds": args.churn_seconds, "code": _code(),
                           "loadavg_at_start": os.getloadavg()}
    etcd = EmbeddedEtcd.temporary()
    etcd.start()
    try:
        node, node_ref = cni._ns("l3", made), cni._ns("ref", made)
        pods_l3 = [cni._ns("pod", made) for _ in range(args.adds + 1)]
        pods_ref = [cni._ns("pod", made) for _ in range(args.adds)]
        cni._node_uplink(node, made)
        async with Datastore(EtcdConfig.from_strings(etcd.endpoint)) as ds:
            t0 = time.perf_counter()
            with progress("writing the simulated cluster to etcd") as shown:
                n_keys, n_bytes = await _bulk_put(ds, shape.values(), shown)
            await _bulk_put(ds, iter([_doc("BGPPeer", "uplink", {
                "peerIP": cni.UPLINK_PEER_IP.split("/")[0], "asNumber": 64512,
                "node": node})]))
            load_s = time.perf_counter() - t0
            res["etcd_load"] = {"keys": n_keys, "value_bytes": n_bytes, "seconds": load_s,
                                "keys_per_s": n_keys / load_s, **_etcd_status(etcd)}
            print(f"cluster written: {n_keys} keys, {n_bytes / 2**20:.1f} MiB in {load_s:.1f} s")
            bin_dir = tmp / "bin"
            bin_dir.mkdir()
            write_executable(bin_dir / "l3fabric", "plugin", pick_interpreter())
            sock = str(tmp / "agent.sock")
            ours_conf = {"cniVersion": "1.0.0", "name": NET, "type": "l3fabric",
                         "agentSocket": sock, "mtu": 1500, "ipam": {"type": "l3fabric-ipam"},
                         "args": {"cni": {"labels": [{"key": k, "value": v}
                                                     for k, v in ADD_LABELS.items()]}}}
            ref_conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "ptp", "mtu": 1500,
                        "ipam": {"type": "host-local", "dataDir": str(tmp / "host-local"),
                                 "ranges": [[{"subnet": "10.60.0.0/16"}]]}}
            ready: dict[str, float] = {}
            t_start = time.perf_counter()
            poller = asyncio.create_task(_readiness(node, t_start, ready))
            try:
                async with cni._fabric_agent(sock, node, etcd.unix_endpoint) as tree:
                    await asyncio.wait_for(poller, 5)
                    res["ready_s"] = ready["ready_s"]
                    agent_pid = tree[0]
                    # What start-up cost the agent itself: a loaded machine stretches the
                    # wall time (ready_s) but not this.
                    res["ready_cpu_s"] = _cpu_s(agent_pid)
                    exabgp = _exabgp_of(Path(sock).parent / f"bgp-{node}")
                    pids = {"agent": agent_pid, **({"exabgp": exabgp} if exabgp else {})}
                    relay = cni._tree(exabgp)[1:] if exabgp else []  # ExaBGP's API helper
                    if relay:
                        pids["relay"] = relay[0]
                    res["processes"] = {n: cni._proc_name(p) for n, p in pids.items()}
                    res["rss_at_ready"] = {n: _mib(_status_kib(p)) for n, p in pids.items()}
                    await _measure(res, ds, shape, args, node, etcd, pids,
                                   cni._Plugin("l3", str(bin_dir / "l3fabric"),
                                               json.dumps(ours_conf), node,
                                               f"{bin_dir}:{cni.REFERENCE}", pods_l3[1:],
                                               tuple(tree)),
                                   cni._Plugin("ref", str(cni.REFERENCE / "ptp"),
                                               json.dumps(ref_conf), node_ref,
                                               str(cni.REFERENCE), pods_ref),
                                   bin_dir, pods_l3[0])
            finally:
                poller.cancel()
            res["etcd_after"] = _etcd_status(etcd)
            res["loadavg_at_end"] = os.getloadavg()
    finally:
        etcd.stop()
    return res


async def _measure(res: dict[str, Any], ds: Datastore, shape: Cluster,
                   args: argparse.Namespace, node: str, etcd: EmbeddedEtcd,
                   pids: dict[str, int], ours: cni._Plugin, ref: cni._Plugin, bin_dir: Path,
                   target_pod: str) -> None:
    # The probe's local pod (app=probe-target), through the shim like any other.
    target = json.loads(ours.conf)
    target["args"]["cni"]["labels"] = [{"key": "app", "value": "probe-target"}]
    await cni._exec(ours.exe, cni._env("ADD", "probe-target", target_pod, ours.cni_path),
                    json.dumps(target), node)
    res["cpu_idle_pct"] = await _cpu_window(pids, args.churn_seconds, node)
    idle = await _adds(ours, ref, "i")
    probes_idle, sets, missed = await _probes(ds, node, shape, 0, args.probes + 1, [])
    res["probe_sets"] = sets
    churn: dict[str, Any] = {}
    async with _churning(etcd.unix_endpoint, shape, args.endpoint_rate, args.status_rate,
                         churn):
        res["cpu_churn_pct"] = await _cpu_window(pids, args.churn_seconds, node)
        busy = await _adds(ours, ref, "c")
        probes_busy, _, missed_busy = await _probes(ds, node, shape, args.probes + 1,
                                                    args.probes, sets)
        res["rss_after_churn"] = {n: _mib(_status_kib(p)) for n, p in pids.items()}
    res["churn_done"] = churn
    ref_p50 = _pct(idle["ref"] + busy["ref"], 0.5)
    res["cni_add_ms"] = {
        "idle_p50": _pct(idle["l3"], 0.5), "idle_p99": _pct(idle["l3"], 0.99),
        "churn_p50": _pct(busy["l3"], 0.5), "churn_p99": _pct(busy["l3"], 0.99),
        "ref_idle_p50": _pct(idle["ref"], 0.5), "ref_churn_p50": _pct(busy["ref"], 0.5),
        "ref_p50": ref_p50}
    res["cni_add_samples_ms"] = {f"{phase}_{tag}": [round(x * 1000, 2) for x in xs]
                                 for phase, runs in (("idle", idle), ("churn", busy))
                                 for tag, xs in runs.items()}
    a = res["cni_add_ms"]
    res["ratios"] = {"idle_add_p50_vs_ptp": a["idle_p50"] / a["ref_idle_p50"],
                     "churn_add_p50_vs_idle": a["churn_p50"] / a["idle_p50"],
                     # the churn loads this shared machine too: the reference under it
                     "churn_add_p50_vs_ptp_churn": a["churn_p50"] / a["ref_churn_p50"],
                     "ptp_churn_vs_idle": a["ref_churn_p50"] / a["ref_idle_p50"]}
    # The first idle probe searched every set (slower polling): left out of the figures.
    res["remote_to_rules_s"] = {
        "idle_p50": _pct(probes_idle["add"][1:], 0.5) / 1000,
        "idle_p99": _pct(probes_idle["add"][1:], 0.99) / 1000,
        "churn_p50": _pct(probes_busy["add"], 0.5) / 1000,
        "churn_p99": _pct(probes_busy["add"], 0.99) / 1000,
        "delete_p50": _pct(probes_idle["delete"] + probes_busy["delete"], 0.5) / 1000,
        "missed": missed + missed_busy}


def _total(counters: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in counters.items() if k.startswith(prefix))


def _report(res: dict[str, Any]) -> None:
    r, c, p = res["rss_at_ready"], res["cni_add_ms"], res["remote_to_rules_s"]
    cc = res["cpu_churn_pct"]["counters"]
    ra = res.get("rss_after_churn", {})
    rows: list[list[Any]] = [
        ["start -> /readyz 200 (s)", res["ready_s"]],
        ["agent CPU from start to ready (s)", res["ready_cpu_s"]],
        ["agent RSS at ready (MiB)", r["agent"]["rss_mib"]],
        ["agent RSS after churn / peak (MiB)",
         f"{ra.get('agent', {}).get('rss_mib', 0):.0f} / "
         f"{ra.get('agent', {}).get('hwm_mib', 0):.0f}"],
        ["ExaBGP RSS at ready (MiB)", r.get("exabgp", {}).get("rss_mib", 0.0)],
        ["ExaBGP's relay RSS at ready (MiB)", r.get("relay", {}).get("rss_mib", 0.0)],
        ["agent CPU idle (% of a core)", res["cpu_idle_pct"]["agent"]],
        ["agent CPU under churn (% of a core)", res["cpu_churn_pct"]["agent"]],
        ["agent events / applies during churn window",
         f"{_total(cc, 'datastore'):.0f} / {_total(cc, 'dataplane_apply_seconds_count'):.0f}"],
        ["ExaBGP CPU under churn (% of a core)", res["cpu_churn_pct"].get("exabgp", 0.0)],
        ["CNI ADD idle p50 / p99 (ms)", f"{c['idle_p50']:.1f} / {c['idle_p99']:.1f}"],
        ["CNI ADD churn p50 / p99 (ms)", f"{c['churn_p50']:.1f} / {c['churn_p99']:.1f}"],
        ["ptp+host-local ADD p50 idle / churn (ms)",
         f"{c['ref_idle_p50']:.1f} / {c['ref_churn_p50']:.1f}"],
        ["ADD p50 idle / ptp", res["ratios"]["idle_add_p50_vs_ptp"]],
        ["ADD p50 churn / idle", res["ratios"]["churn_add_p50_vs_idle"]],
        ["ADD p50 churn / ptp under churn", res["ratios"]["churn_add_p50_vs_ptp_churn"]],
        ["remote pod -> local set idle p50 / p99 (s)",
         f"{p['idle_p50']:.3f} / {p['idle_p99']:.3f}"],
        ["remote pod -> local set churn p50 / p99 (s)",
         f"{p['churn_p50']:.3f} / {p['churn_p99']:.3f}"],
        ["remote delete -> gone from set p50 (s)", p["delete_p50"]],
        ["etcd keys / MiB written / keys per s",
         f"{res['etcd_load']['keys']} / {res['etcd_load']['value_bytes'] / 2**20:.1f} / "
         f"{res['etcd_load']['keys_per_s']:.0f}"],
        ["etcd db size after load (MiB)", res["etcd_load"].get("db_size_mib", 0.0)],
    ]
    print_table(["measure", "value"], rows,
                title=f"scale: {res['nodes']} nodes x {res['pods_per_node']} pods, "
                      f"{res['policies']} policies, {res['namespaces']} namespaces; churn "
                      f"{res['endpoint_rate']} endpoint + {res['status_rate']} status writes/s")
    if p["missed"]:
        print(f"probes never seen in the sets: {p['missed']}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--pods-per-node", type=int, default=10)
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--namespaces", type=int, default=50)
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument("--endpoint-rate", type=float, default=20.0)
    ap.add_argument("--status-rate", type=float, default=100.0)
    ap.add_argument("--adds", type=int, default=20, help="local ADDs idle, and as many under churn")
    ap.add_argument("--probes", type=int, default=10,
                    help="remote endpoints idle, and as many under churn")
    ap.add_argument("--churn-worker", metavar="ETCD", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.nodes < 3 or args.pods_per_node < 1 or args.namespaces < 1:
        ap.error("at least 3 nodes, 1 pod per node and 1 namespace")
    shape = Cluster(args.nodes, args.pods_per_node, args.policies, args.namespaces, args.probes)
    if args.churn_worker:
        asyncio.run(_churn(args.churn_worker, shape, args.endpoint_rate, args.status_rate))
        return 0
    if os.geteuid() != 0 or not (cni.REFERENCE / "ptp").exists() or not cni.AGENT_BIN.exists():
        print("bench_scale: needs root, containernetworking-plugins and .venv/bin/fabric-agent")
        return 1
    if 2 * args.probes + 1 > BLOCK_ADDRS:
        ap.error(f"at most {(BLOCK_ADDRS - 1) // 2} probes")
    # SIGTERM unwinds like Ctrl-C, so every finally below runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    made: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="l3fabric-bench-scale-"))
    try:
        res = asyncio.run(_run(shape, args, tmp, made))
    finally:
        for name in reversed(made):
            cni._del_ns(name)
        shutil.rmtree(tmp, ignore_errors=True)
    _report(res)
    print(f"wrote {write_results('scale', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
