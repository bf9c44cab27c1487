"""Calico YAML (projectcalico.org/v3) for fabricctl apply: the examples map to l3fabric.io/v1
resources, and what l3fabric cannot honour is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from datastore import model
from fabricctl.calico_yaml import translate

CALICO = Path(__file__).resolve().parents[2] / "examples" / "calico"


def parsed(doc: dict[str, Any], warnings: list[str] | None = None) -> model.Resource:
    return model.parse_document(translate(doc, (warnings if warnings is not None
                                                else []).append))


def test_every_calico_example_maps() -> None:
    warnings: list[str] = []
    seen: list[model.Resource] = []
    for f in sorted(CALICO.glob("*.yaml")):
        seen += [parsed(d, warnings) for d in yaml.safe_load_all(f.read_text()) if d]
    by_kind = {r.kind: r for r in seen}
    assert set(by_kind) == {"IPPool", "HostEndpoint", "GlobalNetworkPolicy",
                            "FelixConfiguration"}
    pool = by_kind["IPPool"]
    assert isinstance(pool, model.IPPool) and pool.spec.nat_outgoing
    hep = by_kind["HostEndpoint"]
    assert isinstance(hep, model.HostEndpoint) and hep.spec.interface_name == "*"
    felix = by_kind["FelixConfiguration"]
    assert isinstance(felix, model.FelixConfiguration)
    assert felix.spec.failsafe_inbound_host_ports == model.DEFAULT_FAILSAFE_INBOUND
    assert warnings == ["FelixConfiguration: spec.logSeverityScreen tunes Calico's own "
                        "dataplane; ignored"]
    selectors = [r for r in seen if r.metadata.name == "selector-operators"]
    assert selectors and isinstance(selectors[0], model.GlobalNetworkPolicy)
    assert selectors[0].spec.selector.matches({"app": "webshop", "env": "prod"})


def doc(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": "x"},
            "spec": spec}


@pytest.mark.parametrize(("obj", "path", "fragment"), [
    (doc("IPPool", {"cidr": "10.0.0.0/16", "ipipMode": "Always"}), "spec.ipipMode",
     "not supported"),
    (doc("IPPool", {"cidr": "10.0.0.0/16", "allowedUses": ["Tunnel"]}), "spec.allowedUses",
     "for workloads"),
    (doc("GlobalNetworkPolicy", {"preDNAT": True}), "spec.preDNAT", "not supported"),
    (doc("GlobalNetworkPolicy", {"tier": "security"}), "spec.tier", "not supported"),
    (doc("GlobalNetworkPolicy", {"ingress": [{"action": "Allow", "source": {
        "serviceAccounts": {"names": ["a"]}}}]}), "spec.ingress[0].source.serviceAccounts",
     "not supported"),
    (doc("HostEndpoint", {"node": "n1", "interfaceName": "eth0", "profiles": ["p"]}),
     "spec.profiles", "not supported"),
    (doc("Profile", {}), "apiVersion", "write it with apiVersion: l3fabric.io/v1"),
    (doc("NetworkPolicy", {}), "apiVersion", "not mapped by l3fabric"),
])
def test_what_l3fabric_cannot_honour_is_refused_by_name(obj: dict[str, Any], path: str,
                                                         fragment: str) -> None:
    with pytest.raises(model.ValidationError) as exc:
        parsed(obj)
    assert exc.value.path == path and fragment in str(exc.value)


def test_neutral_calico_fields_are_dropped_and_renames_applied() -> None:
    pool = parsed(doc("IPPool", {"cidr": "10.0.0.0/16", "vxlanMode": "Never",
                                 "allowedUses": ["Workload", "Tunnel"]}))
    assert isinstance(pool, model.IPPool) and not pool.spec.nat_outgoing
    bgp = parsed(doc("BGPConfiguration", {"nodeToNodeMeshEnabled": False, "asNumber": 64513,
                                          "logSeverityScreen": "Info"}))
    assert isinstance(bgp, model.BGPConfiguration) and not bgp.spec.node_to_node_mesh
    l3 = {"apiVersion": "l3fabric.io/v1", "kind": "IPPool", "metadata": {"name": "y"},
          "spec": {"cidr": "10.1.0.0/16"}}
    assert translate(l3, print) is l3
