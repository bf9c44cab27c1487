"""The podman lab runtime's `podman run` line for each node, from the topology file alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fabricctl.lab import podman, topology
from fabricctl.lab.runner import LabError
from fabricctl.lab.state import LabState

REPO = Path(__file__).parents[2]


def argv_of(topo: topology.Topology, node: str, tmp_path: Path) -> list[str]:
    st = LabState(lab=topo.name, topology="", dir=str(tmp_path))
    return podman.run_argv(topo, st, topo.nodes[node])


def flag_values(argv: list[str], flag: str) -> list[str]:
    """The values of podman's ``flag`` (before the image: after it comes the node's cmd)."""
    head = argv[:next(i for i, a in enumerate(argv) if a.startswith("l3fabric/"))]
    return [head[i + 1] for i, a in enumerate(head) if a == flag]


def test_every_container_has_no_network_and_podmans_needs(tmp_path: Path) -> None:
    topo = topology.load(REPO / "containerlab/two-node.clab.yml")
    for name in topo.nodes:
        argv = argv_of(topo, name, tmp_path)
        assert flag_values(argv, "--network") == ["none"]
        assert flag_values(argv, "--name") == [f"clab-two-node-{name}"]
        assert f"{podman.LAB_LABEL}=two-node" in flag_values(argv, "--label")
        ulimits = flag_values(argv, "--ulimit")
        assert "nproc=4096:4096" in ulimits
        assert any(u.startswith("nofile=") for u in ulimits)
        assert "--pull" in argv and flag_values(argv, "--pull") == ["never"]


def test_router_gets_the_files_bind_cmd_and_its_bird_socket_dir(tmp_path: Path) -> None:
    topo = topology.load(REPO / "containerlab/two-node.clab.yml")
    argv = argv_of(topo, "tor1", tmp_path)
    conf = (REPO / "containerlab/configs/two-node/tor1.conf").resolve()
    assert flag_values(argv, "-v") == [f"{conf}:/etc/bird/bird.conf:ro",
                                       f"{tmp_path / 'tor1'}:/run/bird"]
    image_at = argv.index("l3fabric/bird:2.0.12")
    assert argv[image_at + 1:] == ["bird", "-f", "-c", "/etc/bird/bird.conf"]


def test_node_runs_its_images_init_and_the_mgmt_node_etcd(tmp_path: Path) -> None:
    topo = topology.load(REPO / "containerlab/two-node.clab.yml")
    node = argv_of(topo, "node1", tmp_path)
    assert node[-1] == "l3fabric/node:latest"  # no cmd: the image's /sbin/init
    mgmt = argv_of(topo, "mgmt", tmp_path)
    assert mgmt[mgmt.index("l3fabric/etcd:3.4.23") + 1] == "etcd"


def test_env_binds_and_exec_merge_defaults_kinds_and_node(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "containerlab/two-node.clab.yml").read_text())
    (tmp_path / "x.conf").write_text("")
    doc["topology"]["defaults"] = {"env": {"A": "1", "B": "1"}}
    doc["topology"]["kinds"] = {"linux": {"env": {"B": "2"}, "binds": ["x.conf:/x"]}}
    doc["topology"]["nodes"]["node1"]["env"] = {"C": 3}
    path = tmp_path / "t.clab.yml"
    path.write_text(yaml.safe_dump(doc))
    topo = topology.load(path)
    argv = argv_of(topo, "node1", tmp_path)
    assert flag_values(argv, "-e") == ["A=1", "B=2", "C=3"]
    assert flag_values(argv, "-v") == [f"{tmp_path / 'x.conf'}:/x"]
    assert podman._node_cfg(topo, "node1")["exec"][0] == "ip route del default"


def test_a_bind_to_a_missing_file_is_refused(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "containerlab/two-node.clab.yml").read_text())
    doc["topology"]["nodes"]["tor1"]["binds"] = ["nowhere.conf:/etc/bird/bird.conf:ro"]
    path = tmp_path / "t.clab.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(LabError, match=r"nowhere\.conf"):
        argv_of(topology.load(path), "tor1", tmp_path)
