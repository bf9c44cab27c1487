"""Policy with real packets: two "node" namespaces joined by a veth with static routes, pods
wired the Calico way (felix_like.plumbing), an "outside" namespace holding addresses outside the
pools, and one PolicyManager per node. The SAME table of cases runs on both backends.

Probes are TCP connects and UDP request/replies made from sockets created inside the
source namespace, run in parallel threads with short timeouts. "Reachable" means the
packet got through (an answer, or a refusal from the peer's kernel); a dropped packet
times out. Servers are sockets created inside each pod namespace and served by threads of
this process, so there is nothing to kill and no DNS anywhere. Everything lives in
namespaces the test made; forwarding is enabled only inside the node namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from helpers.policy_docs import (
    ALLOW_ALL_EGRESS,
    ALLOW_ALL_INGRESS,
    AND_NS_POD,
    DB_FROM_FRONTEND,
    DEFAULT_DENY_ALL,
    DEFAULT_DENY_EGRESS,
    DEFAULT_DENY_INGRESS,
    EGRESS_NAMED_PORT,
    GNP_PASS,
    MULTI_PORT_EGRESS,
    NAMED_PORT,
    OR_NS_POD,
    TEST_NETWORK_POLICY,
)

from datastore import model
from felix_like.netlink import run_in_netns
from felix_like.plumbing import host_veth_name, wire_pod
from felix_like.policy.manager import PolicyManager

NetnsFactory = Callable[[str], str]

TCP_PORTS = (80, 81, 6379, 6380, 8080, 9090, 5978, 5979, 32000, 32768, 32769)
UDP_PORTS = (53, 6379)
OUTSIDE_IPS = ("172.17.2.3", "172.17.1.3", "10.0.0.7", "192.0.2.9")
TIMEOUT = 0.7


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def nsx(ns: str, *cmd: str) -> None:
    sh("ip", "netns", "exec", ns, *cmd)


# --- servers --------------------------------------------------------------------------


class Servers:
    """Listening sockets inside namespaces, served by one selector thread. UDP datagrams
    are recorded (source, payload) so a spoofed packet's arrival can be checked."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.received: list[tuple[str, bytes]] = []
        self.socks: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lock = threading.Lock()

    def listen(self, ns: str, host: str = "0.0.0.0") -> None:
        def make() -> list[socket.socket]:
            out = []
            for port in TCP_PORTS:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(64)
                out.append(s)
            for port in UDP_PORTS:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((host, port))
                out.append(u)
            return out

        for s in run_in_netns(ns, make):
            s.setblocking(False)
            with self._lock:
                self.sel.register(s, selectors.EVENT_READ)
            self.socks.append(s)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            with self._lock:
                events = self.sel.select(timeout=0.05) if self.sel.get_map() else []
            for key, _ in events:
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    if s.type == socket.SOCK_STREAM:
                        conn, _ = s.accept()
                        threading.Thread(target=self._echo, args=(conn,), daemon=True).start()
                    else:
                        data, addr = s.recvfrom(2048)
                        self.received.append((addr[0], data))
                        s.sendto(b"ok", addr)
                except OSError:
                    pass

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.setblocking(True)
            conn.settimeout(30)
            try:
                conn.sendall(b"ok")
                while data := conn.recv(1024):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        if self._thread.is_alive():
            self._thread.join(2)
        for s in self.socks:
            s.close()


# --- probes ---------------------------------------------------------------------------


def _sock(ns: str, kind: int, src: str | None) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        if src is not None:
            # IP_TRANSPARENT: bind and route with any source, even one that is not ours
            # (IP_FREEBIND alone binds, but the route lookup then fails with ENETUNREACH).
            s.setsockopt(socket.SOL_IP, 19, 1)
            s.bind((src, 0))
        return s

    s = run_in_netns(ns, make)
    s.settimeout(TIMEOUT)
    return s


def probe(ns: str, dst: str, proto: str, port: int, src: str | None = None) -> bool:
    """True when the packet reached the destination's kernel (answer or refusal)."""
    if proto == "tcp":
        with _sock(ns, socket.SOCK_STREAM, src) as s:
            try:
                s.connect((dst, port))
                return s.recv(2) == b"ok"
            except ConnectionRefusedError:
                return True
            except OSError:
                return False
    with _sock(ns, socket.SOCK_DGRAM, src) as s:
        try:
            s.connect((dst, port))
            s.send(b"probe")
            return s.recv(16) == b"ok"
        except ConnectionRefusedError:
            return True
        except OSError:
            return False


