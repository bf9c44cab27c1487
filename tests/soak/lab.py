"""The soak's lab: the leaf-spine topology of ``fabricctl lab`` on a three-member etcd.

Built from the lab runner's pieces (`fabricctl.lab.runner`): its namespaces, wiring, BIRD
leaves and spines and its state file, so ``runner.down`` removes everything, also after a
crash. What differs from ``fabricctl lab up``, and is owned here:

* etcd is three members, each in a namespace of its own (``clab-L-etcd<i>``) on the
  management bridge, so a member can be killed, or cut off by taking its bridge port down;
* dual-stack (the topology's ``l3fabric.pool6-cidr``): IPv6 link addresses, BIRD carrying
  IPv6 on every session, and every pod gets an address of each family;
* two IPv4 pools inside the lab's pod range (``10.244.0.0/17`` and ``10.244.128.0/17``),
  so one can be disabled while pods keep getting addresses from the other, and one IPv6
  pool (``fd44::/48``);
* the agents are started here: node1 and node3 on nftables, node2 and node4 on iptables,
  each with the three members as endpoints.

The soak's own etcd work goes through `EtcdService`: one long-lived process inside the
management namespace (the root namespace has no path to the lab's network, on purpose).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fabricctl.lab import runner, topology
from fabricctl.lab.resources import encoded
from fabricctl.lab.state import LabState, Proc

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/l3fabric/v1/"
API = "l3fabric.io/v1"
ETCD_IPS = ("172.20.21.21", "172.20.21.22", "172.20.21.23")
POOLS = {"pa": "10.244.0.0/17", "pb": "10.244.128.0/17"}
POOL6 = ("p6", "fd44::/48")
BACKENDS = {"node1": "nftables", "node2": "iptables", "node3": "nftables",
            "node4": "iptables"}
NAMESPACES = {"sa": {"team": "a"}, "sb": {"team": "b"}}
ETCD_QUOTA = 48 * 1024 * 1024  # small, so the soak fills a good part of it ("disk full")


def _quiet(_: str) -> None:
    pass


@dataclass
class Member:
    name: str
    ip: str
    netns: str
    data_dir: Path
    cluster: str
    proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:2379"

    def command(self) -> list[str]:
        return ["etcd", "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", f"http://{self.ip}:2380",
                "--initial-advertise-peer-urls", f"http://{self.ip}:2380",
                "--initial-cluster", self.cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "soak", "--heartbeat-interval", "100",
                "--election-timeout", "1000", "--log-level", "warn",
                "--quota-backend-bytes", str(ETCD_QUOTA)]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


@dataclass
class SoakLab:
    topo: topology.Topology
    st: LabState
    state_home: Path
    members: list[Member] = field(default_factory=list)
    agents: dict[str, Proc] = field(default_factory=dict)
    birds: dict[str, Proc] = field(default_factory=dict)
    etcd: EtcdService | None = None

    # -- names -------------------------------------------------------------------------

    def ns(self, node: str) -> str:
        return runner.netns_name(self.topo.name, node)

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self.topo.by_role("node")]

    @property
    def leaves(self) -> list[str]:
        return [r.name for r in self.topo.by_role("router") if r.rack]

    @property
    def routers(self) -> list[str]:
        return [r.name for r in self.topo.by_role("router")]

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def mgmt_ip(self, node: str) -> str:
        return str(self.st.nodes[node]["mgmt_ip"])

    def agent_socket(self, node: str) -> str:
        return runner.agent_socket(self.st, node)

    def leaf_of(self, node: str) -> str:
        rack = self.topo.nodes[node].rack
        return next(r for r in self.leaves if self.topo.nodes[r].rack == rack)

    # -- etcd ----------------------------------------------------------------------------

    def start_member(self, m: Member) -> None:
        m.data_dir.mkdir(parents=True, exist_ok=True)
        m.proc = runner._spawn(self.st, f"etcd {m.name}", m.netns, m.command(),
                               m.data_dir.parent / f"{m.name}.log")

    def kill_member(self, m: Member) -> None:
        if m.proc is not None and m.proc.alive():
            runner._kill_group(m.proc.pid, signal.SIGKILL)
            _wait_dead(m.proc)

    def etcdctl(self, *args: str, endpoints: str | None = None) -> str:
        p = runner.sh(*runner.in_netns(self.st.mgmt_netns, "etcdctl", "--endpoints",
                                       endpoints or self.endpoints, "--command-timeout",
                                       "20s", *args), check=False, timeout=60)
        return (p.stdout + p.stderr).strip()

    def member_port(self, m: Member) -> str:
        """The member's port on the management bridge (down: the member is cut off)."""
        return runner.mgmt_peer_ifname(m.name)

    def leader(self) -> Member | None:
        live = [m for m in self.members if m.alive()]
        if not live:
            return None
        p = runner.sh(*runner.in_netns(self.st.mgmt_netns, "etcdctl", "--endpoints",
                                       ",".join(m.endpoint for m in live),
                                       "--command-timeout", "2s", "endpoint", "status",
                                       "-w", "json"), check=False, timeout=10)
        with contextlib.suppress(ValueError, KeyError):
            for row in json.loads(p.stdout or "[]"):
                if row["Status"]["leader"] == row["Status"]["header"]["member_id"]:
                    return next(m for m in self.members if m.endpoint == row["Endpoint"])
        return None

    # -- agents, ExaBGP, BIRD -----------------------------------------------------------------

    def agent_cmd(self, node: str) -> list[str]:
        return [str(runner.BIN_DIR / "fabric-agent"), "--node", node,
                "--etcd-endpoints", self.endpoints, "--socket", self.agent_socket(node),
                "--metrics-addr", f"{self.mgmt_ip(node)}:9091",
                *runner.node_ip_args(self.topo, node),
                "--policy-backend", BACKENDS[node]]

    def start_agent(self, node: str) -> None:
        self.agents[node] = runner._spawn(
            self.st, f"agent {node}", self.ns(node), self.agent_cmd(node),
            Path(self.st.dir) / node / "agent.log", env={"L3FABRIC_LAB": self.topo.name})

    def stop_agent(self, node: str, sig: int) -> None:
        p = self.agents.get(node)
        if p is not None and p.alive():
            runner._kill_group(p.pid, sig)
            _wait_dead(p, 15 if sig == signal.SIGTERM else 5)
            if p.alive():
                runner._kill_group(p.pid, signal.SIGKILL)
                _wait_dead(p)

    def exabgp_pids(self, node: str) -> list[int]:
        """ExaBGP's processes in the node (it outlives the agent, in a session of its own)."""
        out = []
        for pid in runner._netns_pids(self.ns(node)):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if any(b"exabgp" in c for c in cmd[:3]) and b"fabric-agent" not in cmd[1]:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    if stat[stat.rindex(")") + 2] not in "ZX":
                        out.append(pid)
        return out

    def bird_cmd(self, router: str) -> list[str]:
        rd = Path(self.st.dir) / router
        return ["bird", "-f", "-c", str(rd / "bird.conf"), "-s",
                runner.bird_socket(self.st, router), "-P", str(rd / "bird.pid")]

    def start_bird(self, router: str) -> None:
        self.birds[router] = runner._spawn(self.st, f"bird {router}", self.ns(router),
                                           self.bird_cmd(router),
                                           Path(self.st.dir) / router / "bird.log")

    def kill_bird(self, router: str) -> None:
        p = self.birds[router]
        if p.alive():
            runner._kill_group(p.pid, signal.SIGKILL)
            _wait_dead(p)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> list[str]:
        if self.etcd is not None:
            self.etcd.close()
        for node in self.nodes:  # ExaBGP is stopped by the namespace sweep in down()
            self.stop_agent(node, signal.SIGKILL)
        st = LabState.load(self.topo.name) or self.st
        return runner.down(st)


