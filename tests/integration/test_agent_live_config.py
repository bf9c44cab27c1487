"""Configuration written with ``etcdctl`` while the real ``fabric-agent`` runs, and
operator actions on its allocations, seen through the real CNI shim.

The tests in ``test_agent.py`` mostly write configuration before the agent starts; these
change it afterwards (pools, reservations, IPAMConfig), or act on what the agent handed
out (``fabricctl ipam release``, ``ipam check --fix``, an agent restart between a pod's
ADD and DEL), and check what the next CNI call answers and what the node's kernel holds.
Fixtures (``netns``, ``etcd``, the ``node`` agent with pool ``p1``) remove everything.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import netaddr
from helpers import shims
from helpers.exabgp import wait_for
from helpers.fabric import API, BIN, Fabric, Node
from integration import test_agent
from integration.test_agent import POOL, cni, cni_result, etcdctl, routes, sh

from datastore.embedded import EmbeddedEtcd

node = test_agent.node  # the fixture: pool p1 in etcd, then agent n1 in a node namespace


def put(etcd: EmbeddedEtcd, key: str, obj: dict[str, Any]) -> None:
    etcdctl(etcd, "put", "/l3fabric/v1/" + key, json.dumps(obj))


def reserve(etcd: EmbeddedEtcd, *cidrs: str) -> None:
    """IPReservation r1 of ``cidrs``."""
    put(etcd, "ipam/reservations/r1", {"apiVersion": API, "kind": "IPReservation",
                                       "metadata": {"name": "r1"},
                                       "spec": {"reservedCIDRs": list(cidrs)}})


def ipam_config(etcd: EmbeddedEtcd, **spec: Any) -> None:
    put(etcd, "ipam/config", {"apiVersion": API, "kind": "IPAMConfig",
                              "metadata": {"name": "default"}, "spec": spec})


def one_block_of(etcd: EmbeddedEtcd, free: int) -> None:
    """strictAffinity, maxBlocksPerHost 1, and all of 10.244.0.0/26 but its first ``free``
    addresses reserved: the node has exactly ``free`` addresses to hand out."""
    ipam_config(etcd, strictAffinity=True, maxBlocksPerHost=1)
    rest = netaddr.IPSet(["10.244.0.0/26"]) - netaddr.IPSet(
        netaddr.IPRange("10.244.0.0", f"10.244.0.{free - 1}"))
    reserve(etcd, *(str(c) for c in rest.iter_cidrs()))


def fabricctl(etcd: EmbeddedEtcd, *args: str) -> str:
    return sh(str(BIN / "fabricctl"), "--etcd-endpoints", etcd.endpoint, *args)


def address(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def add_requesting(fab: Fabric, name: str, ip: str) -> tuple[int, dict[str, Any], str]:
    """ADD of pod ``name`` (container ``c-<name>``) on n1 asking for ``ip`` (``IP=`` in
    CNI_ARGS): exit code, answer, the pod's namespace."""
    pending = fab.spawn_pod("n1", name, ip)
    assert pending.proc.stdout is not None
    out = pending.proc.stdout.read()  # its stdin is closed already
    return pending.proc.wait(60), json.loads(out), pending.pod.ns


def fabric_of(node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd,
              tmp_path: Path) -> Fabric:
    fab = Fabric(netns, etcd, tmp_path)
    fab.nodes[node.name] = node
    return fab


