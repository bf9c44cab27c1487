"""`fabricctl lab up --runtime podman`: the two-node topology as podman containers.

Through the real command line, on a renamed copy of containerlab/two-node.clab.yml (with
its configs, which the file binds) under a private state directory, so that it never
touches a lab somebody has up. The images are the ones `make images` builds; without them
the test skips and says so. Checks what a user sees: the node and router containers from
the file's images, a pod on each node container pinging the other across the ToR
container, the ToR's routes for both nodes' blocks, no way out of the lab (no default
route anywhere), and `lab down` leaving no container, namespace or process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
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
from helpers.images import PODMAN, REPO, skip_unless_built
from helpers.procs import running_with

FABRICCTL = str(Path(sys.executable).parent / "fabricctl")


pytestmark = skip_unless_built()


def fabricctl(env: dict[str, str], *args: str, timeout: float = 120
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FABRICCTL, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def containers(lab: str) -> list[dict[str, str]]:
    out = subprocess.run([*PODMAN, "ps", "-a", "--filter", f"label=l3fabric.lab={lab}",
                          "--format", "json"], capture_output=True, text=True, check=True)
    return [{"name": c["Names"][0], "image": c["Image"], "state": c["State"], "id": c["Id"]}
            for c in json.loads(out.stdout or "[]")]


@contextlib.contextmanager
def lab_copy(topology: str) -> Iterator[tuple[dict[str, str], str, Path]]:
    """A renamed copy of containerlab/<topology>.clab.yml (with the configs it binds) and
    a private state directory; on the way out the lab is taken down, whatever happened."""
    d = Path(tempfile.mkdtemp(prefix="pl", dir="/tmp"))
    doc = yaml.safe_load((REPO / f"containerlab/{topology}.clab.yml").read_text())
    name = f"p{uuid.uuid4().hex[:6]}"
    doc["name"] = name
    # The file binds its BIRD configs relative to itself: the copy takes them along.
    shutil.copytree(REPO / f"containerlab/configs/{topology}", d / f"configs/{topology}")
    path = d / f"{name}.clab.yml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "XDG_STATE_HOME": str(d)}
    try:
        yield env, name, path
    finally:
        fabricctl(env, "lab", "down", name, timeout=60)
        left = [c["name"] for c in containers(name)]
        if left:
            subprocess.run([*PODMAN, "rm", "-f", "-t", "0", *left], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[tuple[dict[str, str], str, Path]]:
    with lab_copy("two-node") as lab:
        yield lab


def pod_ip(add: subprocess.CompletedProcess[str]) -> str:
    assert add.returncode == 0, add.stderr
    m = re.search(r": (\d+\.\d+\.\d+\.\d+)", add.stdout)
    assert m, add.stdout
    return m.group(1)


def test_two_node_as_podman_containers(lab: tuple[dict[str, str], str, Path]) -> None:
    env, name, path = lab
    up = fabricctl(env, "lab", "up", "--runtime", "podman", str(path))
    assert up.returncode == 0, up.stderr[-3000:]

    # One container per node, each from the image the file names, all running.
    made = {c["name"]: c for c in containers(name)}
    assert sorted(made) == sorted(f"clab-{name}-{n}" for n in ("mgmt", "tor1", "node1", "node2"))
    assert all(c["state"] == "running" for c in made.values()), made
    assert made[f"clab-{name}-tor1"]["image"].endswith("l3fabric/bird:2.0.12")
    assert made[f"clab-{name}-node1"]["image"].endswith("l3fabric/node:latest")
    assert made[f"clab-{name}-mgmt"]["image"].endswith("l3fabric/etcd:3.4.23")

    # A pod on each node container; the first pings the second across tor1.
    ips = {}
    for node, pod in (("node1", "default/a"), ("node2", "default/b")):
        ips[pod] = pod_ip(fabricctl(env, "lab", "pod", "add", node, pod, "--lab", name))
    # The ToR's routing table gets both nodes' blocks (the /26 of each pod's address, the
    # file's l3fabric.block-size) over BGP, towards the node's link.
    blocks = {eth: ipaddress.ip_network(f"{ips[pod]}/26", strict=False)
              for eth, pod in (("eth1", "default/a"), ("eth2", "default/b"))}
    deadline = time.monotonic() + 30
    while True:
        routes = fabricctl(env, "lab", "exec", "--lab", name, "tor1", "--", "ip", "route")
        missing = [b for eth, b in blocks.items() if not re.search(
            rf"^{re.escape(str(b))} via \S+ dev {eth} proto bird", routes.stdout, re.M)]
        if not missing:
            break
        assert time.monotonic() < deadline, (missing, routes.stdout)
        time.sleep(0.3)
    st = fabricctl(env, "lab", "status", "--lab", name, "-o", "json")
    assert st.returncode == 0, st.stderr
    sessions = [s for s in json.loads(st.stdout)["sessions"] if s["source"] == "bird"]
    assert sorted(s["node"] for s in sessions) == ["node1", "node2"]
    assert all(s["state"] == "Established" for s in sessions), sessions

    ping = fabricctl(env, "lab", "exec", "--lab", name, "default/a", "--", "ping", "-c", "3",
                     "-W", "2", ips["default/b"])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert " 0% packet loss" in ping.stdout

    # No way out of the lab: no container has a default route, nothing routes off-lab.
    for cname in made:
        r = subprocess.run([*PODMAN, "exec", cname, "ip", "route", "get", "192.0.2.1"],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "unreachable" in r.stderr, (cname, r.stdout)

    down = fabricctl(env, "lab", "down", name, timeout=60)
    assert down.returncode == 0, down.stderr
    assert containers(name) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"clab-{name}-" not in netns
    # No container's monitor is left running (conmon's command line names its container).
    for c in made.values():
        assert running_with(c["id"]) == []
    assert not Path(env["XDG_STATE_HOME"], "l3fabric/labs", f"{name}.json").exists()


def in_container(cname: str, *cmd: str, check: bool = True, timeout: float = 120
                 ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*PODMAN, "exec", cname, *cmd], capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r


def node_snapshot(cname: str) -> dict[str, str]:
    """What l3fabric may change on a node: links, routes, nftables tables, systemd's unit
    directory, l3fabric's configuration directory, running programs."""
    def out(*cmd: str) -> str:
        return in_container(cname, *cmd, check=False).stdout
    return {"links": out("sh", "-c", "ip -o link | cut -d' ' -f2"), "routes": out("ip", "route"),
            "nft": out("nft", "list", "tables"),
            "units": out("find", "/etc/systemd/system", "-printf", "%P %l\\n"),
            "etc": out("sh", "-c", "ls -A /etc/l3fabric /etc/iproute2/rt_protos.d 2>&1"),
            "procs": out("sh", "-c", "ps -eo comm= | sort | grep -vx 'ps\\|sh\\|sort'")}


