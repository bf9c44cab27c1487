"""Policy programming benchmark (issue 6): apply latency of one pod add and one policy change
with E endpoints and P policies, initial programming time, and the batch rate; nftables
against iptables (the ratio is the comparison; no absolute targets are asserted here).

Runs in a throw-away network namespace (``ip netns add``), removed at the end, so nothing
is programmed in the root namespace. Endpoint host interfaces need not exist: dispatch is
by interface name. Needs root.

    .venv/bin/python -m bench.policy.bench_policy [--endpoints 200] [--policies 1,100]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import uuid
from typing import Any

from bench.common import print_table, write_results
from datastore import model
from felix_like.policy.manager import PolicyManager


def wep(i: int, node: str = "n1") -> model.WorkloadEndpoint:
    res = model.parse_document({
        "apiVersion": "l3fabric.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": f"p{i}.eth0", "namespace": f"ns{i % 10}"},
        "spec": {"node": node, "pod": f"p{i}", "endpoint": "eth0", "containerID": f"c{i}",
                 "ipNetworks": [f"10.{244 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"],
                 "hostInterface": f"fab{i:011x}",
                 "labels": {"app": f"app{i % 20}", "tier": ["web", "db", "cache"][i % 3]},
                 "ports": [{"name": "http", "port": 8000 + i % 5}]}})
    assert isinstance(res, model.WorkloadEndpoint)
    return res


def policy(j: int) -> model.Resource:
    return model.parse_document({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"pol{j}", "namespace": f"ns{j % 10}"},
        "spec": {"podSelector": {"matchLabels": {"app": f"app{j % 20}"}},
                 "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}},
                                       {"namespaceSelector": {"matchLabels": {
                                           "kubernetes.io/metadata.name": f"ns{(j + 1) % 10}"}}}],
                              "ports": [{"port": "http"}, {"port": 5000 + j % 50}]}],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                 "except": [f"10.{j % 200}.0.0/16"]}}]}]}})


def measure(backend: str, ns: str, endpoints: int, policies: int, adds: int) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for i in range(endpoints):
        w = wep(i)
        state[model.key_for(w)] = w
    for j in range(policies):
        p = policy(j)
        state[model.key_for(p)] = p
    mgr = PolicyManager(backend, ns, "n1", host_addresses=["10.77.0.1"])
    try:
        mgr.set_state(dict(state))
        t0 = time.perf_counter()
        mgr.apply()
        initial = time.perf_counter() - t0
        lat: list[float] = []
        calc_only: list[float] = []
        for k in range(adds):
            w = wep(endpoints + k)
            state[model.key_for(w)] = w
            mgr.set_state(dict(state))
            t0 = time.perf_counter()
            mgr.calculate()
            calc_only.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mgr.apply()
            lat.append(time.perf_counter() - t0)
        pol_lat: list[float] = []
        for k in range(max(3, adds // 4)):
            p = policy(k)
            assert isinstance(p, model.NetworkPolicy)
            changed = model.parse_document({**p.to_dict(), "spec": {
                **p.to_dict()["spec"], "ingress": [{"ports": [{"port": 6000 + k}]}]}})
            state[model.key_for(changed)] = changed
            mgr.set_state(dict(state))
            t0 = time.perf_counter()
            mgr.apply()
            pol_lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        noops = 20
        for _ in range(noops):
            mgr.apply()
        noop = (time.perf_counter() - t0) / noops
    finally:
        mgr.cleanup()
    return {"backend": backend, "endpoints": endpoints, "policies": policies,
            "initial_s": initial, "pod_add_ms_median": statistics.median(lat) * 1000,
            "pod_add_ms_p90": sorted(lat)[int(len(lat) * 0.9) - 1] * 1000,
            "pod_add_calc_ms_median": statistics.median(calc_only) * 1000,
            "policy_change_ms_median": statistics.median(pol_lat) * 1000,
            "noop_apply_ms": noop * 1000, "batches_per_s": 1 / statistics.median(lat)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=200)
    ap.add_argument("--policies", default="1,100")
    ap.add_argument("--adds", type=int, default=20)
    ap.add_argument("--backends", default="nftables,iptables")
    args = ap.parse_args()
    ns = f"fabb-pol-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows: list[dict[str, Any]] = []
    try:
        for n in (int(x) for x in args.policies.split(",")):
            for b in args.backends.split(","):
                rows.append(measure(b, ns, args.endpoints, n, args.adds))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    cols = ["backend", "endpoints", "policies", "initial_s", "pod_add_ms_median",
            "pod_add_ms_p90", "pod_add_calc_ms_median", "policy_change_ms_median",
            "noop_apply_ms", "batches_per_s"]
    print_table(cols, [[r[c] for c in cols] for r in rows], "policy programming")
    ratios = {}
    for n in {r["policies"] for r in rows}:
        by = {r["backend"]: r for r in rows if r["policies"] == n}
        if "nftables" in by and "iptables" in by:
            ratios[f"pod_add_iptables_over_nftables@{n}"] = (
                by["iptables"]["pod_add_ms_median"] / by["nftables"]["pod_add_ms_median"])
    print(ratios)
    write_results("policy", {"rows": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
