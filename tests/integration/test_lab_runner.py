"""The netns lab runner on the real kernel: `lab up two-node` builds namespaces, veths, etcd,
BIRD and agents; `lab down` leaves nothing behind, also after the runner was killed.

Each test runs a copy of the topology under a unique lab name with its own state
directory, so a lab a person has up on this machine is never touched.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fabricctl.lab import runner, topology
from fabricctl.lab.state import LabState

REPO = Path(__file__).parents[2]
FABRICCTL = str(Path(sys.executable).parent / "fabricctl")

pytestmark = pytest.mark.skipif(shutil.which("bird") is None or shutil.which("etcd") is None,
                                reason="needs BIRD 2 (bird2) and etcd (etcd-server)")


@pytest.fixture
def labenv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state dir (short, for unix socket paths); removes any lab left in it."""
    d = Path(tempfile.mkdtemp(prefix="lt", dir="/tmp"))
    monkeypatch.setenv("XDG_STATE_HOME", str(d))
    try:
        yield d
    finally:
        for f in (d / "l3fabric/labs").glob("*.json"):
            st = LabState.load(f.stem)
            if st is not None:
                runner.down(st)
        shutil.rmtree(d, ignore_errors=True)


def lab_copy(name: str, tmp: Path) -> Path:
    doc = yaml.safe_load((REPO / f"containerlab/{name}.clab.yml").read_text())
    doc["name"] = f"t{uuid.uuid4().hex[:6]}"
    p = tmp / f"{doc['name']}.clab.yml"
    p.write_text(yaml.safe_dump(doc))
    return p


def root_view() -> dict[str, str]:
    return {"links": subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout,
            "routes": subprocess.run(["ip", "route", "show", "table", "all"],
                                     capture_output=True, text=True).stdout,
            "nft": subprocess.run(["nft", "list", "tables"], capture_output=True,
                                  text=True).stdout}


def assert_nothing_left(st: LabState, before: dict[str, str]) -> None:
    present = runner.existing_netns()
    assert not [ns for ns in present if ns.startswith(f"clab-{st.lab}-")]
    assert not [p.what for p in st.processes if p.alive()]
    after = root_view()
    for word in ("br-mgmt", "m-node1", "10.77.", "10.244.", "172.20.20."):
        assert word not in after["links"] + after["routes"] or \
            (after["links"] + after["routes"]).count(word) <= \
            (before["links"] + before["routes"]).count(word), word
    assert "l3fabric" not in after["nft"] or "l3fabric" in before["nft"]
    assert not st.path.exists() and not Path(st.dir).exists()


def test_up_two_node_then_down_leaves_nothing(labenv: Path, tmp_path: Path) -> None:
    before = root_view()
    topo = topology.load(lab_copy("two-node", tmp_path))
    t0 = time.monotonic()
    st = runner.up(topo, wait=45)
    took = time.monotonic() - t0
    print(f"two-node up in {took:.2f}s")
    try:
        names = {f"clab-{topo.name}-{n}" for n in ("mgmt", "tor1", "node1", "node2")}
        assert names <= runner.existing_netns()
        # wiring: addresses, forwarding inside, no default route anywhere
        out = runner.sh(*runner.in_netns(f"clab-{topo.name}-node1", "ip", "-o", "addr")).stdout
        assert "10.77.1.2/30" in out and "172.20.20.11/24" in out
        for n in ("tor1", "node1"):
            ns = f"clab-{topo.name}-{n}"
            fwd = runner.sh(*runner.in_netns(ns, "sysctl", "-n", "net.ipv4.ip_forward")).stdout
            assert fwd.strip() == "1"
            assert "default" not in runner.sh("ip", "-n", ns, "route").stdout
        ping = runner.sh(*runner.in_netns(f"clab-{topo.name}-node1", "ping", "-c1", "-W2",
                                          "10.77.1.1"), check=False)
        assert ping.returncode == 0, ping.stdout
        # etcd (only inside the lab) has the lab's resources
        kv = runner.etcd_dump(st)
        assert "/l3fabric/v1/nodes/node1" in kv and "/l3fabric/v1/config/bgppeers/node2-tor1" in kv
        assert kv["/l3fabric/v1/config/bgp/default"]["spec"]["nodeToNodeMesh"] is False
        # BIRD runs with the rendered config and knows both sessions
        protos = {p["name"] for p in runner.bird_protocols(runner.bird_socket(st, "tor1"))}
        assert protos == {"p_node1", "p_node2"}
        # agents are ready and report status
        assert all(p.alive() for p in st.processes)
        status = runner.status(st)
        assert [n["name"] for n in status["nodes"] if n.get("ready")] == ["node1", "node2"]
        if importlib.util.find_spec("felix_like.cni_handler") is not None:
            pod = runner.pod_add(st, "node1", "default", "web", {"app": "web"})
            assert pod["ips"] and pod["ips"][0].startswith("10.244.")
            route = runner.sh("ip", "-n", f"clab-{topo.name}-node1", "route").stdout
            assert f"{pod['ips'][0]} dev fab" in route
    finally:
        problems = runner.down(st)
    assert problems == []
    assert_nothing_left(st, before)


