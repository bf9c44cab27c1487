"""fabricctl the way kubectl, calicoctl and etcdctl users drive it, against a real etcd:
flags anywhere, settings from the environment or a config file, ``get -l/-o wide/-o name``,
``delete -f``, ``version``, ``ipam show --ip``, shell completion, and every file of
``examples/`` applying cleanly and coming back unchanged through ``get -o yaml|json``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from datastore.client import Datastore, EtcdConfig
from datastore.embedded import EmbeddedEtcd
from datastore.version import l3fabric_version
from ipam.allocator import IpamClient

ROOT = Path(__file__).resolve().parents[2]
FABRICCTL = str(Path(sys.executable).with_name("fabricctl"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Kinds in examples/ (and the namespaced ones, listed across namespaces).
EXAMPLE_KINDS = ["bgpconfig", "bgppeer", "ippool", "ipamconfig", "node", "namespace",
                 "networkpolicy -A", "gnp"]


@pytest.fixture
def clean_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a user who set nothing: no L3FABRIC_*/ETCDCTL_* variables, and a
    config file path that does not exist, so /etc is never read."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("L3FABRIC_", "ETCDCTL_"))}
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    env["L3FABRIC_CONFIG"] = str(empty)
    yield env


def fab(env: dict[str, str], *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FABRICCTL, *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.fixture
def env(etcd: EmbeddedEtcd, clean_env: dict[str, str]) -> dict[str, str]:
    return {**clean_env, "L3FABRIC_ETCD_ENDPOINTS": etcd.endpoint}


def apply_examples(env: dict[str, str]) -> None:
    r = fab(env, "apply", "-f", "-", stdin="\n---\n".join(f.read_text() for f in EXAMPLES))
    assert r.returncode == 0, r.stderr


def test_endpoints_from_flag_anywhere_env_etcdctl_and_config_file(
        etcd: EmbeddedEtcd, clean_env: dict[str, str], tmp_path: Path) -> None:
    ep = etcd.endpoint
    host_port = ep.split("://", 1)[1]
    ok = fab(clean_env, "apply", "-f", str(ROOT / "examples/nodes.yaml"),
             "--etcd-endpoints", ep)  # the flag after the command
    assert ok.returncode == 0, ok.stderr
    want = "node/node1\nnode/node2\n"
    assert fab(clean_env, "get", "node", "-o", "name", "--etcd-endpoints", ep).stdout == want
    # etcdctl's variable, in etcdctl's HOST:PORT form.
    r = fab({**clean_env, "ETCDCTL_ENDPOINTS": host_port}, "get", "node", "-o", "name")
    assert r.returncode == 0 and r.stdout == want, r.stderr
    # The config file, by a host name (localhost: /etc/hosts answers it, no DNS).
    conf = tmp_path / "fabricctl.conf"
    conf.write_text(f'# like agent.conf\nL3FABRIC_NODE=node1\n'
                    f'L3FABRIC_ETCD_ENDPOINTS="http://localhost:{etcd.client_port}"\n')
    r = fab({**clean_env, "L3FABRIC_CONFIG": str(conf)}, "get", "node", "-o", "name")
    assert r.returncode == 0 and r.stdout == want, r.stderr
    # L3FABRIC_* beats ETCDCTL_*, which beats the file: a dead endpoint first in line fails.
    dead = "127.0.0.1:1"
    r = fab({**clean_env, "L3FABRIC_CONFIG": str(conf), "ETCDCTL_ENDPOINTS": dead,
             "L3FABRIC_ETCD_TIMEOUT": "0.5"}, "get", "node")
    assert r.returncode == 1 and "127.0.0.1:1 (env ETCDCTL_ENDPOINTS)" in r.stderr
    r = fab({**clean_env, "ETCDCTL_ENDPOINTS": dead, "L3FABRIC_ETCD_ENDPOINTS": ep},
            "get", "node", "-o", "name")
    assert r.returncode == 0 and r.stdout == want, r.stderr


def test_get_selector_wide_name_and_nothing_found(env: dict[str, str]) -> None:
    apply_examples(env)
    r = fab(env, "get", "node", "-l", "rack=r1", "-o", "name")
    assert r.returncode == 0 and r.stdout.split() == ["node/node1", "node/node2"], r.stderr
    r = fab(env, "label", "namespace", "demo", "tier=edge")
    assert r.returncode == 0, r.stderr
    r = fab(env, "get", "namespace", "-l", "team in (web,db),tier", "-o", "name")
    assert r.stdout.split() == ["namespace/demo"], r.stderr
    # Nothing matches: kubectl's message on stderr, nothing on stdout, success.
    r = fab(env, "get", "node", "-l", "rack!=r1")
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.strip() == "No resources found."
    r = fab(env, "get", "networkpolicy", "-n", "nosuch")
    assert r.returncode == 0 and r.stderr.strip() == "No resources found in nosuch namespace."
    # A bad selector is a usage error.
    r = fab(env, "get", "node", "-l", "rack in r1")
    assert r.returncode == 2 and "label selector" in r.stderr
    # -o wide: the default columns and more.
    plain = fab(env, "get", "node").stdout.splitlines()[0].split()
    wide = fab(env, "get", "node", "-o", "wide").stdout.splitlines()[0].split()
    assert set(plain) < set(wide) and "IPV6" in wide


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_examples_apply_and_come_back_unchanged(env: dict[str, str], fmt: str) -> None:
    """Every example applies; what ``get -o yaml|json`` prints, ``apply -f -`` takes back
    without changing a byte in etcd."""
    if fmt == "yaml":  # each file on its own once; the json run takes them in one go
        for f in EXAMPLES:
            r = fab(env, "apply", "-f", str(f))
            assert r.returncode == 0, (f.name, r.stderr)
            assert r.stdout and all(ln.endswith(" created") for ln in r.stdout.splitlines())
    else:
        apply_examples(env)
    printed = []
    for kind in EXAMPLE_KINDS:
        got = fab(env, "get", *kind.split(), "-o", fmt)
        assert got.returncode == 0 and got.stdout.strip() not in ("", "[]"), (kind, got.stderr)
        printed.append(got.stdout)
    back = fab(env, "apply", "-f", "-", stdin="\n---\n".join(printed))
    assert back.returncode == 0, back.stderr
    lines = back.stdout.splitlines()
    assert len(lines) == sum(len(re.findall(r"(?m)^kind: ", f.read_text())) for f in EXAMPLES)
    assert all(line.endswith(" unchanged") for line in lines), lines
    one = fab(env, "get", "ippool", "default", "-o", fmt)
    obj = yaml.safe_load(one.stdout) if fmt == "yaml" else json.loads(one.stdout)
    assert obj["spec"]["cidr"] == "10.244.0.0/16"
    back = fab(env, "apply", "-f", "-", stdin=one.stdout)
    assert back.stdout.strip() == "IPPool default unchanged"


def test_delete_what_a_file_describes(env: dict[str, str]) -> None:
    policy = str(ROOT / "examples/policy.yaml")
    apply_examples(env)
    r = fab(env, "delete", "-f", policy)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["Namespace demo deleted",
                                     "NetworkPolicy demo/web-allow-frontend deleted",
                                     "GlobalNetworkPolicy platform-baseline deleted"]
    assert fab(env, "get", "gnp").stderr.strip() == "No resources found."
    # Again: each one is not found (exit 1), unless that is fine.
    again = fab(env, "delete", "-f", policy)
    assert again.returncode == 1 and again.stderr.count("not found") == 3
    assert fab(env, "delete", "-f", policy, "--ignore-not-found").returncode == 0
    # From stdin, and a document that does not validate deletes nothing.
    pool = (ROOT / "examples/ippool.yaml").read_text()
    r = fab(env, "delete", "-f", "-", stdin=pool + "\n---\nkind: Gizmo\n")
    assert r.returncode == 1 and "document 3" in r.stderr
    assert fab(env, "get", "ippool", "-o", "name").stdout == "ippool/default\n"
    r = fab(env, "delete", "-f", "-", stdin=pool)
    assert r.returncode == 0 and "IPPool default deleted" in r.stdout, r.stderr
    # What get -o name prints, delete takes.
    (name,) = fab(env, "get", "bgpconfig", "-o", "name").stdout.split()
    r = fab(env, "delete", name)
    assert r.returncode == 0 and r.stdout.strip() == "BGPConfiguration default deleted"


def test_version_shows_client_schema_agents_and_warns_on_skew(
        etcd: EmbeddedEtcd, env: dict[str, str]) -> None:
    apply_examples(env)  # writes the schema key too
    me = l3fabric_version()
    for node, version in (("node1", me), ("node2", "0.0.1")):
        status = {"apiVersion": "l3fabric.io/v1", "kind": "NodeStatus",
                  "metadata": {"name": node}, "status": {"version": version}}
        subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "put",
                        f"/l3fabric/v1/status/nodes/{node}", json.dumps(status)],
                       check=True, capture_output=True, env={**env, "ETCDCTL_API": "3"})
    r = fab(env, "version")
    assert r.returncode == 0, r.stderr
    assert f"Client version: {me}" in r.stdout and "Datastore schema: 1" in r.stdout
    rows = {ln.split()[0]: ln.split()[1] for ln in r.stdout.splitlines()
            if ln.startswith("node")}
    assert rows == {"node1": me, "node2": "0.0.1"}
    assert r.stderr.strip() == (f"fabricctl: warning: node node2: the agent runs 0.0.1, "
                                f"this fabricctl is {me}")
    data = json.loads(fab(env, "version", "-o", "json").stdout)
    assert data["datastore"]["schema"] == 1 and len(data["warnings"]) == 1
    # etcd away: the client part still prints, then one error line.
    r = fab({**env, "L3FABRIC_ETCD_ENDPOINTS": "127.0.0.1:1", "L3FABRIC_ETCD_TIMEOUT": "0.5"},
            "version")
    assert r.returncode == 1 and f"Client version: {me}" in r.stdout
    assert fab(env, "--version").stdout.strip() == f"fabricctl {me}"


def test_ipam_show_ip_names_the_holder(etcd: EmbeddedEtcd, env: dict[str, str]) -> None:
    for f in ("ippool.yaml", "nodes.yaml"):
        assert fab(env, "apply", "-f", str(ROOT / "examples" / f)).returncode == 0

    async def allocate() -> str:
        async with Datastore(EtcdConfig.from_strings(etcd.endpoint)) as ds:
            (a,) = await IpamClient(ds, "node1").auto_assign(
                "k8s.web-1.eth0", namespace="demo", pod="web-1")
            return a.address

    addr = asyncio.run(allocate())
    r = fab(env, "ipam", "show", "--ip", addr, "-o", "json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["handle"], got["namespace"], got["pod"], got["node"], got["pool"]) == (
        "k8s.web-1.eth0", "demo", "web-1", "node1", "default")
    assert got["block"].endswith("/26") and got["blockNode"] == "node1"
    assert got["handleRecord"] is True
    table = fab(env, "ipam", "show", "--ip", addr).stdout
    assert "k8s.web-1.eth0" in table and "demo/web-1" in table and got["block"] in table
    free = fab(env, "ipam", "show", "--ip", "10.244.200.1")
    assert free.returncode == 1 and "not allocated" in free.stdout and "pool default" in (
        free.stdout)
    assert fab(env, "ipam", "show", "--ip", "nonsense").returncode == 2


def complete(env: dict[str, str], line: str) -> list[str]:
    """What the shell's completion function gets: argcomplete's protocol (the request in
    the environment, the answer on file descriptor 8), as the generated script runs it."""
    r = subprocess.run(
        ["bash", "-c", f'"{FABRICCTL}" 8>&1 1>/dev/null 2>/dev/null'],
        env={**env, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "bash", "COMP_LINE": line,
             "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n"},
        capture_output=True, text=True, timeout=30)
    return sorted(w.strip() for w in r.stdout.split("\n") if w.strip())


def test_shell_completion(clean_env: dict[str, str]) -> None:
    assert complete(clean_env, "fabricctl ge") == ["get"]
    assert {"ippool", "ippools"} <= set(complete(clean_env, "fabricctl get ipp"))
    assert "--etcd-endpoints" in complete(clean_env, "fabricctl get node --etcd-e")
    assert complete(clean_env, "fabricctl get node -o w") == ["wide"]
    for shell in ("bash", "zsh"):
        r = fab(clean_env, "completion", shell)
        assert r.returncode == 0 and "fabricctl" in r.stdout, r.stderr
    # The bash script registers the completion when sourced.
    script = fab(clean_env, "completion", "bash").stdout
    r = subprocess.run(["bash", "-c", script + "\ncomplete -p fabricctl"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "fabricctl" in r.stdout, r.stderr