def bgp_connections(cname: str) -> set[str]:
    """The ToR's established BGP TCP connections (a session reset makes new ports)."""
    r = in_container(cname, "ss", "-tnH", "state", "established",
                     "( sport = :179 or dport = :179 )")
    return {" ".join(line.split()[2:4]) for line in r.stdout.splitlines() if line.strip()}


def test_agent_under_systemd_in_node_container(lab: tuple[dict[str, str], str, Path]) -> None:
    """The bare-metal path against a real systemd (PID 1 of the node containers):
    install-agent --start returns once the agent is ready (Type=notify), a restart and an
    in-place upgrade keep the BGP session and every ping, uninstall leaves the node as it
    was before install-agent."""
    env, name, path = lab
    up = fabricctl(env, "lab", "up", "--runtime", "podman", "--no-agents", str(path))
    assert up.returncode == 0, up.stderr[-3000:]
    node1, node2, tor = (f"clab-{name}-{n}" for n in ("node1", "node2", "tor1"))
    assert in_container(node1, "systemctl", "is-system-running", "--wait",
                        check=False).stdout.strip() in ("running", "degraded")
    before = node_snapshot(node1)

    for cname, node, ip, mgmt in ((node1, "node1", "10.77.1.2/30", "172.20.20.11"),
                                  (node2, "node2", "10.77.2.2/30", "172.20.20.12")):
        in_container(cname, "fabricctl", "install-agent", "--node", node, "--etcd-endpoints",
                     "http://172.20.20.2:2379", "--node-ip", ip, "--metrics-addr",
                     f"{mgmt}:9091", "--start")
        # Type=notify: active only once ready, so /readyz answers 200 at once.
        assert in_container(cname, "systemctl", "is-active", "fabric-agent").stdout.strip() \
            == "active"
        ready = in_container(cname, "python3", "-c", "import urllib.request as u; print(u."
                             f"urlopen('http://{mgmt}:9091/readyz', timeout=5).status)")
        assert ready.stdout.strip() == "200"

    ips = {}
    for node, pod in (("node1", "default/a"), ("node2", "default/b")):
        ips[pod] = pod_ip(fabricctl(env, "lab", "pod", "add", node, pod, "--lab", name))
    deadline = time.monotonic() + 30
    while fabricctl(env, "lab", "exec", "--lab", name, "default/a", "--", "ping", "-c", "1",
                    "-W", "1", ips["default/b"]).returncode != 0:
        assert time.monotonic() < deadline, "pod a never reached pod b"
    sessions = bgp_connections(tor)
    assert len(sessions) == 2, sessions

    def keeps_session_and_pings(*action: str) -> None:
        """Run ``action`` in node1 while pod a pings pod b every 0.1 s: the agent is active
        after it, no ping is lost and the ToR keeps the same BGP TCP connections."""
        ping = subprocess.Popen([FABRICCTL, "lab", "exec", "--lab", name, "default/a", "--",
                                 "ping", "-i", "0.1", "-c", "50", "-q", ips["default/b"]],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            time.sleep(1)
            in_container(node1, "sh", "-c", " ".join(action))
            assert in_container(node1, "systemctl", "is-active",
                                "fabric-agent").stdout.strip() == "active"
            out, _ = ping.communicate(timeout=60)
        finally:
            ping.kill()
        assert " 0% packet loss" in out, (action, out)
        assert bgp_connections(tor) == sessions, action  # no session reset

    keeps_session_and_pings("systemctl", "restart", "fabric-agent")
    # An in-place upgrade: the package's files replaced under the running ExaBGP and relay
    # (the image's own wheel, reinstalled), then a restart.
    keeps_session_and_pings(
        "/opt/l3fabric/bin/pip install -q --no-deps --no-index --force-reinstall "
        "/opt/l3fabric/wheels/l3fabric-*.whl && systemctl restart fabric-agent")

    assert fabricctl(env, "lab", "pod", "del", "default/a", "--lab", name).returncode == 0
    un = in_container(node1, "fabricctl", "uninstall")
    assert "stopped fabric-agent.service" in un.stdout
    after = node_snapshot(node1)
    assert after == before
    # What install-agent wrote is gone (it had replaced the image's CNI plugin and conflist).
    left = in_container(node1, "sh", "-c", "ls /opt/cni/bin /etc/cni/net.d").stdout
    assert "l3fabric" not in left


@pytest.mark.parametrize(("topology", "far"), [("leaf-spine", "node4"),
                                               ("route-reflector", "node3")])
def test_bigger_topologies_as_podman_containers(topology: str, far: str) -> None:
    """leaf-spine (across racks: leaf, spine, leaf) and route-reflector (through the
    reflectors) come up the same way: a pod on node1 reaches a pod on the farthest node."""
    with lab_copy(topology) as (env, name, path):
        up = fabricctl(env, "lab", "up", "--runtime", "podman", str(path))
        assert up.returncode == 0, up.stderr[-3000:]
        pod_ip(fabricctl(env, "lab", "pod", "add", "node1", "default/a", "--lab", name))
        ip_b = pod_ip(fabricctl(env, "lab", "pod", "add", far, "default/b", "--lab", name))
        deadline = time.monotonic() + 30
        while fabricctl(env, "lab", "exec", "--lab", name, "default/a", "--", "ping", "-c",
                        "1", "-W", "1", ip_b).returncode != 0:
            assert time.monotonic() < deadline, f"pod a on node1 never reached {ip_b} on {far}"
        down = fabricctl(env, "lab", "down", name, timeout=60)
        assert down.returncode == 0, down.stderr
        assert containers(name) == []
