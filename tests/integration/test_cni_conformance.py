"""CNI 1.1.0 conformance of l3fabric, against the real executables.

Every test runs the real shims (the ones ``fabricctl install-cni`` writes: `helpers.shims`,
and the same code's per test) as a runtime would: environment + stdin, exec'd. Behind
them: a real `CniHandler` and `CniServer` in this process, a real etcd with an IPPool,
and a throw-away node namespace (the agent's node) with pod namespaces. Reference
plugins that touch the node (ptp, portmap) run inside the node namespace.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import shims

from datastore import keys
from datastore.embedded import EmbeddedEtcd
from felix_like.plumbing import host_veth_name
from tests.helpers.cni import (
    REFERENCE_DIR,
    Fabric,
    cni_env,
    exec_plugin,
    fab_links,
    fabric,
    ip_json,
    ippool,
    links,
    ns_path,
    our_routes,
    ping,
    run_conflist,
    sh,
    sysctl,
)

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
POOL = "10.244.0.0/16"
NETWORK = "l3net"

needs_reference = pytest.mark.skipif(
    not (REFERENCE_DIR / "ptp").exists(),
    reason="reference CNI plugins missing: apt-get install containernetworking-plugins")


@pytest.fixture
async def fab(module_etcd: EmbeddedEtcd, netns: Callable[[str], str],
              tmp_path: Path) -> AsyncIterator[Fabric]:
    node = netns("node")
    async with fabric(module_etcd.endpoint, node, tmp_path) as f:
        await f.ds.delete_prefix(keys.PREFIX)
        pool = ippool("default", POOL, 26)
        from datastore import model as m

        await f.ds.put(m.key_for(pool), m.encode(pool))
        yield f


def ipam_exe() -> Path:
    return shims.installed("l3fabric-ipam")


def _addr(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"])


async def _assert_gone(f: Fabric, pod_ns: str | None = None) -> None:
    assert await f.handles() == []
    assert await f.allocated() == []
    assert await f.workloads() == {}
    assert fab_links(f.node) == []
    assert our_routes(f.node) == []
    if pod_ns is not None:
        assert "eth0" not in links(pod_ns)


async def _assert_only(f: Fabric, attachments: dict[str, str]) -> None:
    """Exactly these attachments (container ID -> address, all with interface eth0) of
    network NETWORK are on the node: endpoints, IPAM handles and addresses, veths, routes."""
    weps = await f.workloads()
    assert sorted((w["spec"]["containerID"], w["spec"]["ipNetworks"]) for w in weps.values()) \
        == sorted((c, [a]) for c, a in attachments.items())
    assert sorted(await f.handles()) == sorted(f"{NETWORK}.{c}.eth0" for c in attachments)
    assert await f.allocated() == sorted(a[:-3] for a in attachments.values())
    assert sorted(fab_links(f.node)) == sorted(host_veth_name(NETWORK, c, "eth0")
                                               for c in attachments)
    assert sorted((r["dst"], r["dev"]) for r in our_routes(f.node)) == sorted(
        (a[:-3], host_veth_name(NETWORK, c, "eth0")) for c, a in attachments.items())


# ------------------------------------------------------------------ ADD / DEL basics


@pytest.mark.parametrize("version", VERSIONS)
async def test_add_del_result_in_each_version(fab: Fabric, netns: Callable[[str], str],
                                              version: str) -> None:
    pod = netns("pod")
    r = (await fab.add(pod, "cid-1", version,
                       args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1")).ok()
    res = r.json
    assert res["cniVersion"] == version
    host_if = host_veth_name(NETWORK, "cid-1", "eth0")
    assert [i["name"] for i in res["interfaces"]] == [host_if, "eth0"]
    assert res["interfaces"][1]["sandbox"] == ns_path(pod)
    assert res["interfaces"][0]["mac"] == "ee:ee:ee:ee:ee:ee"
    ip = res["ips"][0]
    assert ip["address"].startswith("10.244.") and ip["address"].endswith("/32")
    assert ip["interface"] == 1
    assert ("version" in ip) == (version < "1.0.0")
    if version < "1.0.0":
        assert ip["version"] == "4"
    assert ("mtu" in res["interfaces"][1]) == (version == "1.1.0")
    # The pod is wired as docs/architecture.md §5 says.
    address = ip["address"]
    assert [a for a in ip_json(pod, "addr", "show", "dev", "eth0")[0]["addr_info"]
            if f"{a['local']}/{a['prefixlen']}" == address]
    assert fab_links(fab.node) == [host_if]
    routes = our_routes(fab.node)
    assert [(rt["dst"], rt["dev"]) for rt in routes] == [(address[:-3], host_if)]
    default = ip_json(pod, "route", "show", "default")
    assert default and default[0]["gateway"] == "169.254.1.1"
    # The WorkloadEndpoint.
    weps = await fab.workloads()
    key = f"workloads/{fab.node}/shop.web-1.eth0"
    assert list(weps) == [key]
    spec = weps[key]["spec"]
    assert spec["containerID"] == "cid-1" and spec["ipNetworks"] == [address]
    assert spec["hostInterface"] == host_if and spec["namespace"] == "shop"
    assert spec["mac"] == res["interfaces"][1]["mac"]
    assert keys.full(key) in fab.sink.added
    assert await fab.handles() == [f"{NETWORK}.cid-1.eth0"]

    (await fab.delete(pod, "cid-1", version,
                      args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1")).ok()
    await _assert_gone(fab, pod)
    assert keys.full(key) in fab.sink.removed


async def test_labels_ports_and_default_namespace_in_workload(fab: Fabric,
                                                              netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    conf = fab.conf(args={"cni": {"labels": [{"key": "app", "value": "web"}]},
                          "l3fabric": {"ports": [{"name": "http", "port": 8080,
                                                  "protocol": "TCP"}]}})
    (await fab.add(pod, "cid-l", conf=conf, args="IgnoreUnknown=1;K8S_POD_NAME=My_Pod")).ok()
    weps = await fab.workloads()
    key = f"workloads/{fab.node}/default.my-pod.eth0"
    assert list(weps) == [key]
    spec = weps[key]["spec"]
    assert spec["labels"] == {"app": "web"}
    assert spec["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    # DEL without CNI_ARGS still finds it (by containerID).
    (await fab.delete(pod, "cid-l", conf=conf)).ok()
    await _assert_gone(fab, pod)


async def test_install_cni_executable_add_version_del(fab: Fabric,
                                                      netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    exe = str(shims.installed())
    r = (await fab.add(pod, "cid-v", exe=exe)).ok()
    assert _addr(r.json).startswith("10.244.")
    v = (await fab.call("VERSION", {"cniVersion": "1.1.0"}, exe=exe)).ok().json
    assert v["cniVersion"] == "1.1.0" and set(VERSIONS) <= set(v["supportedVersions"])
    (await fab.delete(pod, "cid-v", exe=exe)).ok()
    await _assert_gone(fab, pod)


async def test_mtu_from_config(fab: Fabric, netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    r = (await fab.add(pod, "cid-m", "1.1.0", conf=fab.conf("1.1.0", mtu=1400))).ok()
    assert r.json["interfaces"][1]["mtu"] == 1400
    assert ip_json(pod, "link", "show", "eth0")[0]["mtu"] == 1400
    (await fab.delete(pod, "cid-m")).ok()


# ------------------------------------------------------------------ environment validation


@pytest.mark.parametrize("var", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
async def test_missing_variable_is_code_4_naming_it(fab: Fabric, netns: Callable[[str], str],
                                                    var: str) -> None:
    pod = netns("pod")
    env = cni_env("ADD", container_id="cid-x", netns=ns_path(pod), drop=[var])
    r = await exec_plugin(fab.bin_dir / "l3fabric", env, fab.conf())
    assert r.exit != 0 and r.code == 4, r.stdout
    assert var in r.json["msg"]
    await _assert_gone(fab, pod)


@pytest.mark.parametrize(("cid", "ifname"), [
    ("bad/id", "eth0"), ("-leading", "eth0"), ("c", "x" * 16), ("c", "eth/0"), ("c", ".."),
    ("c", "eth 0")])
async def test_bad_container_id_or_ifname_is_code_4(fab: Fabric, netns: Callable[[str], str],
                                                    cid: str, ifname: str) -> None:
    pod = netns("pod")
    r = await fab.add(pod, cid, ifname=ifname)
    assert r.exit != 0 and r.code == 4, r.stdout
    await _assert_gone(fab, pod)


async def test_config_errors(fab: Fabric, netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    r = await fab.add(pod, "c1", conf=fab.conf("0.2.0"))
    assert r.code == 1
    r = await fab.add(pod, "c1", conf="{not json")
    assert r.code == 6
    conf = fab.conf()
    del conf["name"]
    assert (await fab.add(pod, "c1", conf=conf)).code == 7
    # CHECK needs 0.4.0+, GC and STATUS 1.1.0
    r = await fab.call("CHECK", fab.conf("0.3.1"), container_id="c1", netns=ns_path(pod))
    assert r.code == 1
    assert (await fab.call("STATUS", fab.conf("1.0.0"))).code == 1
    await _assert_gone(fab, pod)


async def test_agent_unreachable_is_code_11_naming_socket(fab: Fabric,
                                                          netns: Callable[[str], str],
                                                          tmp_path: Path) -> None:
    pod = netns("pod")
    sock = str(tmp_path / "nobody-listens.sock")
    conf = fab.conf()
    conf["agentSocket"] = sock
    r = await fab.add(pod, "c1", conf=conf)
    assert r.exit != 0 and r.code == 11 and sock in r.json["msg"]
    ipam_conf = {"cniVersion": "1.0.0", "name": "x", "type": "ptp",
                 "ipam": {"type": "l3fabric-ipam", "agentSocket": sock}}
    r = await exec_plugin(ipam_exe(), cni_env("ADD", netns=ns_path(pod)), ipam_conf)
    assert r.code == 11 and sock in r.json["msg"]


async def test_status_with_the_agent_unreachable_is_code_50(fab: Fabric,
                                                             tmp_path: Path) -> None:
    """A runtime's readiness probe: with no agent behind the socket no ADD can succeed,
    so both shims fail STATUS with 50 (plugin not available), naming the socket."""
    sock = str(tmp_path / "nobody-listens.sock")
    conf = {**fab.conf("1.1.0"), "agentSocket": sock}
    for exe in ("l3fabric", "l3fabric-ipam"):
        r = await exec_plugin(fab.bin_dir / exe, cni_env("STATUS", container_id=None,
                                                         ifname=None), conf)
        assert r.exit != 0 and r.code == 50 and sock in r.json["msg"], (exe, r.stdout)
    (await fab.call("STATUS", fab.conf("1.1.0"))).ok()


# ------------------------------------------------------------------ DEL is idempotent


async def test_del_variants_all_succeed_and_free(fab: Fabric,
                                                 netns: Callable[[str], str]) -> None:
    # never added
    (await fab.delete(None, "never-added")).ok()
    # repeated
    pod = netns("pod")
    (await fab.add(pod, "c-rep")).ok()
    (await fab.delete(pod, "c-rep")).ok()
    (await fab.delete(pod, "c-rep")).ok()
    await _assert_gone(fab, pod)
    # CNI_NETNS unset / empty (containerd's second DEL)
    for i, netns_value in enumerate((None, "")):
        pod = netns("pod")
        cid = f"c-nons{i}"
        (await fab.add(pod, cid)).ok()
        (await fab.call("DEL", fab.conf(), container_id=cid, netns=netns_value)).ok()
        await _assert_gone(fab)
    # netns already gone
    pod = netns("pod")
    (await fab.add(pod, "c-gone")).ok()
    sh("ip", "netns", "del", pod)
    (await fab.delete(pod, "c-gone")).ok()
    await _assert_gone(fab)
    # CNI_NETNS pointing nowhere, never added
    (await fab.call("DEL", fab.conf(), container_id="c-x", netns="/var/run/netns/none")).ok()


async def test_late_del_of_old_container_keeps_new_pod(fab: Fabric,
                                                       netns: Callable[[str], str]) -> None:
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p"
    old, new = netns("pod"), netns("pod")
    (await fab.add(old, "old-c", args=args)).ok()
    new_addr = _addr((await fab.add(new, "new-c", args=args)).ok().json)
    # The new ADD took the name over: the old attachment is gone whole.
    await _assert_only(fab, {"new-c": new_addr})
    assert "eth0" not in links(old)
    (await fab.delete(old, "old-c", args=args)).ok()
    (await fab.call("DEL", fab.conf(), container_id="old-c", netns="", args=args)).ok()
    await _assert_only(fab, {"new-c": new_addr})
    assert "eth0" in links(new)
    (await fab.delete(new, "new-c", args=args)).ok()
    await _assert_gone(fab)


async def test_del_after_the_endpoint_changed_or_went_behind_the_handlers_back(
        fab: Fabric, netns: Callable[[str], str]) -> None:
    """DEL takes the endpoint the handler wrote from memory instead of reading it back;
    one rewritten (labels edited with etcdctl) or deleted since must still be handled:
    the rewritten one deleted, both pods unwired and their addresses freed."""
    changed, gone = netns("pod"), netns("pod")
    (await fab.add(changed, "c-changed")).ok()
    (await fab.add(gone, "c-gone2")).ok()
    weps = await fab.workloads()
    for rel, w in weps.items():
        if w["spec"]["containerID"] == "c-changed":
            w["spec"]["labels"] = {"edited": "by-hand"}
            await fab.ds.put(keys.full(rel), json.dumps(w).encode())
        else:
            await fab.ds.delete(keys.full(rel))
    (await fab.delete(changed, "c-changed")).ok()
    (await fab.delete(gone, "c-gone2")).ok()
    await _assert_gone(fab, changed)
    await _assert_gone(fab, gone)


# ------------------------------------------------------------------ failed ADD


async def test_failed_add_leaves_nothing_when_ifname_taken(fab: Fabric,
                                                           netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "taken0")
    r = await fab.add(pod, "c-fail")
    assert r.exit != 0 and r.code == 102, r.stdout
    await _assert_gone(fab)
    assert sorted(links(pod)) == ["eth0", "lo", "taken0"]


async def test_failed_add_leaves_nothing_when_netns_missing(fab: Fabric) -> None:
    r = await fab.call("ADD", fab.conf(), container_id="c-nons", netns="/var/run/netns/nope")
    assert r.exit != 0 and r.code == 102
    await _assert_gone(fab)


async def test_failed_add_leaves_nothing_when_dataplane_fails(
        fab: Fabric, netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    fab.sink.fail_next = True
    r = await fab.add(pod, "c-dp")
    assert r.exit != 0 and r.code == 103
    await _assert_gone(fab, pod)


async def test_failed_add_when_pool_exhausted(fab: Fabric, netns: Callable[[str], str]) -> None:
    from datastore import model as m

    await fab.ds.delete_prefix(keys.full(keys.IPPOOLS))
    tiny = ippool("tiny", "10.9.9.0/32", 32)
    await fab.ds.put(m.key_for(tiny), m.encode(tiny))
    fab.ipam.invalidate()
    a, b = netns("pod"), netns("pod")
    assert _addr((await fab.add(a, "c-a")).ok().json) == "10.9.9.0/32"
    r = await fab.add(b, "c-b")
    assert r.exit != 0 and r.code == 100, r.stdout
    assert "eth0" not in links(b)
    assert await fab.handles() == [f"{NETWORK}.c-a.eth0"]
    # STATUS says the same
    st = await fab.call("STATUS", fab.conf("1.1.0"))
    assert st.code == 50 and "exhausted" in st.json["msg"]
    (await fab.delete(a, "c-a")).ok()
    (await fab.call("STATUS", fab.conf("1.1.0"))).ok()


# ------------------------------------------------------------------ CHECK


async def test_check_good_and_bad(fab: Fabric, netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    res = (await fab.add(pod, "c-chk", "1.1.0")).ok().json
    conf = fab.conf("1.1.0", prevResult=res)
    (await fab.call("CHECK", conf, container_id="c-chk", netns=ns_path(pod))).ok()
    # no prevResult: invalid config
    r = await fab.call("CHECK", fab.conf("1.1.0"), container_id="c-chk", netns=ns_path(pod))
    assert r.code == 7
    # break the pod's default route
    sh("ip", "-n", pod, "route", "del", "default")
    r = await fab.call("CHECK", conf, container_id="c-chk", netns=ns_path(pod))
    assert r.code == 104 and "default route" in r.json["msg"]
    # break the host route
    sh("ip", "-n", fab.node, "route", "del", _addr(res))
    r = await fab.call("CHECK", conf, container_id="c-chk", netns=ns_path(pod))
    assert r.code == 104 and "host route" in r.json["msg"]
    # an address the attachment does not hold
    bad = json.loads(json.dumps(res))
    bad["ips"][0]["address"] = "10.244.99.99/32"
    r = await fab.call("CHECK", fab.conf("1.1.0", prevResult=bad), container_id="c-chk",
                       netns=ns_path(pod))
    assert r.code == 104 and "does not hold" in r.json["msg"]
    (await fab.delete(pod, "c-chk", "1.1.0")).ok()
    await _assert_gone(fab, pod)


# ------------------------------------------------------------------ GC and STATUS


async def test_gc_frees_attachments_not_listed(fab: Fabric, netns: Callable[[str], str]) -> None:
    pods = {f"c-gc{i}": netns("pod") for i in range(3)}
    for cid, pod in pods.items():
        (await fab.add(pod, cid)).ok()
    # no list: nothing deleted
    (await fab.call("GC", fab.conf("1.1.0"))).ok()
    assert len(await fab.handles()) == 3 and len(fab_links(fab.node)) == 3
    # another network's GC leaves ours alone
    other = fab.conf("1.1.0")
    other["name"] = "othernet"
    other["cni.dev/valid-attachments"] = []
    (await fab.call("GC", other)).ok()
    assert len(await fab.handles()) == 3
    # keep c-gc0 only
    conf = fab.conf("1.1.0")
    conf["cni.dev/valid-attachments"] = [{"containerID": "c-gc0", "ifname": "eth0"}]
    (await fab.call("GC", conf)).ok()
    assert await fab.handles() == [f"{NETWORK}.c-gc0.eth0"]
    assert fab_links(fab.node) == [host_veth_name(NETWORK, "c-gc0", "eth0")]
    assert len(our_routes(fab.node)) == 1
    assert [w["spec"]["containerID"] for w in (await fab.workloads()).values()] == ["c-gc0"]
    # the older key, empty list: everything goes
    conf = fab.conf("1.1.0")
    conf["cni.dev/attachments"] = []
    (await fab.call("GC", conf)).ok()
    await _assert_gone(fab)


async def test_status_ok_and_no_pool(fab: Fabric) -> None:
    (await fab.call("STATUS", fab.conf("1.1.0"))).ok()
    await fab.ds.delete_prefix(keys.full(keys.IPPOOLS))
    r = await fab.call("STATUS", fab.conf("1.1.0"))
    assert r.exit != 0 and r.code == 50 and "no enabled IPv4 pool" in r.json["msg"]


async def test_status_50_when_etcd_down(etcd: EmbeddedEtcd, netns: Callable[[str], str],
                                        tmp_path: Path) -> None:
    async with fabric(etcd.endpoint, netns("node"), tmp_path, timeout=1.0,
                      pools=[ippool("default", POOL, 26)]) as f:
        (await f.call("STATUS", f.conf("1.1.0"))).ok()
        etcd.stop()
        r = await f.call("STATUS", f.conf("1.1.0"))
        assert r.exit != 0 and r.code == 50 and "etcd" in r.json["msg"]


# ------------------------------------------------------------------ chains and delegation


async def test_prev_result_is_extended_in_a_chain(fab: Fabric,
                                                  netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "dummy0", "sandbox": ns_path(pod)}],
            "ips": [{"address": "192.0.2.5/24", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]}}
    res = (await fab.add(pod, "c-ch", conf=fab.conf(prevResult=prev))).ok().json
    assert [i["name"] for i in res["interfaces"]] == [
        "dummy0", host_veth_name(NETWORK, "c-ch", "eth0"), "eth0"]
    assert res["ips"][0] == {"address": "192.0.2.5/24", "interface": 0}
    assert res["ips"][1]["interface"] == 2
    assert res["dns"] == {"nameservers": ["192.0.2.53"]}
    (await fab.delete(pod, "c-ch")).ok()


@needs_reference
async def test_l3fabric_with_host_local_ipam(fab: Fabric, netns: Callable[[str], str],
                                             tmp_path: Path) -> None:
    pod = netns("pod")
    conf = fab.conf(ipam={"type": "host-local", "dataDir": str(tmp_path / "hl"),
                          "ranges": [[{"subnet": "10.50.0.0/24"}]]})
    res = (await fab.add(pod, "c-hl", conf=conf)).ok().json
    address = _addr(res)
    assert address.startswith("10.50.0.") and address.endswith("/32")
    assert (tmp_path / "hl" / NETWORK / address[:-3]).exists()
    assert [rt["dst"] for rt in our_routes(fab.node)] == [address[:-3]]
    assert await fab.handles() == []  # our IPAM untouched
    (await fab.call("CHECK", {**conf, "prevResult": res}, container_id="c-hl",
                    netns=ns_path(pod))).ok()
    (await fab.delete(pod, "c-hl", conf=conf)).ok()
    assert not (tmp_path / "hl" / NETWORK / address[:-3]).exists()
    await _assert_gone(fab, pod)
    # a missing IPAM plugin: an error naming it, nothing left
    conf["ipam"] = {"type": "no-such-ipam"}
    r = await fab.add(pod, "c-hl2", conf=conf)
    assert r.exit != 0 and "no-such-ipam" in r.json["msg"]
    await _assert_gone(fab, pod)


@needs_reference
async def test_l3fabric_ipam_under_reference_ptp(fab: Fabric,
                                                 netns: Callable[[str], str]) -> None:
    conf = {"cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp",
            "ipam": {"type": "l3fabric-ipam", "agentSocket": fab.socket}}
    cni_path = [fab.bin_dir, REFERENCE_DIR]
    pods = [netns("pod"), netns("pod")]
    results = []
    for i, pod in enumerate(pods):
        env = cni_env("ADD", container_id=f"c-ptp{i}", netns=ns_path(pod), cni_path=cni_path)
        r = (await exec_plugin(REFERENCE_DIR / "ptp", env, conf, node_ns=fab.node)).ok()
        results.append(r.json)
    addrs = [_addr(r) for r in results]
    assert all(a.startswith("10.244.") and a.endswith("/16") for a in addrs)
    assert results[0]["ips"][0]["gateway"] == "169.254.1.1"
    assert sorted(await fab.handles()) == ["ptpnet.c-ptp0.eth0", "ptpnet.c-ptp1.eth0"]
    # ptp pods reach each other through the node
    assert ping(pods[0], addrs[1].split("/")[0])
    # CHECK through ptp asks our IPAM too
    env = cni_env("CHECK", container_id="c-ptp0", netns=ns_path(pods[0]), cni_path=cni_path)
    (await exec_plugin(REFERENCE_DIR / "ptp", env, {**conf, "prevResult": results[0]},
                       node_ns=fab.node)).ok()
    for i, pod in enumerate(pods):
        env = cni_env("DEL", container_id=f"c-ptp{i}", netns=ns_path(pod), cni_path=cni_path)
        (await exec_plugin(REFERENCE_DIR / "ptp", env, conf, node_ns=fab.node)).ok()
    assert await fab.handles() == [] and await fab.allocated() == []


async def test_l3fabric_ipam_alone_returns_ipam_result(fab: Fabric,
                                                       netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    conf = {"cniVersion": "0.4.0", "name": "x", "type": "bridge",
            "ipam": {"type": "l3fabric-ipam", "agentSocket": fab.socket}}
    env = cni_env("ADD", container_id="c-ipam", netns=ns_path(pod))
    res = (await exec_plugin(ipam_exe(), env, conf)).ok().json
    assert "interfaces" not in res and res["ips"][0]["version"] == "4"
    assert res["ips"][0]["address"].endswith("/16")
    assert fab_links(fab.node) == []
    (await exec_plugin(ipam_exe(), cni_env("DEL", container_id="c-ipam"), conf)).ok()
    assert await fab.handles() == []


# ------------------------------------------------------------------ requested addresses


async def test_requested_ip_from_cni_args(fab: Fabric, netns: Callable[[str], str]) -> None:
    a, b = netns("pod"), netns("pod")
    res = (await fab.add(a, "c-ip", args="IgnoreUnknown=1;IP=10.244.7.7")).ok().json
    assert _addr(res) == "10.244.7.7/32"
    # the same address again: in use, nothing left for the second pod
    r = await fab.add(b, "c-ip2", args="IgnoreUnknown=1;IP=10.244.7.7")
    assert r.exit != 0 and r.code == 101 and "in use" in r.json.get("details", "")
    assert "eth0" not in links(b)
    # outside every pool
    r = await fab.add(b, "c-ip3", args="IgnoreUnknown=1;IP=192.0.2.1")
    assert r.code == 101
    assert await fab.handles() == [f"{NETWORK}.c-ip.eth0"]
    (await fab.delete(a, "c-ip")).ok()
    await _assert_gone(fab)


async def test_requested_ip_from_args_and_capability(fab: Fabric,
                                                     netns: Callable[[str], str]) -> None:
    a, b = netns("pod"), netns("pod")
    conf = fab.conf(args={"cni": {"ips": ["10.244.8.8/16"]}})
    assert _addr((await fab.add(a, "c-args", conf=conf)).ok().json) == "10.244.8.8/32"
    conf = fab.conf(runtimeConfig={"ips": ["10.244.9.9"]})
    assert _addr((await fab.add(b, "c-cap", conf=conf)).ok().json) == "10.244.9.9/32"
    (await fab.delete(a, "c-args")).ok()
    (await fab.delete(b, "c-cap")).ok()
    c = netns("pod")
    res = (await fab.add(c, "c-env", cap_args={"ips": ["10.244.10.10"]})).ok().json
    assert _addr(res) == "10.244.10.10/32"
    (await fab.delete(c, "c-env")).ok()
    await _assert_gone(fab)


# ------------------------------------------------------------------ requested MAC


def _link_mac(pod_ns: str, ifname: str = "eth0") -> str:
    """The MAC ``ip -n POD link show IFNAME`` prints (``link/ether MAC brd ...``)."""
    words = sh("ip", "-n", pod_ns, "link", "show", ifname).split()
    return words[words.index("link/ether") + 1]


async def _check(fab: Fabric, pod_ns: str, cid: str, result: dict[str, Any], *,
                 args: str | None = None, **conf: Any) -> Any:
    """CHECK as a runtime runs it: the ADD's config and arguments plus its result."""
    return await fab.call("CHECK", fab.conf("1.1.0", prevResult=result, **conf),
                          container_id=cid, netns=ns_path(pod_ns), args=args)


