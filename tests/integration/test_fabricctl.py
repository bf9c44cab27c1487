"""fabricctl against a real etcd, run as a user runs it: the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datastore.embedded import EmbeddedEtcd

ROOT = Path(__file__).resolve().parents[2]
FABRICCTL = str(Path(sys.executable).with_name("fabricctl"))

POOL = {"apiVersion": "l3fabric.io/v1", "kind": "IPPool", "metadata": {"name": "p1"},
        "spec": {"cidr": "10.244.0.0/16", "blockSize": 26}}


def fab(etcd: EmbeddedEtcd, *args: str,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, L3FABRIC_ETCD_ENDPOINTS=etcd.endpoint)
    return subprocess.run([FABRICCTL, *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


def etcdctl(etcd: EmbeddedEtcd, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, *args], capture_output=True,
                          text=True, env=env, timeout=30, check=True)


def test_etcdctl_put_then_get_json(etcd: EmbeddedEtcd) -> None:
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/p1", json.dumps(POOL))
    r = fab(etcd, "get", "ippool", "p1", "-o", "json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["spec"]["cidr"] == "10.244.0.0/16"
    assert obj["spec"]["blockSize"] == 26
    assert obj["metadata"]["name"] == "p1"


def test_malformed_value_is_listed_as_not_valid_with_reason(etcd: EmbeddedEtcd) -> None:
    bad = json.loads(json.dumps(POOL))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["blockSize"] = 33
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/bad", json.dumps(bad))
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/p1", json.dumps(POOL))
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/trunc", '{"apiVersion": "l3fa')

    r = fab(etcd, "get", "ippool")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[-1] == "VALID"
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert "no: config/ippools/bad: spec.blockSize" in lines["bad"] and "33" in lines["bad"]
    assert "no: config/ippools/trunc" in lines["trunc"]
    assert lines["p1"].split()[-1] == "yes" and "10.244.0.0/16" in lines["p1"]

    one = fab(etcd, "get", "ippool", "bad", "-o", "json")
    assert one.returncode == 1
    assert "config/ippools/bad: spec.blockSize" in one.stderr
    assert json.loads(one.stdout)["invalid"].startswith("config/ippools/bad")


def test_apply_get_delete_roundtrip_yaml(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    docs = [
        POOL,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod",
                                                               "labels": {"team": "a"}}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "deny-all", "namespace": "prod"},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
    ]
    f = tmp_path / "res.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    r = fab(etcd, "apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert "IPPool p1 created" in r.stdout
    assert "NetworkPolicy prod/deny-all created" in r.stdout
    again = fab(etcd, "apply", "-f", str(f))
    assert again.stdout.count("unchanged") == 3

    got = fab(etcd, "get", "networkpolicy", "deny-all", "-n", "prod", "-o", "yaml")
    assert got.returncode == 0, got.stderr
    assert yaml.safe_load(got.stdout)["spec"]["policyTypes"] == ["Ingress"]
    # Not in the default namespace.
    assert fab(etcd, "get", "netpol", "deny-all").returncode == 1

    assert fab(etcd, "delete", "networkpolicy", "deny-all", "-n", "prod").returncode == 0
    gone = fab(etcd, "get", "networkpolicy", "deny-all", "-n", "prod")
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_apply_from_stdin_validates_everything_first(etcd: EmbeddedEtcd) -> None:
    good = json.dumps(POOL)
    bad = json.dumps({**POOL, "metadata": {"name": "p2"},
                      "spec": {"cidr": "10.300.0.0/16"}})
    r = fab(etcd, "apply", "-f", "-", stdin=good + "\n---\n" + bad)
    assert r.returncode == 1
    assert "document 2" in r.stderr and "spec.cidr" in r.stderr
    assert "Traceback" not in r.stderr
    # Nothing was written: the good document did not land either.
    out = etcdctl(etcd, "get", "--prefix", "/l3fabric/v1/", "--keys-only").stdout
    assert "ippools/p1" not in out


@pytest.mark.parametrize("args,code", [
    (["get", "gizmo"], 2),
    (["label", "workload", "nopod", "a=b"], 2),
    (["frobnicate"], 2),
])
def test_usage_errors_exit_2(etcd: EmbeddedEtcd, args: list[str], code: int) -> None:
    r = fab(etcd, *args)
    assert r.returncode == code
    assert "Traceback" not in r.stderr and r.stderr.strip()


def test_etcd_unreachable_is_one_line_exit_1(tmp_path: Path) -> None:
    env = dict(os.environ, L3FABRIC_ETCD_ENDPOINTS="http://127.0.0.1:1",
               L3FABRIC_ETCD_TIMEOUT="1")
    r = subprocess.run([FABRICCTL, "get", "ippool"], capture_output=True, text=True, env=env,
                       timeout=30)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1
    assert "127.0.0.1:1" in r.stderr


def test_label_namespace_creates_and_removes(etcd: EmbeddedEtcd) -> None:
    r = fab(etcd, "label", "namespace", "dev", "team=blue", "tier=web")
    assert r.returncode == 0, r.stderr
    r = fab(etcd, "label", "namespace", "dev", "tier-")
    assert r.returncode == 0, r.stderr
    obj = json.loads(fab(etcd, "get", "namespace", "dev", "-o", "json").stdout)
    assert obj["metadata"]["labels"] == {"team": "blue"}
    bad = fab(etcd, "label", "namespace", "dev", "bad key=x")
    assert bad.returncode == 1 and "label" in bad.stderr.lower()


def test_embedded_etcd_start_stop_is_idempotent(tmp_path: Path) -> None:
    from datastore.embedded import free_port

    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    port, peer = free_port(), free_port()
    start = [FABRICCTL, "etcd", "start", "--client-port", str(port), "--peer-port", str(peer)]
    try:
        r1 = subprocess.run(start, capture_output=True, text=True, env=env, timeout=60)
        assert r1.returncode == 0, r1.stderr
        r2 = subprocess.run(start, capture_output=True, text=True, env=env, timeout=60)
        assert r2.returncode == 0 and "already running" in r2.stdout
        env2 = dict(env, L3FABRIC_ETCD_ENDPOINTS=f"http://127.0.0.1:{port}")
        r3 = subprocess.run([FABRICCTL, "apply", "-f", "-"], input=json.dumps(POOL),
                            capture_output=True, text=True, env=env2, timeout=60)
        assert r3.returncode == 0, r3.stderr
    finally:
        stop = subprocess.run([FABRICCTL, "etcd", "stop", "--purge"], capture_output=True,
                              text=True, env=env, timeout=60)
    assert stop.returncode == 0
    st = subprocess.run([FABRICCTL, "etcd", "status"], capture_output=True, text=True, env=env)
    assert st.returncode == 1


def test_delete_pool_with_allocations_is_refused(etcd: EmbeddedEtcd) -> None:
    import asyncio

    from datastore.client import Datastore, EtcdConfig
    from ipam.allocator import IpamClient

    assert fab(etcd, "apply", "-f", "-", stdin=json.dumps(POOL)).returncode == 0

    async def allocate() -> str:
        async with Datastore(EtcdConfig.from_strings(etcd.endpoint)) as ds:
            got = await IpamClient(ds, "n1").auto_assign("net.c1.eth0", namespace="default",
                                                         pod="a")
            return got[0].address

    addr = asyncio.run(allocate())
    r = fab(etcd, "delete", "ippool", "p1")
    assert r.returncode == 1 and "still has 1 allocated" in r.stderr
    assert fab(etcd, "get", "ippool", "p1").returncode == 0
    assert fab(etcd, "ipam", "release", addr).returncode == 0
    assert fab(etcd, "delete", "ippool", "p1").returncode == 0
    assert fab(etcd, "get", "ippool", "p1").returncode == 1
