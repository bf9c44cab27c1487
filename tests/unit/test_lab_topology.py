"""Lab topology files: containerlab's schema, our labels, the address plan, the resources."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from datastore import model
from fabricctl.lab import resources, topology
from fabricctl.lab.topology import TopologyError

REPO = Path(__file__).parents[2]
SCHEMA = Path(__file__).parents[2].parent / "shared/data/clab.schema.json"
FILES = sorted((REPO / "containerlab").glob("*.clab.yml"))


def test_the_three_topologies_exist() -> None:
    names = {f.name for f in FILES}
    assert {"two-node.clab.yml", "leaf-spine.clab.yml", "route-reflector.clab.yml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_valid_against_containerlab_schema(path: Path) -> None:
    if not SCHEMA.exists():
        pytest.skip(f"containerlab's schema is not at {SCHEMA} (see ../shared/data/README.md)")
    jsonschema = pytest.importorskip("jsonschema")
    # containerlab's address patterns use the Unicode classes \p{N}\p{L} (interface zone
    # names), which Python's re does not know; \w stands in for them here.
    text = SCHEMA.read_text().replace("\\\\p{N}\\\\p{L}", "\\\\w")
    schema = json.loads(text)
    doc = yaml.safe_load(path.read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert errors == []
    bad = copy.deepcopy(doc)
    bad["topology"]["nodes"]["mgmt"]["labels"]["l3fabric.role"] = ""  # labels: minLength 1
    bad["topology"]["nodes"]["mgmt"]["kinds"] = {}  # not a node field
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad)), "the schema checks nothing"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_parses_and_says_what_it_demonstrates(path: Path) -> None:
    t = topology.load(path)
    assert t.name == path.name.removesuffix(".clab.yml")
    assert len(t.comment) > 100
    assert len(t.by_role("mgmt")) == 1 and t.by_role("router") and t.by_role("node")
    for n in t.nodes.values():
        assert n.image, f"{n.name} needs an image for real containerlab"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_agent_exec_lines_match_the_address_plan(path: Path) -> None:
    """Real containerlab starts the agent from `exec`; its flags must be what the runner uses."""
    t = topology.load(path)
    doc = yaml.safe_load(path.read_text())
    for n in t.by_role("node"):
        line = " ".join(doc["topology"]["nodes"][n.name]["exec"])
        assert f"--node {n.name} " in line
        assert f"--etcd-endpoints {t.etcd_endpoint}" in line
        assert f"--node-ip {t.fabric_address(n.name)}" in line
        assert f"--metrics-addr {n.mgmt_ip}:9091" in line
        assert "ip route del default" in line  # no route out of the machine
    for n in t.nodes.values():
        if n.role != "mgmt":
            assert ("net.ipv4.ip_forward", "1") in n.sysctls


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_router_binds_point_at_committed_configs(path: Path) -> None:
    from fabricctl.lab.bird import render_bird

    t = topology.load(path)
    doc = yaml.safe_load(path.read_text())
    for r in t.by_role("router"):
        bind = doc["topology"]["nodes"][r.name]["binds"][0]
        src = path.parent / bind.split(":")[0]
        assert src.read_text() == render_bird(t, r.name), \
            f"{src} is stale: run `fabricctl lab render {path.name}`"


def test_two_node_address_plan() -> None:
    t = topology.load(REPO / "containerlab/two-node.clab.yml")
    assert t.etcd_endpoint == "http://172.20.20.2:2379"
    assert str(t.mgmt_gw) == "172.20.20.1/24"
    assert str(t.fabric_address("node1")) == "10.77.1.2/30"
    assert str(t.fabric_address("node2")) == "10.77.2.2/30"
    assert str(t.router_id("tor1")) == "10.77.1.1"
    assert [(s.a, s.b, s.ibgp) for s in t.sessions()] == [
        ("tor1", "node1", False), ("tor1", "node2", False)]


def minimal() -> dict[str, Any]:
    return {
        "name": "mini",
        "topology": {
            "nodes": {
                "mgmt": {"kind": "linux", "labels": {"l3fabric.role": "mgmt"}},
                "r1": {"kind": "linux", "labels": {"l3fabric.role": "router",
                                                   "l3fabric.asn": 65000}},
                "n1": {"kind": "linux", "labels": {"l3fabric.role": "node", "l3fabric.asn": 65001}},
                "n2": {"kind": "linux", "labels": {"l3fabric.role": "node", "l3fabric.asn": 65001,
                                                   "l3fabric.rack": "a"}},
            },
            "links": [{"endpoints": ["r1:eth1", "n1:eth1"]},
                      {"endpoints": ["r1:eth2", "n2:eth1"]}],
        },
    }


def test_derived_address_plan() -> None:
    t = topology.parse(minimal())
    assert t.mgmt.mgmt_ip == ipaddress.IPv4Address("172.20.20.2")
    assert [str(t.nodes[n].mgmt_ip) for n in ("r1", "n1", "n2")] == [
        "172.20.20.10", "172.20.20.11", "172.20.20.12"]
    assert [(str(lk.a.address), str(lk.b.address)) for lk in t.links] == [
        ("10.77.1.1/30", "10.77.1.2/30"), ("10.77.2.1/30", "10.77.2.2/30")]
    assert str(t.pool_cidr) == "10.244.0.0/16" and t.block_size == 26
    assert t.nodes["n2"].rack == "a"


def test_labels_from_defaults_and_kinds() -> None:
    doc = minimal()
    doc["topology"]["kinds"] = {"linux": {"labels": {"l3fabric.asn": 65009}}}
    del doc["topology"]["nodes"]["n1"]["labels"]["l3fabric.asn"]
    assert topology.parse(doc).nodes["n1"].asn == 65009


def _broken(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(minimal())
    cur: Any = doc
    parts = path.split(".")
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    last = parts[-1]
    if value is _DELETE:
        del cur[last]
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("name", "Bad_Name", "name"),
    ("topology.nodes.r1.labels.l3fabric\x00role", None, ""),
    ("topology.nodes.r1.kind", "srl", "kind 'srl'"),
    ("topology.nodes.n1.labels", {"l3fabric.role": "node"}, "l3fabric.asn is required"),
    ("topology.nodes.n1.labels", {"l3fabric.role": "box", "l3fabric.asn": 1}, "l3fabric.role"),
    ("topology.nodes.n1.labels", {"l3fabric.role": "node", "l3fabric.asn": "x"}, "not a number"),
    ("topology.nodes.r1.labels", {"l3fabric.role": "mgmt"}, "exactly one"),
    ("topology.links.0", {"endpoints": ["r1:eth1", "nx:eth1"]}, "not <known node>"),
    ("topology.links.1", {"endpoints": ["r1:eth1", "n2:eth1"]}, "used twice"),
    ("topology.links.1", {"endpoints": ["r1:eth2", "n2:eth0"]}, "eth0 is management"),
    ("topology.links.1", {"endpoints": ["r1:eth2", "n2:averyveryverylongname"]}, "15"),
    ("topology.links.1", {"endpoints": ["r1:eth2", "n2:eth1"],
                          "ipv4": ["10.1.0.1/30", "10.2.0.2/30"]}, "not in one subnet"),
    ("topology.links.1", {"endpoints": ["r1:eth2", "n2:eth1"],
                          "ipv4": ["10.77.1.1/30", "10.77.1.2/30"]}, "used twice"),
    ("topology.links.1", {"endpoints": ["n1:eth2", "mgmt:eth1"]}, "mgmt node"),
    ("topology.nodes.n2.mgmt-ipv4", "10.0.0.1", "outside"),
    ("topology.nodes.n2.mgmt-ipv4", "172.20.20.2", "already used"),
    ("topology.nodes.mgmt.labels", {"l3fabric.role": "mgmt",
                                    "l3fabric.pool-cidr": "10.77.0.0/16"}, "overlap"),
    ("topology.nodes.mgmt.labels", {"l3fabric.role": "mgmt",
                                    "l3fabric.block-size": 8}, "block size"),
])
def test_invalid_topologies_are_rejected_with_a_reason(path: str, value: Any,
                                                       message: str) -> None:
    if "\x00" in path:  # a node without any role label
        doc = minimal()
        doc["topology"]["nodes"]["r1"]["labels"] = {"l3fabric.asn": 1}
        message = "l3fabric.role"
    else:
        doc = _broken(path, value)
    with pytest.raises(TopologyError, match=re.escape(message)):
        topology.parse(doc)


def test_node_without_link_is_rejected() -> None:
    doc = minimal()
    doc["topology"]["links"].pop()
    with pytest.raises(TopologyError, match="n2 has no fabric link"):
        topology.parse(doc)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_lab_resources_validate(path: Path) -> None:
    t = topology.load(path)
    docs = resources.lab_resources(t)
    parsed = [model.parse_document(d) for d in docs]
    kinds = [r.kind for r in parsed]
    assert kinds.count("Node") == len(t.by_role("node"))
    assert kinds.count("BGPPeer") == sum(len(t.sessions_of(n.name)) for n in t.by_role("node"))
    bgp = next(r for r in parsed if isinstance(r, model.BGPConfiguration))
    assert bgp.spec.node_to_node_mesh is False
    for k, v in resources.encoded(t):
        assert k.startswith("/l3fabric/v1/") and json.loads(v)["apiVersion"]


def test_leaf_spine_is_as_per_rack() -> None:
    t = topology.load(REPO / "containerlab/leaf-spine.clab.yml")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in resources.lab_resources(t)}
    assert docs[("Node", "node1")]["spec"]["bgp"] == {"ipv4Address": "10.77.5.2/30",
                                                      "asNumber": 65101}
    assert docs[("Node", "node3")]["spec"]["bgp"]["asNumber"] == 65102
    assert docs[("Node", "node3")]["metadata"]["labels"]["rack"] == "r2"
    assert docs[("BGPPeer", "node3-leaf2")]["spec"] == {
        "peerIP": "10.77.7.1", "asNumber": 65102, "node": "node3"}
    # two spines, two leaves, four nodes
    assert len(t.by_role("router")) == 4 and len(t.by_role("node")) == 4


def dual(**labels: Any) -> dict[str, Any]:
    doc = minimal()
    doc["topology"]["nodes"]["mgmt"]["labels"].update(
        {"l3fabric.pool6-cidr": "fd44::/48", **labels})
    return doc


def test_an_ipv6_pool_makes_the_lab_dual_stack_with_derived_link_addresses() -> None:
    t = topology.parse(dual())
    assert t.dual_stack and str(t.pool6_cidr) == "fd44::/48" and t.block_size6 == 122
    assert [(str(lk.a.address6), str(lk.b.address6)) for lk in t.links] == [
        ("fd77:0:0:1::1/64", "fd77:0:0:1::2/64"), ("fd77:0:0:2::1/64", "fd77:0:0:2::2/64")]
    assert str(t.fabric_address6("n2")) == "fd77:0:0:2::2/64"
    assert all(s.ipv6 for s in t.sessions())
    docs = {(d["kind"], d["metadata"]["name"]): d for d in resources.lab_resources(t)}
    assert docs[("IPPool", "default-v6")]["spec"] == {"cidr": "fd44::/48", "blockSize": 122}
    assert docs[("Node", "n2")]["spec"]["bgp"]["ipv6Address"] == "fd77:0:0:2::2/64"
    for d in docs.values():
        model.parse_document(d)


def test_an_ipv4_lab_has_no_ipv6_anywhere() -> None:
    t = topology.parse(minimal())
    assert not t.dual_stack and t.fabric_address6("n1") is None
    assert not any(s.ipv6 for s in t.sessions())
    docs = resources.lab_resources(t)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "IPPool"] == ["default"]
    assert all("ipv6Address" not in d["spec"]["bgp"] for d in docs if d["kind"] == "Node")


def test_given_ipv6_link_addresses_are_kept() -> None:
    doc = dual(**{"l3fabric.fabric6-cidr": "fd55::/32", "l3fabric.block-size6": 120})
    doc["topology"]["links"][0]["ipv6"] = ["fd99::1/126", "fd99::2/126"]
    t = topology.parse(doc)
    assert (str(t.links[0].a.address6), str(t.links[0].b.address6)) == ("fd99::1/126",
                                                                          "fd99::2/126")
    assert str(t.links[1].b.address6) == "fd55:0:0:2::2/64" and t.block_size6 == 120


@pytest.mark.parametrize(("labels", "link", "message"), [
    ({"l3fabric.pool6-cidr": "10.0.0.0/8"}, None, "pool6-cidr"),
    ({"l3fabric.pool6-cidr": "fd44::/48", "l3fabric.fabric6-cidr": "fd44::/48"}, None,
     "must not overlap"),
    ({"l3fabric.pool6-cidr": "fd44::/48", "l3fabric.fabric6-cidr": "fd55::/56"}, None,
     "/48 or larger"),
    ({"l3fabric.pool6-cidr": "fd44::/48", "l3fabric.block-size6": 40}, None, "block size"),
    ({"l3fabric.fabric6-cidr": "fd55::/48"}, None, "needs l3fabric.pool6-cidr"),
    ({}, ["fd99::1/64", "fd99::2/64"], "need l3fabric.pool6-cidr"),
    ({"l3fabric.pool6-cidr": "fd44::/48"}, ["fd99::1/64", "fd98::2/64"], "one subnet"),
    ({"l3fabric.pool6-cidr": "fd44::/48"}, ["fd99::1/64"], "one address per endpoint"),
])
def test_invalid_ipv6_plans_are_rejected_with_a_reason(labels: dict[str, Any],
                                                       link: list[str] | None,
                                                       message: str) -> None:
    doc = minimal()
    doc["topology"]["nodes"]["mgmt"]["labels"].update(labels)
    if link is not None:
        doc["topology"]["links"][0]["ipv6"] = link
    with pytest.raises(TopologyError, match=re.escape(message)):
        topology.parse(doc)
