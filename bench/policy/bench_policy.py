"""Policy benchmark: programming time for 1, 100 and 1,000 policies over 500
endpoints; latency of one pod add and of one policy change at each size; nftables against
iptables (ratio); single-stream TCP between two pods with 1,000 policies in force against
none (ratio). Targets: a pod add at 1,000 policies <= 20 ms of dataplane work (the
backend's transaction, after the calculation); throughput ratio >= 0.95.

Workload (a spread one: each pod is selected by a few policies, as in a real cluster):
500 endpoints in 50 namespaces, one per (namespace, app) pair; 90 % NetworkPolicies
(``app`` in one namespace; ingress from ``tier=web`` pods and from the next namespace on a
named and a numeric port; egress to 10/8 minus a /16, 200 distinct), 10 % Calico-style
GlobalNetworkPolicies (``app == X && tier == "db"``, ordered; allow from ``tier == "web"``
on one port, deny from 192.0.2.0/24). At 1,000 policies a pod is selected by ~2
NetworkPolicies, a db pod by ~10 GNPs.

Latencies: ``apply()`` after one change (``total``) and the part of it after the
calculation (``dataplane``: rendering, diff and the kernel transaction). The policy change
edits one policy's ingress rules; the selector change moves a policy to other pods.

Everything runs in throw-away namespaces (``ip netns add fabb-pol-*``), removed at the end:
the policy benchmark programs a namespace with no interfaces (dispatch is by interface
name, so the endpoints' interfaces need not exist); the throughput part wires two real pods
(``felix_like.plumbing``) into a node namespace and runs iperf3 bound to the pod addresses, with
no route out of the lab. Needs root. Under a minute here.

    .venv/bin/python -m bench.policy.bench_policy [--policies 1,100,1000] [--endpoints 500]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bench.common import print_table, write_results
from datastore import model
from felix_like.netlink import delete_netns
from felix_like.policy.manager import PolicyManager

NAMESPACES = 50
NODE = "n1"
HOSTS = ["10.77.0.1"]
IPERF_PORT = 5000  # allowed by the workload's policies from the client's namespace
IPERF_SECONDS = 3


def pod_ip(i: int) -> str:
    return f"10.244.{(i + 1) // 256}.{(i + 1) % 256}"


def wep(i: int, iface: str | None = None) -> model.WorkloadEndpoint:
    res = model.parse_document({
        "apiVersion": "l3fabric.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"p{i}.eth0", "namespace": f"ns{i % NAMESPACES}"},
        "spec": {"node": NODE, "pod": f"p{i}", "endpoint": "eth0", "containerID": f"c{i}",
                 "ipNetworks": [f"{pod_ip(i)}/32"],
                 "hostInterface": iface or f"fab{i:011x}",
                 "labels": {"app": f"a{(i // NAMESPACES) % 10}",
                            "tier": ["web", "db", "cache"][i % 3]},
                 "ports": [{"name": "http", "port": 8000 + i % 5}]}})
    assert isinstance(res, model.WorkloadEndpoint)
    return res


def policy(j: int, ingress_port: int | None = None, app: int | None = None) -> model.Resource:
    """Policy ``j`` of the workload; ``ingress_port``/``app`` give a changed version (its
    rules only / its selector)."""
    port = ingress_port if ingress_port is not None else 5000 + j % 50
    if j % 10 == 9:
        sel_app = app if app is not None else j % 10
        return model.parse_document({
            "apiVersion": "l3fabric.io/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": f"gpol{j}"},
            "spec": {"order": j, "selector": f'app == "a{sel_app}" && tier == "db"',
                     "ingress": [
                         {"action": "Deny", "source": {"nets": ["192.0.2.0/24"]}},
                         {"action": "Allow", "protocol": "TCP",
                          "source": {"selector": 'tier == "web"'},
                          "destination": {"ports": [port]}}]}})
    ns = j % NAMESPACES
    sel_app = app if app is not None else (j // NAMESPACES) % 10
    return model.parse_document({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"pol{j}", "namespace": f"ns{ns}"},
        "spec": {"podSelector": {"matchLabels": {"app": f"a{sel_app}"}},
                 "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}},
                                       {"namespaceSelector": {"matchLabels": {
                                           "kubernetes.io/metadata.name":
                                               f"ns{(ns + 1) % NAMESPACES}"}}}],
                              "ports": [{"port": "http"}, {"port": port}]}],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                 "except": [f"10.{j % 200}.0.0/16"]}}]}]}})


def world(endpoints: int, policies: int,
          ifaces: dict[int, str] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for i in range(endpoints):
        w = wep(i, (ifaces or {}).get(i))
        state[model.key_for(w)] = w
    for j in range(policies):
        p = policy(j)
        state[model.key_for(p)] = p
    return state


def _ms(xs: list[float]) -> tuple[float, float]:
    """Median and p90 in ms."""
    s = sorted(xs)
    return statistics.median(s) * 1000, s[max(0, int(len(s) * 0.9 + 0.5) - 1)] * 1000


def _timed_apply(mgr: PolicyManager) -> tuple[float, float]:
    """One apply: (total, dataplane) seconds. A manager without ``last_calc_seconds`` (an
    older tree, for before/after figures) gets its calculation timed separately."""
    if not hasattr(mgr, "last_calc_seconds"):
        t0 = time.perf_counter()
        mgr.calculate()
        calc = time.perf_counter() - t0
        t0 = time.perf_counter()
        mgr.apply()
        total = time.perf_counter() - t0
        return total, max(0.0, total - calc)
    mgr.apply()
    return mgr.last_apply_seconds, mgr.last_apply_seconds - mgr.last_calc_seconds


def measure(backend: str, ns: str, endpoints: int, policies: int,
            changes: int) -> dict[str, Any]:
    state = world(endpoints, policies)
    mgr = PolicyManager(backend, ns, NODE, host_addresses=HOSTS)
    row: dict[str, Any] = {"backend": backend, "endpoints": endpoints, "policies": policies}
    try:
        mgr.set_state(dict(state))
        t0 = time.perf_counter()
        mgr.apply()
        row["initial_s"] = time.perf_counter() - t0
        rs = mgr.ruleset
        assert rs is not None
        row["chains"] = len(rs.chains)
        row["rules"] = sum(len(r) for r in rs.chains.values())
        row["sets"] = len(rs.sets)
        adds: list[tuple[float, float]] = []
        for k in range(changes):
            w = wep(endpoints + k)
            state[model.key_for(w)] = w
            mgr.set_state(dict(state))
            adds.append(_timed_apply(mgr))
        row["pod_add_ms"], row["pod_add_p90_ms"] = _ms([a[0] for a in adds])
        row["pod_add_dataplane_ms"], row["pod_add_dataplane_p90_ms"] = _ms(
            [a[1] for a in adds])
        edits: list[tuple[float, float]] = []
        moves: list[float] = []
        for k in range(max(1, min(policies, changes // 2))):
            p = policy(k, ingress_port=6000 + k)
            state[model.key_for(p)] = p
            mgr.set_state(dict(state))
            edits.append(_timed_apply(mgr))
            q = policy(k, ingress_port=6000 + k, app=(k + 5) % 10)
            state[model.key_for(q)] = q
            mgr.set_state(dict(state))
            moves.append(_timed_apply(mgr)[0])
        row["policy_change_ms"], row["policy_change_p90_ms"] = _ms([e[0] for e in edits])
        row["policy_change_dataplane_ms"] = _ms([e[1] for e in edits])[0]
        row["selector_change_ms"] = _ms(moves)[0]
        t0 = time.perf_counter()
        for _ in range(10):
            mgr.apply()
        row["noop_apply_ms"] = (time.perf_counter() - t0) / 10 * 1000
    finally:
        mgr.cleanup()
    return row


# --- throughput ----------------------------------------------------------------------


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def two_pods(tag: str) -> Iterator[tuple[str, str, str, dict[int, str]]]:
    """A node namespace with pods 0 (server) and 1 (client) of the workload wired into it
    the Calico way. Yields (node ns, server ns, client ns, pod index -> host interface)."""
    from felix_like.plumbing import host_veth_name, wire_pod

    made: list[str] = []
    try:
        names = []
        for role in ("node", "srv", "cli"):
            name = f"fabb-pol-{role}-{tag}"
            _sh("ip", "netns", "add", name)
            made.append(name)
            _sh("ip", "-n", name, "link", "set", "lo", "up")
            names.append(name)
        node, srv, cli = names
        _sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ifaces: dict[int, str] = {}
        for i, pod_ns in ((0, srv), (1, cli)):
            ifaces[i] = host_veth_name("l3fabric", f"c{i}", "eth0")
            wire_pod(node, f"/var/run/netns/{pod_ns}", "eth0", ifaces[i],
                     [ipaddress.ip_interface(f"{pod_ip(i)}/32")], 1500)
        yield node, srv, cli, ifaces
    finally:
        for name in reversed(made):
            delete_netns(name)


def iperf(srv: str, cli: str) -> float:
    """One single-stream TCP run client -> server, bound to the pod addresses: Gbit/s."""
    server = subprocess.Popen(["ip", "netns", "exec", srv, "iperf3", "-s", "-1", "-B",
                               pod_ip(0), "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not subprocess.run(["ip", "netns", "exec", srv, "ss", "-Hltn",
                                  f"sport = :{IPERF_PORT}"], capture_output=True,
                                 text=True).stdout.strip():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("iperf3 server did not start listening")
            time.sleep(0.05)
        p = subprocess.run(["ip", "netns", "exec", cli, "iperf3", "-c", pod_ip(0), "-B",
                            pod_ip(1), "-p", str(IPERF_PORT), "-t", str(IPERF_SECONDS), "-J"],
                           capture_output=True, text=True, timeout=IPERF_SECONDS + 20)
        doc = json.loads(p.stdout)
        if "error" in doc:
            raise RuntimeError(f"iperf3: {doc['error']}")
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def throughput(endpoints: int, policies: int, rounds: int, backend: str) -> dict[str, Any]:
    with two_pods(uuid.uuid4().hex[:6]) as (node, srv, cli, ifaces):
        state = world(endpoints, policies, ifaces)
        mgr = PolicyManager(backend, node, NODE, host_addresses=HOSTS)
        none: list[float] = []
        with_pol: list[float] = []
        try:
            for _ in range(rounds):  # alternate, so drift hits both sides alike
                mgr.cleanup()
                mgr.resync()
                none.append(iperf(srv, cli))
                mgr.set_state(state)
                mgr.apply()
                with_pol.append(iperf(srv, cli))
        finally:
            mgr.cleanup()
    n, w = statistics.median(none), statistics.median(with_pol)
    return {"backend": backend, "policies": policies, "endpoints": endpoints,
            "gbps_none": n, "gbps_with_policies": w, "ratio": w / n,
            "runs_none": none, "runs_with": with_pol}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=500)
    ap.add_argument("--policies", default="1,100,1000")
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--backends", default="nftables,iptables")
    ap.add_argument("--iperf-rounds", type=int, default=4, help="0: skip the TCP part")
    ap.add_argument("--output", default="policy", help="results file name")
    args = ap.parse_args()
    t_start = time.perf_counter()
    ns = f"fabb-pol-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows: list[dict[str, Any]] = []
    try:
        for n in (int(x) for x in args.policies.split(",")):
            for b in args.backends.split(","):
                rows.append(measure(b, ns, args.endpoints, n, args.changes))
                print(f"  {b} {n} policies: {time.perf_counter() - t_start:.0f} s", flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    cols = ["backend", "policies", "rules", "initial_s", "pod_add_ms", "pod_add_p90_ms",
            "pod_add_dataplane_ms", "policy_change_ms", "policy_change_dataplane_ms",
            "selector_change_ms", "noop_apply_ms"]
    print_table(cols, [[r[c] for c in cols] for r in rows],
                f"policy programming, {args.endpoints} endpoints")
    ratios: dict[str, float] = {}
    for n in sorted({r["policies"] for r in rows}):
        by = {r["backend"]: r for r in rows if r["policies"] == n}
        if "nftables" in by and "iptables" in by:
            for what in ("initial_s", "pod_add_ms", "policy_change_ms"):
                ratios[f"{what}_iptables_over_nftables@{n}"] = (
                    by["iptables"][what] / by["nftables"][what])
    tput: list[dict[str, Any]] = []
    if args.iperf_rounds:
        most = max(int(x) for x in args.policies.split(","))
        tput.append(throughput(args.endpoints, most, args.iperf_rounds, "nftables"))
        print_table(["backend", "policies", "gbps_none", "gbps_with_policies", "ratio"],
                    [[t[c] for c in ("backend", "policies", "gbps_none",
                                     "gbps_with_policies", "ratio")] for t in tput],
                    "single-stream TCP pod -> pod through the node (iperf3)")
    big = [r for r in rows if r["backend"] == "nftables"
           and r["policies"] == max(x["policies"] for x in rows)]
    targets: dict[str, Any] = {}
    if big:
        targets["pod_add_dataplane_ms@max"] = big[0]["pod_add_dataplane_ms"]
        targets["pod_add_dataplane_le_20ms"] = big[0]["pod_add_dataplane_ms"] <= 20
    if tput:
        targets["throughput_ratio"] = tput[0]["ratio"]
        targets["throughput_ratio_ge_0.95"] = tput[0]["ratio"] >= 0.95
    print(json.dumps({"ratios": ratios, "targets": targets}, indent=1))
    elapsed = time.perf_counter() - t_start
    print(f"run time {elapsed:.0f} s")
    write_results(args.output, {"rows": rows, "ratios": ratios, "throughput": tput,
                                "targets": targets, "run_seconds": elapsed})


if __name__ == "__main__":
    main()
