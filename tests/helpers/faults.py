"""Helpers of the fault, hostile-input and security suite (``tests/faults/``).

What they make and own, all of it removed by their ``close()``/context exit, also after a
failure:

- `Namespaces`: uniquely named network namespaces (``fabf-<tag>-<hex>``), ``lo`` up and
  nothing else; at close every process still inside is killed and the namespace deleted.
  Module-scoped labs use it where the function-scoped ``netns`` fixture cannot serve;
- `rack`: one BIRD top-of-rack router (`helpers.bird`'s `Bird`) and N nodes running the
  real ``fabric-agent`` (`helpers.fabric`'s `Fabric` and `Node`), graceful restart on,
  nodes peering only with the ToR (route-reflector clients in the ToR's AS);
- `etcd_in_netns`: an etcd member started *inside* a namespace (its loopback only), for
  agents that must speak TCP/TLS to etcd without any path to the host;
- `Pinger`: a 10 ms ``ping`` between two pods, read for loss afterwards;
- shims: `shim` / `shims` exec the real CNI plugin (as ``fabricctl install-cni`` installs
  it: `helpers.shims`) as runtimes do, one or many at once (each one a process of its
  own, bounded by a timeout).

Nothing here runs in the root namespace except etcd on 127.0.0.1 and the CLI tools.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datastore.embedded import EmbeddedEtcd
from felix_like.netlink import delete_netns, run_in_netns
from helpers import shims as cni_shims
from helpers.bird import Bird, BirdPeer
from helpers.fabric import Fabric, Node, Pod, link, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
PREFIX = "/l3fabric/v1/"
API = "l3fabric.io/v1"
POOL_CIDR = "10.244.0.0/16"
RACK_AS = 65001
SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}  # CNI spec 1.1.0 well-known codes
OUR_CODES = {100, 101, 102, 103, 104, 105}  # felix_like.cni_handler.ERR_*


def sh(*cmd: str, check: bool = True, timeout: float = 60, input: str | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def etcdctl(endpoint: str, *args: str, check: bool = True,
            input: str | None = None) -> str:
    return sh("etcdctl", "--endpoints", endpoint, "--command-timeout", "5s", *args,
              check=check, input=input)


def put_raw(endpoint: str, key: str, value: str | bytes) -> None:
    """``etcdctl put`` of any bytes (the value goes on stdin: no argv limits, no quoting)."""
    data = value.encode() if isinstance(value, str) else value
    r = subprocess.run(["etcdctl", "--endpoints", endpoint, "put", PREFIX + key],
                       input=data, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr


def get_json(endpoint: str, key: str) -> Any:
    out = etcdctl(endpoint, "get", "--print-value-only", PREFIX + key)
    return json.loads(out) if out.strip() else None


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == want:
            return float(value)
    return 0.0


def ipam_check(endpoint: str) -> tuple[int, str]:
    r = subprocess.run([str(BIN / "fabricctl"), "--etcd-endpoints", endpoint, "ipam", "check"],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


# -- namespaces ----------------------------------------------------------------------------


class Namespaces:
    """A factory of throw-away namespaces (see the module docstring)."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, tag: str = "ns") -> str:
        name = f"fabf-{tag}-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def many(self, tag: str, n: int) -> list[str]:
        return [self(tag) for _ in range(n)]

    def close(self) -> None:
        for name in reversed(self.made):
            delete_netns(name)
        self.made.clear()


# -- the CNI shim as a runtime execs it ---------------------------------------------------


@dataclass
class ShimResult:
    container: str
    pod_ns: str
    exit: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            return None

    @property
    def code(self) -> int | None:
        obj = self.json
        return obj.get("code") if isinstance(obj, dict) else None

    @property
    def ip(self) -> str:
        return str(self.json["ips"][0]["address"].split("/")[0])


def conf(socket: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"cniVersion": version, "name": "l3net", "type": "l3fabric",
                         "agentSocket": socket, "ipam": {"type": "l3fabric-ipam"}}
    c.update(extra)
    return c


