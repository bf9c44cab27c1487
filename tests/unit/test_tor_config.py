"""tor-config as data: which sessions a peer group makes, and the BIRD/FRR text for them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.stock_routers import STOCK_BIRD

from datastore import keys, model
from datastore.fake import FakeDatastore
from fabricctl.tor_cmd import (
    PEER_GROUP_LABEL,
    TorConfigError,
    TorInputs,
    TorOptions,
    compare,
    load_inputs,
    options_from_header,
    plan,
    render,
    render_bird,
    render_frr,
)


def res(kind: str, name: str, spec: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None) -> Any:
    md: dict[str, Any] = {"name": name}
    if labels:
        md["labels"] = labels
    doc: dict[str, Any] = {"apiVersion": model.API_VERSION, "kind": kind, "metadata": md}
    if spec is not None:
        doc["spec"] = spec
    return model.parse_document(doc)


def node(name: str, cidr: str, asn: int | None = None,
         labels: dict[str, str] | None = None, v6: str | None = None) -> model.Node:
    bgp: dict[str, Any] = {"ipv4Address": cidr}
    if v6 is not None:
        bgp["ipv6Address"] = v6
    if asn is not None:
        bgp["asNumber"] = asn
    n = res("Node", name, {"bgp": bgp}, labels)
    assert isinstance(n, model.Node)
    return n


def peer(name: str, ip: str, asn: int = 65000, labels: dict[str, str] | None = None,
         **spec: Any) -> model.BGPPeer:
    p = res("BGPPeer", name, {"peerIP": ip, "asNumber": asn, **spec}, labels)
    assert isinstance(p, model.BGPPeer)
    return p


def pool(name: str, cidr: str, disabled: bool = False) -> model.IPPool:
    p = res("IPPool", name, {"cidr": cidr, "disabled": disabled})
    assert isinstance(p, model.IPPool)
    return p


def bgpconf(**spec: Any) -> model.BGPConfiguration:
    b = res("BGPConfiguration", "default", spec)
    assert isinstance(b, model.BGPConfiguration)
    return b


NODES = (node("n1", "10.99.1.1/30", labels={"rack": "r1"}),
         node("n2", "10.99.2.1/30", asn=65002, labels={"rack": "r1"}),
         node("n3", "10.99.3.1/30", labels={"rack": "r2"}))
POOLS = (pool("default", "10.244.0.0/16"), pool("off", "10.250.0.0/16", disabled=True),
         pool("v6", "fd00:244::/48"))


def inputs(*peers: model.BGPPeer, nodes: tuple[model.Node, ...] = NODES,
           bgp: model.BGPConfiguration | None = None) -> TorInputs:
    return TorInputs(tuple(peers), nodes, bgp or bgpconf(asNumber=65001), POOLS)


def test_group_by_name_prefix_and_by_label() -> None:
    p = plan(inputs(peer("rack1-n1", "10.99.1.2", node="n1"),
                    peer("tor-b", "10.99.2.2", node="n2", labels={PEER_GROUP_LABEL: "rack1"}),
                    peer("rack2-n3", "10.99.3.2", node="n3")), "rack1")
    assert [(n.node, n.address, n.local_address, n.remote_as) for n in p.neighbors] == [
        ("n1", "10.99.1.1", "10.99.1.2", 65001),  # the cluster default AS
        ("n2", "10.99.2.1", "10.99.2.2", 65002),  # the node's own AS
    ]
    assert p.local_as == 65000
    assert p.router_id == "10.99.1.2"  # lowest peerIP of the group
    assert [str(x) for x in p.pools_v4] == ["10.244.0.0/16"]  # disabled pool left out
    assert [str(x) for x in p.pools_v6] == ["fd00:244::/48"]


def test_node_selector_and_all_nodes() -> None:
    p = plan(inputs(peer("g-sel", "10.99.0.254", nodeSelector="rack == 'r1'")), "g")
    assert [n.node for n in p.neighbors] == ["n1", "n2"]
    assert all(n.multihop for n in p.neighbors)  # 10.99.0.254 is on neither node's /30
    p = plan(inputs(peer("g-all", "10.99.0.254")), "g")
    assert [n.node for n in p.neighbors] == ["n1", "n2", "n3"]


def test_local_as_number_on_the_peer_is_the_nodes_as_for_that_session() -> None:
    p = plan(inputs(peer("g", "10.99.1.2", node="n1", localASNumber=64999)), "g")
    assert p.neighbors[0].remote_as == 64999


def test_ibgp_nodes_make_the_tor_a_route_reflector() -> None:
    p = plan(inputs(peer("g", "10.99.1.2", asn=65001, node="n1")), "g")
    assert p.neighbors[0].rr_client
    assert "rr client;" in render_bird(p)
    assert "route-reflector-client" in render_frr(p)


def test_errors_name_the_problem() -> None:
    with pytest.raises(TorConfigError, match=r"no BGPPeer is in peer group 'x'.*rack1-n1"):
        plan(inputs(peer("rack1-n1", "10.99.1.2")), "x")
    with pytest.raises(TorConfigError, match="disagree on the ToR's AS"):
        plan(inputs(peer("g1", "10.99.1.2", asn=1), peer("g2", "10.99.2.2", asn=2)), "g")
    with pytest.raises(TorConfigError, match="--asn 7 differs"):
        plan(inputs(peer("g1", "10.99.1.2")), "g", asn=7)
    with pytest.raises(TorConfigError, match="router-id"):
        plan(inputs(peer("g1", "10.99.1.2")), "g", router_id="fe80::1")
    with pytest.raises(TorConfigError, match="disagree on its AS, password"):
        plan(inputs(peer("g1", "10.99.1.2", node="n1", password="a"),
                    peer("g2", "10.99.1.2", node="n1", password="b")), "g")
    with pytest.raises(TorConfigError, match=r"node n1 .* would be peered twice"):
        plan(inputs(peer("g1", "10.99.1.2", node="n1"), peer("g2", "10.99.0.254")), "g")


def test_duplicate_sessions_merge() -> None:
    p = plan(inputs(peer("g1", "10.99.1.2", node="n1"), peer("g2", "10.99.1.2")), "g")
    assert [(n.node, n.peers) for n in p.neighbors] == [
        ("n1", ("g1", "g2")), ("n2", ("g2",)), ("n3", ("g2",))]
    assert len({n.symbol for n in p.neighbors}) == 3


def test_notes_for_skipped_nodes() -> None:
    bare = res("Node", "bare")
    p = plan(inputs(peer("g", "10.99.1.2"), peer("g-none", "10.99.1.2", node="ghost"),
                    nodes=(*NODES, bare)), "g")
    assert "node bare has no bgp address: skipped" in p.notes
    assert "BGPPeer g-none selects no node" in p.notes
    assert "# note: node bare has no bgp address: skipped" in render_bird(p)


def test_bird_text() -> None:
    p = plan(inputs(peer("rack1-n1", "10.99.1.2", node="n1", password='s"e\\c'),
                    bgp=bgpconf(asNumber=65001, holdTime=9,
                                gracefulRestart={"enabled": True, "restartTime": 60})),
             "rack1")
    text = render_bird(p)
    assert "router id 10.99.1.2;" in text
    assert "if net ~ [ 10.244.0.0/16{16,32} ] then accept;" in text
    assert "if net ~ [ fd00:244::/48{48,128} ] then accept;" in text
    assert "10.250.0.0" not in text
    assert "local as 65000;" in text
    assert "hold time 9; keepalive time 3;" in text
    assert "graceful restart on; graceful restart time 60;" in text
    assert "neighbor 10.99.1.1 as 65001;" in text
    assert "source address 10.99.1.2;" in text
    assert 'password "s\\"e\\\\c";' in text
    assert "ipv4 { import filter l3fabric_import_v4; export filter l3fabric_export; " \
           "next hop self; };" in text


def test_frr_text() -> None:
    p = plan(inputs(peer("rack1-n1", "10.99.1.2", node="n1", password="sec ret",
                         ttlSecurity=1),
                    bgp=bgpconf(asNumber=65001, holdTime=30,
                                gracefulRestart={"enabled": True})), "rack1")
    text = render_frr(p)
    assert "ip prefix-list L3FABRIC-POOLS-V4 seq 5 permit 10.244.0.0/16 le 32" in text
    assert "ipv6 prefix-list L3FABRIC-POOLS-V6 seq 5 permit fd00:244::/48 le 128" in text
    assert "router bgp 65000" in text
    assert " bgp router-id 10.99.1.2" in text
    assert " bgp graceful-restart" in text
    assert " timers bgp 10 30" in text
    assert " neighbor 10.99.1.1 remote-as 65001" in text
    assert " neighbor 10.99.1.1 password sec ret" in text
    assert " neighbor 10.99.1.1 ttl-security hops 1" in text
    assert "  neighbor 10.99.1.1 route-map L3FABRIC-IMPORT-V4 in" in text


def test_no_enabled_pool_rejects_everything() -> None:
    i = TorInputs((peer("g", "10.99.1.2", node="n1"),), NODES, bgpconf(),
                  (pool("off", "10.250.0.0/16", disabled=True),))
    p = plan(i, "g")
    text = render_bird(p)
    assert "filter l3fabric_import_v4 {\n  reject;\n}" in text
    assert "no enabled IPPool" in text


async def test_load_inputs_from_the_datastore_skips_invalid_values() -> None:
    ds = FakeDatastore()
    for r in (*NODES, *POOLS, peer("rack1-n1", "10.99.1.2", node="n1"), bgpconf(asNumber=7)):
        await ds.put(model.key_for(r), model.encode(r))
    await ds.put(keys.bgppeer("rack1-bad"), b'{"kind": "BGPPeer", "spec": {"peerIP": "x"}}')
    got = await load_inputs(ds)
    assert {p.metadata.name for p in got.peers} == {"rack1-n1"}
    assert len(got.nodes) == 3 and len(got.pools) == 3
    assert got.bgp.spec.as_number == 7
    assert len(got.problems) == 1 and "rack1-bad" in got.problems[0]
    assert got.revision > 0
    assert plan(got, "rack1").neighbors[0].remote_as == 7


def _rich_plan() -> Any:
    return plan(inputs(peer("g", "10.99.0.254", password="pw", ttlSecurity=2),
                       peer("g-n1", "10.99.0.254", node="n1", password="pw", ttlSecurity=2),
                       peer("g-n3", "10.99.0.254", node="n3", asn=65000, password="pw",
                            ttlSecurity=2),
                       nodes=(node("n1", "10.99.1.1/30", v6="fd99:1::1/64"), NODES[1],
                              node("n3", "10.99.3.1/30", asn=65000)),
                       bgp=bgpconf(gracefulRestart={"enabled": True}, holdTime=9)), "g")


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird (Debian bird2) not installed")
def test_bird_parses_the_output(tmp_path: Path) -> None:
    conf = tmp_path / "bird.conf"
    conf.write_text(render_bird(_rich_plan()))
    r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + conf.read_text()


@pytest.mark.skipif(shutil.which("vtysh") is None, reason="vtysh (Debian frr) not installed")
def test_frr_vtysh_dry_run_accepts_the_output(tmp_path: Path) -> None:
    conf = tmp_path / "frr.conf"
    conf.write_text(render_frr(_rich_plan()))
    r = subprocess.run(["vtysh", "--dryrun", "-f", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr + conf.read_text()


def test_a_node_with_an_ipv6_address_gets_ipv6_on_its_ipv4_session() -> None:
    """The node offers IPv6 unicast on its IPv4 session (MP-BGP) when it has an
    ipv6Address; the ToR's session to it carries IPv6 too, the others IPv4 only. No IPv6
    pool: no IPv6 at all."""
    nodes = (node("n1", "10.99.1.1/30", v6="fd99:1::1/64"), NODES[1])
    p = plan(inputs(peer("g", "10.99.0.254"), nodes=nodes), "g")
    assert [(n.node, n.ipv6) for n in p.neighbors] == [("n1", True), ("n2", False)]
    bird = render_bird(p)
    n1 = bird[bird.index("protocol bgp l3f_n1 "):bird.index("protocol bgp l3f_n2 ")]
    assert "ipv6 { import filter l3fabric_import_v6; export filter l3fabric_export; " \
           "next hop self; };" in n1
    assert "ipv6 {" not in bird[bird.index("protocol bgp l3f_n2 "):]
    assert "protocol kernel l3fabric_kernel6" in bird
    frr = render_frr(p)
    v6 = frr[frr.index(" address-family ipv6 unicast"):]
    assert "  neighbor 10.99.1.1 activate" in v6
    assert "  neighbor 10.99.1.1 route-map L3FABRIC-IMPORT-V6 in" in v6
    assert "10.99.2.1" not in v6
    no_v6 = TorInputs((peer("g", "10.99.0.254"),), nodes, bgpconf(), POOLS[:2])
    assert not any(n.ipv6 for n in plan(no_v6, "g").neighbors)


def test_a_snippet_leaves_router_id_device_and_kernel_to_the_router() -> None:
    p = _rich_plan()
    text = render_bird(p, snippet=True)
    bird = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    assert "router id" not in bird and "protocol device" not in bird
    assert "protocol kernel" not in bird
    assert "protocol bgp l3f_n1 from l3fabric_node {" in bird
    assert "# l3fabric top-of-rack snippet (bird)" in text
    frr = render_frr(p, snippet=True)
    assert "frr defaults" not in frr and "bgp router-id" not in frr
    assert "router bgp 65000" in frr and "neighbor 10.99.1.1 password pw" in frr
    # The whole configuration keeps them.
    assert "router id 10.99.0.254;" in render_bird(p)
    assert " bgp router-id 10.99.0.254" in render_frr(p)


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird (Debian bird2) not installed")
def test_bird_parses_a_stock_bird_conf_that_includes_the_snippet(tmp_path: Path) -> None:
    (tmp_path / "l3fabric.conf").write_text(render_bird(_rich_plan(), snippet=True))
    conf = tmp_path / "bird.conf"
    conf.write_text(STOCK_BIRD + f'include "{tmp_path / "l3fabric.conf"}";\n')
    r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("opts", [
    TorOptions("rack1"),
    TorOptions("rack1", "frr", snippet=True, router_id="10.0.0.1", asn=65000),
])
def test_the_header_names_the_options_check_renders_with(opts: TorOptions) -> None:
    text = render(inputs(peer("rack1", "10.99.0.254")), opts)
    assert options_from_header(text) == opts
    assert options_from_header("router id 1.2.3.4;\n") is None


def test_check_compares_what_the_router_reads_not_the_header() -> None:
    before = inputs(peer("g", "10.99.0.254"))
    on_router = render(before, TorOptions("g"))
    later = TorInputs(before.peers, before.nodes, before.bgp, before.pools, revision=99)
    assert compare(on_router, render(later, TorOptions("g")), "bird", "f", 99) == []
    grown = TorInputs(before.peers, before.nodes, before.bgp,
                      (*before.pools, pool("more", "10.245.0.0/16")), revision=100)
    diff = compare(on_router, render(grown, TorOptions("g")), "bird", "f", 100)
    assert diff[:2] == ["--- f", "+++ etcd now (revision 100)"]
    assert any(ln.startswith("+") and "10.245.0.0/16" in ln for ln in diff[2:])
