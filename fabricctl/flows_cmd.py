"""``fabricctl flows [--node N | --file F] [--follow] [--denied] [--last N] [-o table|json]``:
the flow log of a node.

The agent appends one JSON object per logged connection to its flow log
(``felix_like.policy.flowlog``: ``<its socket's directory>/flows.jsonl``, by default
``/run/l3fabric/flows.jsonl``, rotated to ``.1`` .. ``.3``); this command reads it on the
node, the newest rotated file first, then follows the live one with ``--follow`` (also
across a rotation). ``--node N`` reads the last 1,000 records from node N's agent instead
(its ``/flows`` page, beside its metrics, found through its NodeStatus as
``fabricctl policy stats`` does; ``--follow`` then asks again every second). Nothing about
flows is in etcd.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cni.shim import DEFAULT_SOCKET
from datastore.client import Datastore
from fabricctl.common import CliError, run
from fabricctl.output import table
from fabricctl.policy_stats_cmd import agent_urls, http_get

DEFAULT_FILE = str(Path(DEFAULT_SOCKET).parent / "flows.jsonl")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("flows", help="connections the node's policies denied (the flow log)")
    p.add_argument("--file", default=DEFAULT_FILE,
                   help=f"the agent's flow log on this node (default {DEFAULT_FILE})")
    p.add_argument("--node", help="read node N's flow log from its agent (needs etcd)")
    p.add_argument("--follow", "-f", action="store_true", help="wait for new records")
    p.add_argument("--denied", action="store_true",
                   help="only connections denied (not a staged policy's would-deny)")
    p.add_argument("--last", type=int, default=0, metavar="N", help="only the last N records")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="output format: table or json (with --follow: one object a line)")
    p.set_defaults(func=cmd_flows)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record, oldest first: the rotated files (``.3``, ``.2``, ``.1``), then ``path``."""
    rotated = sorted((int(q.suffix[1:]), q) for q in path.parent.glob(path.name + ".*")
                     if q.suffix[1:].isdigit())
    for p in [q for _, q in reversed(rotated)] + [path]:
        with open(p, encoding="utf-8") as f:
            for line in f:
                rec = _parse(line)
                if rec is not None:
                    yield rec


def _parse(line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None  # a line being written
    return rec if isinstance(rec, dict) else None


def _end(e: dict[str, Any]) -> str:
    who = f"{e['namespace']}/{e['pod']}" if "pod" in e else e.get("ip", "?")
    return who


def row(r: dict[str, Any]) -> list[Any]:
    dst = r.get("dst", {})
    port = f"{r.get('proto', '')}/{dst['port']}" if "port" in dst else r.get("proto", "")
    rule = f"{r.get('direction', '')}[{r['rule']}]" if r.get("rule") else r.get("direction", "")
    verdict = str(r.get("verdict", "")).replace("would-", "would ")
    return [r.get("time", ""), r.get("node", ""), verdict, _end(r.get("src", {})),
            _end(dst), port, r.get("policy", ""), rule]


HEADERS = ["TIME", "NODE", "VERDICT", "SOURCE", "DESTINATION", "PORT", "POLICY", "RULE"]


def _follow(path: Path) -> Iterator[dict[str, Any]]:
    """New records of ``path`` as they are written, across rotations."""
    f = open(path, encoding="utf-8")  # noqa: SIM115 (reopened on rotation)
    f.seek(0, os.SEEK_END)
    inode = os.fstat(f.fileno()).st_ino
    pending = ""
    while True:
        chunk = f.readline()
        if chunk:
            pending += chunk
            if pending.endswith("\n"):
                rec = _parse(pending)
                pending = ""
                if rec is not None:
                    yield rec
            continue
        try:
            if os.stat(path).st_ino != inode:  # rotated: read the new file from its start
                f.close()
                f = open(path, encoding="utf-8")  # noqa: SIM115
                inode = os.fstat(f.fileno()).st_ino
                continue
        except FileNotFoundError:
            pass
        time.sleep(0.2)


def _remote(node: str, args: argparse.Namespace) -> Iterator[list[dict[str, Any]]]:
    """The records node ``node``'s agent serves, once, or every second with --follow."""
    async def go(ds: Datastore) -> dict[str, str]:
        return await agent_urls(ds, node)

    urls = run(args, go)
    if node not in urls:
        raise CliError(f"node {node!r}: no live agent reports where it serves its flows")
    url = urls[node].rsplit("/", 1)[0] + "/flows"
    while True:
        try:
            text = http_get(url)
        except OSError as e:
            raise CliError(f"node {node}: {url}: {e}") from e
        yield [r for r in map(_parse, text.splitlines()) if r is not None]
        if not args.follow:
            return
        time.sleep(1)


def _show_remote(args: argparse.Namespace, wanted: Callable[[dict[str, Any]], bool]) -> int:
    """Print node ``args.node``'s records; with --follow, those that came since."""
    last: str | None = None  # the last record printed, as its JSON text
    first = True
    for batch in _remote(args.node, args):
        lines = [json.dumps(r, sort_keys=True) for r in batch if wanted(r)]
        if last in lines:
            lines = lines[lines.index(last) + 1:]
        elif first and args.last:
            lines = lines[-args.last:]
        records = [json.loads(x) for x in lines]
        if args.output == "json" and not args.follow:
            print(json.dumps(records, indent=2))
        elif args.output == "json":
            for r in records:
                print(json.dumps(r), flush=True)
        elif first:
            table(HEADERS, [row(r) for r in records])
        else:
            for r in records:
                print("  ".join(str(c) for c in row(r)), flush=True)
        sys.stdout.flush()
        last = lines[-1] if lines else last
        first = False
    return 0


def cmd_flows(args: argparse.Namespace) -> int:
    def wanted(r: dict[str, Any]) -> bool:
        return not args.denied or r.get("verdict") == "deny"

    if args.node:
        return _show_remote(args, wanted)
    path = Path(args.file)
    if not path.exists():
        raise CliError(f"no flow log at {path} (run on a node, or give --file or --node)")
    records = [r for r in _records(path) if wanted(r)]
    if args.last:
        records = records[-args.last:]
    if args.output == "json" and not args.follow:
        print(json.dumps(records, indent=2))
        return 0
    if args.output == "json":
        for r in records:
            print(json.dumps(r), flush=True)
    else:
        table(HEADERS, [row(r) for r in records])
    if not args.follow:
        return 0
    try:
        for r in _follow(path):
            if wanted(r):
                print(json.dumps(r) if args.output == "json" else
                      "  ".join(str(c) for c in row(r)), flush=True)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
