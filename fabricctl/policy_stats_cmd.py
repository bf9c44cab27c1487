"""``fabricctl policy stats [--node N] [--sort packets|bytes|policy] [--endpoint URL] [-o ...]``.

The policy counters of one node or of every node, read on demand from each agent's
``/metrics`` (``l3fabric_policy_packets_total``/``_bytes_total``): nothing about traffic is
ever written to etcd. etcd gives only where each agent serves its metrics (its
NodeStatus ``metrics``); ``--endpoint`` names agents directly and needs no etcd. Nodes are
read in parallel with a short timeout each, so at 1,000 nodes the command costs one etcd
list and 1,000 small HTTP reads; a node that does not answer is named on stderr and left
out of the sums.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from datastore import keys, model
from datastore.client import Datastore
from fabricctl.common import CliError, run
from fabricctl.output import add_output_flag, dump, table
from felix_like.policy.stats import SORTS, StatRow, rows_from_metrics, sort_rows

Fetch = Callable[[str], str]

#: Agents read at once, and how long one may take.
PARALLEL, TIMEOUT = 32, 3.0


def add_parser(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = psub.add_parser("stats", help="packets and bytes each policy rule counted, per node "
                                      "or summed over all nodes")
    s.add_argument("--node", help="one node (default: every node, summed per rule)")
    s.add_argument("--sort", choices=SORTS, default="packets",
                   help="busiest first by packets or bytes, or by policy (default packets)")
    s.add_argument("--endpoint", action="append", metavar="URL",
                   help="read this agent's metrics URL (repeatable; no etcd needed)")
    add_output_flag(s)
    s.set_defaults(func=cmd_stats)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        return str(resp.read().decode())


async def agent_urls(ds: Datastore, node: str | None) -> dict[str, str]:
    """Node -> its agent's metrics URL, from the NodeStatus of live agents."""
    prefix = keys.node_status(node) if node else keys.full(keys.NODE_STATUS)
    listed, _ = await ds.list(prefix)
    urls: dict[str, str] = {}
    for kv in listed:
        try:
            res = model.decode(kv.key, kv.value)
        except ValueError:
            continue
        if (isinstance(res, model.NodeStatus) and res.status.metrics
                and (not node or res.metadata.name == node)):
            urls[res.metadata.name] = res.status.metrics
    return urls


def gather(urls: dict[str, str], fetch: Fetch = http_get,
           ) -> tuple[list[StatRow], dict[str, str]]:
    """Every node's policy rows, and the nodes that could not be read (node -> why)."""
    def one(item: tuple[str, str]) -> tuple[str, list[StatRow] | str]:
        node, url = item
        try:
            return node, rows_from_metrics(node, fetch(url))
        except Exception as e:  # unreachable, refused, not a metrics page
            return node, f"{url}: {e}"

    rows: list[StatRow] = []
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(PARALLEL, max(1, len(urls)))) as ex:
        for node, got in ex.map(one, sorted(urls.items())):
            if isinstance(got, str):
                errors[node] = got
            else:
                rows.extend(got)
    return rows, errors


def summed(rows: Iterable[StatRow]) -> list[StatRow]:
    """One row per rule over every node (node ``*``)."""
    out: dict[tuple[str, ...], list[int]] = {}
    for r in rows:
        slot = out.setdefault((r.policy, r.namespace, r.rule, r.direction, r.action), [0, 0])
        slot[0] += r.packets
        slot[1] += r.bytes
    return [StatRow("*", p, ns, rule, d, a, v[0], v[1])
            for (p, ns, rule, d, a), v in out.items()]


def verdict(action: str) -> str:
    """What the operator reads: staged actions as "would deny"/"would allow"."""
    return action.replace("would-", "would ")


def cmd_stats(args: argparse.Namespace) -> int:
    if args.endpoint:
        urls = {u.split("//", 1)[-1].split("/", 1)[0]: u for u in args.endpoint}
    else:
        async def go(ds: Datastore) -> dict[str, str]:
            return await agent_urls(ds, args.node)

        urls = run(args, go)
        if not urls:
            raise CliError(f"no live agent reports its metrics URL"
                           f"{' on node ' + args.node if args.node else ''}")
    rows, errors = gather(urls)
    for node, why in sorted(errors.items()):
        print(f"warning: node {node} not read: {why}", file=sys.stderr)
    shown = sort_rows(rows if args.node or len(urls) == 1 else summed(rows), args.sort)
    if args.output != "table":
        data: dict[str, Any] = {"nodes": sorted(set(urls) - set(errors)),
                                "errors": errors, "rules": [r.to_dict() for r in shown]}
        dump(data, args.output)
    else:
        table(["NODE", "POLICY", "NAMESPACE", "DIRECTION", "RULE", "ACTION", "PACKETS",
               "BYTES"],
              [[r.node, r.policy, r.namespace, r.direction, r.rule or "-", verdict(r.action),
                r.packets, r.bytes] for r in shown])
    return 1 if errors and not rows else 0
