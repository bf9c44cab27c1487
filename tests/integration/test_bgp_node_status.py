"""fabricctl node status against a real etcd holding an agent-written NodeStatus."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime

from datastore.embedded import EmbeddedEtcd

STATUS = {
    "apiVersion": "l3fabric.io/v1", "kind": "NodeStatus", "metadata": {"name": "n1"},
    "status": {"updated": datetime.now(UTC).isoformat(), "bgp": {"peers": [
        {"peerIP": "10.99.1.2", "state": "Established", "type": "node", "asNumber": 65000,
         "since": datetime.now(UTC).isoformat(), "prefixesIn": 1, "prefixesOut": 2}]}},
}


def fab(etcd: EmbeddedEtcd, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, L3FABRIC_ETCD_ENDPOINTS=etcd.endpoint)
    return subprocess.run([".venv/bin/fabricctl", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def test_node_status_table_json_and_missing(etcd: EmbeddedEtcd) -> None:
    subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "put",
                    "/l3fabric/v1/status/nodes/n1", json.dumps(STATUS)], check=True,
                   capture_output=True)
    r = fab(etcd, "node", "status")
    # Its liveness unknown and not in sync: not healthy, exit 3 (output as always).
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    # A status written by hand (no lease, no Node): listed, its liveness unknown.
    assert lines[1].split()[:4] == ["n1", "(no", "Node)", "unknown"]
    peers = next(i for i, line in enumerate(lines) if "PEER ADDRESS" in line)
    assert lines[peers].split()[:3] == ["NODE", "PEER", "ADDRESS"]
    assert lines[peers + 1].split()[:5] == ["n1", "10.99.1.2", "node", "65000", "Established"]
    r = fab(etcd, "node", "status", "n1", "-o", "json")
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["peers"][0]["prefixesOut"] == 2
    r = fab(etcd, "node", "status", "ghost")
    assert r.returncode == 1 and "does not exist" in r.stderr