# --- the lab --------------------------------------------------------------------------

PODS: dict[str, tuple[str, str, str, dict[str, str], list[dict[str, Any]]]] = {
    # name: (node, namespace, ip, labels, named ports)
    "db": ("n1", "default", "10.244.1.10", {"role": "db"}, [{"name": "redis", "port": 6379}]),
    "frontend": ("n1", "default", "10.244.1.11", {"role": "frontend"}, []),
    "web": ("n1", "default", "10.244.1.12", {"app": "web"},
            [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
    "other": ("n1", "default", "10.244.1.13", {}, []),
    "prodclient": ("n1", "prod", "10.244.1.20", {"role": "client"}, []),
    "aliceclient": ("n1", "dev", "10.244.1.30", {"role": "client"}, []),
    "alicedb": ("n1", "dev", "10.244.1.31", {"role": "db"}, []),
    "remote": ("n2", "default", "10.244.2.10", {"role": "frontend"}, []),
    "prodweb": ("n2", "prod", "10.244.2.21", {"app": "web"}, [{"name": "http", "port": 9090}]),
}
NAMESPACES = {"default": {}, "prod": {"project": "myproject"}, "dev": {"user": "alice"}}
NODE_ADDR = {"n1": "10.77.0.1", "n2": "10.77.0.2"}


@dataclass
class Lab:
    nodes: dict[str, str]  # n1/n2 -> namespace
    pods: dict[str, str]  # pod -> namespace
    ext: str
    backend: str
    servers: Servers
    base: dict[str, Any] = field(default_factory=dict)  # key -> model object
    managers: dict[str, PolicyManager] = field(default_factory=dict)

    def wep(self, pod: str, labels: dict[str, str] | None = None) -> model.WorkloadEndpoint:
        node, ns, ip, lab, ports = PODS[pod]
        res = model.parse_document({
            "apiVersion": "l3fabric.io/v1", "kind": "WorkloadEndpoint",
            "metadata": {"name": f"{pod}.eth0", "namespace": ns},
            "spec": {"node": node, "pod": pod, "endpoint": "eth0", "containerID": f"c-{pod}",
                     "ipNetworks": [f"{ip}/32"],
                     "hostInterface": host_veth_name("l3fabric", f"c-{pod}", "eth0"),
                     "labels": lab if labels is None else labels, "ports": ports}})
        assert isinstance(res, model.WorkloadEndpoint)
        return res

    def apply(self, resources: list[model.Resource],
              overrides: dict[str, Any] | None = None) -> None:
        state = dict(self.base)
        for r in resources:
            state[model.key_for(r)] = r
        state.update(overrides or {})
        for m in self.managers.values():
            m.set_state(state)
            m.apply()

    def ip(self, name: str) -> str:
        if name in PODS:
            return PODS[name][2]
        return NODE_ADDR[name] if name in NODE_ADDR else name.split(":")[1]

    def src_ns(self, name: str) -> str:
        if name in PODS:
            return self.pods[name]
        if name.startswith("ext:"):
            return self.ext
        return self.nodes[name]

    def run(self, probes: list[tuple[str, str, str, int, bool]]) -> list[str]:
        def one(p: tuple[str, str, str, int, bool]) -> str | None:
            src, dst, proto, port, want = p
            src_ip = src.split(":")[1] if src.startswith("ext:") else None
            got = probe(self.src_ns(src), self.ip(dst), proto, port, src_ip)
            if got != want:
                return (f"{src} -> {dst} {proto}/{port}: "
                        f"{'reachable' if got else 'dropped'}, expected "
                        f"{'reachable' if want else 'dropped'}")
            return None

        with ThreadPoolExecutor(max_workers=24) as ex:
            return [r for r in ex.map(one, probes) if r]


def _ns_resource(name: str, labels: dict[str, str]) -> model.Namespace:
    res = model.parse_document({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name, "labels": labels}})
    assert isinstance(res, model.Namespace)
    return res


@pytest.fixture(params=["nftables", "iptables"])
def lab(request: pytest.FixtureRequest, netns: NetnsFactory) -> Iterator[Lab]:
    backend = request.param
    n1, n2, ext = netns("n1"), netns("n2"), netns("ext")
    for n in (n1, n2):
        nsx(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "link", "add", "up1", "netns", n1, "type", "veth", "peer", "up2", "netns", n2)
    sh("ip", "-n", n1, "addr", "add", "10.77.0.1/30", "dev", "up1")
    sh("ip", "-n", n2, "addr", "add", "10.77.0.2/30", "dev", "up2")
    sh("ip", "link", "add", "ext1", "netns", n1, "type", "veth", "peer", "eth0", "netns", ext)
    sh("ip", "-n", n1, "addr", "add", "10.78.0.1/30", "dev", "ext1")
    sh("ip", "-n", ext, "addr", "add", "10.78.0.2/30", "dev", "eth0")
    for ip in OUTSIDE_IPS:
        sh("ip", "-n", ext, "addr", "add", f"{ip}/32", "dev", "eth0")
    for n, dev in ((n1, "up1"), (n2, "up2"), (n1, "ext1"), (ext, "eth0")):
        sh("ip", "-n", n, "link", "set", dev, "up")
    sh("ip", "-n", ext, "route", "add", "10.244.0.0/16", "via", "10.78.0.1")
    sh("ip", "-n", ext, "route", "add", "10.77.0.0/30", "via", "10.78.0.1")
    sh("ip", "-n", n1, "route", "add", "10.244.2.0/24", "via", "10.77.0.2")
    sh("ip", "-n", n2, "route", "add", "10.244.1.0/24", "via", "10.77.0.1")
    for net in ("172.17.0.0/16", "10.0.0.0/24", "192.0.2.0/24"):
        sh("ip", "-n", n1, "route", "add", net, "via", "10.78.0.2")
        sh("ip", "-n", n2, "route", "add", net, "via", "10.77.0.1")
    sh("ip", "-n", n2, "route", "add", "10.78.0.0/30", "via", "10.77.0.1")
    nodes = {"n1": n1, "n2": n2}
    servers = Servers()
    pods: dict[str, str] = {}
    managers: dict[str, PolicyManager] = {}
    try:
        for pod, (node, _ns, ip, _labels, _ports) in PODS.items():
            pns = netns(pod[:6])
            pods[pod] = pns
            wire_pod(nodes[node], f"/var/run/netns/{pns}", "eth0",
                     host_veth_name("l3fabric", f"c-{pod}", "eth0"),
                     [ipaddress.ip_interface(f"{ip}/32")], 1500)
            servers.listen(pns)
        for ip in OUTSIDE_IPS:  # per address: UDP replies must come from the one asked
            servers.listen(ext, ip)
        servers.start()
        the_lab = Lab(nodes, pods, ext, backend, servers)
        for name, labels in NAMESPACES.items():
            ns_obj = _ns_resource(name, labels)
            the_lab.base[model.key_for(ns_obj)] = ns_obj
        for pod in PODS:
            w = the_lab.wep(pod)
            the_lab.base[model.key_for(w)] = w
        for node, ns in nodes.items():
            managers[node] = PolicyManager(backend, ns, node)
        the_lab.managers = managers
        yield the_lab
    finally:
        for m in managers.values():
            with contextlib.suppress(Exception):
                m.cleanup()
        servers.close()


def load(text: str) -> list[model.Resource]:
    return [model.parse_document(d) for d in yaml.safe_load_all(text) if d]


# --- the table ------------------------------------------------------------------------

NAMED_PORTS = NAMED_PORT + "---" + EGRESS_NAMED_PORT
INGRESS_AND_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: default}
spec:
  podSelector: {matchLabels: {role: frontend}}
  ingress: [{from: [{podSelector: {matchLabels: {role: db}}}]}]
  egress: [{to: [{podSelector: {matchLabels: {role: db}}}], ports: [{port: 6379}]}]
