"""The netns lab runner: builds a containerlab topology from network namespaces and veths.

What it makes, for lab ``L`` (all recorded in the state file *before* being made):

* one namespace per topology node, ``clab-L-<node>`` (containerlab's container names);
  the mgmt node's namespace holds the management bridge ``br-mgmt`` (the gateway address
  and the mgmt node's address) and the lab's etcd, listening only there;
* in every other node: ``eth0`` on the management bridge (no default route: the subnet
  route is all it has), one veth per fabric link with the planned address,
  ``net.ipv4.ip_forward=1`` and the node's other ``sysctls`` — inside the namespace; in a
  dual-stack lab each link also has its IPv6 addresses (no duplicate detection: the plan
  has no duplicates, and kept when the link goes down) and IPv6 forwarding is on, in the
  lab's namespaces only;
* BIRD in every router namespace, an agent (``fabric-agent``) in every node namespace,
  each in its own session, logging under the lab directory;
* pods (``lab pod add``): ``clab-L-pod-<ns>-<pod>``, wired by the real CNI plugin, as
  ``fabricctl install-cni`` writes it, in the lab directory's ``cni-bin/``.

Safety (PLATFORM.md): nothing is created in, routed through or enabled in the root
namespace. Veths are created directly inside their namespaces (``ip link add … netns``),
etcd is reached only from inside the management namespace, and no namespace gets a
default route.

Failure mode: any step failing raises LabError; the state written so far lets ``down``
remove the partial lab. ``down`` is idempotent and tolerates every missing piece.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni.shim import IPAM_PLUGIN, PLUGIN, pick_interpreter, write_executable
from datastore import keys
from datastore.embedded import EmbeddedEtcd

from .bird import protocol_name, render_bird
from .resources import encoded
from .state import LabState, Proc, labs_dir, list_labs, proc_start_time, state_path
from .topology import ETCD_PEER_PORT, ETCD_PORT, METRICS_PORT, Topology

log = logging.getLogger(__name__)

MGMT_BRIDGE = "br-mgmt"
BIN_DIR = Path(sys.executable).parent
Progress = Callable[[str], None]


class LabError(RuntimeError):
    pass


def _quiet(_: str) -> None:
    pass


def netns_name(lab: str, node: str) -> str:
    return f"clab-{lab}-{node}"


def pod_netns_name(lab: str, ns: str, pod: str) -> str:
    return f"clab-{lab}-pod-{ns}-{pod}"


def mgmt_peer_ifname(node: str) -> str:
    """The management-bridge side of a node's eth0 (≤ 15 characters, unique per lab)."""
    name = f"m-{node}"
    if len(name) <= 15:
        return name
    return "m-" + hashlib.sha1(node.encode()).hexdigest()[:12]


def sh(*cmd: str, check: bool = True, input: str | None = None,
       timeout: float = 30) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {(p.stderr or p.stdout).strip() or p.returncode}")
    return p


def ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    """Run ``ip`` commands in one process (``ip -batch``), optionally in a namespace."""
    if not lines:
        return
    cmd = ["ip", "-force", "-batch", "-"]
    if netns:
        cmd[1:1] = ["-n", netns]
    sh(*cmd, input="\n".join(lines) + "\n")


