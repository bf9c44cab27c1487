"""Lab bring-up time: leaf-spine with 4 nodes and a generated leaf-spine with 16 nodes.

Baseline, measured in the same run: the same topology with ``--no-agents`` (namespaces,
veths, etcd, BIRD — the part that is not l3fabric), so the ratio shows what the agents
add. Each lab runs under a private state directory and is removed afterwards.

Run as root: ``python -m bench.lab.bench_lab_up``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.common import print_table, write_results
from fabricctl.lab import runner, topology

REPO = Path(__file__).resolve().parents[2]


def leaf_spine(racks: int, per_rack: int) -> dict[str, Any]:
    """A leaf-spine doc: 2 spines, ``racks`` leaves, ``per_rack`` nodes per leaf."""
    doc = yaml.safe_load((REPO / "containerlab/leaf-spine.clab.yml").read_text())
    nodes = {"mgmt": doc["topology"]["nodes"]["mgmt"]}
    links = []
    for s in (1, 2):
        nodes[f"spine{s}"] = {"kind": "linux", "labels": {"l3fabric.role": "router",
                                                          "l3fabric.asn": 65000}}
    n = 0
    for r in range(1, racks + 1):
        asn = 65100 + r
        nodes[f"leaf{r}"] = {"kind": "linux", "labels": {
            "l3fabric.role": "router", "l3fabric.asn": asn, "l3fabric.rack": f"r{r}",
            "l3fabric.rr-cluster-id": f"10.77.255.{r}"}}
        links += [{"endpoints": [f"spine{s}:eth{r}", f"leaf{r}:eth{s}"]} for s in (1, 2)]
        for k in range(per_rack):
            n += 1
            nodes[f"node{n}"] = {"kind": "linux", "labels": {
                "l3fabric.role": "node", "l3fabric.asn": asn, "l3fabric.rack": f"r{r}"}}
            links.append({"endpoints": [f"leaf{r}:eth{3 + k}", f"node{n}:eth1"]})
    return {"name": f"b{uuid.uuid4().hex[:6]}", "mgmt": doc["mgmt"],
            "topology": {"nodes": nodes, "links": links}}


def measure(doc: dict[str, Any], agents: bool) -> float:
    topo = topology.parse(doc)
    t0 = time.monotonic()
    st = runner.up(topo, start_agents=agents, wait=120)
    took = time.monotonic() - t0
    problems = runner.down(st)
    if problems:
        raise SystemExit(f"lab not removed: {problems}")
    return took


def main() -> int:
    if os.geteuid() != 0:
        print("bench_lab_up: needs root (network namespaces); skipped")
        return 0
    state_home = tempfile.mkdtemp(prefix="lb", dir="/tmp")
    os.environ["XDG_STATE_HOME"] = state_home
    rows = []
    results: dict[str, Any] = {}
    try:
        for label, racks, per_rack in (("leaf-spine 4 nodes", 2, 2),
                                       ("leaf-spine 16 nodes", 4, 4)):
            base = measure(leaf_spine(racks, per_rack), agents=False)
            full = measure(leaf_spine(racks, per_rack), agents=True)
            rows.append([label, base, full, full / base])
            results[label] = {"nodes": racks * per_rack, "baseline_no_agents_s": round(base, 3),
                              "up_s": round(full, 3), "ratio": round(full / base, 2)}
    finally:
        shutil.rmtree(state_home, ignore_errors=True)  # the labs' state, empty once down
    print_table(["topology", "no agents (s)", "full up (s)", "ratio"], rows,
                title="lab bring-up (until BIRD answers and every agent is ready)")
    print(write_results("lab_up", {"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
