"""Policy state that changes while pods run and traffic flows, checked with real packets.

The policy traffic tests configure everything first; users change things later. Here:

* with the policy traffic lab (two node namespaces, real pods, one PolicyManager per node,
  both backends): a NetworkPolicy added, its selector, ipBlock ``except`` and ports
  changed, deleted; namespace labels changed under a namespaceSelector; global policies
  reordered, a Deny inserted ahead of an Allow and moved first; a pod relabelled — every
  change made by a fresh manager (an agent restart) as well, so both the incremental and
  the full-converge paths are exercised;
* a pod deleted and a new pod given its address: a flow the old pod had (a conntrack
  entry) must not reach the new pod past the new pod's policy, nor, the pod on another
  node, past the client's egress policy (checked only on the client's node);
* with the real agent and etcd: a pod's WorkloadEndpoint labels rewritten in etcd, a
  malformed value written over a global policy (the last good one stays in force), and
  policies added or deleted while the agent is down (right as soon as it is ready again);
  and, expected to fail until the syncer keeps last good values across a restart, a
  policy made malformed before an agent restart.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.exabgp import wait_for
from helpers.fabric import Node
from helpers.policy_docs import (
    EGRESS_TO_FRONTENDS,
    FROM_BLOCK,
    FROM_TEAM_A,
    ORDERED_GNP,
    VAULT_CLOSED,
)
from test_agent import POOL, cni, etcdctl
from test_policy_traffic import (
    PODS,
    Lab,
    Servers,
    _check,
    _ns_resource,
    _sock,
    load,
    probe,
)
from test_policy_traffic import lab as lab  # the fixture, re-exported by its name

from datastore import model
from datastore.embedded import EmbeddedEtcd
from felix_like.plumbing import host_veth_name, wire_pod
from felix_like.policy.manager import PolicyManager

Y, N = True, False


def answered(flow: socket.socket, payload: bytes) -> bool:
    """Send on an existing UDP flow; whether the server answered."""
    flow.send(payload)
    try:
        return flow.recv(16) == b"ok"
    except OSError:
        return False


@contextlib.contextmanager
def flow_from_frontend(lab: Lab, pod: str) -> Iterator[socket.socket]:
    """A UDP flow from the frontend pod to ``pod``'s port 53, answered once."""
    with _sock(lab.pods["frontend"], socket.SOCK_DGRAM, None) as flow:
        flow.connect((PODS[pod][2], 53))
        assert answered(flow, f"to {pod}".encode()), f"control: {pod} answers the flow"
        yield flow


def gnp(name: str, order: int, action: str) -> list[model.Resource]:
    return load(ORDERED_GNP.replace("NAME", name).replace("ORDER", str(order))
                .replace("ACTION", action))


def from_block(except_: str, ports: str = "") -> list[model.Resource]:
    return load(FROM_BLOCK.replace("EXCEPT", except_).replace("PORTS", ports))


