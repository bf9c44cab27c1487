"""``fabricctl policy explain``: selecting policies in order, the deciding rule per
direction, and the dataplane trace, from a decoded state (no etcd)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from datastore import model
from fabricctl.common import CliError
from fabricctl.policy_cmd import explain, parse_port

STATE_YAML = """
apiVersion: l3fabric.io/v1
kind: WorkloadEndpoint
metadata: {name: db.eth0, namespace: default}
spec: {node: n1, pod: db, endpoint: eth0, containerID: c1, ipNetworks: [10.244.1.10/32],
       hostInterface: fab00000000001, labels: {role: db}}
---
apiVersion: l3fabric.io/v1
kind: WorkloadEndpoint
metadata: {name: fe.eth0, namespace: default}
spec: {node: n2, pod: fe, endpoint: eth0, containerID: c2, ipNetworks: [10.244.2.10/32],
       hostInterface: fab00000000002, labels: {role: frontend}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}], ports: [{port: 6379}]}]
---
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-outside}
spec:
  order: 10
  selector: all()
  ingress: [{action: Deny, source: {nets: [192.0.2.0/24]}}]
"""


def state() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in yaml.safe_load_all(STATE_YAML):
        r = model.parse_document(d)
        out[model.key_for(r)] = r
    return out


def test_selecting_policies_in_order() -> None:
    data = explain(state(), "default/db", None, None)
    assert [p["policy"] for p in data["policies"]] == ["gnp/deny-outside",
                                                       "np/default/db-from-frontend"]
    assert data["node"] == "n1" and data["flows"] == []


def test_flow_allowed_by_np_rule() -> None:
    data = explain(state(), "default/db", "default/fe", "6379/tcp")
    ingress = data["flows"][0]
    assert ingress["allowed"] is True
    assert "np/default/db-from-frontend ingress[0]" in ingress["ingress"]
    assert ingress["dataplane"]["allowed"] is True
    wrong = explain(state(), "default/db", "default/fe", "6380/tcp")["flows"][0]
    assert wrong["allowed"] is False and "isolated for ingress" in wrong["ingress"]
    assert wrong["dataplane"]["allowed"] is False


def test_flow_denied_by_gnp() -> None:
    data = explain(state(), "default/db", "192.0.2.5", "6379/tcp")
    assert data["flows"][0]["allowed"] is False
    assert "gnp/deny-outside ingress[0] Deny" in data["flows"][0]["ingress"]
    assert any("gnp/deny-outside" in s for s in data["flows"][0]["dataplane"]["trace"])


def test_usage_errors() -> None:
    with pytest.raises(CliError):
        parse_port("http/tcp")
    with pytest.raises(CliError):
        explain(state(), "db", None, None)
    with pytest.raises(CliError):
        explain(state(), "default/nope", None, None)
    assert parse_port("53/udp") == (17, 53)
