"""A small BGP fabric in throw-away namespaces, run by the real agent: the e2e tests' lab.

What a `Fabric` makes and owns (all of it goes in `close()`, also after a failure; the
``netns`` fixture then deletes the namespaces and kills any process still inside):

- **nodes**: a namespace with forwarding on, running the real ``fabric-agent`` inside it
  (``ip netns exec``), which reaches the test's etcd over its unix socket — so nothing
  connects the lab to the host's network. The agent starts ExaBGP itself (workdir
  ``<node dir>/bgp-<node>/``); ExaBGP outlives the agent, so `close()` runs
  ``fabric-agent --cleanup --socket`` in every node, which stops it;
- **ToRs**: BIRD 2 in a namespace (`helpers.bird.Bird`): the rack's nodes are iBGP
  route-reflector clients (Calico's AS-per-rack: a rack's nodes share the ToR's AS), other
  ToRs are eBGP neighbours (several parallel links give ECMP; ``merge paths on``);
- **links**: veth pairs with an address on each end (/30s to ToRs, /24 on a bridge);
- **pods**: namespaces wired by the real CNI shim (as ``fabricctl install-cni`` installs
  it: `helpers.shims`) through the node agent's socket.

Builders: `two_racks` (nodes peer only with their ToR: ``nodeToNodeMesh: false`` plus one
BGPPeer per node) and `lan` (nodes on one bridge: full mesh, or route reflectors).
Resources are written with ``etcdctl`` as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datastore.embedded import EmbeddedEtcd
from felix_like.netlink import run_in_netns
from helpers import shims
from helpers.bird import Bird, BirdPeer, kernel_routes
from helpers.exabgp import link, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
PREFIX = "/l3fabric/v1/"
API = "l3fabric.io/v1"
METRICS_PORT = 9091  # every agent in its own namespace: no clash


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


# -- nodes and pods --------------------------------------------------------------------


def shim_input(command: str, agent_socket: str, container: str, pod_ns: str, pod: str, *,
               ip: str | None = None, labels: dict[str, str] | None = None,
               ipam: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """Stdin and environment of the real CNI shim for one call, as a runtime makes them:
    ``ip`` asks for that address (CNI_ARGS ``IP=``), ``labels`` become the pod's labels
    (``args.cni.labels``), ``ipam`` adds to the IPAM section (``assign_ipv6``...)."""
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "l3net", "type": "l3fabric",
                            "agentSocket": agent_socket,
                            "ipam": {"type": "l3fabric-ipam", **(ipam or {})}}
    if labels:
        conf["args"] = {"cni": {"labels": [{"key": k, "value": v}
                                           for k, v in labels.items()]}}
    args = f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
    if ip:
        args += f";IP={ip}"
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": f"/var/run/netns/{pod_ns}", "CNI_IFNAME": "eth0", "CNI_ARGS": args,
           "CNI_PATH": str(shims.bin_dir()), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return json.dumps(conf), env


@dataclass
class Pod:
    name: str
    node: str
    ns: str
    ip: str
    container: str


@dataclass
class Node:
    """One node namespace and the real agent in it."""

    name: str
    ns: str
    ip: str  # CIDR form, the Node's bgp.ipv4Address
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more fabric-agent flags

    @property
    def socket(self) -> str:
        return str(self.workdir / "agent.sock")

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return f"--- {self.name} agent log ---\n{self.log.read_text()[-n:]}"
        return ""

    def spawn(self, etcd: EmbeddedEtcd) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, str(BIN / "fabric-agent"), "--node", self.name,
                 "--etcd-endpoints", etcd.unix_endpoint, "--socket", self.socket,
                 "--metrics-addr", f"127.0.0.1:{METRICS_PORT}", "--node-ip", self.ip,
                 *self.args],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

    def cni_add(self, container: str, pod_ns: str, pod: str, **kw: Any) -> dict[str, Any]:
        """CNI ADD through this node's agent with the real shim (`shim_input` takes
        ``ip``, ``labels``, ``ipam``); fails the test unless it succeeds; the result."""
        stdin, env = shim_input("ADD", self.socket, container, pod_ns, pod, **kw)
        r = subprocess.run([str(shims.installed())], input=stdin, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return dict(json.loads(r.stdout))

    def http(self, path: str) -> tuple[int, str]:
        def get() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}{path}",
                                            timeout=2) as r:
                    return int(r.status), r.read().decode()
            except urllib.error.HTTPError as e:
                return int(e.code), e.read().decode()
            except OSError:
                return 0, ""
        return run_in_netns(self.ns, get)

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"agent {self.name} exited\n{self.log_tail()}")
        return self.http("/readyz")[0] == 200

    def start(self, etcd: EmbeddedEtcd, timeout: float = 30) -> None:
        self.spawn(etcd)
        wait_for(self.ready, timeout, f"agent {self.name} ready", 0.1, self.log_tail)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.proc = None

    def exabgp_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.workdir / f"bgp-{self.name}" / "exabgp.pid").read_text())
        return None

    def cleanup(self) -> str:
        """Stop the agent and run ``fabric-agent --cleanup`` (stops ExaBGP, removes routes)."""
        self.kill(signal.SIGTERM)
        return sh("ip", "netns", "exec", self.ns, str(BIN / "fabric-agent"), "--cleanup",
                  "--socket", self.socket, check=False)

    def routes(self, proto: str) -> dict[str, str]:
        """prefix -> rest of the line, for ``proto`` (80 ours, 81 BGP) in the node's kernel."""
        return kernel_routes(self.ns, proto)

    def claimed_block(self, timeout: float = 10) -> str:
        """The node's one claimed block, by its blackhole. The blackhole follows the
        confirmed affinity through the agent's etcd watch, so it can appear a moment after
        the ADD that claimed the block answered: wait for it."""
        def one() -> str | None:
            routes = self.routes("80")
            blocks = [p for p, rest in routes.items() if rest.startswith("blackhole")]
            assert len(blocks) <= 1, routes
            return blocks[0] if blocks else None
        block: str = wait_for(one, timeout, f"{self.name}'s block (its blackhole)", 0.05,
                              lambda: str(self.routes("80")))
        return block