def test_changes_while_pods_run(lab: Lab) -> None:
    failures: list[str] = []
    plain_apply = lab.apply

    def step(name: str, resources: list[model.Resource],
             probes: list[tuple[str, str, str, int, bool]],
             overrides: dict[str, Any] | None = None) -> None:
        plain_apply(resources, overrides)  # the running managers: incremental
        _check(lab, name, probes, failures)
        for node, m in list(lab.managers.items()):  # an agent restart: full converge
            fresh = PolicyManager(lab.backend, lab.nodes[node], node)
            fresh.set_state(m.state)
            fresh.apply()
            lab.managers[node] = fresh
        _check(lab, name + " (after a restart)", probes, failures)

    step("no policy", [], [("prodclient", "db", "tcp", 80, Y)])
    team = load(FROM_TEAM_A)
    step("namespaceSelector added", team, [("prodclient", "db", "tcp", 80, N),
                                           ("frontend", "db", "tcp", 80, N)])
    prod_a = _ns_resource("prod", {"project": "myproject", "team": "a"})
    step("namespace labelled team=a", [*team, prod_a], [
        ("prodclient", "db", "tcp", 80, Y), ("prodweb", "db", "udp", 53, Y),
        ("frontend", "db", "tcp", 80, N)])
    step("namespace label removed", team, [("prodclient", "db", "tcp", 80, N),
                                           ("prodweb", "db", "udp", 53, N)])
    moved = load(FROM_TEAM_A.replace("{role: db}", "{role: frontend}"))
    step("podSelector changed", [*moved, prod_a], [
        ("other", "db", "tcp", 80, Y), ("other", "frontend", "tcp", 80, N),
        ("prodclient", "frontend", "tcp", 80, Y)])
    step("ipBlock except", from_block("172.17.1.0/24"), [
        ("ext:172.17.1.3", "db", "tcp", 80, N), ("ext:172.17.2.3", "db", "tcp", 80, Y),
        ("frontend", "db", "tcp", 80, N), ("other", "frontend", "tcp", 80, Y)])
    step("ipBlock except changed", from_block("172.17.2.0/24"), [
        ("ext:172.17.1.3", "db", "tcp", 80, Y), ("ext:172.17.2.3", "db", "tcp", 80, N)])
    step("ports added", from_block("172.17.2.0/24", ", ports: [{port: 81}]"), [
        ("ext:172.17.1.3", "db", "tcp", 80, N), ("ext:172.17.1.3", "db", "tcp", 81, Y)])
    step("policy deleted", [], [("ext:172.17.2.3", "db", "tcp", 80, Y),
                                ("frontend", "db", "udp", 53, Y)])
    allow, deny = gnp("allow-80", 20, "Allow"), gnp("deny-80", 30, "Deny")
    step("Allow before Deny", [*allow, *deny], [("other", "db", "tcp", 80, Y)])
    step("Allow moved after Deny", [*gnp("allow-80", 40, "Allow"), *deny],
         [("other", "db", "tcp", 80, N), ("other", "db", "tcp", 81, Y)])
    step("Allow back first", [*allow, *deny], [("other", "db", "tcp", 80, Y)])
    step("a Deny inserted ahead", [*allow, *deny, *gnp("deny-first", 10, "Deny")],
         [("other", "db", "tcp", 80, N)])
    step("the inserted Deny deleted", [*allow, *deny], [("other", "db", "tcp", 80, Y)])
    step("Deny reordered first", [*allow, *gnp("deny-80", 5, "Deny")],
         [("other", "db", "tcp", 80, N)])
    cache = lab.wep("db", {"role": "cache"})
    step("pod relabelled out of the selector", [*allow, *gnp("deny-80", 5, "Deny")],
         [("other", "db", "tcp", 80, Y)], {model.key_for(cache): cache})
    step("pod label back", [*allow, *gnp("deny-80", 5, "Deny")],
         [("other", "db", "tcp", 80, N)])
    assert not failures, "\n".join(failures)


def replace_pod(lab: Lab, netns: Callable[[str], str], old_pod: str, new_pod: str,
                labels: dict[str, str], policy: list[model.Resource]) -> None:
    """``old_pod`` goes (its endpoint and its veth, as a CNI DEL does it) and ``new_pod``,
    with ``labels``, gets its address on the same node; each step applied."""
    node, _, ip, _, _ = PODS[old_pod]
    old = lab.base.pop(model.key_for(lab.wep(old_pod)))
    assert isinstance(old, model.WorkloadEndpoint) and old.spec.host_interface
    subprocess.run(["ip", "-n", lab.nodes[node], "link", "del", old.spec.host_interface],
                   check=True)
    lab.apply(policy)
    pod_ns = netns(new_pod[:6])
    veth = host_veth_name("l3fabric", f"c-{new_pod}", "eth0")
    wire_pod(lab.nodes[node], f"/var/run/netns/{pod_ns}", "eth0", veth,
             [ipaddress.ip_interface(f"{ip}/32")], 1500)
    lab.servers.listen(pod_ns)
    doc = old.to_dict()
    doc["metadata"]["name"] = f"{new_pod}.eth0"
    doc["spec"].update(pod=new_pod, containerID=f"c-{new_pod}", hostInterface=veth,
                       labels=labels, ports=[])
    new = model.parse_document(doc)
    lab.base[model.key_for(new)] = new
    lab.apply(policy)


