"""tor-config loaded into real routers: BIRD 2 and FRR as the top-of-rack router.

Lab: a ToR namespace with a /30 link to each of two node namespaces. The nodes are
played by BIRD (simpler and sturdier here than a whole agent): node n1 announces a block
inside the pool, a prefix of a *disabled* pool, one outside every pool and one shorter
than the pool; n2 announces its block. Resources go into etcd with ``fabricctl apply``;
the ToR's configuration is what ``fabricctl tor-config`` prints, unedited. Expected: both
sessions (MD5-protected) come up, the ToR accepts and installs only the in-pool prefixes,
and re-advertises n1's block to n2 with itself as next hop.

The snippet (``--snippet``) is loaded the way an operator adds it to a router that has
its own configuration: included from a stock ``bird.conf`` (Debian's, comments cut) and
taken in by ``birdc configure``, or added to a stock ``frr.conf``. ``--output`` writes it
0640, and ``--check`` says whether the router's file still matches etcd after a pool is
added.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers.frr import Frr, frr_missing
from helpers.procs import stop_all
from helpers.stock_routers import STOCK_BIRD, STOCK_FRR

from datastore.embedded import EmbeddedEtcd

FABRICCTL = str(Path(sys.executable).with_name("fabricctl"))
PASSWORD = "s3cret-md5"

RESOURCES = [
    {"kind": "IPPool", "metadata": {"name": "default"},
     "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}},
    {"kind": "IPPool", "metadata": {"name": "old"},
     "spec": {"cidr": "10.250.0.0/16", "disabled": True}},
    {"kind": "BGPConfiguration", "metadata": {"name": "default"},
     "spec": {"asNumber": 64512, "holdTime": 9,
              "gracefulRestart": {"enabled": True, "restartTime": 60}}},
    {"kind": "Node", "metadata": {"name": "n1"},
     "spec": {"bgp": {"ipv4Address": "10.99.1.1/30", "asNumber": 65001}}},
    {"kind": "Node", "metadata": {"name": "n2"},
     "spec": {"bgp": {"ipv4Address": "10.99.2.1/30", "asNumber": 65002}}},
    # In the group by name prefix, and by label; a third peer of another group.
    {"kind": "BGPPeer", "metadata": {"name": "rack1-n1"},
     "spec": {"peerIP": "10.99.1.2", "asNumber": 65000, "node": "n1", "password": PASSWORD}},
    {"kind": "BGPPeer", "metadata": {"name": "tor-b", "labels": {
        "l3fabric.io/peer-group": "rack1"}},
     "spec": {"peerIP": "10.99.2.2", "asNumber": 65000, "node": "n2", "password": PASSWORD}},
    {"kind": "BGPPeer", "metadata": {"name": "rack2-n1"},
     "spec": {"peerIP": "10.99.9.2", "asNumber": 65009, "node": "n1"}},
]

N1_ANNOUNCES = {"10.244.1.0/26": True, "10.244.7.9/32": True,
                "10.250.0.0/26": False, "192.168.50.0/24": False, "10.0.0.0/8": False}
N2_ANNOUNCES = {"10.244.2.0/26": True}


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass
class Lab:
    tor: str
    n1: str
    n2: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]]
    frr: list[Frr]

    def bird(self, ns: str, name: str, conf: str) -> Path:
        path = self.tmp / f"{name}.conf"
        path.write_text(conf)
        sock = self.tmp / f"{name}.ctl"
        log = (self.tmp / f"{name}.log").open("w")
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(path), "-s", str(sock),
             "-P", str(self.tmp / f"{name}.pid")], stdout=log, stderr=subprocess.STDOUT))
        return sock


@pytest.fixture
def lab(netns: Callable[[str], str], tmp_path: Path) -> Iterator[Lab]:
    if shutil.which("bird") is None:
        pytest.fail("bird is not installed: run `make setup` (Debian package bird2)")
    tor, n1, n2 = netns("tor"), netns("n1"), netns("n2")
    for i, node in ((1, n1), (2, n2)):
        sh("ip", "-n", tor, "link", "add", f"t{i}", "type", "veth", "peer", "name", "e0",
           "netns", node)
        sh("ip", "-n", tor, "addr", "add", f"10.99.{i}.2/30", "dev", f"t{i}")
        sh("ip", "-n", node, "addr", "add", f"10.99.{i}.1/30", "dev", "e0")
        sh("ip", "-n", tor, "link", "set", f"t{i}", "up")
        sh("ip", "-n", node, "link", "set", "e0", "up")
    lab = Lab(tor, n1, n2, tmp_path, [], [])
    try:
        yield lab
    finally:
        stop_all(lab.procs)
        for frr in lab.frr:
            frr.stop()


def node_bird(i: int, asn: int, announces: dict[str, bool]) -> str:
    routes = "\n".join(f"  route {p} blackhole;" for p in announces)
    return f"""
