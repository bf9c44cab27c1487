"""``fabricctl policy explain hostendpoint/NAME [--peer IP] [--port N/PROTO]``.

Which policies select a host endpoint (in evaluation order) and, for a peer, what the
node's program decides for a new connection in each direction: to the host (ingress),
from the host (egress), and, for ``applyOnForward`` policies, traffic forwarded in or out
through the endpoint's interface. It evaluates the same `felix_like.policy.hostep` plan
the node programs, failsafe ports included. Reads etcd only.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from datastore import model
from fabricctl.common import CliError
from fabricctl.output import dump, table
from felix_like.policy import hostep

log = logging.getLogger(__name__)

KINDS = ("hostendpoint", "hostendpoints", "hep")


def is_ref(ref: str) -> bool:
    """Whether ``ref`` names a host endpoint (``hostendpoint/NAME``, ``hep/NAME``)."""
    kind, slash, _ = ref.partition("/")
    return bool(slash) and kind.lower() in KINDS


def _ports(text: str | None) -> tuple[int, int | None]:
    if text is None:
        return 6, None
    num, _, proto = text.partition("/")
    number = {"tcp": 6, "udp": 17, "sctp": 132}.get((proto or "tcp").lower())
    if number is None:
        raise CliError(f"--port {text}: unknown protocol {proto!r} (tcp, udp, sctp)", usage=True)
    if not num.isdigit() or not 1 <= int(num) <= 65535:
        raise CliError(f"--port {text}: expected N/PROTO with N in 1..65535", usage=True)
    return number, int(num)


def _address(h: model.HostEndpoint, node: model.Node | None, version: int) -> str:
    for a in h.spec.expected_ips:
        if a.version == version:
            return str(a)
    bgp = node.spec.bgp if node is not None else None
    if bgp is not None:
        iface = bgp.ipv4_address if version == 4 else bgp.ipv6_address
        if iface is not None:
            return str(iface.ip)
    return "0.0.0.0" if version == 4 else "::"


def explain(state: dict[str, Any], ref: str, peer: str | None,
            port: str | None) -> dict[str, Any]:
    name = ref.partition("/")[2]
    hep = next((v for v in state.values()
                if isinstance(v, model.HostEndpoint) and v.metadata.name == name), None)
    if hep is None:
        raise CliError(f"no host endpoint {name!r}")
    plan = hostep.plan_of_state(state, hep.spec.node)
    gnps = sorted((v for v in state.values() if isinstance(v, model.GlobalNetworkPolicy)
                   and not isinstance(v, model.StagedGlobalNetworkPolicy)
                   and v.spec.selector.matches(hep.metadata.labels)
                   and v.spec.namespace_selector is None), key=hostep._order)
    out: dict[str, Any] = {
        "hostEndpoint": name, "node": hep.spec.node,
        "interface": hep.spec.interface_name or "-",
        "labels": dict(hep.metadata.labels),
        "policies": [{"policy": g.metadata.name, "order": g.spec.order,
                      "types": ",".join(g.spec.effective_types),
                      "applyOnForward": g.spec.apply_on_forward} for g in gnps],
        "flows": []}
    if peer is None:
        return out
    try:
        peer_ip = ipaddress.ip_address(peer)
    except ValueError:
        raise CliError(f"--peer {peer!r}: not an IP address", usage=True) from None
    proto, dport = _ports(port)
    node = next((v for v in state.values() if isinstance(v, model.Node)
                 and v.metadata.name == hep.spec.node), None)
    me = _address(hep, node, peer_ip.version)
    for direction, src, dst, what in (
            ("in", str(peer_ip), me, "ingress, to the host"),
            ("out", me, str(peer_ip), "egress, from the host"),
            ("fwd-in", str(peer_ip), me, "forwarded in through its interface"),
            ("fwd-out", me, str(peer_ip), "forwarded out through its interface")):
        allowed, why = hostep.evaluate(plan, name, direction, src, dst, proto, dport)
        out["flows"].append({"flow": f"{src} -> {dst} {hostep.NAMES[proto]}/{dport or 'any'}",
                             "direction": what, "allowed": allowed, "reason": why})
    return out


def cmd(state: dict[str, Any], args: argparse.Namespace) -> int:
    data = explain(state, args.pod, args.peer, args.port)
    if args.output != "table":
        dump(data, args.output)
        return 0
    print(f"host endpoint {data['hostEndpoint']} on node {data['node']}, interface "
          f"{data['interface']}")
    if data["policies"]:
        table(["POLICY", "ORDER", "TYPES", "APPLYONFORWARD"],
              [[p["policy"], p["order"], p["types"], p["applyOnForward"]]
               for p in data["policies"]])
    else:
        print("no policy selects this host endpoint: all traffic allowed")
    for f in data["flows"]:
        print(f"{f['flow']} ({f['direction']}): {'ALLOWED' if f['allowed'] else 'DENIED'}"
              f" - {f['reason']}")
    return 0
