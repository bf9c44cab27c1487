"""``fabricctl node status [NODE] [-o table|json|yaml]``: is the fabric healthy, per node.

For every Node (and every NodeStatus whose Node is gone): whether its agent is alive, in
sync, its config errors, its blocks and the addresses allocated to it, its BGP sessions
(like ``calicoctl node status``, with each peer's max-prefix limit) and its version.

Where each answer comes from (read-only; owns only presentation):

- alive: the NodeStatus the agent keeps under a lease (``status/nodes/<node>``, see
  `felix_like.node_status`). The key exists while the lease does, so a node whose agent
  has been gone for longer than the lease's TTL has none and is shown ``down``; a status
  written without a lease (by hand) cannot tell and is shown ``unknown``.
- in sync, errors, BGP sessions, version: that NodeStatus, as the agent last wrote it.
- blocks and addresses: IPAM's blocks in etcd (`ipam.report.node_usage`), so a down node's
  are shown too.

Exit status, so that scripts can ask "is the fabric healthy?" without parsing: 0 when every
node listed has its agent ``up`` and in sync; `EXIT_UNHEALTHY` (3) when one is ``down``,
``unknown`` or not in sync, whatever the output format. 3 is the LSB "not running" status
that ``systemctl is-active`` and ``systemctl status`` return for an inactive unit, and
fabricctl's own failures keep theirs (1: etcd unreachable, no such node; 2: usage), so a
script tells "unhealthy" from "could not ask". Config errors and BGP sessions do not count:
they are shown, and a node with a peer down is still in service.
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
from ipam.report import node_usage
from ipam.snapshot import build_snapshot

#: What the AGENT column says.
UP, DOWN, UNKNOWN = "up", "down", "unknown"
#: The exit status when a node listed is not healthy (see the module docstring).
EXIT_UNHEALTHY = 3


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="node health: agent, sync, errors, IPAM, BGP peers")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND",
                            parser_class=type(p))
    s = nsub.add_parser("status", help="each node's agent (alive by its lease), sync, config "
                                       "errors, blocks, addresses, BGP peers and version "
                                       "(every node when none is named); exit 0 when every "
                                       "node listed is up and in sync, "
                                       f"{EXIT_UNHEALTHY} when one is not",
                        epilog=f"exit status: 0 every node listed is up and in sync; "
                               f"{EXIT_UNHEALTHY} one is down, unknown or not in sync; "
                               "1 fabricctl could not answer (etcd, no such node); 2 usage")
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


def health(nodes: list[str], statuses: dict[str, tuple[model.NodeStatus, int]],
           usage: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per node (sorted by name): the Nodes, plus any NodeStatus without a Node.
    ``statuses`` maps a node to its NodeStatus and the lease it is stored under (0: none);
    ``usage`` is `ipam.report.node_usage`."""
    out = []
    for name in sorted(set(nodes) | set(statuses)):
        got = statuses.get(name)
        ipam = usage.get(name, {})
        rec: dict[str, Any] = {
            "node": name,
            "registered": name in nodes,
            "agent": DOWN if got is None else UP if got[1] else UNKNOWN,
            "inSync": None, "version": None, "updated": None, "errors": [],
            "blocks": list(ipam.get("blocks", [])),
            "addresses": int(ipam.get("addresses", 0)),
            "borrowed": int(ipam.get("borrowed", 0)),
            "peers": [],
        }
        if got is not None:
            st = got[0].status
            rec.update(inSync=st.in_sync, version=st.version, updated=st.updated,
                       errors=list(st.errors), peers=[p.to_dict() for p in st.bgp_peers])
        out.append(rec)
    return out


async def _load(ds: Datastore, node: str | None) -> list[dict[str, Any]]:
    listed, _ = await ds.list(keys.full(keys.NODES), keys_only=True)
    nodes = [keys.relative(kv.key)[len(keys.NODES):] for kv in listed]
    statuses: dict[str, tuple[model.NodeStatus, int]] = {}
    listed, _ = await ds.list(keys.full(keys.NODE_STATUS))
    for kv in listed:
        try:
            res = model.decode(kv.key, kv.value)
        except ValueError:
            continue
        if isinstance(res, model.NodeStatus):
            statuses[res.metadata.name] = (res, kv.lease)
    blocks, revision = await ds.list(keys.full(keys.IPAM_BLOCKS))
    records = health(nodes, statuses, node_usage(build_snapshot(blocks, revision)))
    if node is None:
        return records
    one = [r for r in records if r["node"] == node]
    if not one:
        raise CliError(f"node {node!r} does not exist")
    return one


def _yes_no(v: bool | None) -> str:
    return "" if v is None else "yes" if v else "no"


def node_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """The summary table: one row per node."""
    out = []
    for r in records:
        peers = r["peers"]
        up = sum(1 for p in peers if p.get("state") == "Established")
        bgp = "" if r["agent"] == DOWN else f"{up}/{len(peers)}" if peers else "none"
        out.append([r["node"] + ("" if r["registered"] else " (no Node)"), r["agent"],
                    _yes_no(r["inSync"]), r["version"] or "", len(r["blocks"]),
                    r["addresses"], bgp, len(r["errors"]) if r["agent"] != DOWN else ""])
    return out


def rows(records: list[dict[str, Any]], now: datetime) -> list[list[Any]]:
    """The BGP sessions table: one row per peer of every node that reports any."""
    out = []
    for r in records:
        for p in r["peers"]:
            out.append([r["node"], p["peerIP"], p.get("type") or "", p.get("asNumber"),
                        p.get("state", "unknown"), _uptime(p.get("since"), now),
                        p.get("prefixesIn"), p.get("maxPrefixes"), p.get("prefixesOut"),
                        p.get("info") or ""])
    return out


NODE_HEADERS = ["NODE", "AGENT", "IN SYNC", "VERSION", "BLOCKS", "ADDRESSES", "BGP UP",
                "ERRORS"]
PEER_HEADERS = ["NODE", "PEER ADDRESS", "PEER TYPE", "AS", "STATE", "SINCE", "PFX IN",
                "MAX PFX", "PFX OUT", "INFO"]


def print_status(records: list[dict[str, Any]], now: datetime) -> None:
    if not records:
        print("No nodes found.", file=sys.stderr)
        return
    table(NODE_HEADERS, node_rows(records))
    peers = rows(records, now)
    if peers:
        print()
        table(PEER_HEADERS, peers)
    errors = [(r["node"], e) for r in records for e in r["errors"]]
    if errors:
        print()
        print("ERRORS")
        for name, e in errors:
            print(f"{name}: {e}")
    down = [r["node"] for r in records if r["agent"] == DOWN]
    if down:
        print()
        print(f"down (no NodeStatus: agent not running, or gone longer than its lease): "
              f"{', '.join(down)}")


def healthy(record: dict[str, Any]) -> bool:
    """The node's agent is alive by its lease and in sync."""
    return bool(record["agent"] == UP and record["inSync"])


def cmd_status(args: argparse.Namespace) -> int:
    records = run(args, lambda ds: _load(ds, args.node))
    if args.output != "table":
        dump(records[0] if args.node is not None else records, args.output)
    else:
        print_status(records, datetime.now(UTC))
    return 0 if all(healthy(r) for r in records) else EXIT_UNHEALTHY