router id 10.99.{i}.1;
protocol device {{ scan time 10; }}
protocol static announced {{ ipv4;
{routes}
}}
protocol bgp tor {{
  local 10.99.{i}.1 as {asn}; neighbor 10.99.{i}.2 as 65000;
  password "{PASSWORD}";
  hold time 9; keepalive time 3; connect retry time 1;
  ipv4 {{ import all; export all; }};
}}
"""


def fabricctl(etcd: EmbeddedEtcd, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, L3FABRIC_ETCD_ENDPOINTS=etcd.endpoint)
    return subprocess.run([FABRICCTL, *args], env=env, capture_output=True, text=True,
                          timeout=60)


def apply(etcd: EmbeddedEtcd, tmp: Path, resources: list[dict[str, object]]) -> None:
    docs = [{"apiVersion": "l3fabric.io/v1", **r} for r in resources]
    (tmp / "res.yaml").write_text(yaml.safe_dump_all(docs))
    r = fabricctl(etcd, "apply", "-f", str(tmp / "res.yaml"))
    assert r.returncode == 0, r.stderr


def apply_and_render(etcd: EmbeddedEtcd, tmp: Path, fmt: str, *extra: str) -> str:
    apply(etcd, tmp, RESOURCES)
    r = fabricctl(etcd, "tor-config", "--peer-group", "rack1", "--format", fmt, *extra)
    assert r.returncode == 0, r.stderr
    assert "10.99.9.2" not in r.stdout  # rack2's peer is not in the group
    return r.stdout


def birdc(sock: Path, *cmd: str) -> str:
    return subprocess.run(["birdc", "-s", str(sock), *cmd], capture_output=True, text=True,
                          timeout=10).stdout


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 40,
             debug: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{debug()}")
        time.sleep(0.3)


def kernel_routes(ns: str) -> dict[str, str]:
    out = json.loads(sh("ip", "-n", ns, "-j", "route", "show"))
    return {r["dst"]: f"{r.get('gateway', '')} {r.get('protocol', '')}" for r in out}


def check_node_side(lab: Lab, n1_sock: Path, n2_sock: Path) -> None:
    def n2_has_n1_block() -> bool:
        return "10.244.1.0/26" in birdc(n2_sock, "show", "route")

    wait_for("n1's block to reach n2 through the ToR", n2_has_n1_block,
             debug=lambda: birdc(n2_sock, "show", "route", "all"))
    detail = birdc(n2_sock, "show", "route", "10.244.1.0/26", "all")
    assert "10.99.2.2" in detail  # next hop self at the ToR
    assert "65000 65001" in detail  # AS path: the ToR, then n1
    assert "192.168.50.0/24" not in birdc(n2_sock, "show", "route")


def test_bird_tor_from_tor_config(etcd: EmbeddedEtcd, lab: Lab) -> None:
    conf = apply_and_render(etcd, lab.tmp, "bird")
    tor = lab.bird(lab.tor, "tor", conf)
    n1 = lab.bird(lab.n1, "n1", node_bird(1, 65001, N1_ANNOUNCES))
    n2 = lab.bird(lab.n2, "n2", node_bird(2, 65002, N2_ANNOUNCES))

    def established() -> bool:
        return birdc(tor, "show", "protocols").count("Established") == 2

    wait_for("both ToR sessions Established", established,
             debug=lambda: birdc(tor, "show", "protocols", "all"))

    def all_in_pool_routes() -> bool:
        table = birdc(tor, "show", "route")
        return all(p in table for p, ok in (N1_ANNOUNCES | N2_ANNOUNCES).items() if ok)

    wait_for("the in-pool routes at the ToR", all_in_pool_routes,
             debug=lambda: birdc(tor, "show", "route", "all"))
    table = birdc(tor, "show", "route")
    for prefix, accepted in N1_ANNOUNCES.items():
        assert (prefix in table) == accepted, (prefix, table)
    fib = kernel_routes(lab.tor)
    assert fib["10.244.1.0/26"] == "10.99.1.1 bird"
    assert fib["10.244.2.0/26"] == "10.99.2.1 bird"
    assert "192.168.50.0/24" not in fib and "10.250.0.0/26" not in fib
    check_node_side(lab, n1, n2)


def test_bird_snippet_included_from_a_stock_bird_conf(etcd: EmbeddedEtcd, lab: Lab) -> None:
    apply(etcd, lab.tmp, RESOURCES)
    snippet = lab.tmp / "l3fabric.conf"
    r = fabricctl(etcd, "tor-config", "--peer-group", "rack1", "--snippet",
                  "--output", str(snippet))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(snippet.stat().st_mode) == 0o640  # it holds the MD5 password
    assert PASSWORD in snippet.read_text() and r.stdout == ""

    # The router runs its stock configuration first; the snippet is included and loaded
    # with `birdc configure`, as an operator adds it to a running router.
    tor = lab.bird(lab.tor, "tor", STOCK_BIRD)
    wait_for("the ToR's BIRD", lambda: "BIRD" in birdc(tor, "show", "status"), timeout=15)
    conf = lab.tmp / "tor.conf"
    conf.write_text(STOCK_BIRD + f'include "{snippet}";\n')
    assert "Reconfigured" in birdc(tor, "configure"), birdc(tor, "configure", "check")
    n1 = lab.bird(lab.n1, "n1", node_bird(1, 65001, N1_ANNOUNCES))
    n2 = lab.bird(lab.n2, "n2", node_bird(2, 65002, N2_ANNOUNCES))
    wait_for("both ToR sessions Established",
             lambda: birdc(tor, "show", "protocols").count("Established") == 2,
             debug=lambda: birdc(tor, "show", "protocols", "all"))
    # The stock kernel protocol (export all) puts what the snippet's sessions learn in the FIB.
    wait_for("n1's block in the ToR's FIB", lambda: "10.244.1.0/26" in kernel_routes(lab.tor),
             debug=lambda: birdc(tor, "show", "route", "all"))
    assert kernel_routes(lab.tor)["10.244.1.0/26"] == "10.99.1.1 bird"
    assert "192.168.50.0/24" not in birdc(tor, "show", "route")
    check_node_side(lab, n1, n2)

    r = fabricctl(etcd, "tor-config", "--check", str(snippet))
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    # A new pool: the ToR's import filter no longer lists every pool.
    apply(etcd, lab.tmp, [{"kind": "IPPool", "metadata": {"name": "more"},
                           "spec": {"cidr": "10.245.0.0/16", "blockSize": 26}}])
    r = fabricctl(etcd, "tor-config", "--check", str(snippet))
    assert r.returncode == 1, r.stdout + r.stderr
    added = [ln for ln in r.stdout.splitlines() if ln.startswith("+") and "10.245.0.0/16" in ln]
    assert added and "out of date" in r.stderr, r.stdout + r.stderr
    r = fabricctl(etcd, "tor-config", "--peer-group", "rack1", "--snippet",
                  "--output", str(snippet))
    assert r.returncode == 0, r.stderr
    assert "Reconfigured" in birdc(tor, "configure"), birdc(tor, "configure", "check")
    assert fabricctl(etcd, "tor-config", "--check", str(snippet)).returncode == 0


@pytest.mark.skipif(frr_missing() is not None, reason=str(frr_missing()))
@pytest.mark.parametrize("snippet", [False, True], ids=["whole", "snippet-in-stock-frr-conf"])
def test_frr_tor_from_tor_config(etcd: EmbeddedEtcd, lab: Lab, snippet: bool) -> None:
    if snippet:  # FRR has no include: the snippet's lines follow the router's own
        conf = STOCK_FRR + apply_and_render(etcd, lab.tmp, "frr", "--snippet")
    else:
        conf = apply_and_render(etcd, lab.tmp, "frr")
    frr = Frr(lab.tor, lab.tmp)
    lab.frr.append(frr)
    frr.start(conf)
    n1 = lab.bird(lab.n1, "n1", node_bird(1, 65001, N1_ANNOUNCES))
    n2 = lab.bird(lab.n2, "n2", node_bird(2, 65002, N2_ANNOUNCES))
    vtysh = frr.vtysh

    def established() -> bool:
        return list(frr.peers().values()) == ["Established", "Established"]

    wait_for("both FRR sessions Established", established,
             debug=lambda: vtysh("show bgp summary") + vtysh("show running-config"))

    def rib() -> dict[str, object]:
        try:
            routes: dict[str, object] = json.loads(vtysh("show bgp ipv4 unicast json"))["routes"]
            return routes
        except (KeyError, json.JSONDecodeError):
            return {}

    wait_for("the in-pool routes at the ToR",
             lambda: {"10.244.1.0/26", "10.244.7.9/32", "10.244.2.0/26"} <= set(rib()),
             debug=lambda: vtysh("show bgp ipv4 unicast"))
    assert set(rib()) == {"10.244.1.0/26", "10.244.7.9/32", "10.244.2.0/26"}

    def in_fib() -> bool:
        return "10.244.1.0/26" in kernel_routes(lab.tor)

    wait_for("zebra to install the routes", in_fib, timeout=15,
             debug=lambda: sh("ip", "-n", lab.tor, "route"))
    fib = kernel_routes(lab.tor)
    assert fib["10.244.1.0/26"].startswith("10.99.1.1 ")
    assert "192.168.50.0/24" not in fib
    check_node_side(lab, n1, n2)
