"""What host endpoint policy costs per apply in a large cluster: `hostep.plan_of_state`.

``python -m bench.policy.bench_hostep [--nodes N] [--pods-per-node P] [--policies K]
[--adds A]`` (no root, no etcd, no namespace: the plan is pure).

A synthetic `ClusterState` (1,000 nodes x 50 pods, 20 GlobalNetworkPolicies by default):
one HostEndpoint (``*``, ``role=node``) on the measured node; half the policies select it,
with rules whose ``selector`` names pods (``app == 'monitoring'``, 1 pod in 500) and host
endpoints, and ``nets``/ports; the other half select pods only. Each apply follows one
pod ADD on the measured node (what triggers an apply in the agent), timed as CPU of this
process:

- before (the baseline, same run): the plan from the resources alone, as each apply made
  it (`host_plan` over every pod of the cluster);
- after: `plan_of_state` through the node's `HostPlanner`, for a pod no host rule selects (the
  usual ADD) and for one a host rule selects (the plan is made again from the selector's
  members, no pass over the cluster);
- the first `plan_of_state` (fills the selectors' members: one pass).

Both give the same plan (checked). Reported: ms per apply and before / after. Results:
``bench/results/hostep.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import print_table, progress, write_results
from datastore import keys, model
from felix_like.policy.hostep import HostPlan, HostPlanner, host_plan, plan_of_state
from felix_like.state import ClusterState

API = "l3fabric.io/v1"
NODE = "n0"
APPS = 50
NAMESPACES = 50


def _pod_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def _pod(i: int, node: str, app: str) -> model.WorkloadEndpoint:
    ns = f"ns{i % NAMESPACES}"
    return model.WorkloadEndpoint.from_dict({
        "apiVersion": API, "kind": "WorkloadEndpoint",
        "metadata": {"name": f"p{i}.eth0", "namespace": ns},
        "spec": {"node": node, "namespace": ns, "pod": f"p{i}", "endpoint": "eth0",
                 "containerID": f"c{i}", "ipNetworks": [f"{_pod_ip(i)}/32"],
                 "hostInterface": f"fab{i:011x}",
                 "labels": {"app": app, "tier": ("web", "db", "cache")[i % 3]}}})


def _gnp(j: int) -> model.GlobalNetworkPolicy:
    if j % 2:  # a pod policy: selects no host endpoint
        spec: dict[str, Any] = {
            "order": j, "selector": f"app == 'a{j % APPS}' && tier == 'db'",
            "ingress": [{"action": "Allow", "source": {"selector": "tier == 'web'"},
                         "protocol": "TCP", "destination": {"ports": [5000 + j]}}]}
    else:
        spec = {
            "order": j, "selector": "role == 'node'", "applyOnForward": j % 4 == 0,
            "types": ["Ingress", "Egress"],
            "ingress": [
                {"action": "Allow", "protocol": "TCP", "destination": {"ports": [9100 + j]},
                 "source": {"selector": "app == 'monitoring'"}},
                {"action": "Allow", "source": {"selector": "role == 'node'"}},
                {"action": "Deny", "protocol": "TCP", "destination": {"ports": [8000 + j]},
                 "source": {"nets": ["10.0.0.0/8"], "notNets": [f"10.{j}.0.0/16"]}}],
            "egress": [{"action": "Allow", "destination": {"selector": "app == 'monitoring'"}},
                       {"action": "Allow", "destination": {"nets": ["192.0.2.0/24"]}}]}
    return model.GlobalNetworkPolicy.from_dict({
        "apiVersion": API, "kind": "GlobalNetworkPolicy", "metadata": {"name": f"g{j}"},
        "spec": spec})


def cluster(nodes: int, pods_per_node: int, policies: int) -> ClusterState:
    st = ClusterState()
    st.put(keys.host_endpoint(f"{NODE}-all"), model.HostEndpoint.from_dict({
        "apiVersion": API, "kind": "HostEndpoint",
        "metadata": {"name": f"{NODE}-all", "labels": {"role": "node"}},
        "spec": {"node": NODE, "interfaceName": "*", "expectedIPs": ["10.98.0.1"]}}))
    for j in range(policies):
        g = _gnp(j)
        st.put(model.key_for(g), g)
    for i in range(nodes * pods_per_node):
        app = "monitoring" if i % 500 == 7 else f"a{(i // NAMESPACES) % APPS}"
        w = _pod(i, f"n{i % nodes}", app)
        st.put(model.key_for(w), w)
    return st


def before(st: ClusterState, node: str) -> HostPlan:
    """The plan as each apply made it: from the resources, every pod of the cluster read."""
    if not any(h.spec.node == node for h in st.host_endpoints.values()):
        return HostPlan()
    return host_plan(node, st.host_endpoints.values(), st.global_policies.values(),
                     st.endpoints.values(), st.felix_config())


def _per_apply(st: ClusterState, plan: Callable[[ClusterState, str], HostPlan], adds: int,
               first: int, app: str) -> list[float]:
    """CPU ms of ``plan`` after each of ``adds`` pod ADDs on the node (pods ``first``...)."""
    out = []
    for i in range(first, first + adds):
        w = _pod(i, NODE, app)
        st.put(model.key_for(w), w)
        c0 = time.process_time()
        plan(st, NODE)
        out.append((time.process_time() - c0) * 1000)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods-per-node", type=int, default=50)
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--adds", type=int, default=20, help="pod ADDs timed per case")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with progress("building the cluster state"):
        st = cluster(args.nodes, args.pods_per_node, args.policies)
    build_s = time.perf_counter() - t0
    planner = HostPlanner(NODE)  # as the node's policy manager keeps it

    def kept(state: ClusterState, node: str) -> HostPlan:
        return plan_of_state(state, node, planner)

    c0 = time.process_time()
    first = kept(st, NODE)
    first_ms = (time.process_time() - c0) * 1000
    n = args.nodes * args.pods_per_node
    base = _per_apply(st, before, args.adds, n, "other")
    n += args.adds
    unrelated = _per_apply(st, kept, args.adds * 10, n, "other")
    n += args.adds * 10
    related = _per_apply(st, kept, args.adds, n, "monitoring")
    same = kept(st, NODE) == before(st, NODE)
    assert same, "the kept plan differs from the plan from the resources"
    assert first.active
    med = {k: statistics.median(v) for k, v in
           (("before", base), ("after_unrelated", unrelated), ("after_related", related))}
    res: dict[str, Any] = {
        "nodes": args.nodes, "pods_per_node": args.pods_per_node, "policies": args.policies,
        "endpoints": len(st.endpoints), "adds": args.adds, "build_s": build_s,
        "loadavg_at_start": os.getloadavg(), "first_plan_ms": first_ms,
        "per_apply_ms_median": med,
        "per_apply_ms_max": {"before": max(base), "after_unrelated": max(unrelated),
                             "after_related": max(related)},
        "ratios": {"before_vs_after_unrelated": med["before"] / med["after_unrelated"]
                   if med["after_unrelated"] else 0.0,
                   "before_vs_after_related": med["before"] / med["after_related"]
                   if med["after_related"] else 0.0},
        "plans_equal": same,
    }
    print_table(["apply after a pod ADD on the node", "CPU ms (median)", "max",
                 "before / this"], [
        ["before: host_plan over every pod", med["before"], max(base), 1.0],
        ["after: a pod no host rule selects", med["after_unrelated"], max(unrelated),
         res["ratios"]["before_vs_after_unrelated"]],
        ["after: a pod a host rule selects", med["after_related"], max(related),
         res["ratios"]["before_vs_after_related"]],
        ["after: the first apply (fills the index)", first_ms, first_ms, ""],
    ], title=f"hostep: {args.nodes} nodes x {args.pods_per_node} pods "
             f"({len(st.endpoints)} endpoints), {args.policies} GlobalNetworkPolicies, "
             f"1 host endpoint on {NODE}")
    print(f"wrote {write_results('hostep', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
