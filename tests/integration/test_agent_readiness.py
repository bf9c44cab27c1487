"""The real agent's readiness: what ``/readyz`` says while it waits, and what does not hold
it back.

- Stale WorkloadEndpoints (their pods' veths gone while the agent was stopped) do not
  keep a restarted agent unready: their routes wait for their interfaces, each is
  reported once (log, ``l3fabric_endpoints_without_interface``, NodeStatus errors), and
  one is programmed as soon as its interface appears. A veth deleted while the agent
  runs is reported at once. A restart with such endpoints
  logged ``route add … failed: no interface`` on every retry and stayed 503 "not ready:
  starting" for a minute or more.
- With etcd down at the start, ``/readyz`` names the step it waits for and the last
  error, and turns 200 once etcd is back.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.fabric import Node, wait_for

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

POOL = {"apiVersion": "l3fabric.io/v1", "kind": "IPPool", "metadata": {"name": "p1"},
        "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}}
STALE = 40  # endpoints whose veth goes while the agent is stopped


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def metric(node: Node, name: str) -> float | None:
    code, text = node.http("/metrics")
    assert code == 200
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture
def node(netns: Callable[[str], str], etcd: EmbeddedEtcd,
         tmp_path: Path) -> Iterator[Node]:
    ns = netns("node")
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    agent = Node("n1", ns, "10.99.1.1/30", tmp_path)
    try:
        yield agent
    finally:
        agent.cleanup()  # the agent, and ExaBGP, which outlives it


def test_a_restart_with_stale_endpoints_is_ready_in_seconds_and_reports_them_once(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    sh("etcdctl", "--endpoints", etcd.endpoint, "put", "/l3fabric/v1/config/ippools/p1",
       json.dumps(POOL))
    node.start(etcd)
    pods = [(f"c{i:02d}", netns("pod"), f"p{i:02d}") for i in range(STALE + 1)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: node.cni_add(*p), pods))
    live_ip = results[0]["ips"][0]["address"].split("/")[0]
    stale_ifs = [str(r["interfaces"][0]["name"]) for r in results[1:]]
    assert all(name.startswith("fab") for name in stale_ifs), stale_ifs

    # The pods go behind the agent's back while it is stopped: their endpoints stay.
    node.kill(signal.SIGTERM)
    for name in stale_ifs:
        sh("ip", "-n", node.ns, "link", "del", name)
    log_from = node.log.stat().st_size
    t0 = time.monotonic()
    node.spawn(etcd)
    wait_for(node.ready, 10, "the restarted agent ready", 0.05, node.log_tail)
    ready_after = time.monotonic() - t0
    wait_for(lambda: metric(node, "l3fabric_endpoints_without_interface") == STALE, 5,
             f"{STALE} endpoints without interface in /metrics")
    print(f"restart with {STALE} stale endpoints: ready after {ready_after:.2f} s")
    assert any(line.startswith(f"{live_ip} dev fab")
               for line in sh("ip", "-n", node.ns, "route", "show", "proto", "80")
               .splitlines()), "the live pod lost its route"

    def status_errors() -> list[str]:
        out = sh("etcdctl", "--endpoints", etcd.endpoint, "get", "--print-value-only",
                 "/l3fabric/v1/status/nodes/n1")
        return list(json.loads(out)["status"]["errors"]) if out.strip() else []

    wait_for(lambda: len(status_errors()) == STALE, 5, "the stale endpoints in NodeStatus")
    assert f"host interface {stale_ifs[0]} does not exist" in " ".join(status_errors())

    # No flood: one line per endpoint, however long it stays stale (a retry loop of
    # 0.5, 1, 2 s would have logged each again by now).
    time.sleep(3)
    log = node.log.read_text()[log_from:]
    for name in stale_ifs:
        lines = [ln for ln in log.splitlines() if name in ln]
        assert len(lines) == 1 and "does not exist" in lines[0], lines
    assert "failed: no interface" not in log

    # An interface appearing under a stale endpoint's name gets its route at once.
    back = stale_ifs[0]
    sh("ip", "-n", node.ns, "link", "add", back, "type", "veth", "peer", "name", "tmpback")
    sh("ip", "-n", node.ns, "link", "set", back, "up")
    wait_for(lambda: f"dev {back} " in sh("ip", "-n", node.ns, "route", "show", "proto", "80"),
             3, f"the route through {back}", 0.02, node.log_tail)
    wait_for(lambda: metric(node, "l3fabric_endpoints_without_interface") == STALE - 1, 5,
             "one endpoint less without interface")

    # The live pod's veth deleted while the agent runs (no DEL): reported at once.
    live_if = str(results[0]["interfaces"][0]["name"])
    sh("ip", "-n", node.ns, "link", "del", live_if)
    wait_for(lambda: metric(node, "l3fabric_endpoints_without_interface") == STALE, 3,
             f"the endpoint of {live_if} without interface", 0.02, node.log_tail)
    assert f"endpoint workloads/n1/default.p00.eth0: its host interface {live_if} does not " \
           "exist" in node.log.read_text()[log_from:]


def test_readyz_names_the_step_it_waits_for_and_the_last_error(
        node: Node, etcd: EmbeddedEtcd) -> None:
    etcd.stop()  # down before the agent starts
    node.spawn(etcd)
    body = wait_for(lambda: (lambda r: r[1] if r[0] == 503 and "last error" in r[1] else "")(
        node.http("/readyz")), 30, "a 503 naming the last error", 0.2, node.log_tail)
    print(f"/readyz with etcd down: {body.strip()}")
    assert body.startswith("not ready: waiting for etcd (schema check and node "
                           "registration); last error "), body
    assert re.search(r"unavailable|connect|refused", body, re.I), body
    etcd.start()
    wait_for(node.ready, 30, "ready once etcd is back", 0.1, node.log_tail)
    assert node.http("/readyz") == (200, "ready\n")