def test_a_new_pod_on_a_reused_address_gets_no_flow_of_the_old_one(
        lab: Lab, netns: Callable[[str], str]) -> None:
    """Replies and established flows are accepted before any policy, so a conntrack entry
    of the deleted pod's flow must go with it: else the new pod at the same address gets
    that flow's packets whatever its own policy says."""
    policy = load(VAULT_CLOSED)
    lab.apply(policy)
    with flow_from_frontend(lab, "db") as flow:
        replace_pod(lab, netns, "db", "vault", {"role": "vault"}, policy)
        failures = lab.run([("frontend", "db", "udp", 53, N), ("frontend", "db", "tcp", 80, N),
                            ("n1", "db", "udp", 53, Y)])
        assert not failures, failures
        got = answered(flow, b"to vault")
    assert not got, "the old pod's flow reached the new pod past its policy"
    assert all(data != b"to vault" for _, data in lab.servers.received)


# --- the real agent ---------------------------------------------------------------------

GKEY = "/l3fabric/v1/globalpolicies/deny-db"
DENY_DB: dict[str, Any] = {"apiVersion": "l3fabric.io/v1", "kind": "GlobalNetworkPolicy",
           "metadata": {"name": "deny-db"},
           "spec": {"order": 10, "selector": 'role == "db"', "types": ["Ingress"],
                    "ingress": [{"action": "Deny"}]}}


def ping(src: str, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", src, "ping", "-n", "-q", "-c", "1", "-W",
                           "1", ip], capture_output=True).returncode == 0


def relabel(etcd: EmbeddedEtcd, key: str, labels: dict[str, str]) -> None:
    """Rewrite a WorkloadEndpoint's labels in etcd, as an orchestrator would."""
    wep = json.loads(etcdctl(etcd, "get", "--print-value-only", key))
    wep["spec"]["labels"] = labels
    etcdctl(etcd, "put", key, json.dumps(wep))


@pytest.fixture
def agent(netns: Callable[[str], str], etcd: EmbeddedEtcd, tmp_path: Path) -> Iterator[Node]:
    """The real agent in a node namespace; stopped and cleaned up (ExaBGP, nft) after."""
    etcdctl(etcd, "put", "/l3fabric/v1/config/ippools/p1", json.dumps(POOL))
    ns = netns("node")
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    node = Node("n1", ns, "10.99.1.1/30", tmp_path)
    node.start(etcd)
    try:
        yield node
    finally:
        node.cleanup()