def shim_env(command: str, container: str, pod_ns: str | None, pod: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
           "CNI_PATH": str(cni_shims.bin_dir()), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if pod_ns is not None:
        env["CNI_NETNS"] = f"/var/run/netns/{pod_ns}"
    return env


def _spawn(command: str, socket: str, container: str, pod_ns: str | None, pod: str,
           netconf: dict[str, Any] | None) -> subprocess.Popen[str]:
    p = subprocess.Popen([str(cni_shims.installed())],
                         env=shim_env(command, container, pod_ns, pod),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdin is not None
    p.stdin.write(json.dumps(netconf or conf(socket)))
    p.stdin.close()
    p.stdin = None  # written and closed: communicate() must not flush it
    return p


class ShimBatch:
    """Shims started at once; `collect` waits for every one (bounded)."""

    def __init__(self, command: str, socket: str, pods: Sequence[tuple[str, str]],
                 netconf: dict[str, Any] | None = None) -> None:
        self.t0 = time.monotonic()
        self.procs = [(cid, ns, _spawn(command, socket, cid, ns, cid, netconf))
                      for cid, ns in pods]

    def collect(self, timeout: float = 90) -> list[ShimResult]:
        out = []
        for cid, ns, p in self.procs:
            left = max(1.0, timeout - (time.monotonic() - self.t0))
            try:
                o, e = p.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                p.kill()
                o, e = p.communicate()
                e += "\n(timed out)"
            out.append(ShimResult(cid, ns, p.returncode, o, e, time.monotonic() - self.t0))
        return out


def spawn_shims(command: str, socket: str, pods: Sequence[tuple[str, str]],
                netconf: dict[str, Any] | None = None) -> ShimBatch:
    return ShimBatch(command, socket, pods, netconf)


def shims(command: str, socket: str, pods: Sequence[tuple[str, str]],
          timeout: float = 90, netconf: dict[str, Any] | None = None) -> list[ShimResult]:
    """Exec one shim per (container, pod namespace) at once; wait for all (bounded)."""
    return ShimBatch(command, socket, pods, netconf).collect(timeout)


def shim(command: str, socket: str, container: str, pod_ns: str | None,
         timeout: float = 60, netconf: dict[str, Any] | None = None) -> ShimResult:
    t0 = time.monotonic()
    p = _spawn(command, socket, container, pod_ns, container, netconf)
    try:
        o, e = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        o, e = p.communicate()
        e += "\n(timed out)"
    return ShimResult(container, pod_ns or "", p.returncode, o, e, time.monotonic() - t0)


def gc(socket: str, valid: Sequence[str]) -> ShimResult:
    """A runtime's CNI GC (spec 1.1.0): every attachment not in ``valid`` is freed."""
    netconf = conf(socket, "1.1.0")
    netconf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": "eth0"}
                                            for c in valid]
    env = {"CNI_COMMAND": "GC", "CNI_PATH": str(cni_shims.bin_dir()),
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    t0 = time.monotonic()
    r = subprocess.run([str(cni_shims.installed())], env=env, input=json.dumps(netconf),
                       capture_output=True, text=True, timeout=60)
    return ShimResult("", "", r.returncode, r.stdout, r.stderr, time.monotonic() - t0)


# -- pings ---------------------------------------------------------------------------------


class Pinger:
    """``ping -i 0.01`` from one namespace to an address for a bounded time."""

    def __init__(self, ns: str, dst: str, seconds: float) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "ping", "-n", "-i", "0.01", "-w",
             str(int(seconds)), dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)

    def result(self, timeout: float = 60) -> tuple[int, int, str]:
        """(transmitted, received, raw summary)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            self.proc.kill()
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        errors = [ln for ln in out.splitlines() if "bytes from" not in ln and ln.strip()
                  and not ln.startswith(("PING", "---", "rtt"))]
        return int(m.group(1)), int(m.group(2)), "; ".join(errors[-4:])


def reach(ns: str, dst: str, count: int = 2) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i",
                           "0.2", "-W", "1", dst], capture_output=True,
                          timeout=30).returncode == 0


# -- node-namespace inspection ------------------------------------------------------------


def fab_links(ns: str) -> list[str]:
    out = sh("ip", "-n", ns, "-j", "link", "show")
    return sorted(str(x["ifname"]) for x in json.loads(out) if x["ifname"].startswith("fab"))


def node_snapshot(ns: str) -> dict[str, str]:
    """Everything `fabric-agent --cleanup` must leave as it was in a node namespace."""
    def run(*cmd: str) -> str:
        return sh("ip", "netns", "exec", ns, *cmd, check=False)
    # Counters and statistics move on their own; the rest must be identical.
    links = re.sub(r"\s+(RX|TX):.*?\n.*?\n", "\n", sh("ip", "-n", ns, "-d", "link", "show"))
    sysctls = "\n".join(ln for ln in run("sysctl", "-a", "-e", "-r", r"^net\.ipv[46]\.")
                        .splitlines() if not re.search(r"\.(stable_secret|route\.flush)|"
                                                       r"_memory_|_mem\b|tcp_fastopen_key",
                                                       ln))
    return {
        "links": links,
        "addresses": sh("ip", "-n", ns, "addr", "show"),
        "routes": sh("ip", "-n", ns, "route", "show", "table", "all"),
        "rules": sh("ip", "-n", ns, "rule", "show"),
        "neigh_proxy": sh("ip", "-n", ns, "neigh", "show", "proxy"),
        "nft": run("nft", "list", "ruleset"),
        "iptables": "\n".join(ln for ln in run("iptables-save").splitlines()
                              if not ln.startswith("#")),
        "ipset": run("ipset", "list", "-n"),
        "sysctls": sysctls,
    }


# -- a rack: one BIRD ToR and real agents ------------------------------------------------


@dataclass
class Rack:
    fab: Fabric
    tor: Bird
    ns: Namespaces
    pods: dict[str, Any] = field(default_factory=dict)

    @property
    def etcd(self) -> EmbeddedEtcd:
        return self.fab.etcd

    def node(self, name: str) -> Node:
        return self.fab.nodes[name]


def build_rack(fab: Fabric, make_ns: Any, nodes: int = 2, restart_time: int = 60) -> Bird:
    """ToR ``tor`` (AS 65001, BIRD, GR-aware) and nodes ``n1``…: node ``ni`` is
    ``10.99.i.1/30``, its ToR end ``.2``. Nodes peer only with the ToR (one BGPPeer each)
    and ask for graceful restart (``restartTime``)."""
    fab.bgp_config(nodeToNodeMesh=False, holdTime=9,
                   gracefulRestart={"enabled": True, "restartTime": restart_time})
    fab.pool("p1", POOL_CIDR, 26)
    tns = make_ns("tor")
    sh("ip", "netns", "exec", tns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    tor = Bird(tns, fab.root / "tor", "10.97.0.1", RACK_AS, hold=9, keepalive=3,
               graceful_restart=False, name="tor")
    fab.tors["tor"] = tor
    for i in range(1, nodes + 1):
        name = f"n{i}"
        ns = fab.node_ns(name)
        link(tns, f"10.99.{i}.2/30", ns, f"10.99.{i}.1/30")
        fab.add_node(name, ns, f"10.99.{i}.1/30", asn=RACK_AS)
        fab.bgp_peer(f"tor-{name}", f"10.99.{i}.2", RACK_AS, name)
        tor.peers.append(BirdPeer(name, f"10.99.{i}.1", RACK_AS, f"10.99.{i}.2",
                                  rr_client=True))
    return tor


def add_pod(fab: Fabric, node: str, name: str, make_ns: Any) -> Pod:
    """A pod namespace wired by the real CNI shim through ``node``'s agent (container
    ``c-<name>``, pod ``default/<name>``)."""
    ns = make_ns("pod")
    n = fab.nodes[node]
    env = shim_env("ADD", f"c-{name}", ns, name)
    r = subprocess.run([str(cni_shims.installed())], env=env, input=json.dumps(conf(n.socket)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"ADD {name} on {node}: {r.stdout} {r.stderr}"
    pod = Pod(name, node, ns, json.loads(r.stdout)["ips"][0]["address"].split("/")[0],
              f"c-{name}")
    fab.pods[name] = pod
    return pod


def agent_log(node: Node) -> str:
    with contextlib.suppress(OSError):
        return node.log.read_text()
    return ""


# -- etcd inside a namespace ----------------------------------------------------------------


@contextlib.contextmanager
def etcd_in_netns(ns: str, member: EmbeddedEtcd, timeout: float = 20) -> Iterator[EmbeddedEtcd]:
    """Run ``member`` (its command line, ports, TLS flags) inside namespace ``ns``."""
    member.data_dir.mkdir(parents=True, exist_ok=True)
    with open(member.log_path, "ab") as logf:
        member.proc = subprocess.Popen(["ip", "netns", "exec", ns, *member.command()],
                                       stdout=logf, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=member.data_dir)
    try:
        wait_for(lambda: run_in_netns(ns, member.healthy), timeout, "etcd in the namespace",
                 0.1, lambda: member.log_path.read_text()[-2000:])
        yield member
    finally:
        member.stop()
