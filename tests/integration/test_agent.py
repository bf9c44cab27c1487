"""The real ``fabric-agent`` in a node namespace, driven through the real CNI shim.

The agent runs inside the node namespace (``ip netns exec``) and reaches the test's etcd
over its unix socket, so no network path leads from the lab to the host. Pods are
namespaces the test made; every process and namespace goes at teardown.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import shims
from helpers.fabric import BIN, Node
from helpers.procs import running

from datastore.embedded import EmbeddedEtcd

POOL = {"apiVersion": "l3fabric.io/v1", "kind": "IPPool", "metadata": {"name": "p1"},
        "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}}


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60).stdout


def etcdctl(etcd: EmbeddedEtcd, *args: str) -> str:
    return sh("etcdctl", "--endpoints", etcd.endpoint, *args)


@pytest.fixture
def node(netns: Callable[[str], str], etcd: EmbeddedEtcd,
         tmp_path: Path) -> Iterator[Node]:
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/p1", json.dumps(POOL))
    ns = netns("node")
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    agent = Node("n1", ns, "10.99.1.1/30", tmp_path)
    agent.start(etcd)
    try:
        yield agent
    finally:
        agent.kill(signal.SIGTERM)


def cni(agent: Node, command: str, container: str, pod_ns: str,
        pod: str) -> dict[str, Any]:
    code, out = cni_result(agent, command, container, pod_ns, pod)
    assert code == 0, f"{out}\n{agent.log_tail(6000)}"
    return json.loads(out) if out.strip() else {}


def cni_result(agent: Node, command: str, container: str, pod_ns: str,
               pod: str) -> tuple[int, str]:
    """The shim's exit code and stdout (a result or the error JSON)."""
    conf = {"cniVersion": "1.0.0", "name": "l3net", "type": "l3fabric",
            "agentSocket": agent.socket, "ipam": {"type": "l3fabric-ipam"}}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": f"/var/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
           "CNI_PATH": str(shims.bin_dir()), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(shims.installed())], input=json.dumps(conf), env=env,
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def routes(ns: str) -> list[str]:
    return sorted(sh("ip", "-n", ns, "route", "show", "proto", "80").splitlines())


def routes_with_blackhole(ns: str, timeout: float = 10) -> list[str]:
    """The node's routes once its block's blackhole is in. The CNI handler installs a
    pod's /32 before ADD answers; the blackhole (and the BGP announcement) follow the
    confirmed affinity, which reaches the agent through its etcd watch a moment later,
    as in Calico, where BIRD programs them."""
    deadline = time.monotonic() + timeout
    while True:
        rs = routes(ns)
        if any(r.startswith("blackhole ") for r in rs) or time.monotonic() > deadline:
            return rs
        time.sleep(0.05)