def test_a_dual_stack_leaf_spine_lab_routes_both_families_across_racks(
        labenv: Path, tmp_path: Path) -> None:
    """``l3fabric.pool6-cidr`` on the mgmt node: links get IPv6 too, BIRD carries IPv6 on
    every session, and pods on two racks get an address of each family and reach each
    other at both, through leaves and spines."""
    path = lab_copy("leaf-spine", tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["topology"]["nodes"]["mgmt"]["labels"]["l3fabric.pool6-cidr"] = "fd44::/48"
    path.write_text(yaml.safe_dump(doc))
    topo = topology.load(path)
    st = runner.up(topo, wait=60)
    try:
        a = runner.pod_add(st, "node1", "default", "a")
        b = runner.pod_add(st, "node4", "default", "b")
        for pod in (a, b):
            assert [ip.split(".")[0].split(":")[0] for ip in pod["ips"]] == ["10", "fd44"], pod
        spine = f"clab-{topo.name}-spine1"
        deadline = time.monotonic() + 30
        blocks: list[str] = []
        while len(blocks) < 2 and time.monotonic() < deadline:
            r6 = runner.sh("ip", "-n", spine, "-6", "route").stdout
            blocks = [ln for ln in r6.splitlines() if ln.startswith("fd44:")]
            time.sleep(0.3)
        assert len(blocks) == 2, r6  # both nodes' IPv6 blocks, learned from the leaves
        for dst in b["ips"]:
            p = runner.sh(*runner.in_netns(a["netns"], "ping", "-c2", "-i0.2", "-W2", dst),
                          check=False)
            assert p.returncode == 0, f"{a['pod']} -> {dst}: {p.stdout}"
        row = next(n for n in runner.status(st)["nodes"] if n["name"] == "node1")
        assert row["fabric_ip6"] == str(topo.fabric_address6("node1")) != ""
        # A flap of the node's link keeps its IPv6 address (the next hop it announces).
        node1 = f"clab-{topo.name}-node1"
        runner.sh("ip", "-n", node1, "link", "set", "eth1", "down")
        runner.sh("ip", "-n", node1, "link", "set", "eth1", "up")
        addrs = runner.sh("ip", "-n", node1, "-6", "addr", "show", "dev", "eth1").stdout
        assert str(topo.fabric_address6("node1")) in addrs, addrs
    finally:
        problems = runner.down(st)
    assert problems == []


def test_down_after_the_runner_was_killed_mid_way(labenv: Path, tmp_path: Path) -> None:
    before = root_view()
    path = lab_copy("two-node", tmp_path)
    lab = topology.load(path).name
    # The runner dies right after starting BIRD (namespaces, etcd and routers exist),
    # as a crash or kill -9 would leave it: deterministic, whatever the machine's load.
    env = dict(os.environ, L3FABRIC_LAB_CRASH_AT="routers-started")
    r = subprocess.run([FABRICCTL, "lab", "up", str(path)], env=env, capture_output=True,
                       timeout=120)
    assert r.returncode == 137
    st = LabState.load(lab)
    assert st is not None and st.phase == "creating"
    assert any(p.alive() for p in st.processes), "etcd and BIRD outlive the runner"
    p = subprocess.run([FABRICCTL, "lab", "down", lab], capture_output=True, text=True,
                       env=os.environ.copy())
    assert p.returncode == 0, p.stderr
    assert_nothing_left(st, before)


def test_down_with_a_state_file_naming_things_never_made(labenv: Path) -> None:
    """A crash right after writing the intent: the namespaces and pids do not exist."""
    st = LabState(lab=f"t{uuid.uuid4().hex[:6]}", topology="", dir=str(labenv / "x"),
                  namespaces=["clab-never-made-1"])
    st.save()
    assert runner.down(st) == []
    assert not st.path.exists()
    p = subprocess.run([FABRICCTL, "lab", "down", st.lab], capture_output=True, text=True,
                       env=os.environ.copy())
    assert p.returncode == 0 and "not up" in p.stdout


def test_up_refuses_a_lab_that_is_up(labenv: Path, tmp_path: Path) -> None:
    topo = topology.load(lab_copy("two-node", tmp_path))
    st = runner.up(topo, start_agents=False)
    try:
        with pytest.raises(runner.LabError, match="already up"):
            runner.up(topo, start_agents=False)
        p = subprocess.run([FABRICCTL, "lab", "exec", "--lab", topo.name, "node2", "--",
                            "sh", "-c", "echo $L3FABRIC_ETCD_ENDPOINTS; ip -o addr show eth1"],
                           capture_output=True, text=True, env=os.environ.copy())
        assert p.returncode == 0, p.stderr
        assert "http://172.20.20.2:2379" in p.stdout and "10.77.2.2/30" in p.stdout
    finally:
        assert runner.down(st) == []
