"""The podman lab runtime: a containerlab topology as podman containers, the way
containerlab deploys it (``fabricctl lab up --runtime podman``).

What it makes, for lab ``L`` (recorded in the state file before it is made):

* one container per topology node, ``clab-L-<node>``, with the node's ``image``, ``cmd``,
  ``binds`` (relative to the topology file) and ``env``, labelled ``l3fabric.lab=L``;
  privileged (nodes make pods' namespaces, routes and nftables rules), ``--network none``;
  images whose command is ``/sbin/init`` run systemd as PID 1 (podman's ``--systemd``);
* a named handle ``/var/run/netns/clab-L-<node>`` on each container's network namespace
  (``ip netns attach``), through which the links and the management network are wired
  exactly as the netns runtime wires its namespaces (``runner._wire``): the management
  bridge inside the mgmt container, ``eth0`` of every other container on it, one veth pair
  per link, the planned addresses, ``ip_forward`` and the node's ``sysctls``;
* the node's ``exec`` lines, run in the container once the wiring is there (as containerlab
  does; a failing line is reported and does not stop the lab): the shipped files start
  ``fabric-agent`` so;
* routers get ``<lab dir>/<router>`` bound on ``/run/bird``, so ``birdc`` on the host reads
  the same control socket ``lab status`` reads in the netns runtime;
* pods (``lab pod add``): a network namespace *inside* the node container, wired by the
  CNI plugin installed in the image (``/opt/cni/bin``) through the agent in that container.

Safety (PLATFORM.md): every container has ``--network none``: podman makes no interface,
bridge, NAT rule or route for it, and the only interfaces are the veths wired here, between
lab containers. No container has a default route, and nothing is made in the root
namespace (veths are created directly inside the containers' namespaces).

What podman needs on this kind of machine is passed on every call: ``--cgroup-manager
cgroupfs`` (no systemd on the host), ``--ulimit nproc`` and a ``nofile`` limit no higher than
this process's own (podman's default raises it and runc then fails).
"""

from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .resources import encoded
from .runner import (
    LabError,
    PodWiring,
    Progress,
    _quiet,
    _wait_ready,
    _wire,
    bird_socket,
    cni_request,
    etcd_cmd,
    existing_netns,
    http_get_in,
    netns_name,
    new_state,
    sh,
)
from .runner import down as netns_down
from .runner import pod_add as netns_pod_add
from .runner import pod_del as netns_pod_del
from .runner import status as netns_status
from .state import LabState
from .topology import METRICS_PORT, LabNode, Topology

LAB_LABEL = "l3fabric.lab"
# Where the node image has the CNI plugins and the agent its socket (fabricctl install-cni
# and fabric-agent defaults).
NODE_CNI_PATH = "/opt/cni/bin"
NODE_AGENT_SOCKET = "/run/l3fabric/agent.sock"
NPROC = "4096:4096"


