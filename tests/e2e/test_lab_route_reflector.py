"""The route-reflector lab: three nodes, two BIRD reflectors, one AS, no node mesh.

Each node has one uplink per reflector, so each BGP session must run from that uplink's
address (bgp.config.local_address_for). Every session comes up, every pod reaches every
other, each node routes to the others' blocks over both reflectors (ECMP), losing one
reflector keeps the fabric up, and `lab down` leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import yaml

from fabricctl.lab import runner, topology
from fabricctl.lab.state import LabState

REPO = Path(__file__).parents[2]
PODS = [("node1", "p1"), ("node1", "p1b"), ("node2", "p2"), ("node3", "p3")]


pytestmark = [
    pytest.mark.skipif(shutil.which("bird") is None or shutil.which("etcd") is None,
                       reason="needs BIRD 2 (bird2) and etcd (etcd-server)"),
]


@dataclass
class Lab:
    topo: topology.Topology
    st: LabState
    pods: dict[str, dict[str, object]] = field(default_factory=dict)

    def ns(self, node: str) -> str:
        return runner.netns_name(self.topo.name, node)

    def ip(self, pod: str) -> str:
        return str(self.pods[pod]["ips"][0])  # type: ignore[index]

    def ping(self, src: str, dst_ip: str) -> bool:
        argv = runner.exec_argv(self.st, f"default/{src}", ["ping", "-c1", "-W1", dst_ip])
        return subprocess.run(argv, capture_output=True).returncode == 0

    def unreachable(self, timeout: float) -> list[tuple[str, str]]:
        """Ordered pod pairs that do not ping within ``timeout`` (routes converge)."""
        out = []
        for a in self.pods:
            for b in self.pods:
                dst = self.ip(b)
                if a != b and not wait_for(partial(self.ping, a, dst), timeout, 0.1):
                    out.append((a, b))
        return out

    def bird_sessions(self) -> dict[str, str]:
        return {f"{s['router']}-{s['node']}": s["state"]
                for s in runner.status(self.st)["sessions"] if s["source"] == "bird"}


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    d = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_STATE_HOME", str(d))
    doc = yaml.safe_load((REPO / "containerlab/route-reflector.clab.yml").read_text())
    doc["name"] = f"r{uuid.uuid4().hex[:6]}"
    path = d / f"{doc['name']}.clab.yml"
    path.write_text(yaml.safe_dump(doc))
    topo = topology.load(path)
    try:
        st = runner.up(topo, wait=60)
        lab = Lab(topo, st)
        for node, pod in PODS:
            lab.pods[pod] = runner.pod_add(st, node, "default", pod, {})
        yield lab
    finally:
        st2 = LabState.load(topo.name)
        if st2 is not None:
            runner.down(st2)
        mp.undo()
        shutil.rmtree(d, ignore_errors=True)


def test_every_session_to_both_reflectors_is_established(lab: Lab) -> None:

    def established() -> bool:
        s = lab.bird_sessions()
        return len(s) == 6 and all(v.startswith("Established") for v in s.values())

    assert wait_for(established, 30), lab.bird_sessions()


def test_every_pod_reaches_every_other(lab: Lab) -> None:
    assert lab.unreachable(20) == []


def test_other_blocks_are_routed_over_both_reflectors(lab: Lab) -> None:
    block = ipaddress.ip_network(f"{lab.ip('p3')}/{lab.topo.block_size}", strict=False)

    def ecmp() -> bool:
        route = runner.sh("ip", "-n", lab.ns("node1"), "route", "show", str(block)).stdout
        return bool(re.search(r"nexthop via 10\.77\.1\.1 .*\n\s+nexthop via 10\.77\.4\.1",
                              route))

    assert wait_for(ecmp, 20), runner.sh("ip", "-n", lab.ns("node1"), "route").stdout


def test_losing_one_reflector_keeps_every_pod_reachable(lab: Lab) -> None:
    bird = next(p for p in lab.st.processes if p.what == "bird rr1")
    runner._kill_group(bird.pid, 15)
    assert wait_for(lambda: not bird.alive(), 10)
    # rr1's links stay up, so nodes notice at the hold time (9 s) at the latest.
    route_cmd = ("ip", "-n", lab.ns("node1"), "route")
    assert wait_for(lambda: "10.77.1.1" not in runner.sh(*route_cmd).stdout, 15), \
        runner.sh(*route_cmd).stdout
    assert lab.unreachable(10) == [], "unreachable with rr2 alone"


def test_down_leaves_nothing(lab: Lab) -> None:
    st = LabState.load(lab.topo.name)
    assert st is not None
    assert runner.down(st) == []
    assert not [ns for ns in runner.existing_netns() if ns.startswith(f"clab-{st.lab}-")]
    assert not [p.what for p in st.processes if p.alive()]
    assert not st.path.exists()