async def test_requested_mac_from_cni_args(fab: Fabric, netns: Callable[[str], str]) -> None:
    sysctl(fab.node, "net.ipv4.ip_forward", "1")  # a test node namespace: no route out
    pod, other = netns("pod"), netns("pod")
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=mac-1;MAC=C2-11-22-33-44-55"
    res = (await fab.add(pod, "c-mac", "1.1.0", args=args)).ok().json
    mac = "c2:11:22:33:44:55"
    assert _link_mac(pod) == mac
    assert res["interfaces"][1]["name"] == "eth0" and res["interfaces"][1]["mac"] == mac
    assert res["interfaces"][0]["mac"] == "ee:ee:ee:ee:ee:ee"  # the host side keeps its own
    spec = (await fab.workloads())[f"workloads/{fab.node}/shop.mac-1.eth0"]["spec"]
    assert spec["mac"] == mac
    # The pod works with it: the node resolves the pod to the new MAC.
    peer = (await fab.add(other, "c-peer")).ok().json
    assert ping(pod, _addr(peer)[:-3]) and ping(other, _addr(res)[:-3])
    (await _check(fab, pod, "c-mac", res, args=args)).ok()

    sh("ip", "-n", pod, "link", "set", "eth0", "address", "c2:99:99:99:99:99")
    r = await _check(fab, pod, "c-mac", res, args=args)
    assert r.code == 104 and "c2:99:99:99:99:99" in r.json["msg"] and mac in r.json["msg"]
    # Without the argument CHECK holds the pod to the MAC its result reported.
    r = await _check(fab, pod, "c-mac", res)
    assert r.code == 104 and "MAC c2:99:99:99:99:99, not c2:11:22:33:44:55" in r.json["msg"]

    (await fab.delete(pod, "c-mac", "1.1.0", args=args)).ok()
    (await fab.delete(other, "c-peer")).ok()
    await _assert_gone(fab, pod)