def podman(*args: str, check: bool = True, input: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return sh("podman", "--cgroup-manager", "cgroupfs", *args, check=check, input=input,
              timeout=timeout)


def _nofile() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"{soft}:{hard}"


def lab_containers(lab: str) -> list[str]:
    """Every container labelled as lab ``lab``'s, running or not."""
    out = podman("ps", "-a", "--filter", f"label={LAB_LABEL}={lab}", "--format",
                 "{{.Names}}", check=False).stdout
    return [n for n in out.split() if n]


def running_containers(lab: str) -> set[str]:
    out = podman("ps", "--filter", f"label={LAB_LABEL}={lab}", "--format", "{{.Names}}",
                 check=False).stdout
    return set(out.split())


def missing_images(topo: Topology) -> list[str]:
    images = sorted({n.image for n in topo.nodes.values()})
    return [i for i in images
            if not i or podman("image", "exists", i, check=False).returncode != 0]


# -- the file's node settings, merged as containerlab merges them ----------------------------


def _node_cfg(topo: Topology, name: str) -> dict[str, Any]:
    t = topo.raw.get("topology") or {}
    ncfg = (t.get("nodes") or {}).get(name) or {}
    kind = ncfg.get("kind") or (t.get("defaults") or {}).get("kind")
    layers = [t.get("defaults") or {}, (t.get("kinds") or {}).get(kind) or {}, ncfg]
    out: dict[str, Any] = {"env": {}, "binds": [], "exec": []}
    for layer in layers:
        out["env"].update({str(k): str(v) for k, v in (layer.get("env") or {}).items()})
        for key in ("binds", "exec"):
            if layer.get(key):
                out[key] = [str(x) for x in layer[key]]
        if layer.get("cmd"):
            out["cmd"] = str(layer["cmd"])
    return out


def _bind(topo: Topology, spec: str) -> str:
    """A containerlab bind ``SRC:DST[:MODE]`` with SRC relative to the topology file."""
    src, _, rest = spec.partition(":")
    base = topo.path.parent if topo.path else Path.cwd()
    path = (base / src).resolve()
    if not path.exists():
        raise LabError(f"node bind {spec!r}: {path} does not exist")
    return f"{path}:{rest}"


def run_argv(topo: Topology, state: LabState, node: LabNode) -> list[str]:
    """The ``podman run`` arguments of one lab node."""
    cfg = _node_cfg(topo, node.name)
    argv = ["run", "-d", "--name", netns_name(topo.name, node.name), "--hostname", node.name,
            "--label", f"{LAB_LABEL}={topo.name}", "--label", f"clab-node-name={node.name}",
            "--network", "none", "--privileged", "--pull", "never",
            "--ulimit", f"nproc={NPROC}", "--ulimit", f"nofile={_nofile()}"]
    for spec in cfg["binds"]:
        argv += ["-v", _bind(topo, spec)]
    if node.role == "router":
        rd = Path(state.dir) / node.name
        rd.mkdir(parents=True, exist_ok=True)
        argv += ["-v", f"{rd}:/run/bird"]
    for k, v in sorted(cfg["env"].items()):
        argv += ["-e", f"{k}={v}"]
    argv.append(node.image)
    if "cmd" in cfg:
        argv += shlex.split(cfg["cmd"])
    return argv


# -- up ----------------------------------------------------------------------------------------


def up(topo: Topology, progress: Progress = _quiet, wait: float = 60.0,
       start_agents: bool = True) -> LabState:
    """Deploy the lab as podman containers. Raises LabError if it is up already, an image
    is missing or a step fails (the partial lab stays recorded for ``down``)."""
    missing = missing_images(topo)
    if missing:
        raise LabError(f"image {', '.join(missing)} not built: run `make images` "
                       "(docs/lab.md, 'With real containerlab')")
    state = new_state(topo, "podman", busy=bool(lab_containers(topo.name)))
    t0 = time.monotonic()
    _start_containers(state, topo, progress)
    _wire(state, topo, progress)
    _wait_etcd(state, topo, progress)
    progress(f"writing {topo.name}'s resources into etcd")
    etcd_cmd(state, "put", input=json.dumps(encoded(topo)))
    _run_exec(state, topo, progress, start_agents)
    state.phase = "up"
    state.save()
    _wait_ready(state, topo, progress, wait, start_agents)
    progress(f"lab {topo.name} is up in {time.monotonic() - t0:.1f}s (podman)")
    return state


def _start_containers(state: LabState, topo: Topology, progress: Progress) -> None:
    present = existing_netns()
    order = [topo.mgmt] + [n for n in topo.nodes.values() if n.role != "mgmt"]
    progress(f"starting {len(order)} containers: {', '.join(n.name for n in order)}")
    for n in order:
        name = netns_name(topo.name, n.name)
        if name in present:
            raise LabError(f"namespace {name} already exists (another lab of the same name?)")
        info: dict[str, Any] = {"netns": name, "container": name, "role": n.role,
                                "mgmt_ip": str(n.mgmt_ip), "image": n.image}
        if n.role == "router":
            info["bird_socket"] = bird_socket(state, n.name)
        elif n.role == "node":
            info.update(agent_socket=NODE_AGENT_SOCKET,
                        metrics=f"{n.mgmt_ip}:{METRICS_PORT}",
                        fabric_ip=str(topo.fabric_address(n.name)))
        state.nodes[n.name] = info
        state.add_namespace(name)
        podman(*run_argv(topo, state, n))
        pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        if not pid.isdigit() or pid == "0":
            logs = podman("logs", "--tail", "5", name, check=False)
            raise LabError(f"container {name} is not running: "
                           f"{(logs.stdout + logs.stderr).strip()}")
        # A name for the container's network namespace, through which it is wired.
        sh("ip", "netns", "attach", name, pid)
        sh("ip", "-n", name, "link", "set", "lo", "up")
    state.save()


def _wait_etcd(state: LabState, topo: Topology, progress: Progress) -> None:
    progress(f"waiting for etcd on {topo.etcd_endpoint}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, _ = http_get_in(state.mgmt_netns, f"{topo.etcd_endpoint}/health")
        if code == 200:
            return
        time.sleep(0.2)
    logs = podman("logs", "--tail", "5", state.nodes[topo.mgmt.name]["container"], check=False)
    raise LabError(f"etcd not healthy after 30s: {(logs.stdout + logs.stderr).strip()}")


def _run_exec(state: LabState, topo: Topology, progress: Progress, agents: bool) -> None:
    """Each node's ``exec`` lines, in file order, as containerlab runs them. Without
    agents (``--no-agents``), lines that start ``fabric-agent`` are skipped."""
    for n in topo.nodes.values():
        for line in _node_cfg(topo, n.name)["exec"]:
            if not agents and "fabric-agent" in line:
                continue
            p = podman("exec", state.nodes[n.name]["container"], *shlex.split(line),
                       check=False, timeout=60)
            if p.returncode != 0:
                progress(f"exec on {n.name}: `{line}` exited {p.returncode}: "
                         f"{(p.stderr or p.stdout).strip()}")


# -- down --------------------------------------------------------------------------------------


def down(state: LabState, progress: Progress = _quiet) -> list[str]:
    """Remove the lab's containers (every container labelled as the lab's, also those a
    crash left unrecorded), then the namespace handles, the lab directory and the state
    file. Returns what could not be removed."""
    names = sorted(set(lab_containers(state.lab)) | {
        str(v["container"]) for v in state.nodes.values() if v.get("container")})
    problems: list[str] = []
    if names:
        progress(f"removing {len(names)} containers")
        p = podman("rm", "-f", "-i", "-t", "0", *names, check=False)
        if p.returncode != 0:
            problems.append(f"podman rm: {p.stderr.strip()}")
    left = lab_containers(state.lab)
    problems += [f"container still present: {c}" for c in left]
    if problems:
        return problems
    return netns_down(state, progress)


# -- exec, pods, status ---------------------------------------------------------------------


def _container(state: LabState, node: str) -> str:
    info = state.nodes.get(node)
    if info is None:
        known = sorted(state.nodes) + sorted(state.pods)
        raise LabError(f"no node or pod {node!r} in lab {state.lab} (known: {', '.join(known)})")
    return str(info["container"])


def exec_argv(state: LabState, node: str, cmd: Sequence[str]) -> list[str]:
    """The command line that runs ``cmd`` inside a lab container (or a pod's namespace in
    its node's container), with the lab's etcd in ``L3FABRIC_ETCD_ENDPOINTS``."""
    tty = ["-t"] if sys.stdin.isatty() and sys.stdout.isatty() else []
    base = ["podman", "--cgroup-manager", "cgroupfs", "exec", "-i", *tty,
            "-e", f"L3FABRIC_ETCD_ENDPOINTS={state.etcd_endpoint}"]
    if node in state.pods:
        pod = state.pods[node]
        return [*base, _container(state, pod["node"]), "ip", "netns", "exec", pod["netns"],
                *cmd]
    return [*base, _container(state, node), *cmd]


def pod_netns(ns: str, pod: str) -> str:
    """A pod's namespace name inside its node container."""
    return f"pod-{ns}-{pod}"


def _cni(state: LabState, command: str, node: str, ns: str, pod: str, netns: str,
         labels: dict[str, str]) -> subprocess.CompletedProcess[str]:
    conf, env = cni_request(state.lab, command, NODE_AGENT_SOCKET, ns, pod, netns, labels,
                            NODE_CNI_PATH, state.ipv6)
    # The plugin runs inside the node container, as the node's runtime would run it.
    return podman("exec", "-i", *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
                  _container(state, node), f"{NODE_CNI_PATH}/l3fabric",
                  input=json.dumps(conf), check=False, timeout=150)


def _add_pod_netns(state: LabState, node: str, netns: str) -> None:
    podman("exec", _container(state, node), "ip", "netns", "add", netns)


def _del_pod_netns(state: LabState, node: str, netns: str) -> None:
    podman("exec", _container(state, node), "ip", "netns", "del", netns, check=False)


PODS = PodWiring(netns=lambda lab, ns, pod: pod_netns(ns, pod), add_netns=_add_pod_netns,
                 del_netns=_del_pod_netns, cni=_cni)


def pod_add(state: LabState, node: str, ns: str, pod: str,
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    res = netns_pod_add(state, node, ns, pod, labels, PODS)
    res["netns"] = f"{res['netns']} (in {_container(state, node)})"
    return res


def pod_del(state: LabState, ns: str, pod: str) -> None:
    netns_pod_del(state, ns, pod, PODS)


def status(state: LabState) -> dict[str, Any]:
    """``runner.status`` (etcd through the mgmt container, BIRD through its bound socket),
    with each node's process being its container."""
    data = netns_status(state)
    running = running_containers(state.lab)
    for row in data["nodes"]:
        row["process"] = "container"
        row["running"] = state.nodes.get(row["name"], {}).get("container") in running
    return data