def test_pod_add_routes_endpoint_metrics_and_del(node: Node, netns: Callable[[str], str],
                                                 etcd: EmbeddedEtcd) -> None:
    pod = netns("pod")
    res = cni(node, "ADD", "c1", pod, "web")
    ip = res["ips"][0]["address"].split("/")[0]
    assert ip.startswith("10.244.")
    # The pod's /32 is in the node's kernel when ADD answers; its block's blackhole
    # follows.
    assert any(r.startswith(f"{ip} dev fab") for r in routes(node.ns))
    rs = routes_with_blackhole(node.ns)
    assert any(r.startswith(f"{ip} dev fab") for r in rs), rs
    assert any(r.startswith("blackhole 10.244.") for r in rs), rs
    # Its WorkloadEndpoint is in etcd, with the address.
    wep = json.loads(etcdctl(etcd, "get", "--print-value-only",
                             "/l3fabric/v1/workloads/n1/default.web.eth0"))
    assert wep["spec"]["ipNetworks"] == [f"{ip}/32"]
    code, metrics = node.http("/metrics")
    assert code == 200
    assert 'l3fabric_cni_requests_total{result="ok",verb="ADD"} 1.0' in metrics
    assert "l3fabric_ipam_blocks_owned 1.0" in metrics
    # NodeStatus under a lease names the block.
    deadline = time.monotonic() + 5
    while True:
        status = json.loads(etcdctl(etcd, "get", "--print-value-only",
                                    "/l3fabric/v1/status/nodes/n1"))
        if status["status"]["blocks"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status["status"]["blocks"] and status["status"]["inSync"] is True

    cni(node, "DEL", "c1", pod, "web")
    assert not any(r.startswith(f"{ip} ") for r in routes(node.ns))
    assert etcdctl(etcd, "get", "--prefix", "/l3fabric/v1/workloads/") == ""
    assert "fab" not in sh("ip", "-n", node.ns, "-br", "link")


def test_pods_added_in_parallel_get_their_route_once(node: Node,
                                                     netns: Callable[[str], str]) -> None:
    """The CNI handler installs a pod's /32 and tells the agent before the endpoint is
    written; applies that run meanwhile (other pods' ADDs, etcd watch events) must not
    delete it as stale and add it again. Seen from the kernel: one add per pod route,
    no delete."""
    pods = [netns(f"pp{i}") for i in range(16)]
    monitor = subprocess.Popen(["ip", "-n", node.ns, "monitor", "route"],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: cni(node, "ADD", f"cp{i}", pods[i], f"p{i}"),
                                    range(len(pods))))
        time.sleep(1)
    finally:
        monitor.terminate()
    out, _ = monitor.communicate(timeout=10)
    ips = [r["ips"][0]["address"].split("/")[0] for r in results]
    events = [ln for ln in out.splitlines() if ln.strip() and "proto kernel" not in ln]
    for ip in ips:
        mine = [ln for ln in events if ln.split()[:2] in ([ip, "dev"], ["Deleted", ip])]
        assert len(mine) == 1 and not mine[0].startswith("Deleted"), (ip, mine, events)
    rs = routes(node.ns)
    assert all(any(r.startswith(f"{ip} dev fab") for r in rs) for ip in ips), rs


def test_a_pod_veth_replaced_under_its_name_gets_its_route_back(
        node: Node, netns: Callable[[str], str]) -> None:
    """A runtime's retried ADD can replace a pod's veth by one of the same name: the
    kernel drops the pod's /32 with the old veth, for IPv4 without a notification. The
    agent sees the deletion among the link notifications, even when the new veth follows
    in the same burst, and puts the route back through the new veth at once, not at its
    periodic resync a minute later. (The chaos soak found the route missing.)"""
    pod = netns("pod")
    ip = cni(node, "ADD", "c1", pod, "web")["ips"][0]["address"].split("/")[0]
    dev = next(r.split()[2] for r in routes(node.ns) if r.startswith(f"{ip} dev fab"))
    subprocess.run(["ip", "-n", node.ns, "-batch", "-"], check=True, text=True, timeout=10,
                   input=f"link del {dev}\nlink add {dev} type veth peer name tmp-{dev[3:9]}\n"
                         f"link set {dev} up\n")
    deadline = time.monotonic() + 15  # well under the agent's periodic resync (60 s)
    while not any(r.startswith(f"{ip} dev {dev}") for r in routes(node.ns)):
        assert time.monotonic() < deadline, (
            f"{ip}'s route did not come back through the new {dev}: {routes(node.ns)}")
        time.sleep(0.1)


def test_the_agents_ipam_keeps_reservations_and_ipam_config(
        netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """The agent allocates from its mirror of etcd: IPReservations and the IPAMConfig
    written with etcdctl must be in it, decoded, not skipped as keys of no resource. 48 of
    the first block's 64 addresses are reserved and the node may own one block with
    strict affinity: 16 pods get the 16 free addresses, the 17th the exhaustion error,
    and nothing is left of it."""
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/p1", json.dumps(POOL))
    etcdctl(etcd, "put", "/l3fabric/v1/ipam/reservations/r1", json.dumps({
        "apiVersion": "l3fabric.io/v1", "kind": "IPReservation", "metadata": {"name": "r1"},
        "spec": {"reservedCIDRs": ["10.244.0.0/27", "10.244.0.32/28"]}}))
    etcdctl(etcd, "put", "/l3fabric/v1/ipam/config", json.dumps({
        "apiVersion": "l3fabric.io/v1", "kind": "IPAMConfig", "metadata": {"name": "default"},
        "spec": {"strictAffinity": True, "maxBlocksPerHost": 1}}))
    ns = netns("node")
    agent = Node("n1", ns, "10.99.1.1/30", tmp_path)
    agent.start(etcd)
    try:
        pods = [netns(f"r{i}") for i in range(17)]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: cni(agent, "ADD", f"cr{i}", pods[i], f"r{i}"),
                                range(16)))
        ips = sorted(int(r["ips"][0]["address"].split("/")[0].rsplit(".", 1)[1]) for r in got)
        assert ips == list(range(48, 64)), ips
        code, out = cni_result(agent, "ADD", "cr16", pods[16], "r16")
        assert code != 0 and "maxBlocksPerHost=1" in out, out
        assert "fab" not in sh("ip", "-n", pods[16], "-br", "link")
        assert etcdctl(etcd, "get", "--keys-only", "/l3fabric/v1/ipam/handles/l3net.cr16.eth0") \
            == ""
    finally:
        agent.kill(signal.SIGTERM)