# -- the fabric ------------------------------------------------------------------------


@dataclass
class PendingPod:
    fabric: Fabric
    pod: Pod
    proc: subprocess.Popen[str]

    def done(self) -> bool:
        return self.proc.poll() is not None

    def finish(self) -> Pod:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, err = self.proc.stdout.read(), self.proc.stderr.read()  # stdin already closed
        self.proc.wait(60)
        assert self.proc.returncode == 0, f"ADD {self.pod.name} on {self.pod.node}: {out} {err}"
        self.pod.ip = json.loads(out)["ips"][0]["address"].split("/")[0]
        self.fabric.pods[self.pod.name] = self.pod
        return self.pod


class Fabric:
    def __init__(self, netns: Callable[[str], str], etcd: EmbeddedEtcd, root: Path) -> None:
        self.make_ns = netns
        self.etcd = etcd
        self.root = root
        self.nodes: dict[str, Node] = {}
        self.tors: dict[str, Bird] = {}
        self.pods: dict[str, Pod] = {}

    # etcd, as an operator writes it

    def put(self, key: str, obj: dict[str, Any]) -> None:
        sh("etcdctl", "--endpoints", self.etcd.endpoint, "put", PREFIX + key, json.dumps(obj))

    def delete(self, key: str) -> None:
        sh("etcdctl", "--endpoints", self.etcd.endpoint, "del", PREFIX + key)

    def get(self, key: str) -> Any:
        out = sh("etcdctl", "--endpoints", self.etcd.endpoint, "get", "--print-value-only",
                 PREFIX + key)
        return json.loads(out) if out.strip() else None

    def pool(self, name: str, cidr: str, block_size: int = 26, selector: str | None = None
             ) -> None:
        spec: dict[str, Any] = {"cidr": cidr, "blockSize": block_size}
        if selector:
            spec["nodeSelector"] = selector
        self.put(f"config/ippools/{name}",
                 {"apiVersion": API, "kind": "IPPool", "metadata": {"name": name}, "spec": spec})

    def bgp_config(self, **spec: Any) -> None:
        self.put("config/bgp/default", {"apiVersion": API, "kind": "BGPConfiguration",
                                        "metadata": {"name": "default"}, "spec": spec})

    def bgp_peer(self, name: str, peer_ip: str, asn: int, node: str) -> None:
        self.put(f"config/bgppeers/{name}", {
            "apiVersion": API, "kind": "BGPPeer", "metadata": {"name": name},
            "spec": {"peerIP": peer_ip, "asNumber": asn, "node": node}})

    # topology

    def node_ns(self, name: str) -> str:
        ns = self.make_ns(name)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return ns

    def add_node(self, name: str, ns: str, ip: str, asn: int | None = None,
                 labels: dict[str, str] | None = None, rr_cluster: str | None = None) -> Node:
        bgp: dict[str, Any] = {"ipv4Address": ip}
        if asn is not None:
            bgp["asNumber"] = asn
        if rr_cluster is not None:
            bgp["routeReflectorClusterID"] = rr_cluster
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = labels
        self.put(f"nodes/{name}", {"apiVersion": API, "kind": "Node", "metadata": meta,
                                   "spec": {"bgp": bgp}})
        node = Node(name, ns, ip, self.root / name)
        self.nodes[name] = node
        return node

    def start_agents(self, names: Iterable[str] | None = None, timeout: float = 40) -> None:
        """Start several agents at once (they import in parallel), then wait for each."""
        todo = [self.nodes[n] for n in (names or self.nodes)]
        for n in todo:
            n.spawn(self.etcd)
        for n in todo:
            wait_for(n.ready, timeout, f"agent {n.name} ready", 0.1, n.log_tail)

    def start_tors(self) -> None:
        for t in self.tors.values():
            t.start()

    def add_pod(self, node: str, name: str, ip: str | None = None) -> Pod:
        """A pod namespace wired by the real CNI shim through ``node``'s agent."""
        return self.spawn_pod(node, name, ip).finish()

    def spawn_pod(self, node: str, name: str, ip: str | None = None) -> PendingPod:
        """Start the shim's ADD and return at once (benchmarks watch the FIB meanwhile)."""
        n = self.nodes[node]
        ns = self.make_ns("pod")
        container = f"c-{name}"
        stdin, env = shim_input("ADD", n.socket, container, ns, name, ip=ip)
        proc = subprocess.Popen([str(shims.installed())], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                text=True)
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        return PendingPod(self, Pod(name, node, ns, "", container), proc)

    def del_pod(self, name: str) -> None:
        """CNI DEL of a pod through its node's agent (the shim, as a runtime runs it): its
        address is released; the pod's namespace stays the fixture's."""
        pod = self.pods.pop(name)
        stdin, env = shim_input("DEL", self.nodes[pod.node].socket, pod.container, pod.ns,
                                name)
        r = subprocess.run([str(shims.installed())], input=stdin, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"DEL {name} on {pod.node}: {r.stdout} {r.stderr}"

    def unreachable(self, pairs: Iterable[tuple[Pod, Pod]], count: int = 2) -> list[str]:
        """Ping every (src, dst) pair in parallel; the pairs that got no answer."""
        procs = [(s, d, subprocess.Popen(
            ["ip", "netns", "exec", s.ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
             "-W", "2", d.ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for s, d in pairs]
        return [f"{s.name}({s.node}) -> {d.name}({d.node}) {d.ip}" for s, d, p in procs
                if p.wait(30) != 0]

    def remove_node(self, name: str) -> Any:
        """Node removal as an operator does it: delete the Node, release its IPAM blocks
        (``ipam.allocator.release_node``), stop its agent and clean up (stops ExaBGP)."""
        from datastore.client import Datastore, EtcdConfig
        from ipam.allocator import release_node

        self.delete(f"nodes/{name}")

        async def release() -> Any:
            ds = Datastore(EtcdConfig.from_strings(self.etcd.endpoint))
            try:
                return await release_node(ds, name)
            finally:
                await ds.close()
        res = asyncio.run(release())
        self.nodes[name].cleanup()
        return res

    def diagnostics(self) -> str:
        out = [n.log_tail(1500) for n in self.nodes.values()]
        for t in self.tors.values():
            out.append(f"--- {t.name} ---\n{t.birdc('show', 'protocols')}")
        return "\n".join(out)

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for n in self.nodes.values():
            with contextlib.suppress(Exception):
                n.cleanup()
        for t in self.tors.values():
            t.stop()


# -- topologies ------------------------------------------------------------------------


RACK_AS = {1: 65001, 2: 65002}


def two_racks(fab: Fabric, per_rack: int = 2, hold: int = 9, tor_links: int = 2,
              bogus: Iterable[str] = (), bogus_to: str | None = None) -> None:
    """Two racks, an AS per rack (ToR and its nodes share it: the ToR reflects between
    them), the ToRs eBGP neighbours over ``tor_links`` parallel links (ECMP).

    Addresses: node ``r<r><x>`` (x = a, b, …) is ``10.99.<k>.1/30`` and its ToR is
    ``.2`` on that link (k = 10·r + i); ToR links are ``10.98.0.<4j>/30``. ``nodeToNodeMesh:
    false`` and one BGPPeer per node name its ToR. ``bogus`` prefixes are announced by
    rack 1's ToR to node ``bogus_to`` only. Pools are the caller's.
    """
    fab.bgp_config(nodeToNodeMesh=False, holdTime=hold)
    tors = {}
    for r in (1, 2):
        ns = fab.make_ns(f"tor{r}")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        keepalive = max(1, hold // 3)
        tors[r] = Bird(ns, fab.root / f"tor{r}", f"10.97.0.{r}", RACK_AS[r], hold=hold,
                       keepalive=keepalive, bogus=list(bogus) if r == 1 else [],
                       graceful_restart=False, name=f"tor{r}")
        fab.tors[f"tor{r}"] = tors[r]
    for j in range(tor_links):
        a, b = f"10.98.0.{4 * j + 1}", f"10.98.0.{4 * j + 2}"
        link(tors[1].ns, f"{a}/30", tors[2].ns, f"{b}/30")
        tors[1].peers.append(BirdPeer(f"tor2_{j}", b, RACK_AS[2], a))
        tors[2].peers.append(BirdPeer(f"tor1_{j}", a, RACK_AS[1], b))
    for r in (1, 2):
        for i in range(per_rack):
            name = f"r{r}{chr(ord('a') + i)}"
            k = 10 * r + i
            node_ip, tor_ip = f"10.99.{k}.1", f"10.99.{k}.2"
            ns = fab.node_ns(name)
            link(tors[r].ns, f"{tor_ip}/30", ns, f"{node_ip}/30")
            fab.add_node(name, ns, f"{node_ip}/30", asn=RACK_AS[r], labels={"rack": f"r{r}"})
            fab.bgp_peer(f"tor-{name}", tor_ip, RACK_AS[r], name)
            tors[r].peers.append(BirdPeer(name, node_ip, RACK_AS[r], tor_ip, rr_client=True,
                                          bogus=name == bogus_to))


def lan(fab: Fabric, n: int, rr: dict[str, str] | None = None, hold: int = 9) -> None:
    """``n`` nodes ``n1``… on one bridge (in a switch namespace), ``10.0.0.i/24``: the
    default full mesh, or route reflectors (``rr``: node name -> cluster ID)."""
    fab.bgp_config(holdTime=hold)
    sw = fab.make_ns("sw")
    sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", sw, "link", "set", "br0", "up")
    for i in range(1, n + 1):
        name = f"n{i}"
        ns = fab.node_ns(name)
        _, port = link(ns, f"10.0.0.{i}/24", sw, None)
        sh("ip", "-n", sw, "link", "set", port, "master", "br0")
        fab.add_node(name, ns, f"10.0.0.{i}/24", rr_cluster=(rr or {}).get(name))
