"""``fabricctl lab …``: containerlab topologies as network-namespace labs on this machine.

``up``, ``down``, ``exec``, ``pod add|del``, ``status``, ``graph`` and ``render`` (the BIRD
configs and etcd resources a real containerlab deployment needs). The lab's etcd is only
reachable from inside the lab, so this command never uses the global ``--etcd-endpoints``
for lab work; ``lab exec`` sets ``L3FABRIC_ETCD_ENDPOINTS`` for what it runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .common import CliError
from .output import add_output_flag, dump, table


def _progress(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise CliError("the lab needs root (network namespaces)")


def _lab_errors(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        from .lab.runner import LabError
        from .lab.topology import TopologyError

        try:
            return int(fn(args) or 0)
        except (LabError, TopologyError) as e:
            raise CliError(str(e)) from e

    return wrapped


def _backend(runtime: str) -> Any:
    """The module that builds and runs labs of ``runtime``: ``netns`` (the runner, network
    namespaces and host processes) or ``podman`` (one container per node)."""
    if runtime == "podman":
        from .lab import podman

        return podman
    from .lab import runner

    return runner


def _topology_path(arg: str) -> Path:
    p = Path(arg)
    if p.exists():
        return p
    # A bare name: one of the shipped topologies (containerlab/ of the checkout or wheel).
    from .lab.topology import TOPOLOGIES as here

    for cand in (here / arg, here / f"{arg}.clab.yml"):
        if cand.exists():
            return cand
    raise CliError(f"{arg}: no such topology file")


@_lab_errors
def cmd_up(args: argparse.Namespace) -> int:
    from .lab import runner, topology

    _need_root()
    topo = topology.load(_topology_path(args.topology))
    try:
        st = _backend(args.runtime).up(topo, progress=_progress, wait=args.wait,
                                       start_agents=not args.no_agents)
    except runner.LabError:
        from .lab.state import LabState

        st = LabState.load(topo.name)
        if st is not None and st.phase != "up":  # something was made, not all
            _progress(f"lab {topo.name} is not complete; `fabricctl lab down {topo.name}` "
                      "removes what was made")
        raise
    print(f"lab {st.lab} is up ({st.runtime}): etcd {st.etcd_endpoint} "
          f"(inside {st.mgmt_netns})")
    print(f"  fabricctl lab status --lab {st.lab}")
    print(f"  fabricctl lab pod add {topo.by_role('node')[0].name} default/web")
    print(f"  fabricctl lab exec {topo.by_role('node')[0].name} -- ip route")
    print(f"  fabricctl lab down {st.lab}")
    return 0


@_lab_errors
def cmd_down(args: argparse.Namespace) -> int:
    from .lab import runner
    from .lab.state import list_labs

    _need_root()
    name = args.lab or args.topology
    if name is None and not list_labs():
        print("no lab is up")
        return 0
    try:
        st = runner.resolve_lab(name)
    except runner.LabError as e:
        if "is not up" in str(e):
            print(str(e))
            return 0
        raise
    problems = _backend(st.runtime).down(st, progress=_progress)
    if problems:
        raise CliError(f"lab {st.lab} not fully removed: {'; '.join(problems)}")
    print(f"lab {st.lab} removed")
    return 0


@_lab_errors
def cmd_exec(args: argparse.Namespace) -> int:
    from .lab import runner

    _need_root()
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CliError("lab exec: give a command after --", usage=True)
    st = runner.resolve_lab(args.lab)
    argv = _backend(st.runtime).exec_argv(st, args.node, cmd)
    env = {**os.environ, **runner.node_env(st)}
    return subprocess.run(argv, env=env).returncode


def _labels(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise CliError(f"--labels: {part!r} is not key=value", usage=True)
        out[k.strip()] = v.strip()
    return out


def _ns_pod(text: str) -> tuple[str, str]:
    ns, sep, pod = text.partition("/")
    if not sep:
        ns, pod = "default", text
    if not ns or not pod:
        raise CliError(f"{text!r}: give the pod as NAMESPACE/POD", usage=True)
    return ns, pod


@_lab_errors
def cmd_pod_add(args: argparse.Namespace) -> int:
    from .lab import runner

    _need_root()
    st = runner.resolve_lab(args.lab)
    ns, pod = _ns_pod(args.pod)
    res = _backend(st.runtime).pod_add(st, args.node, ns, pod, _labels(args.labels))
    print(f"pod {res['pod']} on {res['node']}: {', '.join(res['ips'])} (netns {res['netns']})")
    return 0


@_lab_errors
def cmd_pod_del(args: argparse.Namespace) -> int:
    from .lab import runner

    _need_root()
    st = runner.resolve_lab(args.lab)
    ns, pod = _ns_pod(args.pod)
    _backend(st.runtime).pod_del(st, ns, pod)
    print(f"pod {ns}/{pod} deleted")
    return 0


@_lab_errors
def cmd_status(args: argparse.Namespace) -> int:
    from .lab import runner

    _need_root()
    st = runner.resolve_lab(args.lab)
    data = _backend(st.runtime).status(st)
    if args.output != "table":
        dump(data, args.output)
        return 0
    print(f"lab {data['lab']} ({data['phase']}), etcd {data['etcd']}"
          + (f"  [{data['etcd_error']}]" if data["etcd_error"] else ""))
    print()
    table(["NODE", "ROLE", "AS", "RACK", "MGMT", "FABRIC", "PROCESS", "STATE", "BLOCKS"],
          [[n["name"], n["role"], n["asn"], n["rack"], n["mgmt_ip"],
            " ".join(a for a in (n["fabric_ip"], n.get("fabric_ip6")) if a),
            n["process"], ("running" if n["running"] else "DOWN")
            + (" ready" if n.get("ready") else ""), n.get("blocks", [])]
           for n in data["nodes"]])
    print()
    table(["ROUTER", "PEER", "TYPE", "STATE", "SINCE"],
          [[s["router"], s["node"], "iBGP" if s.get("ibgp") else "eBGP", s["state"],
            s.get("since", "")] for s in data["sessions"] if s["source"] == "bird"])
    agent_rows = [[s["node"], s["peer_ip"], s["state"]] for s in data["sessions"]
                  if s["source"] == "agent"]
    if agent_rows:
        print()
        table(["NODE", "PEER", "STATE (agent)"], agent_rows)
    print()
    if data["pods"]:
        table(["POD", "NODE", "IPS", "NETNS", "LABELS"],
              [[p["pod"], p["node"], p["ips"], p["netns"], p["labels"]] for p in data["pods"]])
    else:
        print("no pods (fabricctl lab pod add NODE NS/POD)")
    return 0


@_lab_errors
def cmd_graph(args: argparse.Namespace) -> int:
    from .lab import graph, runner

    _need_root()
    st = runner.resolve_lab(args.lab)
    out = Path(args.file or f"{st.lab}-lab")
    try:
        files = graph.write_images(graph.render_dot(_backend(st.runtime).status(st)), out)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        raise CliError(f"lab graph: {e}") from e
    print("\n".join(str(f) for f in files))
    return 0


@_lab_errors
def cmd_render(args: argparse.Namespace) -> int:
    from .lab import bird, topology

    topo = topology.load(_topology_path(args.topology))
    base = Path(args.dir) if args.dir else topology.TOPOLOGIES / "configs" / topo.name
    base.mkdir(parents=True, exist_ok=True)
    for r in topo.by_role("router"):
        (base / f"{r.name}.conf").write_text(bird.render_bird(topo, r.name))
        print(base / f"{r.name}.conf")
    res = base / "resources.yaml"
    res.write_text(render_resources_yaml(topo))
    print(res)
    return 0


def render_resources_yaml(topo: Any) -> str:
    from .lab import resources

    head = (f"# etcd resources of lab {topo.name}; apply with\n"
            f"#   fabricctl --etcd-endpoints {topo.etcd_endpoint} apply -f resources.yaml\n")
    return head + yaml.safe_dump_all(resources.lab_resources(topo), sort_keys=False)


@_lab_errors
def cmd_demo(args: argparse.Namespace) -> int:
    from .lab import demo, topology

    _need_root()
    topo = topology.load(_topology_path(args.topology))
    steps = iter(range(1, 100))

    def step(msg: str) -> None:
        print(f"\n==> [{next(steps)}/8] {msg}", flush=True)

    return demo.run(topo, say=lambda m: print(m, flush=True), step=step)


def cmd_list(args: argparse.Namespace) -> int:
    from .lab.state import LabState, list_labs

    rows = []
    for lab in list_labs():
        st = LabState.load(lab)
        if st is not None:
            rows.append([lab, st.phase, st.runtime, st.topology, len(st.nodes), len(st.pods)])
    if args.output != "table":
        dump([dict(zip(["lab", "phase", "runtime", "topology", "nodes", "pods"], r,
                       strict=True)) for r in rows], args.output)
    else:
        table(["LAB", "PHASE", "RUNTIME", "TOPOLOGY", "NODES", "PODS"], rows)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lab", help="containerlab topologies as a netns lab on this machine")
    lsub = p.add_subparsers(dest="lab_command", required=True, metavar="LABCOMMAND")

    def lab_opt(q: argparse.ArgumentParser) -> None:
        q.add_argument("--lab", help="the lab's name (default: the only lab that is up)")

    q = lsub.add_parser("up", help="build a topology from network namespaces")
    q.add_argument("topology", help="a *.clab.yml file (or a name in containerlab/)")
    q.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for BIRD and the agents (default 60)")
    q.add_argument("--no-agents", action="store_true",
                   help="do not start fabric-agent (routers, etcd and wiring only)")
    q.add_argument("--runtime", choices=("netns", "podman"), default="netns",
                   help="netns: network namespaces and host processes (default); podman: "
                        "one container per node from the file's images (`make images`)")
    q.set_defaults(func=cmd_up)

    q = lsub.add_parser("down", help="remove a lab, also after a crash")
    q.add_argument("topology", nargs="?", help="a lab name or its *.clab.yml file")
    lab_opt(q)
    q.set_defaults(func=cmd_down)

    q = lsub.add_parser("exec", help="run a command in a node's (or pod's) namespace")
    q.add_argument("node", help="a node, router or NS/POD of the lab")
    q.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND …")
    lab_opt(q)
    q.set_defaults(func=cmd_exec)

    q = lsub.add_parser("pod", help="pods wired by the real CNI plugin")
    psub = q.add_subparsers(dest="pod_command", required=True, metavar="add|del")
    a = psub.add_parser("add", help="make a pod namespace on NODE and run CNI ADD")
    a.add_argument("node", help="the lab node the pod runs on")
    a.add_argument("pod", metavar="NS/POD", help="the pod, as namespace/name")
    a.add_argument("--labels", help="k=v,k2=v2")
    lab_opt(a)
    a.set_defaults(func=cmd_pod_add)
    d = psub.add_parser("del", help="run CNI DEL and remove the pod namespace")
    d.add_argument("pod", metavar="NS/POD", help="the pod, as namespace/name")
    lab_opt(d)
    d.set_defaults(func=cmd_pod_del)

    q = lsub.add_parser("status", help="nodes, BGP sessions and pods")
    add_output_flag(q)
    lab_opt(q)
    q.set_defaults(func=cmd_status)

    q = lsub.add_parser("graph", help="SVG and PNG of the running lab (graphviz)")
    # Not -o: that is an output format in every fabricctl command.
    q.add_argument("--file", metavar="FILE",
                   help="file name without suffix (default <lab>-lab)")
    lab_opt(q)
    q.set_defaults(func=cmd_graph)

    q = lsub.add_parser("render", help="BIRD configs and etcd resources for real containerlab")
    q.add_argument("topology", help="a *.clab.yml file (or a name in containerlab/)")
    q.add_argument("--dir", help="output directory (default containerlab/configs/<lab>)")
    q.set_defaults(func=cmd_render)

    q = lsub.add_parser("demo", help="leaf-spine, 8 pods, a policy and a connectivity matrix")
    q.add_argument("topology", nargs="?", default="leaf-spine",
                   help="the topology to run (default leaf-spine)")
    q.set_defaults(func=cmd_demo)

    q = lsub.add_parser("list", help="labs with a state file")
    add_output_flag(q)
    q.set_defaults(func=cmd_list)