def test_restart_changes_no_route_and_drops_no_ping(node: Node,
                                                    netns: Callable[[str], str],
                                                    etcd: EmbeddedEtcd) -> None:
    a, b = netns("pa"), netns("pb")
    cni(node, "ADD", "ca", a, "a")
    ip_b = cni(node, "ADD", "cb", b, "b")["ips"][0]["address"].split("/")[0]
    before = routes_with_blackhole(node.ns)
    monitor = subprocess.Popen(["ip", "-n", node.ns, "monitor", "route"],
                               stdout=subprocess.PIPE, text=True)
    ping = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-q", "-i", "0.01", "-w", "6",
                             ip_b], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        node.kill(signal.SIGKILL)
        time.sleep(0.5)
        node.start(etcd)
        time.sleep(1)
        out, _ = ping.communicate(timeout=30)
    finally:
        ping.kill()
        monitor.terminate()
    out_mon, _ = monitor.communicate(timeout=10)
    # The kernel's own link-local routes of the new veths may show up late; ours must not.
    changes = [ln for ln in out_mon.splitlines() if ln.strip() and "proto kernel" not in ln]
    assert routes(node.ns) == before
    assert changes == [], f"routes changed during the restart: {changes}"
    assert " 0% packet loss" in out, out


def test_stale_route_removed_only_after_sync_and_cleanup(node: Node,
                                                         netns: Callable[[str], str],
                                                         etcd: EmbeddedEtcd) -> None:
    pod = netns("pod")
    ip = cni(node, "ADD", "c1", pod, "web")["ips"][0]["address"].split("/")[0]
    node.kill(signal.SIGKILL)
    # The pod goes away while the agent is down (its WEP removed behind its back).
    etcdctl(etcd, "del", "/l3fabric/v1/workloads/n1/default.web.eth0")
    assert any(r.startswith(f"{ip} ") for r in routes(node.ns))
    node.start(etcd)
    deadline = time.monotonic() + 10
    while any(r.startswith(f"{ip} ") for r in routes(node.ns)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(r.startswith(f"{ip} ") for r in routes(node.ns))

    node.kill(signal.SIGTERM)
    exabgp_before = [p for p in sh("ip", "netns", "pids", node.ns).split()
                     if b"exabgp" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert exabgp_before, "ExaBGP should outlive the agent"
    sh("ip", "netns", "exec", node.ns, str(BIN / "fabric-agent"), "--cleanup",
       "--socket", node.socket)
    assert routes(node.ns) == []
    assert not [p for p in exabgp_before if running(p)]
    assert "l3fabric" not in sh("ip", "netns", "exec", node.ns, "nft", "list", "tables")
    assert "fab" not in sh("ip", "-n", node.ns, "-br", "link")


def test_agent_refuses_a_newer_datastore(netns: Callable[[str], str], etcd: EmbeddedEtcd,
                                         tmp_path: Path) -> None:
    etcdctl(etcd, "put", "/l3fabric/v1/schema/version", '{"version": 99}')
    ns = netns("node")
    r = subprocess.run(["ip", "netns", "exec", ns, str(BIN / "fabric-agent"), "--node", "n1",
                        "--etcd-endpoints", etcd.unix_endpoint,
                        "--socket", str(tmp_path / "a.sock"), "--node-ip", "10.99.1.1/30"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "schema version 99" in r.stderr and "upgrade" in r.stderr
    # It changed nothing: no Node registered.
    assert etcdctl(etcd, "get", "/l3fabric/v1/nodes/n1") == ""