"""
GNP_DENY_BEFORE_ALLOW = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-dev}
spec:
  order: 10
  selector: all()
  ingress: [{action: Deny, source: {namespaceSelector: user == "alice"}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: default}
spec: {podSelector: {}, ingress: [{}], policyTypes: [Ingress]}
"""
GNP_ORDER = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: b-allow-80}
spec:
  order: 5
  selector: role == "db"
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
---
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: a-deny-all}
spec:
  order: 20
  selector: role == "db"
  ingress: [{action: Deny}]
"""

Y, N = True, False
SCENARIOS: list[tuple[str, str, list[tuple[str, str, str, int, bool]]]] = [
    ("no policy", "", [
        ("frontend", "db", "tcp", 6379, Y), ("ext:192.0.2.9", "db", "udp", 53, Y),
        ("remote", "web", "tcp", 8080, Y), ("db", "ext:10.0.0.7", "tcp", 5979, Y)]),
    ("k8s docs test-network-policy", TEST_NETWORK_POLICY, [
        ("frontend", "db", "tcp", 6379, Y), ("remote", "db", "tcp", 6379, Y),
        ("frontend", "db", "tcp", 6380, N), ("frontend", "db", "udp", 6379, N),
        ("other", "db", "tcp", 6379, N), ("prodclient", "db", "tcp", 6379, Y),
        ("aliceclient", "db", "tcp", 6379, N), ("ext:172.17.2.3", "db", "tcp", 6379, Y),
        ("ext:172.17.1.3", "db", "tcp", 6379, N), ("db", "ext:10.0.0.7", "tcp", 5978, Y),
        ("db", "ext:10.0.0.7", "tcp", 5979, N), ("db", "frontend", "tcp", 80, N),
        ("other", "frontend", "tcp", 80, Y), ("n1", "db", "tcp", 6380, Y),
        ("n2", "db", "tcp", 6380, N)]),
    ("k8s docs namespaceSelector AND podSelector", AND_NS_POD, [
        ("aliceclient", "alicedb", "tcp", 80, Y), ("prodclient", "alicedb", "tcp", 80, N),
        ("frontend", "alicedb", "tcp", 80, N)]),
    ("k8s docs namespaceSelector OR podSelector", OR_NS_POD, [
        ("prodclient", "alicedb", "tcp", 80, Y), ("prodweb", "alicedb", "tcp", 80, Y),
        ("aliceclient", "alicedb", "udp", 53, Y), ("frontend", "alicedb", "tcp", 80, N)]),
    ("default deny ingress", DEFAULT_DENY_INGRESS, [
        ("frontend", "db", "tcp", 6379, N), ("ext:192.0.2.9", "db", "udp", 53, N),
        ("remote", "web", "tcp", 8080, N), ("n1", "db", "tcp", 80, Y),
        ("db", "prodclient", "tcp", 80, Y), ("db", "ext:10.0.0.7", "udp", 53, Y)]),
    ("deny ingress + allow all ingress", DEFAULT_DENY_INGRESS + "---" + ALLOW_ALL_INGRESS, [
        ("prodclient", "db", "udp", 53, Y), ("ext:192.0.2.9", "db", "tcp", 80, Y)]),
    ("default deny egress", DEFAULT_DENY_EGRESS, [
        ("db", "frontend", "tcp", 80, N), ("db", "ext:10.0.0.7", "tcp", 5978, N),
        ("db", "prodweb", "tcp", 9090, N), ("prodclient", "db", "tcp", 80, Y),
        ("db", "n1", "tcp", 22, N)]),
    ("deny egress + allow all egress", DEFAULT_DENY_EGRESS + "---" + ALLOW_ALL_EGRESS, [
        ("db", "ext:10.0.0.7", "udp", 53, Y), ("db", "prodweb", "tcp", 9090, Y)]),
    ("default deny all (namespace isolation)", DEFAULT_DENY_ALL, [
        ("prodclient", "db", "tcp", 80, N), ("db", "prodclient", "tcp", 80, N),
        ("db", "frontend", "tcp", 80, N), ("prodclient", "aliceclient", "tcp", 80, Y)]),
    ("endPort range", MULTI_PORT_EGRESS, [
        ("db", "ext:10.0.0.7", "tcp", 32000, Y), ("db", "ext:10.0.0.7", "tcp", 32768, Y),
        ("db", "ext:10.0.0.7", "tcp", 32769, N), ("db", "ext:10.0.0.7", "tcp", 5978, N)]),
    ("named ports (ingress and egress, per destination pod)", NAMED_PORTS, [
        ("other", "web", "tcp", 8080, Y), ("other", "web", "tcp", 80, N),
        ("other", "web", "udp", 53, Y), ("other", "web", "tcp", 53, N),
        ("frontend", "web", "tcp", 8080, Y), ("frontend", "prodweb", "tcp", 9090, Y),
        ("frontend", "prodweb", "tcp", 8080, N), ("frontend", "db", "tcp", 8080, N)]),
    ("ingress and egress in one policy", INGRESS_AND_EGRESS, [
        ("db", "frontend", "tcp", 80, Y), ("other", "frontend", "tcp", 80, N),
        ("frontend", "db", "tcp", 6379, Y), ("frontend", "db", "tcp", 80, N),
        ("remote", "db", "tcp", 6379, Y), ("remote", "db", "tcp", 80, N)]),
    ("global Deny before a namespaced Allow", GNP_DENY_BEFORE_ALLOW, [
        ("aliceclient", "db", "tcp", 80, N), ("prodclient", "db", "tcp", 80, Y),
        ("aliceclient", "prodweb", "tcp", 9090, N), ("ext:192.0.2.9", "db", "tcp", 80, Y)]),
    ("GNP order", GNP_ORDER, [
        ("other", "db", "tcp", 80, Y), ("other", "db", "tcp", 81, N),
        ("other", "frontend", "tcp", 81, Y)]),
    ("GNP Log and Pass to the namespaced policy", GNP_PASS, [
        ("frontend", "db", "tcp", 6379, Y), ("remote", "db", "tcp", 6379, Y),
        ("frontend", "db", "tcp", 6380, N), ("other", "db", "tcp", 6379, N)]),
]


def _check(lab: Lab, name: str, probes: list[tuple[str, str, str, int, bool]],
           failures: list[str]) -> None:
    failures.extend(f"[{lab.backend}] {name}: {f}" for f in lab.run(probes))


def test_policy_table(lab: Lab) -> None:
    failures: list[str] = []
    t0 = time.monotonic()
    for name, text, probes in SCENARIOS:
        lab.apply(load(text))
        _check(lab, name, probes, failures)

    # Label changes take effect at runtime; deleting the policy restores access.
    pol = load(DB_FROM_FRONTEND)
    lab.apply(pol)
    _check(lab, "label change: before", [("other", "db", "tcp", 6379, N)], failures)
    relabelled = lab.wep("other", {"role": "frontend"})
    lab.apply(pol, {model.key_for(relabelled): relabelled})
    _check(lab, "label change: after", [("other", "db", "tcp", 6379, Y),
                                        ("other", "db", "tcp", 6380, N)], failures)
    lab.apply([])
    _check(lab, "policy deleted", [("other", "db", "tcp", 6380, Y)], failures)
    assert not failures, "\n".join(failures)
    print(f"{lab.backend}: {len(SCENARIOS) + 3} scenarios in {time.monotonic() - t0:.1f}s")


def test_spoofed_source_dropped(lab: Lab) -> None:
    def sent_from(src_ip: str, nonce: bytes) -> bool:
        with _sock(lab.pods["other"], socket.SOCK_DGRAM, src_ip) as s:
            s.sendto(nonce, (PODS["db"][2], 53))
        time.sleep(0.3)
        return any(d == nonce for _, d in lab.servers.received)

    lab.apply([])
    assert sent_from(PODS["other"][2], b"own-1"), "control: own address must get through"
    assert not sent_from(PODS["frontend"][2], b"spoof-1"), "spoofed pod address"
    assert not sent_from("192.0.2.77", b"spoof-2"), "spoofed outside address"
    # Control: without our table the same spoofed packet arrives, so it was the policy.
    for m in lab.managers.values():
        m.cleanup()
    assert sent_from(PODS["frontend"][2], b"spoof-3")


def test_established_survive_policy_and_resync(lab: Lab) -> None:
    lab.apply([])
    conn = _sock(lab.pods["frontend"], socket.SOCK_STREAM, None)
    with conn:
        conn.connect((PODS["db"][2], 6379))
        assert conn.recv(2) == b"ok"
        lab.apply(load(DEFAULT_DENY_ALL))
        conn.sendall(b"ping1")
        assert conn.recv(16) == b"ping1", "an established connection survives a new policy"
        assert lab.run([("frontend", "db", "tcp", 6379, N)]) == []
        # An agent restart: a fresh manager with no record converges by one transaction.
        for node, m in list(lab.managers.items()):
            fresh = PolicyManager(lab.backend, lab.nodes[node], node)
            fresh.set_state(m.state)
            fresh.apply()
            lab.managers[node] = fresh
            conn.sendall(b"ping2")
            assert conn.recv(16) == b"ping2", "restart resync must not break it"
        assert lab.run([("frontend", "db", "tcp", 6379, N)]) == []
        assert lab.managers["n1"].last_commands > 0
        lab.managers["n1"].apply()
        assert lab.managers["n1"].last_commands == 0, "a second apply is a no-op"
