"""``fabricctl apply -f`` takes Calico's YAML (projectcalico.org/v3) for the kinds l3fabric
maps, against a real etcd: the stored values are l3fabric.io/v1, ``get`` lists them,
``policy explain`` evaluates the host endpoint, ``delete -f`` removes what the file names,
and a Calico kind l3fabric does not map is refused with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

CALICO = Path(__file__).resolve().parents[2] / "examples" / "calico"
FABRICCTL = str(Path(sys.executable).with_name("fabricctl"))


def fab(etcd: EmbeddedEtcd, *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, L3FABRIC_ETCD_ENDPOINTS=etcd.endpoint)
    return subprocess.run([FABRICCTL, *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


def test_calico_examples_apply_and_read_back(etcd: EmbeddedEtcd) -> None:
    for f in sorted(CALICO.glob("*.yaml")):
        r = fab(etcd, "apply", "-f", str(f))
        assert r.returncode == 0, r.stderr
    r = fab(etcd, "get", "hostendpoint", "node1-all", "-o", "json")
    assert r.returncode == 0, r.stderr
    hep = json.loads(r.stdout)
    assert hep["apiVersion"] == "l3fabric.io/v1" and hep["spec"]["interfaceName"] == "*"
    pool = json.loads(fab(etcd, "get", "ippool", "internet", "-o", "json").stdout)
    assert pool["spec"]["natOutgoing"] is True
    assert "node-no-8080" in fab(etcd, "get", "gnp").stdout
    # policy explain evaluates the host endpoint's program: 8080 closed, SSH failsafe.
    r = fab(etcd, "policy", "explain", "hostendpoint/node1-all", "--peer", "10.97.0.2",
            "--port", "8080/tcp")
    assert r.returncode == 0, r.stderr
    assert "(ingress, to the host): DENIED - denied by gnp/node-no-8080 ingress[0]" in r.stdout
    r = fab(etcd, "policy", "explain", "hep/node1-all", "--peer", "10.97.0.2", "--port", "22")
    assert "(ingress, to the host): ALLOWED - failsafe port 22/tcp" in r.stdout, r.stdout
    # delete -f takes the same Calico file.
    r = fab(etcd, "delete", "-f", str(CALICO / "host-endpoints.yaml"))
    assert r.returncode == 0, r.stderr
    assert fab(etcd, "get", "hostendpoint", "node1-all").returncode == 1
    r = fab(etcd, "apply", "-f", "-", stdin=(
        "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: p}\nspec: {}\n"))
    assert r.returncode == 1 and "write it with apiVersion: l3fabric.io/v1" in r.stderr