def test_the_agent_drops_the_flows_of_a_deleted_pod_before_its_address_is_reused(
        agent: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    closed = {**DENY_DB, "metadata": {"name": "vault-closed"},
              "spec": {**DENY_DB["spec"], "selector": 'role == "vault"'}}
    etcdctl(etcd, "put", "/l3fabric/v1/globalpolicies/vault-closed", json.dumps(closed))
    a, b, c = netns("pa"), netns("pb"), netns("pc")
    cni(agent, "ADD", "ca", a, "a")
    ip_b = cni(agent, "ADD", "cb", b, "b")["ips"][0]["address"].split("/")[0]
    servers = Servers()
    try:
        servers.listen(b)
        servers.start()
        with _sock(a, socket.SOCK_DGRAM, None) as flow:
            flow.connect((ip_b, 53))
            flow.send(b"to b")
            assert flow.recv(16) == b"ok", "control: b is open"
            cni(agent, "DEL", "cb", b, "b")
            agent.cni_add("cc", c, "c", ip=ip_b, labels={"role": "vault"})
            servers.listen(c)
            assert not probe(a, ip_b, "udp", 53), "c is closed to new flows"
            assert probe(c, ip_b, "udp", 53), "control: c's server answers"
            got = answered(flow, b"to c")
        assert not got, "b's flow reached c past c's policy"
    finally:
        servers.close()


def test_the_agent_follows_labels_bad_values_and_changes_made_while_it_was_down(
        agent: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    node = agent
    a, b = netns("pa"), netns("pb")
    cni(node, "ADD", "ca", a, "a")
    ip_b = cni(node, "ADD", "cb", b, "b")["ips"][0]["address"].split("/")[0]
    etcdctl(etcd, "put", GKEY, json.dumps(DENY_DB))
    assert ping(a, ip_b), "b is not labelled role=db yet"
    wep_b = "/l3fabric/v1/workloads/n1/default.b.eth0"
    relabel(etcd, wep_b, {"role": "db"})
    wait_for(lambda: not ping(a, ip_b), 20, "the relabelled pod denied")
    etcdctl(etcd, "del", GKEY)
    wait_for(lambda: ping(a, ip_b), 20, "the deny policy deleted")
    etcdctl(etcd, "put", GKEY, json.dumps(DENY_DB))
    wait_for(lambda: not ping(a, ip_b), 20, "the deny policy back")

    bad = {**DENY_DB, "spec": {**DENY_DB["spec"], "order": "first"}}
    etcdctl(etcd, "put", GKEY, json.dumps(bad))
    wait_for(lambda: any("deny-db" in e for e in json.loads(etcdctl(
        etcd, "get", "--print-value-only", "/l3fabric/v1/status/nodes/n1"))
        ["status"]["errors"]), 20, "the bad value reported in NodeStatus")
    assert not ping(a, ip_b), "the last good policy stays in force"
    etcdctl(etcd, "put", GKEY, json.dumps(DENY_DB))

    node.kill(signal.SIGTERM)
    etcdctl(etcd, "del", GKEY)
    node.start(etcd)
    assert ping(a, ip_b), "a policy deleted while the agent was down"
    node.kill(signal.SIGKILL)
    etcdctl(etcd, "put", GKEY, json.dumps(DENY_DB))
    node.start(etcd)
    assert not ping(a, ip_b), "a policy added while the agent was down"

    relabel(etcd, wep_b, {"role": "web"})
    wait_for(lambda: ping(a, ip_b), 20, "the pod relabelled out of the policy")


def test_a_policy_made_malformed_stays_in_force_across_an_agent_restart(
        agent: Node, netns: Callable[[str], str], etcd: EmbeddedEtcd) -> None:
    a, b = netns("pa"), netns("pb")
    cni(agent, "ADD", "ca", a, "a")
    ip_b = cni(agent, "ADD", "cb", b, "b")["ips"][0]["address"].split("/")[0]
    relabel(etcd, "/l3fabric/v1/workloads/n1/default.b.eth0", {"role": "db"})
    etcdctl(etcd, "put", GKEY, json.dumps(DENY_DB))
    wait_for(lambda: not ping(a, ip_b), 20, "the deny policy in force")
    bad = {**DENY_DB, "spec": {**DENY_DB["spec"], "order": "first"}}
    etcdctl(etcd, "put", GKEY, json.dumps(bad))
    agent.kill(signal.SIGKILL)
    agent.start(etcd)
    assert not ping(a, ip_b), "the last good deny policy is lost with the restart"


def test_a_remote_pods_reused_address_gets_no_flow_a_local_client_had(
        lab: Lab, netns: Callable[[str], str]) -> None:
    """The client's node must forget the flow too: its egress policy is only checked
    there, and the new pod's node sees a NEW packet its ingress (open here) accepts."""
    policy = load(EGRESS_TO_FRONTENDS)
    lab.apply(policy)
    with flow_from_frontend(lab, "remote") as flow:
        replace_pod(lab, netns, "remote", "intruder", {}, policy)
        assert lab.run([("frontend", "remote", "udp", 53, N), ("other", "remote", "udp", 53, Y)]
                       ) == []
        assert not answered(flow, b"to intruder"), "frontend's egress policy was bypassed"