async def test_requested_mac_from_the_mac_capability(fab: Fabric,
                                                     netns: Callable[[str], str]) -> None:
    pod = netns("pod")
    # The capability wins over CNI_ARGS (the order of the reference plugins).
    rc = {"mac": "c2:AA:BB:CC:DD:EE"}
    args = "IgnoreUnknown=1;MAC=c2:11:22:33:44:55"
    conf = fab.conf("1.1.0", runtimeConfig=rc)
    res = (await fab.add(pod, "c-cap", conf=conf, args=args)).ok().json
    mac = "c2:aa:bb:cc:dd:ee"
    assert _link_mac(pod) == mac
    assert res["interfaces"][1]["mac"] == mac
    [wep] = (await fab.workloads()).values()
    assert wep["spec"]["mac"] == mac
    (await _check(fab, pod, "c-cap", res, args=args, runtimeConfig=rc)).ok()

    sh("ip", "-n", pod, "link", "set", "eth0", "address", "c2:00:00:00:00:01")
    r = await _check(fab, pod, "c-cap", res, args=args, runtimeConfig=rc)
    assert r.code == 104 and "has MAC c2:00:00:00:00:01, not c2:aa:bb:cc:dd:ee" in r.json["msg"]

    (await fab.delete(pod, "c-cap", "1.1.0", conf=conf, args=args)).ok()
    await _assert_gone(fab, pod)