def _wait_dead(p: Proc, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.02)


def build(state_home: Path, progress: Any = _quiet, wait: float = 90) -> SoakLab:
    """Bring the lab up: namespaces, wiring, etcd, resources, BIRD, agents (ready)."""
    os.environ["XDG_STATE_HOME"] = str(state_home)
    doc = yaml.safe_load((REPO / "containerlab/leaf-spine.clab.yml").read_text())
    doc["name"] = f"s{uuid.uuid4().hex[:5]}"
    doc["topology"]["nodes"]["mgmt"]["labels"]["l3fabric.pool6-cidr"] = POOL6[1]
    path = state_home / f"{doc['name']}.clab.yml"
    state_home.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    topo = topology.load(path)
    d = runner.lab_dir(topo.name)
    d.mkdir(parents=True, exist_ok=True)
    members = [f"etcd{i + 1}" for i in range(len(ETCD_IPS))]
    st = LabState(lab=topo.name, topology=str(path), dir=str(d),
                  etcd_endpoint=",".join(f"http://{ip}:2379" for ip in ETCD_IPS),
                  mgmt_netns=runner.netns_name(topo.name, topo.mgmt.name))
    st.save()
    lab = SoakLab(topo, st, state_home)
    try:
        progress(f"lab {topo.name}: namespaces and links")
        runner._make_namespaces(st, topo, progress)
        runner._wire(st, topo, progress)
        cluster = ",".join(f"{n}=http://{ip}:2380" for n, ip in zip(members, ETCD_IPS,
                                                                      strict=True))
        plen = topo.mgmt_subnet.prefixlen
        for name, ip in zip(members, ETCD_IPS, strict=True):
            ns = runner.netns_name(topo.name, name)
            st.add_namespace(ns)
            runner.sh("ip", "netns", "add", ns)
            peer = runner.mgmt_peer_ifname(name)
            runner.ip_batch([f"link add name eth0 netns {ns} type veth peer name {peer} "
                             f"netns {st.mgmt_netns}"])
            runner.ip_batch([f"link set {peer} master {runner.MGMT_BRIDGE} up"], st.mgmt_netns)
            runner.ip_batch(["link set lo up", f"addr add {ip}/{plen} dev eth0",
                             "link set eth0 up"], ns)
            lab.members.append(Member(name, ip, ns, d / "etcd" / name, cluster))
        progress("etcd: three members")
        for m in lab.members:
            lab.start_member(m)
        lab.etcd = EtcdService(st.mgmt_netns, lab.endpoints, d / "etcdsvc.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if lab.etcd.call("put", key=PREFIX + "soak/hello", value="1").get("ok"):
                break
            time.sleep(0.3)
        else:
            raise runner.LabError("etcd cluster not writable after 30 s")
        progress("resources: pools, BGP, nodes, peers, namespaces")
        pairs = [(k, v) for k, v in encoded(topo) if "/ippools/" not in k]
        for name, cidr, size in [*((n, c, 26) for n, c in POOLS.items()), (*POOL6, 122)]:
            pairs.append((f"{PREFIX}config/ippools/{name}", json.dumps(
                {"apiVersion": API, "kind": "IPPool", "metadata": {"name": name},
                 "spec": {"cidr": cidr, "blockSize": size}})))
        for ns_name, labels in NAMESPACES.items():
            pairs.append((f"{PREFIX}namespaces/{ns_name}", json.dumps(
                {"apiVersion": API, "kind": "Namespace",
                 "metadata": {"name": ns_name, "labels": labels}})))
        for k, v in pairs:
            res = lab.etcd.call("put", key=k, value=v)
            if not res.get("ok"):
                raise runner.LabError(f"etcd put {k}: {res}")
        progress("BIRD on leaves and spines")
        runner._start_routers(st, topo, progress)
        for p in st.processes:
            if p.what.startswith("bird "):
                lab.birds[p.what.split()[1]] = p
        progress("agents")
        for node in lab.nodes:
            nd = Path(st.dir) / node
            nd.mkdir(parents=True, exist_ok=True)
            st.nodes[node].update(agent_socket=lab.agent_socket(node),
                                  metrics=f"{lab.mgmt_ip(node)}:9091",
                                  fabric_ip=str(topo.fabric_address(node)))
            lab.start_agent(node)
        st.phase = "up"
        st.save()
        runner._wait_ready(st, topo, progress, wait, True)
    except BaseException:
        lab.close()
        raise
    return lab


class EtcdService:
    """A JSON-lines etcd client process inside the management namespace (``soak.etcdsvc``).

    Each `call` is one request and one reply; a reply has ``ok`` or ``error``. A request
    that does not answer within its timeout kills and restarts the process, so one hung
    call cannot stall the soak."""

    def __init__(self, netns: str, endpoints: str, log: Path) -> None:
        self.netns, self.endpoints, self.log = netns, endpoints, log
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
        with open(self.log, "a") as logf:
            return subprocess.Popen(
                runner.in_netns(self.netns, sys.executable, "-m", "soak.etcdsvc",
                                self.endpoints),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, text=True,
                env=env, cwd=REPO, start_new_session=True)

    def call(self, op: str, timeout: float = 8.0, **kw: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
        except OSError as e:
            self.close()
            return {"error": f"etcd service: {e}"}
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            return {"error": f"etcd service: no answer to {op} within {timeout} s"}
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None
