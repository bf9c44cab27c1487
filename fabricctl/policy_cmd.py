"""``fabricctl policy explain NS/POD [--peer IP|NS/POD] [--port N/PROTO] [-o table|json|yaml]``.

Shows which policies select a pod (in evaluation order) and, for a peer, which rule decides
each direction and why: the semantic evaluator's answer (in the words of the resources) and
the path the packet takes through the chains the pod's node renders (the interpreter over
the same ruleset the backends install). Reads etcd only; never touches a dataplane.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from datastore import keys, model
from datastore.client import Datastore
from fabricctl import hostep_explain, policy_promote_cmd, policy_stats_cmd
from fabricctl.common import CliError, run
from fabricctl.output import add_output_flag, dump, table
from felix_like.policy.explain import Conn, decide, decide_staged, selecting_policies
from felix_like.policy.interp import Interpreter
from felix_like.policy.ruleset import PROTOCOLS, calculate, inputs_from_state

log = logging.getLogger(__name__)

_PREFIXES = (keys.NAMESPACES, keys.POLICIES, keys.GLOBAL_POLICIES, keys.STAGED_POLICIES,
             keys.STAGED_GLOBAL_POLICIES, keys.WORKLOADS, keys.NODES,
             keys.HOST_ENDPOINTS, keys.FELIX_CONFIGS)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="network policy tools")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND",
                            parser_class=type(p))
    e = psub.add_parser("explain", help="which policies select a pod or host endpoint and "
                                        "what decides a flow")
    e.add_argument("pod", metavar="NS/POD|hostendpoint/NAME",
                   help="the pod, as namespace/name, or a host endpoint")
    e.add_argument("--peer", help="the other end: an IP address or NS/POD")
    e.add_argument("--port", default=None, metavar="N/PROTO",
                   help="destination port and protocol, e.g. 6379/tcp (default: tcp, no port)")
    add_output_flag(e)
    e.set_defaults(func=cmd_explain)
    policy_stats_cmd.add_parser(psub)
    policy_promote_cmd.add_parser(psub)


def parse_port(text: str | None) -> tuple[int, int | None]:
    if text is None:
        return PROTOCOLS["TCP"], None
    num, _, proto = text.partition("/")
    proto_num = PROTOCOLS.get((proto or "tcp").upper()) or PROTOCOLS.get(proto or "")
    if proto_num is None:
        raise CliError(f"--port {text}: unknown protocol {proto!r} (tcp, udp, sctp)", usage=True)
    if not num.isdigit() or not 1 <= int(num) <= 65535:
        raise CliError(f"--port {text}: expected N/PROTO with N in 1..65535", usage=True)
    return proto_num, int(num)


async def load_state(ds: Datastore) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for prefix in _PREFIXES:
        kvs, _ = await ds.list(keys.full(prefix))
        for kv in kvs:
            try:
                state[kv.key] = model.decode(kv.key, kv.value)
            except (model.ValidationError, ValueError) as e:
                log.warning("skipping invalid %s: %s", kv.key, e)
    return state


def _find(state: dict[str, Any], ref: str) -> model.WorkloadEndpoint:
    ns, slash, pod = ref.partition("/")
    if not slash or not ns or not pod:
        raise CliError(f"{ref!r}: expected NS/POD", usage=True)
    for v in state.values():
        if (isinstance(v, model.WorkloadEndpoint) and v.spec.pod == pod
                and (v.metadata.namespace or "default") == ns):
            return v
    raise CliError(f"no workload endpoint for pod {ref}")


def _addr(wep: model.WorkloadEndpoint, version: int | None = None) -> str:
    for n in wep.spec.ip_networks:
        if version is None or n.version == version:
            return str(n.network_address)
    raise CliError(f"{wep.metadata.namespace}/{wep.spec.pod} has no IPv{version} address")


def explain(state: dict[str, Any], pod_ref: str, peer: str | None,
            port: str | None) -> dict[str, Any]:
    wep = _find(state, pod_ref)
    node = wep.spec.node
    inputs = inputs_from_state(state, node)
    out: dict[str, Any] = {"pod": pod_ref, "node": node,
                           "addresses": [str(n) for n in wep.spec.ip_networks],
                           "policies": selecting_policies(inputs, wep), "flows": []}
    if peer is None:
        return out
    proto, dport = parse_port(port)
    if "/" in peer:
        peer_wep: model.WorkloadEndpoint | None = _find(state, peer)
        assert peer_wep is not None
        peer_ip = _addr(peer_wep, wep.spec.ip_networks[0].version if wep.spec.ip_networks
                        else None)
    else:
        try:
            peer_ip = str(ipaddress.ip_address(peer))
        except ValueError:
            raise CliError(f"--peer {peer!r}: not an IP address or NS/POD", usage=True) from None
        peer_wep = None
    me = _addr(wep, ipaddress.ip_address(peer_ip).version)
    for direction, src, dst, src_ep, dst_ep in (
            ("ingress", peer_ip, me, peer_wep, wep), ("egress", me, peer_ip, wep, peer_wep)):
        conn = Conn(src, dst, proto, dport, src_ep=src_ep, dst_ep=dst_ep)
        v = decide(inputs, conn)
        staged = decide_staged(inputs, conn)
        flow: dict[str, Any] = {
            "flow": f"{src} -> {dst} {_proto_name(proto)}/{dport if dport else 'any'}",
            "direction": f"{direction} of {pod_ref}",
            "allowed": v.allowed,
            "egress": None if v.egress is None else v.egress.reason,
            "ingress": None if v.ingress is None else v.ingress.reason,
            # Were the staged policies enforced (fabricctl policy promote): None if none.
            "staged": None if staged is None else {
                "allowed": staged.allowed,
                "egress": None if staged.egress is None else staged.egress.reason,
                "ingress": None if staged.ingress is None else staged.ingress.reason},
        }
        # The same flow through the chains the pod's node programs.
        it = Interpreter(calculate(inputs))
        res = it.evaluate(it.packet(src, dst, proto, dport))
        flow["dataplane"] = {"node": node, "allowed": res.allowed, "trace": res.trace,
                             "staged": res.staged}
        out["flows"].append(flow)
    return out


def _proto_name(n: int) -> str:
    return {v: k.lower() for k, v in PROTOCOLS.items()}.get(n, str(n))


def cmd_explain(args: argparse.Namespace) -> int:
    async def go(ds: Datastore) -> dict[str, Any]:
        return await load_state(ds)

    state = run(args, go)
    if hostep_explain.is_ref(args.pod):
        return hostep_explain.cmd(state, args)
    data = explain(state, args.pod, args.peer, args.port)
    if args.output != "table":
        dump(data, args.output)
        return 0
    print(f"pod {data['pod']} on node {data['node']}, addresses "
          f"{', '.join(data['addresses']) or '-'}")
    if data["policies"]:
        table(["POLICY", "ORDER", "TYPES"],
              [[p["policy"], p["order"], p["types"]] for p in data["policies"]])
    else:
        print("no policy selects this pod: all traffic allowed")
    for f in data["flows"]:
        print()
        print(f"{f['flow']} ({f['direction']}): {'ALLOWED' if f['allowed'] else 'DENIED'}")
        if f["egress"] is not None:
            print(f"  egress at the source:     {f['egress']}")
        if f["ingress"] is not None:
            print(f"  ingress at the destination: {f['ingress']}")
        st = f["staged"]
        same = st is not None and (st["allowed"], st["egress"], st["ingress"]) == (
            f["allowed"], f["egress"], f["ingress"])
        if st is not None and not same:  # the staged policies would change this flow
            print(f"  staged policies: {'would allow' if st['allowed'] else 'WOULD DENY'}")
            for side in ("egress", "ingress"):
                if st[side] is not None:
                    print(f"    {side}: {st[side]}")
        dp = f["dataplane"]
        print(f"  chains on {dp['node']}: {'accept' if dp['allowed'] else 'drop'}")
        for what in dp["staged"]:
            print(f"    staged: {what}")
        for step in dp["trace"]:
            print(f"    {step}")
    return 0