@pytest.mark.parametrize(
    ("args", "rc", "code", "says"),
    [
        ("IgnoreUnknown=1;MAC=01:00:5e:00:00:01", None, 4, ["MAC='01:00:5e:00:00:01'",
                                                            "multicast"]),
        ("IgnoreUnknown=1;MAC=c2:11:22", None, 4, ["MAC='c2:11:22'", "six hex bytes"]),
        (None, {"mac": "ff:ff:ff:ff:ff:ff"}, 7, ["'ff:ff:ff:ff:ff:ff'", "broadcast"]),
        (None, {"mac": "33:33:00:00:00:01"}, 7, ["'33:33:00:00:00:01'", "multicast"]),
        (None, {"mac": "not-a-mac"}, 7, ["'not-a-mac'", "six hex bytes"]),
        (None, {"mac": "EE:EE:EE:EE:EE:EE"}, 7, ["ee:ee:ee:ee:ee:ee", "host side"]),
    ],
)
async def test_bad_requested_mac_is_refused_and_changes_nothing(
        fab: Fabric, netns: Callable[[str], str], args: str | None,
        rc: dict[str, Any] | None, code: int, says: list[str]) -> None:
    pod = netns("pod")
    conf = fab.conf("1.1.0", **({"runtimeConfig": rc} if rc else {}))
    r = await fab.add(pod, "c-badmac", conf=conf, args=args)
    assert r.exit != 0 and r.code == code, r.stdout
    assert all(word in r.json["msg"] for word in says), r.json
    await _assert_gone(fab, pod)
    assert links(pod) == ["lo"]
    # The runtime cleans up after the failed ADD with the same arguments: that works.
    (await fab.delete(pod, "c-badmac", "1.1.0", conf=conf, args=args)).ok()
    await _assert_gone(fab, pod)


