"""``fabricctl lab demo``: leaf-spine from scratch, 8 pods across the racks, a sample policy,
and a pod x pod connectivity matrix observed against expected. Leaves the lab up.

Idempotent: a lab of the same name that is up (or half up after a crash) is removed first.
The expected matrix follows the sample policy (``containerlab/demo/policy.yaml``): a pod
labelled ``role=db`` accepts only ``role=web`` pods; everything else is open.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml

from datastore import model

from . import runner
from .state import LabState
from .topology import TOPOLOGIES, Topology

POLICY = TOPOLOGIES / "demo" / "policy.yaml"
# (node, pod, role): two pods per node, both racks, every role on both racks.
PODS = [("node1", "web-1", "web"), ("node1", "cli-1", "client"),
        ("node2", "db-1", "db"), ("node2", "web-2", "web"),
        ("node3", "web-3", "web"), ("node3", "cli-2", "client"),
        ("node4", "db-2", "db"), ("node4", "web-4", "web")]

Say = Callable[[str], None]


def expected(src_role: str, dst_role: str) -> bool:
    return dst_role != "db" or src_role == "web"


def _ping(st: LabState, src: str, ip: str) -> bool:
    argv = runner.exec_argv(st, f"default/{src}", ["ping", "-c1", "-W1", "-q", ip])
    return subprocess.run(argv, capture_output=True).returncode == 0


def matrix(st: LabState, pods: dict[str, dict[str, Any]], settle: float = 10.0
           ) -> dict[tuple[str, str], bool]:
    """Observed reachability of every ordered pair; pairs that disagree with the
    expectation are retried for ``settle`` seconds (routes and rules converge)."""
    roles = {p: r for _, p, r in PODS}
    pairs = [(a, b) for a in pods for b in pods if a != b]

    def probe(pair: tuple[str, str]) -> bool:
        a, b = pair
        want = expected(roles[a], roles[b])
        deadline = time.monotonic() + settle
        while True:
            got = _ping(st, a, pods[b]["ips"][0])
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    with ThreadPoolExecutor(max_workers=16) as ex:
        return dict(zip(pairs, ex.map(probe, pairs), strict=True))


def print_matrix(obs: dict[tuple[str, str], bool], names: list[str], say: Say) -> int:
    roles = {p: r for _, p, r in PODS}
    w = max(len(n) for n in names) + 1
    say("from \\ to".ljust(w) + "".join(n.rjust(w) for n in names))
    wrong = 0
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("-".rjust(w))
                continue
            got, want = obs[(a, b)], expected(roles[a], roles[b])
            mark = ("ok" if got else "deny") if got == want else ("LEAK!" if got else "FAIL!")
            wrong += got != want
            cells.append(mark.rjust(w))
        say(a.ljust(w) + "".join(cells))
    say("ok = reached as expected, deny = blocked as the policy says, "
        "FAIL! = expected to reach but did not, LEAK! = reached but should be blocked")
    return wrong


def run(topo: Topology, say: Say, step: Say) -> int:
    old = LabState.load(topo.name)
    if old is not None:
        step(f"removing the previous {topo.name} lab")
        problems = runner.down(old)
        if problems:
            raise runner.LabError("; ".join(problems))
    step(f"bringing up {topo.name}: {len(topo.by_role('router'))} routers, "
         f"{len(topo.by_role('node'))} nodes, etcd, BIRD, agents")
    st = runner.up(topo, progress=lambda m: say(f"    {m}"))
    step(f"adding {len(PODS)} pods through the CNI plugin")
    pods: dict[str, dict[str, Any]] = {}
    for node, pod, role in PODS:
        pods[pod] = runner.pod_add(st, node, "default", pod, {"role": role})
        say(f"    default/{pod:<6} role={role:<7} on {node}: {', '.join(pods[pod]['ips'])}")
    step("waiting for every BGP session to be Established")
    deadline = time.monotonic() + 30
    sessions: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        sessions = [s for s in runner.status(st)["sessions"] if s["source"] == "bird"]
        if sessions and all(s["state"].startswith("Established") for s in sessions):
            break
        time.sleep(0.5)
    down = [f"{s['router']}-{s['node']} {s['state']}" for s in sessions
            if not s["state"].startswith("Established")]
    say(f"    {len(sessions) - len(down)}/{len(sessions)} sessions Established"
        + (f"; not yet: {', '.join(down)}" if down else ""))
    step("applying the sample policy containerlab/demo/policy.yaml")
    pol = model.parse_document(yaml.safe_load(POLICY.read_text()))
    runner.etcd_cmd(st, "put", input=json.dumps([[model.key_for(pol),
                                                  model.encode(pol).decode()]]))
    step("pod x pod connectivity (ping), observed against expected")
    obs = matrix(st, pods)
    wrong = print_matrix(obs, [p for _, p, _ in PODS], say)
    step("top-of-rack routes (leaf1, leaf2 kernel tables)")
    for leaf in ("leaf1", "leaf2"):
        if leaf in st.nodes:
            say(f"--- {leaf}")
            say(runner.sh("ip", "-n", st.nodes[leaf]["netns"], "route").stdout.rstrip())
    step("node status")
    if importlib.util.find_spec("fabricctl.node_cmd") is not None:
        for n in topo.by_role("node"):
            argv = runner.exec_argv(st, n.name, ["fabricctl", "node", "status", n.name])
            p = subprocess.run(argv, capture_output=True, text=True,
                               env={**runner.node_env(st), "PATH": runner.node_env(st)["PATH"]})
            say((p.stdout or p.stderr).rstrip())
    else:
        for row in runner.status(st)["nodes"]:
            if row["role"] == "node":
                say(f"    {row['name']}: ready={row.get('ready')} blocks={row.get('blocks')}")
    say("")
    say(f"The lab {topo.name} stays up. Explore it:")
    say("  fabricctl lab status                     # nodes, BGP sessions, pods")
    say("  fabricctl lab exec leaf1 -- ip route     # a ToR's routes (ECMP over the spines)")
    say(f"  fabricctl lab exec default/web-1 -- ping {pods['db-2']['ips'][0]}")
    say("  fabricctl lab exec node1 -- fabricctl get workloadendpoints")
    say(f"  fabricctl lab graph --file {topo.name}   # SVG + PNG of the fabric")
    say(f"  fabricctl lab down {topo.name}           # remove everything (make demo-down)")
    if wrong:
        say(f"{wrong} of {len(obs)} pairs disagree with the expectation (see above)")
    return 1 if wrong else 0
