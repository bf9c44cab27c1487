"""``fabricctl node status [NODE] [-o table|json|yaml]``: BGP peers like ``calicoctl node status``,
with each peer's max-prefix limit beside the prefixes received from it.

Reads the NodeStatus the agents write under a lease (``status/nodes/<node>``): a node whose
agent is gone for longer than the lease has no status and is reported as such. Owns only
presentation.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from datastore import keys, model
from datastore.client import Datastore
from fabricctl.common import CliError, run
from fabricctl.output import add_output_flag, dump, table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="node status (BGP peers)")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND",
                            parser_class=type(p))
    s = nsub.add_parser("status", help="BGP peers of a node (all nodes when none is named)")
    s.add_argument("node", nargs="?", help="one node (default: every node)")
    add_output_flag(s)
    s.set_defaults(func=cmd_status)


def _uptime(since: str | None, now: datetime) -> str:
    if not since:
        return ""
    try:
        t = datetime.fromisoformat(since)
    except ValueError:
        return since
    secs = int((now - t).total_seconds())
    if secs < 0:
        return since
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


async def _load(ds: Datastore, node: str | None) -> list[model.NodeStatus]:
    if node is not None:
        raw = await ds.get(keys.node_status(node))
        if raw is None:
            if await ds.get(keys.node(node)) is None:
                raise CliError(f"node {node!r} does not exist")
            raise CliError(f"node {node!r} has no status: its agent is not running "
                           "(or has not written its status yet)")
        kvs = [(keys.node_status(node), raw.value)]
    else:
        listed, _ = await ds.list(keys.full(keys.NODE_STATUS))
        kvs = [(kv.key, kv.value) for kv in listed]
    out = []
    for key, value in kvs:
        res = model.decode(key, value)
        if isinstance(res, model.NodeStatus):
            out.append(res)
    return sorted(out, key=lambda r: r.metadata.name)


def rows(statuses: list[model.NodeStatus], now: datetime) -> list[list[Any]]:
    out = []
    for st in statuses:
        for p in st.status.bgp_peers:
            out.append([st.metadata.name, p.peer_ip, p.type or "", p.as_number,
                        p.state, _uptime(p.since, now), p.prefixes_in, p.max_prefixes,
                        p.prefixes_out, p.info or ""])
    return out


def cmd_status(args: argparse.Namespace) -> int:
    statuses = run(args, lambda ds: _load(ds, args.node))
    if args.output != "table":
        data = [{"node": s.metadata.name,
                 "updated": s.status.updated,
                 "peers": [p.to_dict() for p in s.status.bgp_peers]} for s in statuses]
        dump(data[0] if args.node is not None and data else data, args.output)
        return 0
    if not statuses:
        print("no node status found (no agent running?)", file=sys.stderr)
        return 0
    table(["NODE", "PEER ADDRESS", "PEER TYPE", "AS", "STATE", "SINCE", "PFX IN", "MAX PFX",
           "PFX OUT", "INFO"], rows(statuses, datetime.now(UTC)))
    return 0
