"""``fabricctl version [--client] [-o table|json|yaml]``: which l3fabric runs where.

Shows this fabricctl's version and the datastore schema it understands, the schema the
datastore holds, and the version each agent reports in its NodeStatus (``status.version``).
Skew is warned about on stderr, one line each, and is not an error (exit 0): a rolling
upgrade has skew for a while by design. Nodes whose agent writes no status (stopped, or
its lease expired) are listed without a version. Owns only presentation.

When etcd cannot be reached, the client part is still printed before the one-line error
(exit 1), as ``kubectl version`` does.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from datastore import keys, model
from datastore.client import Datastore
from datastore.schema import SCHEMA_VERSION, SchemaError, read_schema_version
from datastore.version import l3fabric_version

from .common import run
from .output import add_output_flag, dump, table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="versions of fabricctl, the datastore schema and "
                                       "every agent; warns on skew")
    p.add_argument("--client", action="store_true",
                   help="only this fabricctl's version (no etcd needed)")
    add_output_flag(p)
    p.set_defaults(func=cmd_version)


@dataclass(frozen=True)
class Cluster:
    schema: int | None  # None: no schema key yet (nothing applied, no agent started)
    schema_error: str | None
    agents: dict[str, str | None]  # node -> reported version (None: no status / none given)
    with_status: frozenset[str]


async def load_cluster(ds: Datastore) -> Cluster:
    try:
        schema: int | None = await read_schema_version(ds)
        schema_error = None
    except SchemaError as e:
        schema, schema_error = None, str(e)
    agents: dict[str, str | None] = {}
    nodes, _ = await ds.list(keys.full(keys.NODES), keys_only=True)
    for kv in nodes:
        parsed = keys.parse(kv.key)
        if parsed is not None and parsed.kind == "Node":
            agents[parsed.name] = None
    statuses, _ = await ds.list(keys.full(keys.NODE_STATUS))
    with_status = set()
    for kv in statuses:
        try:
            st = model.decode(kv.key, kv.value)
        except ValueError:
            continue
        if isinstance(st, model.NodeStatus):
            agents[st.metadata.name] = st.status.version
            with_status.add(st.metadata.name)
    return Cluster(schema, schema_error, dict(sorted(agents.items())), frozenset(with_status))


def skew_warnings(client: str, cluster: Cluster) -> list[str]:
    """One line per mismatch between this fabricctl and the cluster (pure)."""
    out = []
    if cluster.schema_error:
        out.append(cluster.schema_error)
    elif cluster.schema is not None and cluster.schema != SCHEMA_VERSION:
        newer = "newer" if cluster.schema > SCHEMA_VERSION else "older"
        out.append(f"the datastore has schema version {cluster.schema}, {newer} than the "
                   f"{SCHEMA_VERSION} this fabricctl understands")
    for node, version in cluster.agents.items():
        if node not in cluster.with_status:
            continue
        if version is None:
            out.append(f"node {node}: the agent reports no version (older than this "
                       f"fabricctl {client})")
        elif version != client:
            out.append(f"node {node}: the agent runs {version}, this fabricctl is {client}")
    return out


def cmd_version(args: argparse.Namespace) -> int:
    client = l3fabric_version()
    data: dict[str, Any] = {"client": {"version": client, "schema": SCHEMA_VERSION}}
    if args.client:
        if args.output != "table":
            dump(data, args.output)
        else:
            print(f"Client version: {client} (schema {SCHEMA_VERSION})")
        return 0
    if args.output == "table":
        print(f"Client version: {client} (schema {SCHEMA_VERSION})")
        sys.stdout.flush()
    cluster = run(args, load_cluster)
    data["datastore"] = {"schema": cluster.schema}
    data["agents"] = [{"node": n, "version": v, "status": n in cluster.with_status}
                      for n, v in cluster.agents.items()]
    warnings = skew_warnings(client, cluster)
    if args.output != "table":
        dump({**data, "warnings": warnings}, args.output)
    else:
        schema = "none yet" if cluster.schema is None else str(cluster.schema)
        print(f"Datastore schema: {schema}")
        if cluster.agents:
            print()
            table(["NODE", "AGENT VERSION"],
                  [[n, v if v is not None else
                    ("unknown" if n in cluster.with_status else "no status (agent down?)")]
                   for n, v in cluster.agents.items()])
    for w in warnings:
        print(f"fabricctl: warning: {w}", file=sys.stderr)
    return 0
