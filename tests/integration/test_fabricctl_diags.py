"""``fabricctl diags`` against a real agent in a test namespace: the tarball holds what a bug
report needs, and the BGP password configured in etcd appears nowhere in it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.exabgp import wait_for
from helpers.fabric import API, Fabric, lan

from datastore.embedded import EmbeddedEtcd

FABRICCTL = str(Path(sys.executable).with_name("fabricctl"))
PASSWORD = "diags-S3cret-md5"


@pytest.fixture
def fabric(netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> Iterator[Fabric]:
    fab = Fabric(netns, etcd, tmp_path)
    try:
        lan(fab, 1)
        fab.pool("p", "10.244.0.0/16")
        # A ToR nobody plays: the session stays down, its MD5 password is in ExaBGP's config.
        fab.put("config/bgppeers/tor-n1", {
            "apiVersion": API, "kind": "BGPPeer", "metadata": {"name": "tor-n1"},
            "spec": {"peerIP": "10.0.0.254", "asNumber": 65000, "node": "n1",
                     "password": PASSWORD}})
        fab.start_agents()
        yield fab
    finally:
        fab.close()


def test_diags_tarball_has_the_report_and_no_password(fabric: Fabric, etcd: EmbeddedEtcd,
                                                      tmp_path: Path) -> None:
    n1 = fabric.nodes["n1"]
    pod = fabric.add_pod("n1", "a")
    exabgp_conf = n1.workdir / "bgp-n1" / "exabgp.conf"
    wait_for(lambda: exabgp_conf.exists() and PASSWORD in exabgp_conf.read_text(), 20,
             "the peer's password in ExaBGP's configuration", 0.1, n1.log_tail)

    out = tmp_path / "diags.tar.gz"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("L3FABRIC_", "ETCDCTL_"))}
    env.update(L3FABRIC_ETCD_ENDPOINTS=etcd.endpoint, L3FABRIC_CONFIG="/dev/null")
    r = subprocess.run([FABRICCTL, "diags", "--node", "n1", "--netns", n1.ns,
                        "--socket", n1.socket, "--metrics-addr", "127.0.0.1:9091",
                        "--log", str(n1.log), "--agent-conf", str(tmp_path / "none"),
                        "--output", str(out)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()}
    assert {"README.txt", "commands.txt", "version.txt", "agent/agent.log",
            "agent/readyz.txt", "agent/metrics.txt", "etcd/nodestatus.json",
            "etcd/config.json", "dataplane/nft-ruleset.txt", "dataplane/ip-route.txt",
            "dataplane/ip-6-route.txt", "bgp/exabgp.conf", "bgp/sessions.txt"} <= set(files)
    text = {name: data.decode() for name, data in files.items()}

    # What a reader of the report needs, from the real agent and its namespace.
    assert "agent ready" in text["agent/agent.log"]
    assert text["agent/readyz.txt"].startswith("GET /readyz: 200")
    assert "l3fabric_" in text["agent/metrics.txt"]
    status = json.loads(text["etcd/nodestatus.json"])
    assert status["status"]["inSync"] is True
    assert pod.ip in text["dataplane/ip-route.txt"]
    assert "table inet l3fabric" in text["dataplane/nft-ruleset.txt"]
    assert "10.0.0.254" in text["bgp/exabgp.conf"]
    assert text["version.txt"].startswith("l3fabric ")

    # The password: nowhere, in any file; redacted where it was.
    leaks = [name for name, data in files.items() if PASSWORD.encode() in data]
    assert leaks == []
    assert 'md5-password "<redacted>"' in text["bgp/exabgp.conf"]
    peer = json.loads(text["etcd/config.json"])["config/bgppeers/tor-n1"]
    assert peer["spec"]["password"] == "<redacted>"
