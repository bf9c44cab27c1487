"""BIRD configs rendered for lab routers, and the lab graph: pure renderers tested as data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fabricctl.lab import graph, topology
from fabricctl.lab.bird import render_bird

REPO = Path(__file__).parents[2]


def load(name: str) -> topology.Topology:
    return topology.load(REPO / f"containerlab/{name}.clab.yml")


def test_tor_config_has_one_ebgp_session_per_node_and_lab_only_filters() -> None:
    conf = render_bird(load("two-node"), "tor1")
    assert "router id 10.77.1.1;" in conf
    assert "local as 65000;" in conf
    assert "define LAB_NETS = [ 10.244.0.0/16+, 10.77.0.0/16+ ];" in conf
    assert ("protocol bgp p_node1 from fabric { description \"node node1\"; "
            "neighbor 10.77.1.2 as 65001; source address 10.77.1.1; }") in conf
    assert "neighbor 10.77.2.2 as 65002;" in conf
    assert "import filter lab_only; export filter lab_only;" in conf
    assert "merge paths on;" in conf
    assert "import all" not in conf and "export all" not in conf
    assert "rr client" not in conf


def test_leaf_reflects_to_its_rack_and_peers_ebgp_with_spines() -> None:
    conf = render_bird(load("leaf-spine"), "leaf1")
    assert "local as 65101;" in conf
    lines = [ln for ln in conf.splitlines() if ln.startswith("protocol bgp")]
    assert len(lines) == 4
    spine = [ln for ln in lines if "p_spine" in ln]
    nodes = [ln for ln in lines if "p_node" in ln]
    assert all("as 65000;" in ln and "rr client" not in ln for ln in spine)
    assert all("as 65101;" in ln and "rr client; rr cluster id 10.77.255.1;" in ln
               for ln in nodes)


def test_route_reflectors_have_every_node_as_client() -> None:
    t = load("route-reflector")
    for rr in ("rr1", "rr2"):
        conf = render_bird(t, rr)
        assert conf.count("rr client;") == 3
        assert "rr cluster id 10.77.255.254;" in conf


def test_not_a_router() -> None:
    with pytest.raises(topology.TopologyError, match="not a router"):
        render_bird(load("two-node"), "node1")


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 is not installed (bird2)")
@pytest.mark.parametrize("name", ["two-node", "leaf-spine", "route-reflector"])
def test_bird_accepts_every_rendered_config(name: str, tmp_path: Path) -> None:
    t = load(name)
    for r in t.by_role("router"):
        conf = tmp_path / f"{r.name}.conf"
        conf.write_text(render_bird(t, r.name))
        p = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr


def dual_stack(name: str) -> topology.Topology:
    doc = yaml.safe_load((REPO / f"containerlab/{name}.clab.yml").read_text())
    doc["topology"]["nodes"]["mgmt"]["labels"]["l3fabric.pool6-cidr"] = "fd44::/48"
    return topology.parse(doc)


def test_a_dual_stack_lab_carries_ipv6_on_every_session_with_its_own_filters() -> None:
    conf = render_bird(dual_stack("leaf-spine"), "leaf1")
    assert "define LAB_NETS6 = [ fd44::/48+, fd77::/48+ ];" in conf
    assert ("  ipv6 { import filter lab_only6; export filter lab_only6; next hop self; "
            "gateway direct; };") in conf
    assert "ipv6 { import none; export filter to_kernel6; };" in conf
    assert "ipv6 { import filter lab_only6; }; interface" in conf  # direct: the links
    # The IPv4 lab's lines are all there, in order (the direct protocol gains IPv6).
    v4 = render_bird(load("leaf-spine"), "leaf1")
    assert "LAB_NETS6" not in v4 and "ipv6" not in v4
    direct = 'protocol direct { ipv4 { import filter lab_only; }; interface "eth*"; }'
    assert direct in v4.splitlines()
    rest = iter(conf.splitlines())
    assert all(ln in rest for ln in v4.splitlines() if ln != direct)


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 is not installed (bird2)")
def test_bird_accepts_a_dual_stack_config(tmp_path: Path) -> None:
    t = dual_stack("leaf-spine")
    for r in t.by_role("router"):
        conf = tmp_path / f"{r.name}.conf"
        conf.write_text(render_bird(t, r.name))
        p = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr


def sample_status() -> dict[str, object]:
    return {
        "lab": "two-node", "topology": "/x/two-node.clab.yml",
        "nodes": [
            {"name": "mgmt", "role": "mgmt", "running": True},
            {"name": "tor1", "role": "router", "asn": 65000, "rack": "r1", "running": True,
             "fabric_ip": "10.77.1.1/30"},
            {"name": "node1", "role": "node", "asn": 65001, "rack": "r1", "running": True,
             "fabric_ip": "10.77.1.2/30", "blocks": ["10.244.0.0/26"]},
            {"name": "node2", "role": "node", "asn": 65002, "rack": "r1", "running": False,
             "fabric_ip": "10.77.2.2/30", "blocks": []},
        ],
        "sessions": [
            {"router": "tor1", "node": "node1", "state": "Established", "source": "bird"},
            {"router": "tor1", "node": "node2", "state": "Active", "source": "bird"},
            {"router": None, "node": "node1", "peer_ip": "10.77.1.1", "state": "up",
             "source": "agent"},
        ],
        "pods": [{"pod": "default/web", "node": "node1", "ips": ["10.244.0.1"]}],
    }


def test_graph_shows_routers_nodes_sessions_and_pods() -> None:
    dot = graph.render_dot(sample_status())
    assert '"tor1" [shape=box' in dot
    assert '"node1" [shape=ellipse' in dot and "10.244.0.0/26" in dot
    assert '"tor1" -- "node1" [color=green' in dot
    assert '"tor1" -- "node2" [color=red' in dot
    assert '"node1" -- "pod default/web"' in dot
    assert "mgmt" not in dot.split("\n", 2)[2]
    assert 'subgraph "cluster_r1"' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_graph_images(tmp_path: Path) -> None:
    files = graph.write_images(graph.render_dot(sample_status()),
                               tmp_path / "lab")
    assert [f.suffix for f in files] == [".svg", ".png"]
    assert files[0].read_text().lstrip().startswith("<?xml")
    assert files[1].read_bytes()[:4] == b"\x89PNG"
