"""A dual-stack rack behind one top-of-rack router whose configuration is what
``fabricctl tor-config`` prints, unedited: the lab of the ToR interoperability tests
(BIRD and FRR alike).

`dual_stack_rack` makes, with the caller's ``netns`` factory (which deletes them, killing
what runs inside): a ToR namespace and ``n`` node namespaces, node ``n<i>`` on a link
``10.98.<i>.0/30`` + ``fd98:<i>::/64`` to the ToR (ToR ``.1``/``::1``, node ``.2``/``::2``,
interface ``up1`` in the node), forwarding on; and in etcd, as an operator writes them: a
Node per node (one AS each, ``bgp.ipv6Address`` set), one BGPPeer per node naming the ToR
(peer group ``rack``), ``nodeToNodeMesh: false``, an IPv4 and an IPv6 pool. The agents
(`helpers.fabric.Node`) are returned unstarted; the router is the caller's to start with
`Rack.tor_config`'s output. `add_dual_stack_pod` wires a pod through a node's real shim.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datastore.embedded import EmbeddedEtcd
from helpers.fabric import BIN, Node

API = "l3fabric.io/v1"
TOR_AS = 65000


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def put(etcd: EmbeddedEtcd, key: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    obj = {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}
    sh("etcdctl", "--endpoints", etcd.endpoint, "put", f"/l3fabric/v1/{key}", json.dumps(obj))


@dataclass
class Rack:
    tor_ns: str
    nodes: list[Node]
    etcd: EmbeddedEtcd

    def tor_config(self, fmt: str) -> str:
        """``fabricctl tor-config --peer-group rack --format FMT``, as printed."""
        r = subprocess.run([str(BIN / "fabricctl"), "tor-config", "--peer-group", "rack",
                            "--format", fmt], capture_output=True, text=True, timeout=60,
                           env={"L3FABRIC_ETCD_ENDPOINTS": self.etcd.endpoint,
                                "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        return r.stdout


def dual_stack_rack(netns: Callable[[str], str], etcd: EmbeddedEtcd, workdir: Path,
                    n: int = 2, **bgp_config: Any) -> Rack:
    """The lab described above; ``bgp_config`` adds to the BGPConfiguration's spec."""
    tor_ns = netns("tor")
    nodes = []
    for i in range(1, n + 1):
        ns = netns(f"n{i}")
        sh("ip", "-n", tor_ns, "link", "add", f"down{i}", "type", "veth", "peer", "name", "up1",
           "netns", ns)
        for where, dev, host in ((tor_ns, f"down{i}", 1), (ns, "up1", 2)):
            sh("ip", "-n", where, "addr", "add", f"10.98.{i}.{host}/30", "dev", dev)
            sh("ip", "-n", where, "addr", "add", f"fd98:{i}::{host}/64", "dev", dev, "nodad")
            sh("ip", "-n", where, "link", "set", dev, "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
        put(etcd, f"nodes/n{i}", "Node", f"n{i}", {"bgp": {
            "ipv4Address": f"10.98.{i}.2/30", "ipv6Address": f"fd98:{i}::2/64",
            "asNumber": 65100 + i}})
        put(etcd, f"config/bgppeers/rack-n{i}", "BGPPeer", f"rack-n{i}",
            {"peerIP": f"10.98.{i}.1", "asNumber": TOR_AS, "node": f"n{i}"})
        nodes.append(Node(f"n{i}", ns, f"10.98.{i}.2/30", workdir / f"n{i}"))
    sh("ip", "netns", "exec", tor_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
       "net.ipv6.conf.all.forwarding=1")
    put(etcd, "config/bgp/default", "BGPConfiguration", "default",
        {"asNumber": 64512, "holdTime": 9, "nodeToNodeMesh": False, **bgp_config})
    put(etcd, "config/ippools/v4", "IPPool", "v4", {"cidr": "10.244.0.0/16", "blockSize": 26})
    put(etcd, "config/ippools/v6", "IPPool", "v6", {"cidr": "fd44::/48", "blockSize": 122})
    return Rack(tor_ns, nodes, etcd)


def add_dual_stack_pod(node: Node, pod_ns: str, name: str,
                       labels: dict[str, str] | None = None) -> tuple[str, str]:
    """A dual-stack pod through the node's real shim; its (IPv4, IPv6) addresses."""
    res = node.cni_add(f"c-{name}", pod_ns, name, labels=labels,
                       ipam={"assign_ipv4": True, "assign_ipv6": True})
    ips = [i["address"].split("/")[0] for i in res["ips"]]
    v4 = [ip for ip in ips if ":" not in ip]
    v6 = [ip for ip in ips if ":" in ip]
    assert len(v4) == 1 and len(v6) == 1, ips
    return v4[0], v6[0]


def bgp_routes(ns: str, family: str) -> dict[str, str]:
    """prefix -> its ``ip route`` line, for the routes the agent learned over BGP (proto
    81) in a namespace; ``family`` is ``-4`` or ``-6``."""
    out = sh("ip", family, "-n", ns, "route", "show", "proto", "81")
    return {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