def existing_netns() -> set[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def in_netns(netns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


def _spawn(state: LabState, what: str, netns: str, cmd: list[str], logfile: Path,
           env: dict[str, str] | None = None) -> Proc:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as logf:
        # cwd: the lab's directory, since etcd 3.4 binds a unix socket named after its
        # client URL (``localhost:2379``) in its working directory.
        p = subprocess.Popen(in_netns(netns, *cmd), stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             cwd=logfile.parent, env={**os.environ, **(env or {})})
    proc = Proc(pid=p.pid, start=proc_start_time(p.pid), what=what, netns=netns,
                log=str(logfile))
    state.add_process(proc)
    return proc


def _tail(path: str, n: int = 3) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


# -- etcd through the management namespace ---------------------------------------------------


def etcd_cmd(state: LabState, *args: str, input: str | None = None,
             timeout: float = 20) -> str:
    p = sh(*in_netns(state.mgmt_netns, sys.executable, "-m", "fabricctl.lab.etcdio",
                     state.etcd_endpoint, *args), input=input, check=False, timeout=timeout)
    if p.returncode != 0:
        raise LabError(f"etcd at {state.etcd_endpoint} (in {state.mgmt_netns}): "
                       f"{p.stderr.strip()}")
    return p.stdout


def etcd_dump(state: LabState, prefix: str = keys.PREFIX) -> dict[str, Any]:
    raw = json.loads(etcd_cmd(state, "dump", prefix) or "{}")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        with contextlib.suppress(ValueError):
            out[k] = json.loads(v)
    return out


def http_get_in(netns: str, url: str, timeout: float = 1.0) -> tuple[int, str]:
    """GET ``url`` from inside ``netns`` (status 0 when unreachable)."""
    code = ("import sys,urllib.request as u\n"
            "try:\n r=u.urlopen(sys.argv[1],timeout=float(sys.argv[2]));"
            "print(r.status);print(r.read().decode(errors='replace'))\n"
            "except Exception as e:\n print(getattr(e,'code',0));print(e)\n")
    p = sh(*in_netns(netns, sys.executable, "-I", "-S", "-c", code, url, str(timeout)),
           check=False, timeout=timeout + 10)
    first, _, rest = p.stdout.partition("\n")
    try:
        return int(first), rest.strip()
    except ValueError:
        return 0, p.stderr.strip()


# -- up ----------------------------------------------------------------------------------------


def lab_dir(lab: str) -> Path:
    return labs_dir() / lab


def new_state(topo: Topology, runtime: str, busy: bool = False) -> LabState:
    """A fresh state file and lab directory for ``topo``. Raises LabError if the lab is up
    (``busy``: the runtime sees something of it; or a recorded namespace or process is
    there); a stale record of a lab that is gone is removed first."""
    old = LabState.load(topo.name)
    if old is not None:
        live = [n for n in old.namespaces if n in existing_netns()]
        busy = busy or bool(live) or any(p.alive() for p in old.processes)
    if busy:
        raise LabError(f"lab {topo.name} is already up (state {state_path(topo.name)}); "
                       f"run `fabricctl lab down {topo.name}` first")
    if old is not None:
        down(old)
    d = lab_dir(topo.name)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    state = LabState(lab=topo.name, topology=str(topo.path or ""), dir=str(d),
                     etcd_endpoint=topo.etcd_endpoint,
                     mgmt_netns=netns_name(topo.name, topo.mgmt.name), runtime=runtime,
                     ipv6=topo.dual_stack)
    state.save()
    return state


def up(topo: Topology, progress: Progress = _quiet, wait: float = 60.0,
       start_agents: bool = True) -> LabState:
    """Build the lab. Raises LabError if it is already up or a step fails (the partial lab
    stays recorded for ``down``)."""
    state = new_state(topo, "netns")
    t0 = time.monotonic()
    _make_namespaces(state, topo, progress)
    _wire(state, topo, progress)
    _start_etcd(state, topo, progress)
    progress(f"writing {topo.name}'s resources into etcd")
    etcd_cmd(state, "put", input=json.dumps(encoded(topo)))
    _start_routers(state, topo, progress)
    if start_agents:
        _start_agents(state, topo, progress)
    state.phase = "up"
    state.save()
    _wait_ready(state, topo, progress, wait, start_agents)
    progress(f"lab {topo.name} is up in {time.monotonic() - t0:.1f}s")
    return state


def _make_namespaces(state: LabState, topo: Topology, progress: Progress) -> None:
    progress(f"creating {len(topo.nodes)} network namespaces")
    present = existing_netns()
    for n in topo.nodes.values():
        ns = netns_name(topo.name, n.name)
        if ns in present:
            raise LabError(f"namespace {ns} already exists (another lab of the same name?)")
        state.add_namespace(ns)
        sh("ip", "netns", "add", ns)
        ip_batch(["link set lo up"], ns)
        state.nodes[n.name] = {"netns": ns, "role": n.role, "mgmt_ip": str(n.mgmt_ip)}
    state.save()


def _wire(state: LabState, topo: Topology, progress: Progress) -> None:
    progress(f"wiring the management bridge and {len(topo.links)} fabric links")
    mgmt_ns = state.mgmt_netns
    plen = topo.mgmt_subnet.prefixlen
    ip_batch([f"link add {MGMT_BRIDGE} type bridge",
              f"addr add {topo.mgmt_gw} dev {MGMT_BRIDGE}",
              f"addr add {topo.mgmt.mgmt_ip}/{plen} dev {MGMT_BRIDGE}",
              f"link set {MGMT_BRIDGE} up"], mgmt_ns)
    root: list[str] = []
    bridge: list[str] = []
    per_ns: dict[str, list[str]] = {}
    for n in topo.nodes.values():
        if n.role == "mgmt":
            continue
        ns = netns_name(topo.name, n.name)
        peer = mgmt_peer_ifname(n.name)
        # Both ends are created directly in their namespaces: nothing appears in the root.
        root.append(f"link add name eth0 netns {ns} type veth peer name {peer} netns {mgmt_ns}")
        bridge.append(f"link set {peer} master {MGMT_BRIDGE} up")
        per_ns.setdefault(ns, []).extend([f"addr add {n.mgmt_ip}/{plen} dev eth0",
                                          "link set eth0 up"])
    for lk in topo.links:
        ns_a, ns_b = netns_name(topo.name, lk.a.node), netns_name(topo.name, lk.b.node)
        root.append(f"link add name {lk.a.ifname} netns {ns_a} type veth "
                    f"peer name {lk.b.ifname} netns {ns_b}")
        for ns, ep in ((ns_a, lk.a), (ns_b, lk.b)):
            lines = per_ns.setdefault(ns, [])
            lines.append(f"addr add {ep.address} dev {ep.ifname}")
            if ep.address6 is not None:
                lines.append(f"addr add {ep.address6} dev {ep.ifname} nodad")
            lines.append(f"link set {ep.ifname} up")
    ip_batch(root)
    ip_batch(bridge, mgmt_ns)
    for ns, lines in per_ns.items():
        ip_batch(lines, ns)
    for n in topo.nodes.values():
        if n.role == "mgmt":
            continue
        sysctls = dict(n.sysctls)
        sysctls["net.ipv4.ip_forward"] = "1"  # routers and nodes forward, inside the lab only
        if topo.dual_stack:
            sysctls["net.ipv6.conf.all.forwarding"] = "1"
            # A link taken down keeps its static IPv6 addresses, as a server's network
            # configuration keeps them (the kernel's default flushes them; IPv4's stay).
            sysctls["net.ipv6.conf.all.keep_addr_on_down"] = "1"
        args = [f"{k}={v}" for k, v in sorted(sysctls.items())]
        sh(*in_netns(netns_name(topo.name, n.name), "sysctl", "-q", "-w", *args))


def _start_etcd(state: LabState, topo: Topology, progress: Progress) -> None:
    progress(f"starting etcd on {topo.etcd_endpoint} in {state.mgmt_netns}")
    d = Path(state.dir) / "etcd"
    member = EmbeddedEtcd(data_dir=d, client_port=ETCD_PORT, peer_port=ETCD_PEER_PORT,
                          host=str(topo.mgmt.mgmt_ip), name=topo.name)
    d.mkdir(parents=True, exist_ok=True)
    proc = _spawn(state, "etcd", state.mgmt_netns, member.command(), Path(state.dir) / "etcd.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LabError(f"etcd exited: {_tail(proc.log)}")
        code, _ = http_get_in(state.mgmt_netns, f"{topo.etcd_endpoint}/health")
        if code == 200:
            return
        time.sleep(0.2)
    raise LabError(f"etcd not healthy after 20s: {_tail(proc.log)}")


def bird_socket(state: LabState, router: str) -> str:
    return str(Path(state.dir) / router / "bird.ctl")


def _start_routers(state: LabState, topo: Topology, progress: Progress) -> None:
    routers = topo.by_role("router")
    progress(f"starting BIRD on {len(routers)} routers: {', '.join(r.name for r in routers)}")
    for r in routers:
        rd = Path(state.dir) / r.name
        rd.mkdir(parents=True, exist_ok=True)
        conf = rd / "bird.conf"
        conf.write_text(render_bird(topo, r.name))
        ns = netns_name(topo.name, r.name)
        state.nodes[r.name].update(bird_socket=bird_socket(state, r.name), bird_conf=str(conf))
        _spawn(state, f"bird {r.name}", ns,
               ["bird", "-f", "-c", str(conf), "-s", bird_socket(state, r.name),
                "-P", str(rd / "bird.pid")], rd / "bird.log")
    # Test hook: die here as a crash would (lab down must then clean up after us).
    if os.environ.get("L3FABRIC_LAB_CRASH_AT") == "routers-started":
        os._exit(137)


def agent_socket(state: LabState, node: str) -> str:
    return str(Path(state.dir) / node / "agent.sock")


def _start_agents(state: LabState, topo: Topology, progress: Progress) -> None:
    nodes = topo.by_role("node")
    progress(f"starting fabric-agent on {len(nodes)} nodes: {', '.join(n.name for n in nodes)}")
    for n in nodes:
        nd = Path(state.dir) / n.name
        nd.mkdir(parents=True, exist_ok=True)
        ns = netns_name(topo.name, n.name)
        metrics = f"{n.mgmt_ip}:{METRICS_PORT}"
        state.nodes[n.name].update(agent_socket=agent_socket(state, n.name),
                                   metrics=metrics, fabric_ip=str(topo.fabric_address(n.name)))
        _spawn(state, f"agent {n.name}", ns,
               [str(BIN_DIR / "fabric-agent"), "--node", n.name,
                "--etcd-endpoints", topo.etcd_endpoint,
                "--socket", agent_socket(state, n.name), "--metrics-addr", metrics,
                *node_ip_args(topo, n.name)],
               nd / "agent.log", env={"L3FABRIC_LAB": topo.name})


def node_ip_args(topo: Topology, node: str) -> list[str]:
    """``--node-ip`` (and ``--node-ip6`` in a dual-stack lab) of a node's agent."""
    out = ["--node-ip", str(topo.fabric_address(node))]
    addr6 = topo.fabric_address6(node)
    if addr6 is not None:
        out += ["--node-ip6", str(addr6)]
    return out


def _wait_ready(state: LabState, topo: Topology, progress: Progress, wait: float,
                agents: bool) -> None:
    deadline = time.monotonic() + wait
    routers = [r.name for r in topo.by_role("router")]
    pending_r = set(routers)
    while pending_r and time.monotonic() < deadline:
        for r in sorted(pending_r):
            probe = sh("birdc", "-s", bird_socket(state, r), "show", "status", check=False)
            if probe.returncode == 0:
                pending_r.discard(r)
        for p in state.processes:
            if p.what.startswith("bird") and not p.alive():
                raise LabError(f"{p.what} exited: {_tail(p.log)}")
        if pending_r:
            time.sleep(0.1)
    if pending_r:
        raise LabError(f"BIRD did not answer on {', '.join(sorted(pending_r))}")
    progress("BIRD answers on every router")
    if not agents:
        return
    pending = {n.name for n in topo.by_role("node")}
    progress(f"waiting for {len(pending)} agents to be ready (/readyz)")
    while pending and time.monotonic() < deadline:
        for p in state.processes:
            name = p.what.removeprefix("agent ")
            if p.what.startswith("agent ") and name in pending and not p.alive():
                raise LabError(f"agent on {name} exited: {_tail(p.log)} (log {p.log})")
        for name in sorted(pending):
            code, _ = http_get_in(state.mgmt_netns,
                                  f"http://{state.nodes[name]['metrics']}/readyz", 0.5)
            if code == 200:
                pending.discard(name)
        if pending:
            time.sleep(0.3)
    if pending:
        raise LabError(f"agents not ready after {wait:.0f}s: {', '.join(sorted(pending))} "
                       f"(logs under {state.dir})")
    progress("every agent is ready")


# -- down --------------------------------------------------------------------------------------


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _netns_pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    return [int(x) for x in out if x.isdigit()]


def down(state: LabState, progress: Progress = _quiet) -> list[str]:
    """Remove everything the state lists, and anything still running inside the lab's
    namespaces (ExaBGP that an agent started, say). Returns what could not be removed."""
    namespaces = list(dict.fromkeys(
        state.namespaces + [p["netns"] for p in state.pods.values() if "netns" in p]))
    # Namespaces named after the lab that a crash may have left unrecorded: the names are ours.
    prefix = f"clab-{state.lab}-"
    namespaces += sorted(n for n in existing_netns() if n.startswith(prefix)
                         and n not in namespaces)
    present = existing_netns()
    # Agents first (they may tidy up), then routers, then etcd: each gets SIGTERM, then KILL.
    order = sorted(state.processes, key=lambda p: {"agent": 0, "bird": 1}.get(
        p.what.split()[0], 2))
    live = [p for p in order if p.alive()]
    progress(f"stopping {len(live)} lab processes")
    for p in live:
        # etcd's data is thrown away with the lab: no need to wait for a clean shutdown.
        _kill_group(p.pid, signal.SIGKILL if p.what == "etcd" else signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(p.alive() for p in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in live:
        if p.alive():
            _kill_group(p.pid, signal.SIGKILL)
    # Whatever else runs inside a lab namespace belongs to the lab.
    for ns in namespaces:
        if ns not in present:
            continue
        for pid in _netns_pids(ns):
            _kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_netns_pids(ns) for ns in namespaces
                                              if ns in present):
        time.sleep(0.05)
    for ns in namespaces:
        if ns in present:
            for pid in _netns_pids(ns):
                _kill_group(pid, signal.SIGKILL)
    progress(f"deleting {sum(ns in present for ns in namespaces)} namespaces")
    problems = []
    for ns in namespaces:
        if ns in present:
            res = sh("ip", "netns", "del", ns, check=False)
            if res.returncode != 0:
                problems.append(f"namespace {ns}: {res.stderr.strip()}")
    time.sleep(0.05)
    still = [p.what for p in state.processes if p.alive()]
    problems += [f"process still running: {w}" for w in still]
    left = existing_netns() & set(namespaces)
    problems += [f"namespace still present: {ns}" for ns in sorted(left)]
    if not problems:
        shutil.rmtree(state.dir, ignore_errors=True)
        state.remove()
    return problems


def resolve_lab(name: str | None) -> LabState:
    """The state of lab ``name`` (a lab name or a topology file), or of the only lab up."""
    if name:
        lab = name
        if name.endswith((".yml", ".yaml")) or os.sep in name:
            from .topology import load

            lab = load(name).name
        st = LabState.load(lab)
        if st is None:
            raise LabError(f"lab {lab} is not up (no state file)")
        return st
    labs = list_labs()
    if not labs:
        raise LabError("no lab is up")
    if len(labs) > 1:
        raise LabError(f"several labs are up ({', '.join(labs)}): name one with --lab")
    st = LabState.load(labs[0])
    assert st is not None
    return st


# -- exec, pods ----------------------------------------------------------------------------------


def node_env(state: LabState) -> dict[str, str]:
    return {"L3FABRIC_ETCD_ENDPOINTS": state.etcd_endpoint,
            "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}


def exec_argv(state: LabState, node: str, cmd: Sequence[str]) -> list[str]:
    """The command line that runs ``cmd`` inside a lab node (or pod) namespace."""
    if node in state.nodes:
        ns = state.nodes[node]["netns"]
    elif node in state.pods:
        ns = state.pods[node]["netns"]
    else:
        known = sorted(state.nodes) + sorted(state.pods)
        raise LabError(f"no node or pod {node!r} in lab {state.lab} (known: {', '.join(known)})")
    return in_netns(ns, *cmd)


def _cni_bin(state: LabState) -> Path:
    """The lab's CNI plugins, written on first use exactly as ``fabricctl install-cni``
    writes them (the runtime's path), into the lab directory, which ``down`` removes."""
    bin_dir = Path(state.dir) / "cni-bin"
    if not all((bin_dir / exe).exists() for exe in (PLUGIN, IPAM_PLUGIN)):
        bin_dir.mkdir(parents=True, exist_ok=True)
        python = pick_interpreter()
        for exe in (PLUGIN, IPAM_PLUGIN):
            write_executable(bin_dir / exe, exe, python)
    return bin_dir


def cni_request(lab: str, command: str, agent_socket: str, ns: str, pod: str, netns: str,
                labels: dict[str, str], cni_path: str, ipv6: bool = False,
                container: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The network config and environment of one CNI call for pod ``ns/pod`` (namespace
    ``/var/run/netns/<netns>`` where the plugin runs), as a runtime on the node sends them;
    ``ipv6``: a dual-stack lab's, whose pods get an address of each family; ``container``:
    the container ID (by default one per lab pod, ``lab-<lab>-<ns>-<pod>``)."""
    ipam: dict[str, Any] = {"type": "l3fabric-ipam"}
    if ipv6:
        ipam.update(assign_ipv4=True, assign_ipv6=True)
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": "l3fabric", "type": "l3fabric",
        "agentSocket": agent_socket, "mtu": 0, "ipam": ipam,
    }
    if labels:
        conf["args"] = {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container or f"lab-{lab}-{ns}-{pod}",
           "CNI_NETNS": f"/var/run/netns/{netns}" if netns else "", "CNI_IFNAME": "eth0",
           "CNI_PATH": cni_path,
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return conf, env


def _cni(state: LabState, command: str, node: str, ns: str, pod: str, netns: str,
         labels: dict[str, str]) -> subprocess.CompletedProcess[str]:
    conf, env = cni_request(state.lab, command, state.nodes[node]["agent_socket"], ns, pod,
                            netns, labels, str(_cni_bin(state)), state.ipv6)
    # Run the plugin the way a runtime on the node would: inside the node's namespace.
    return subprocess.run(
        in_netns(state.nodes[node]["netns"], "env", "-i",
                 *[f"{k}={v}" for k, v in env.items()], env["CNI_PATH"] + f"/{PLUGIN}"),
        input=json.dumps(conf), capture_output=True, text=True, timeout=150)


def cni_error(p: subprocess.CompletedProcess[str]) -> str:
    try:
        err = json.loads(p.stdout)
        return f"CNI error {err.get('code')}: {err.get('msg')} {err.get('details', '')}".strip()
    except ValueError:
        return (p.stderr or p.stdout).strip() or f"exit {p.returncode}"


@dataclass(frozen=True)
class PodWiring:
    """How a runtime makes a pod's namespace and runs the CNI plugin for it."""

    netns: Callable[[str, str, str], str]  # (lab, ns, pod) -> the pod's namespace name
    add_netns: Callable[[LabState, str, str], None]  # (state, node, netns)
    del_netns: Callable[[LabState, str, str], None]
    cni: Callable[[LabState, str, str, str, str, str, dict[str, str]],
                  subprocess.CompletedProcess[str]]  # (state, command, node, ns, pod,
    #                                                     netns, labels)


def _add_pod_netns(state: LabState, node: str, netns: str) -> None:
    sh("ip", "netns", "add", netns)


def _del_pod_netns(state: LabState, node: str, netns: str) -> None:
    sh("ip", "netns", "del", netns, check=False)


NETNS_PODS = PodWiring(netns=pod_netns_name, add_netns=_add_pod_netns,
                       del_netns=_del_pod_netns, cni=_cni)


def pod_add(state: LabState, node: str, ns: str, pod: str,
            labels: dict[str, str] | None = None,
            wiring: PodWiring = NETNS_PODS) -> dict[str, Any]:
    if node not in state.nodes or state.nodes[node].get("role") != "node":
        nodes = sorted(n for n, v in state.nodes.items() if v.get("role") == "node")
        raise LabError(f"{node!r} is not a node of lab {state.lab} (nodes: {', '.join(nodes)})")
    key = f"{ns}/{pod}"
    if key in state.pods:
        raise LabError(f"pod {key} already exists on {state.pods[key]['node']}")
    netns = wiring.netns(state.lab, ns, pod)
    state.pods[key] = {"node": node, "netns": netns, "labels": labels or {}, "ips": []}
    state.save()
    wiring.add_netns(state, node, netns)
    p = wiring.cni(state, "ADD", node, ns, pod, netns, labels or {})
    if p.returncode != 0:
        wiring.del_netns(state, node, netns)
        del state.pods[key]
        state.save()
        raise LabError(f"pod {key} on {node}: {cni_error(p)}")
    result = json.loads(p.stdout)
    ips = [str(i["address"]).split("/")[0] for i in result.get("ips", [])]
    state.pods[key]["ips"] = ips
    state.save()
    return {"pod": key, "node": node, "netns": netns, "ips": ips}


def pod_del(state: LabState, ns: str, pod: str, wiring: PodWiring = NETNS_PODS) -> None:
    key = f"{ns}/{pod}"
    info = state.pods.get(key)
    if info is None:
        raise LabError(f"no pod {key} in lab {state.lab}")
    p = wiring.cni(state, "DEL", info["node"], ns, pod, info["netns"], {})
    if p.returncode != 0:
        raise LabError(f"pod {key}: DEL failed: {cni_error(p)}")
    wiring.del_netns(state, info["node"], info["netns"])
    del state.pods[key]
    state.save()


# -- status ------------------------------------------------------------------------------------


def bird_protocols(sock: str) -> list[dict[str, str]]:
    """``birdc show protocols`` of one router, BGP protocols only."""
    p = sh("birdc", "-s", sock, "show", "protocols", check=False, timeout=5)
    if p.returncode != 0:
        return []
    rows = []
    for line in p.stdout.splitlines():
        parts = line.split(None, 6)
        if len(parts) >= 5 and parts[1] == "BGP":
            info = parts[5] if len(parts) > 5 else ""
            if len(parts) > 6:
                info += f" ({parts[6].strip()})"
            rows.append({"name": parts[0], "state": parts[3], "since": parts[4], "info": info})
    return rows


def status(state: LabState) -> dict[str, Any]:
    """Everything ``lab status`` and ``lab graph`` show, as plain data."""
    from .topology import load

    topo = load(state.topology) if state.topology else None
    procs = {p.what: p for p in state.processes}
    try:
        etcd = etcd_dump(state)
        etcd_error = ""
    except LabError as e:
        etcd, etcd_error = {}, str(e)
    node_status = {k.rsplit("/", 1)[-1]: v for k, v in etcd.items()
                   if k.startswith(keys.full(keys.NODE_STATUS))}
    weps = [v for k, v in etcd.items() if k.startswith(keys.full(keys.WORKLOADS))]
    nodes = []
    sessions = []
    for name, info in state.nodes.items():
        n = topo.nodes.get(name) if topo else None
        proc = procs.get(f"agent {name}") or procs.get(f"bird {name}") or (
            procs.get("etcd") if info.get("role") == "mgmt" else None)
        row: dict[str, Any] = {
            "name": name, "role": info.get("role"), "asn": n.asn if n else None,
            "rack": n.rack if n else None, "mgmt_ip": info.get("mgmt_ip"),
            "fabric_ip": str(topo.fabric_address(name) or "") if topo else "",
            "fabric_ip6": str(topo.fabric_address6(name) or "") if topo else "",
            "process": proc.what.split()[0] if proc else "",
            "running": bool(proc and proc.alive()),
        }
        st = node_status.get(name, {}).get("status")
        if info.get("role") == "node":
            row["ready"] = bool(st and st.get("inSync"))
            row["blocks"] = st.get("blocks", []) if st else []
            for peer in (st or {}).get("bgp", {}).get("peers", []):
                sessions.append({"router": None, "node": name, "peer_ip": peer.get("peerIP"),
                                 "state": peer.get("state"), "source": "agent"})
        nodes.append(row)
        if info.get("role") == "router" and info.get("bird_socket") and topo:
            by_proto = {protocol_name(peer): (peer, s) for s, is_a in topo.sessions_of(name)
                        for peer in [s.b if is_a else s.a]}
            for proto in bird_protocols(info["bird_socket"]):
                peer, s = by_proto.get(proto["name"], (proto["name"], None))
                sessions.append({"router": name, "node": peer, "proto": proto["name"],
                                 "state": proto["info"] or proto["state"],
                                 "ibgp": bool(s and s.ibgp), "source": "bird",
                                 "since": proto["since"]})
    pods = []
    for key, info in sorted(state.pods.items()):
        ns, _, pod = key.partition("/")
        wep = next((w for w in weps if w.get("spec", {}).get("pod") == pod
                    and (w.get("metadata", {}).get("namespace") or
                         w.get("spec", {}).get("namespace")) == ns), None)
        pods.append({"pod": key, "node": info["node"], "ips": info.get("ips", []),
                     "netns": info["netns"], "labels": info.get("labels", {}),
                     "endpoint": bool(wep)})
    return {"lab": state.lab, "topology": state.topology, "etcd": state.etcd_endpoint,
            "etcd_error": etcd_error, "phase": state.phase, "nodes": nodes,
            "sessions": sessions, "pods": pods}