def test_a_pools_block_size_changed_at_run_time_hands_out_no_address_twice(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """blockSize 26 -> 28 while the node owns 10.244.0.0/26: asking for the address a
    running pod holds is refused as in use (101), and no /28 overlapping the /26 is made
    (looking the address up in a /28 that does not exist would claim that /28 and hand
    the address out a second time)."""
    fab = fabric_of(node, netns, etcd, tmp_path)
    held = address(cni(node, "ADD", "ca", netns("a"), "a"))
    put(etcd, "config/ippools/p1", {**POOL, "spec": {**POOL["spec"], "blockSize": 28}})
    code, answer, _ = add_requesting(fab, "b", held)
    assert (code, answer["code"]) == (1, 101), answer
    assert held in answer["details"]
    blocks = etcdctl(etcd, "get", "--prefix", "--keys-only", "/l3fabric/v1/ipam/blocks/")
    assert blocks.split() == ["/l3fabric/v1/ipam/blocks/10.244.0.0-26"], blocks


def test_an_address_released_by_the_operator_is_not_handed_out_while_its_pod_lives(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """``fabricctl ipam release`` frees a running pod's address in its block; the agent
    must still not hand it to another pod while a WorkloadEndpoint uses it (an ADD handed
    it would fail "already routed on this node", and another node could borrow it). One
    block, all but .0-.2 reserved: after .0 (pod a's) is released, the next pods get .2
    and then "no free address"; pod a's DEL succeeds and leaves the
    others' routes alone, and then .0 is handed out again."""
    one_block_of(etcd, 3)
    pods = {p: netns(p) for p in "abcd"}
    assert address(cni(node, "ADD", "ca", pods["a"], "a")) == "10.244.0.0"
    assert address(cni(node, "ADD", "cb", pods["b"], "b")) == "10.244.0.1"
    out = fabricctl(etcd, "ipam", "release", "10.244.0.0")
    assert "released 10.244.0.0" in out
    assert address(cni(node, "ADD", "cc", pods["c"], "c")) == "10.244.0.2"
    code, answer = cni_result(node, "ADD", "cd", pods["d"], "d")
    assert code == 1 and json.loads(answer)["code"] == 100, answer

    cni(node, "DEL", "ca", pods["a"], "a")
    pod_routes = [r.split()[0] for r in routes(node.ns) if " dev fab" in r]
    assert pod_routes == ["10.244.0.1", "10.244.0.2"], pod_routes
    assert address(cni(node, "ADD", "cd", pods["d"], "d")) == "10.244.0.0"
    held = etcdctl(etcd, "get", "--prefix", "--keys-only", "/l3fabric/v1/ipam/handles/")
    assert held.split() == [f"/l3fabric/v1/ipam/handles/l3net.c{p}.eth0" for p in "bcd"], held


def test_an_add_repeated_after_the_operator_released_its_address_holds_what_it_answers(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """A repeated ADD of one attachment, after ``fabricctl ipam release`` emptied its IPAM
    handle, answers an address the handle holds, not the released one the handle held
    before, which nothing holds."""
    pod = netns("a")
    first = address(cni(node, "ADD", "ca", pod, "a"))
    fabricctl(etcd, "ipam", "release", first)
    again = address(cni(node, "ADD", "ca", pod, "a"))
    record = etcdctl(etcd, "get", "--print-value-only", "/l3fabric/v1/ipam/handles/l3net.ca.eth0")
    assert record and [e["address"] for e in json.loads(record)["allocations"]] == [again]
    cni(node, "DEL", "ca", pod, "a")
    assert etcdctl(etcd, "get", "--prefix", "--keys-only", "/l3fabric/v1/ipam/handles/") == ""


def test_a_malformed_pool_keeps_its_last_good_value_and_is_in_the_node_status_at_once(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """A pool overwritten with an invalid value while the agent runs: the agent keeps
    allocating from its last good value, and its NodeStatus names the key and the
    problem at once (it waited for the next periodic status write, up to 10 s)."""
    def status() -> dict[str, Any]:
        out = etcdctl(etcd, "get", "--print-value-only", "/l3fabric/v1/status/nodes/n1")
        return dict(json.loads(out)["status"]) if out else {}

    pa, pb = netns("a"), netns("b")
    assert address(cni(node, "ADD", "ca", pa, "a")) == "10.244.0.0"
    # The status reports the pod's route: the agent wrote it after the ADD; the writes
    # that the ADD's watch events cause follow within 0.2 s. Then it writes again only
    # on a change it reports, or 10 s later.
    wait_for(lambda: status().get("programmed", {}).get("local") == 1, 20, "status")
    time.sleep(1)
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/p1",
            json.dumps({**POOL, "spec": {**POOL["spec"], "blockSize": 99}}))
    want = ["config/ippools/p1: spec.blockSize: 99 is not between 20 and 32"]
    wait_for(lambda: status()["errors"] == want, 5, "the error in the NodeStatus", 0.1,
             lambda: str(status()))
    assert address(cni(node, "ADD", "cb", pb, "b")) == "10.244.0.1"
    cni(node, "DEL", "ca", pa, "a")
    cni(node, "DEL", "cb", pb, "b")


def test_reservations_and_ipam_config_changed_at_run_time_apply_to_the_next_add(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """IPReservation and IPAMConfig written, changed and deleted after the node claimed
    its block: each next ADD follows the configuration as it is then."""
    pods = {p: netns(p) for p in "abcde"}
    assert address(cni(node, "ADD", "ca", pods["a"], "a")) == "10.244.0.0"
    reserve(etcd, "10.244.0.1/32", "10.244.0.2/31")
    assert address(cni(node, "ADD", "cb", pods["b"], "b")) == "10.244.0.4"
    reserve(etcd, "10.244.0.5/32", "10.244.0.6/31", "10.244.0.8/29", "10.244.0.16/28",
            "10.244.0.32/27")
    assert address(cni(node, "ADD", "cc", pods["c"], "c")) == "10.244.0.1"
    etcdctl(etcd, "del", "/l3fabric/v1/ipam/reservations/r1")
    assert address(cni(node, "ADD", "cd", pods["d"], "d")) == "10.244.0.2"
    # One block per host and no borrowing; then a cool-down holds a's address back.
    reserve(etcd, "10.244.0.3/32", "10.244.0.5/32", "10.244.0.6/31", "10.244.0.8/29",
            "10.244.0.16/28", "10.244.0.32/27")
    ipam_config(etcd, strictAffinity=True, maxBlocksPerHost=1, releaseCooldownSeconds=3600)
    code, answer = cni_result(node, "ADD", "ce", pods["e"], "e")
    assert code == 1 and "maxBlocksPerHost=1" in answer, answer
    cni(node, "DEL", "ca", pods["a"], "a")
    code, answer = cni_result(node, "ADD", "ce", pods["e"], "e")
    assert code == 1 and json.loads(answer)["code"] == 100, answer
    ipam_config(etcd, strictAffinity=True, maxBlocksPerHost=1)
    assert address(cni(node, "ADD", "ce", pods["e"], "e")) == "10.244.0.0"
    for p in "bcde":
        cni(node, "DEL", f"c{p}", pods[p], p)


def test_del_after_an_agent_restart_frees_the_address_and_the_route(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """SIGTERM and a new agent between a pod's ADD and DEL: the new agent (empty IPAM
    caches) frees the pod's address and removes its route and endpoint."""
    pod = netns("a")
    ip = address(cni(node, "ADD", "ca", pod, "a"))
    node.kill(signal.SIGTERM)
    node.start(etcd)
    cni(node, "DEL", "ca", pod, "a")
    assert [r for r in routes(node.ns) if " dev fab" in r] == []
    assert etcdctl(etcd, "get", "--prefix", "--keys-only", "/l3fabric/v1/ipam/handles/") == ""
    assert etcdctl(etcd, "get", "--prefix", "--keys-only", "/l3fabric/v1/workloads/") == ""
    code, answer, ns = add_requesting(fabric_of(node, netns, etcd, tmp_path), "b", ip)
    assert code == 0 and address(answer) == ip, answer  # free: asked for, it is given
    cni(node, "DEL", "c-b", ns, "b")


def cni_status(agent: Node) -> tuple[int, str]:
    """The shim's STATUS (CNI 1.1.0) through ``agent``: exit code and output."""
    conf = {"cniVersion": "1.1.0", "name": "l3net", "type": "l3fabric",
            "agentSocket": agent.socket, "ipam": {"type": "l3fabric-ipam"}}
    r = subprocess.run([str(shims.installed())], input=json.dumps(conf), capture_output=True,
                       env={"CNI_COMMAND": "STATUS", "PATH": "/usr/bin:/bin"}, text=True,
                       timeout=60)
    return r.returncode, r.stdout


def test_status_follows_the_ipam_config_and_reservations_an_add_obeys(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """STATUS answers 50 when no ADD could get an address: with strictAffinity and
    maxBlocksPerHost reached, and every free address of the node's block reserved or
    taken, it answered 0 (it counted the pool's unclaimed blocks and ignored the
    reservations) while the ADD failed with 100."""
    one_block_of(etcd, 1)
    pa, pb = netns("a"), netns("b")
    assert cni_status(node)[0] == 0
    assert address(cni(node, "ADD", "ca", pa, "a")) == "10.244.0.0"
    code, answer = cni_result(node, "ADD", "cb", pb, "b")
    assert code == 1 and json.loads(answer)["code"] == 100, answer
    code, out = cni_status(node)
    assert code == 1 and json.loads(out)["code"] == 50, out
    cni(node, "DEL", "ca", pa, "a")
    assert cni_status(node) == (0, "")


def test_addresses_freed_by_ipam_check_fix_are_handed_out_by_the_running_agent(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """A pod vanished without its DEL (its endpoint deleted behind the agent's back):
    ``fabricctl ipam check --fix`` frees its leaked address, and the next ADD on the
    node, whose one block was exhausted, gets it."""
    one_block_of(etcd, 2)
    pods = {p: netns(p) for p in "abc"}
    assert address(cni(node, "ADD", "ca", pods["a"], "a")) == "10.244.0.0"
    assert address(cni(node, "ADD", "cb", pods["b"], "b")) == "10.244.0.1"
    code, answer = cni_result(node, "ADD", "cc", pods["c"], "c")
    assert code == 1 and json.loads(answer)["code"] == 100, answer
    etcdctl(etcd, "del", "/l3fabric/v1/workloads/n1/default.b.eth0")
    out = fabricctl(etcd, "ipam", "check", "--fix", "--grace", "0")
    assert "10.244.0.1" in out and "released" in out, out
    assert address(cni(node, "ADD", "cc", pods["c"], "c")) == "10.244.0.1"
    for p in "ac":
        cni(node, "DEL", f"c{p}", pods[p], p)


def test_a_pool_made_malformed_stays_in_force_across_an_agent_restart(
        node: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    """A pool overwritten with an invalid value, then the agent restarted: the new agent
    has no last good value in memory and reads it from etcd's history, so the next ADD
    still gets an address from the pool (it failed with 100 "no enabled IPv4 pool"), and
    its NodeStatus names the key and the problem."""
    def errors() -> list[str]:
        out = etcdctl(etcd, "get", "--print-value-only", "/l3fabric/v1/status/nodes/n1")
        return list(json.loads(out)["status"]["errors"]) if out else []

    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/p1",
            json.dumps({**POOL, "spec": {**POOL["spec"], "blockSize": 99}}))
    node.kill(signal.SIGTERM)
    node.start(etcd)
    want = ["config/ippools/p1: spec.blockSize: 99 is not between 20 and 32"]
    wait_for(lambda: errors() == want, 20, "the error in the NodeStatus", 0.1,
             lambda: str(errors()))
    pod = netns("a")
    assert address(cni(node, "ADD", "ca", pod, "a")) == "10.244.0.0"
    cni(node, "DEL", "ca", pod, "a")