# ------------------------------------------------------------------ portmap chain


@needs_reference
async def test_port_mapping_through_reference_portmap(fab: Fabric,
                                                      netns: Callable[[str], str]) -> None:
    node = fab.node
    sh("ip", "-n", node, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    sh("ip", "-n", node, "addr", "add", "10.99.0.1/32", "dev", "uplink0")
    sh("ip", "-n", node, "link", "set", "uplink0", "up")
    sysctl(node, "net.ipv4.ip_forward", "1")  # a test node namespace: no route out
    conflist = {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [
        {"type": "l3fabric", "agentSocket": fab.socket, "ipam": {"type": "l3fabric-ipam"}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}
    cni_path = [fab.bin_dir, REFERENCE_DIR]
    server, client = netns("pod"), netns("pod")
    # keys capitalised as containerd writes them
    runtime = {"portMappings": [{"HostPort": 18080, "ContainerPort": 8080,
                                 "Protocol": "TCP"}]}
    res = (await run_conflist(conflist, "ADD", container_id="c-srv", netns=ns_path(server),
                              cni_path=cni_path, node_ns=node, runtime=runtime)).ok().json
    (await run_conflist(conflist, "ADD", container_id="c-cli", netns=ns_path(client),
                        cni_path=cni_path, node_ns=node)).ok()
    srv = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c",
                            _ECHO_SERVER, "8080"], stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
        out = await asyncio.to_thread(
            sh, "ip", "netns", "exec", client, sys.executable, "-c",
            _CLIENT, "10.99.0.1", "18080")
        assert out.strip() == "hello from " + _addr(res).split("/")[0]
    finally:
        srv.kill()
        srv.wait()
    for cid, pod in (("c-srv", server), ("c-cli", client)):
        (await run_conflist(conflist, "DEL", container_id=cid, netns=ns_path(pod),
                            cni_path=cni_path, node_ns=node, runtime=runtime)).ok()
    await _assert_gone(fab)
    assert "CNI-DN" not in sh("ip", "netns", "exec", node, "iptables-save", "-t", "nat")


_ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hello from " + c.getsockname()[0].encode()); c.close()
"""

_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(100).decode())
"""


# ------------------------------------------------------------------ concurrency, metrics


async def test_parallel_adds_get_distinct_addresses(fab: Fabric,
                                                    netns: Callable[[str], str]) -> None:
    pods = [netns("pod") for _ in range(8)]
    runs = await asyncio.gather(*(fab.add(p, f"c-par{i}") for i, p in enumerate(pods)))
    addrs = [_addr(r.ok().json) for r in runs]
    assert len(set(addrs)) == 8
    assert len(fab_links(fab.node)) == 8 and len(our_routes(fab.node)) == 8
    await asyncio.gather(*(fab.delete(p, f"c-par{i}") for i, p in enumerate(pods)))
    await _assert_gone(fab)
    text = fab.metrics.render().decode()
    assert 'l3fabric_cni_requests_total{result="ok",verb="ADD"} 8.0' in text
    assert 'l3fabric_cni_request_seconds_count{verb="DEL"} 8.0' in text
    for step in ("read", "ipam", "wiring", "endpoint"):  # each ADD's steps, timed
        assert f'l3fabric_cni_add_step_seconds_count{{step="{step}"}} 8.0' in text


async def test_pods_on_a_node_reach_each_other(fab: Fabric,
                                               netns: Callable[[str], str]) -> None:
    sysctl(fab.node, "net.ipv4.ip_forward", "1")  # a test node namespace: no route out
    a, b = netns("pod"), netns("pod")
    ra = (await fab.add(a, "c-a")).ok().json
    rb = (await fab.add(b, "c-b")).ok().json
    assert ping(a, _addr(rb)[:-3]) and ping(b, _addr(ra)[:-3])
    (await fab.delete(a, "c-a")).ok()
    (await fab.delete(b, "c-b")).ok()


class _RouteOwner:
    """A dataplane that owns the pods' host routes, as the agent does (its route manager
    programs them): it records what it is told, and where the pod's address is routed
    when it is told."""

    owns_pod_routes = True

    def __init__(self, node: str) -> None:
        self.node = node
        self.events: list[tuple[str, Any]] = []

    async def endpoint_added(self, key: str, wep: Any) -> None:
        self.events.append(("added", key, [r["dst"] for r in our_routes(self.node)]))

    async def endpoint_removed(self, key: str, addresses: Any = ()) -> None:
        self.events.append(("removed", key, [r["dst"] for r in our_routes(self.node)]))


async def test_wiring_leaves_the_pod_routes_to_a_dataplane_that_owns_them(
        module_etcd: EmbeddedEtcd, netns: Callable[[str], str], tmp_path: Path) -> None:
    """One writer per route: with a dataplane that owns the pods' routes, the handler
    wires the veth and reports the endpoint, and neither the wiring nor the DEL's
    unwiring writes a route of ours."""
    from datastore import model as m

    node, pod = netns("node"), netns("pod")
    owner = _RouteOwner(node)
    async with fabric(module_etcd.endpoint, node, tmp_path, dataplane=owner) as f:
        await f.ds.delete_prefix(keys.PREFIX)
        pool = ippool("default", POOL, 26)
        await f.ds.put(m.key_for(pool), m.encode(pool))
        (await f.add(pod, "c-rr")).ok()
        host_if = host_veth_name(NETWORK, "c-rr", "eth0")
        assert host_if in fab_links(node)
        [(kind, key, routes)] = owner.events
        assert kind == "added" and key.endswith(".c-rr.eth0") and routes == []
        assert our_routes(node) == []
        (await f.delete(pod, "c-rr")).ok()
        assert owner.events[-1] == ("removed", key, [])
        assert host_if not in fab_links(node)


# ------------------------------------------------------------------ one attachment per pod name


async def test_recreated_pod_after_the_old_del_and_its_old_address(
        fab: Fabric, netns: Callable[[str], str]) -> None:
    """Pod P re-created under its name, the old sandbox's DEL coming first (and again,
    late, as containerd repeats it without a netns): the new one is whole. A re-created
    pod may ask for the address its predecessor still holds (IP=): the takeover frees it
    before the new ADD assigns."""
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p"
    old, new = netns("pod"), netns("pod")
    (await fab.add(old, "old-c", args=args)).ok()
    (await fab.delete(old, "old-c", args=args)).ok()
    await _assert_gone(fab, old)
    addr = _addr((await fab.add(new, "new-c", args=args)).ok().json)
    (await fab.call("DEL", fab.conf(), container_id="old-c", netns="", args=args)).ok()
    await _assert_only(fab, {"new-c": addr})

    again = netns("pod")
    r = (await fab.add(again, "again-c", args=f"{args};IP={addr[:-3]}")).ok()
    assert _addr(r.json) == addr
    await _assert_only(fab, {"again-c": addr})
    assert "eth0" not in links(new) and "eth0" in links(again)
    (await fab.delete(new, "new-c", args=args)).ok()
    await _assert_only(fab, {"again-c": addr})
    (await fab.delete(again, "again-c", args=args)).ok()
    await _assert_gone(fab, again)


async def test_gc_with_same_name_attachments_and_veths_without_endpoints(
        fab: Fabric, netns: Callable[[str], str]) -> None:
    """Four ADDs under one pod name leave one attachment (each took over the one before);
    GC then removes every veth of this network the runtime does not list, found in the
    kernel whether etcd has an endpoint (or even an address) for it or not, with its
    route and address; another network's veth stays."""
    same = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"
    addrs = {}
    for i in range(4):
        addrs[f"g{i}"] = _addr((await fab.add(netns("pod"), f"g{i}", args=same)).ok().json)
    addrs["q"] = _addr((await fab.add(netns("pod"), "q")).ok().json)
    await _assert_only(fab, {"g3": addrs["g3"], "q": addrs["q"]})
    # Attachments etcd lost track of: o1 has no endpoint, o2 neither endpoint nor address;
    # o3 has no endpoint and its veth no alias (as an older l3fabric wired it).
    for cid in ("o1", "o2", "o3.x"):
        addrs[cid] = _addr((await fab.add(netns("pod"), cid)).ok().json)
        await fab.ds.delete(keys.workload(fab.node, "default", cid, "eth0"))
    await fab.ipam.release_by_handle(f"{NETWORK}.o2.eth0")
    sh("ip", "-n", fab.node, "link", "set", host_veth_name(NETWORK, "o3.x", "eth0"),
       "alias", "")
    other = {**fab.conf(), "name": "othernet"}
    (await fab.add(netns("pod"), "x", conf=other)).ok()
    other_veth = host_veth_name("othernet", "x", "eth0")

    conf = fab.conf("1.1.0")
    conf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": "eth0"}
                                         for c in ("g3", "q")]
    (await fab.call("GC", conf)).ok()
    assert sorted(fab_links(fab.node)) == sorted(
        [host_veth_name(NETWORK, "g3", "eth0"), host_veth_name(NETWORK, "q", "eth0"),
         other_veth])
    assert sorted(await fab.handles()) == sorted(
        [f"{NETWORK}.g3.eth0", f"{NETWORK}.q.eth0", "othernet.x.eth0"])
    # The runtime lists an attachment that was taken over: nothing of it is left to keep.
    conf["cni.dev/valid-attachments"] = [{"containerID": "g0", "ifname": "eth0"}]
    (await fab.call("GC", conf)).ok()
    assert fab_links(fab.node) == [other_veth]
    assert await fab.handles() == ["othernet.x.eth0"]
    assert [w["spec"]["containerID"] for w in (await fab.workloads()).values()] == ["x"]
    (await fab.call("DEL", other, container_id="x", netns=None)).ok()
    await _assert_gone(fab)


async def test_add_with_etcd_gone_before_the_endpoint_write_logs_no_traceback(
        etcd: EmbeddedEtcd, netns: Callable[[str], str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """etcd dies between an ADD's address assignment and its endpoint write: the ADD
    answers 11 and its roll-back, which cannot reach etcd either, logs one line per step
    (an expected outage), no traceback. The DEL the runtime sends once etcd is back
    leaves nothing."""
    from tests.helpers.cni import RecordingSink

    class StopsEtcd(RecordingSink):
        async def endpoint_added(self, key: str, wep: Any) -> None:
            await asyncio.to_thread(etcd.stop)
            await super().endpoint_added(key, wep)

    caplog.set_level("INFO")
    node, pod = netns("node"), netns("pod")
    async with fabric(etcd.endpoint, node, tmp_path, timeout=1.0, dataplane=StopsEtcd(),
                      pools=[ippool("default", POOL, 26)]) as f:
        r = await f.add(pod, "c-out")
        assert r.exit != 0 and r.code == 11 and r.json["cniVersion"] == "1.0.0", r.stdout
        assert "Traceback" not in caplog.text
        assert [rec for rec in caplog.records if rec.exc_info] == []
        assert "etcd unavailable" in caplog.text
        assert fab_links(node) == [] and "eth0" not in links(pod)
        etcd.start()
        (await f.delete(pod, "c-out")).ok()
        await _assert_gone(f, pod)


async def test_ipam_check_reports_and_fixes_an_endpoint_whose_address_is_free(
        fab: Fabric, module_etcd: EmbeddedEtcd, netns: Callable[[str], str]) -> None:
    """An endpoint whose address IPAM does not hold for it (here released by hand) is a
    problem for ``fabricctl ipam check``; ``--fix`` deletes the endpoint."""
    from tests.helpers.cni import VENV_BIN

    pod = netns("pod")
    addr = _addr((await fab.add(pod, "c-ipc")).ok().json)[:-3]
    endpoint = module_etcd.endpoint

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "fabricctl"), "--etcd-endpoints", endpoint,
                               *args], capture_output=True, text=True, timeout=60)

    assert ctl("ipam", "release", addr).returncode == 0
    r = ctl("ipam", "check", "--grace", "0")
    assert r.returncode == 1 and "endpoint-without-address" in r.stdout, r.stdout + r.stderr
    assert "workloads/" in r.stdout and addr in r.stdout
    r = ctl("ipam", "check", "--fix", "--grace", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert await fab.workloads() == {}
    r = ctl("ipam", "check", "--grace", "0")
    assert r.returncode == 0 and "consistent" in r.stdout, r.stdout + r.stderr
    (await fab.delete(pod, "c-ipc")).ok()
    await _assert_gone(fab, pod)
