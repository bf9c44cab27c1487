"""``fabricctl apply|get|delete|label``: resources in etcd, as calicoctl/kubectl handle them.

Every document is validated before anything is written: a file with one bad document
changes nothing. Reads decode each stored value; a value that fails validation (written
by hand with etcdctl, say) is listed as invalid with the reason instead of hiding it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from datastore import keys, model
from datastore.cas import cas_retry
from datastore.client import KV, Datastore
from datastore.labelselector import parse_label_selector
from datastore.schema import SchemaError, ensure_schema

from . import calico_yaml
from .common import CliError, run
from .completion_cmd import complete_with
from .output import add_output_flag, dig, dump, table

# Table columns per kind: header -> dotted path into the framed object.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "IPPool": [("CIDR", "spec.cidr"), ("BLOCKSIZE", "spec.blockSize"),
               ("DISABLED", "spec.disabled"), ("NODESELECTOR", "spec.nodeSelector")],
    "IPAMConfig": [("STRICTAFFINITY", "spec.strictAffinity"),
                   ("MAXBLOCKSPERHOST", "spec.maxBlocksPerHost")],
    "BGPConfiguration": [("ASN", "spec.asNumber"), ("MESH", "spec.nodeToNodeMesh"),
                         ("HOLDTIME", "spec.holdTime"), ("MAXPREFIXES", "spec.maxPrefixes")],
    # MAXPREFIXES empty: the BGPConfiguration's applies.
    "BGPPeer": [("PEERIP", "spec.peerIP"), ("ASN", "spec.asNumber"), ("NODE", "spec.node"),
                ("NODESELECTOR", "spec.nodeSelector"), ("MAXPREFIXES", "spec.maxPrefixes")],
    "Node": [("IPV4", "spec.bgp.ipv4Address"), ("ASN", "spec.bgp.asNumber"),
             ("RRCLUSTERID", "spec.bgp.routeReflectorClusterID"),
             ("LABELS", "metadata.labels")],
    "Namespace": [("LABELS", "metadata.labels")],
    "NetworkPolicy": [("PODSELECTOR", "spec.podSelector"), ("TYPES", "spec.policyTypes")],
    "GlobalNetworkPolicy": [("ORDER", "spec.order"), ("SELECTOR", "spec.selector"),
                            ("TYPES", "spec.types")],
    "WorkloadEndpoint": [("NODE", "spec.node"), ("IPS", "spec.ipNetworks"),
                         ("INTERFACE", "spec.hostInterface"), ("LABELS", "spec.labels")],
    "IPReservation": [("CIDRS", "spec.reservedCIDRs")],
    "NodeStatus": [("UPDATED", "status.updated")],
    "HostEndpoint": [("NODE", "spec.node"), ("INTERFACE", "spec.interfaceName"),
                     ("EXPECTEDIPS", "spec.expectedIPs"), ("LABELS", "metadata.labels")],
    "FelixConfiguration": [("NONMASQUERADECIDRS", "spec.nonMasqueradeCIDRs")],
}

# More columns with ``-o wide`` (appended after COLUMNS, before VALID).
WIDE_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "IPPool": [("NATOUTGOING", "spec.natOutgoing"), ("LABELS", "metadata.labels")],
    "IPAMConfig": [("RELEASECOOLDOWN", "spec.releaseCooldownSeconds")],
    "BGPConfiguration": [("GRACEFULRESTART", "spec.gracefulRestart.enabled"),
                         ("COMMUNITIES", "spec.communities")],
    "BGPPeer": [("LOCALASN", "spec.localASNumber"), ("TTLSECURITY", "spec.ttlSecurity"),
                ("RRCLIENT", "spec.routeReflectorClient"), ("LABELS", "metadata.labels")],
    "Node": [("IPV6", "spec.bgp.ipv6Address")],
    "Namespace": [],
    "NetworkPolicy": [("LABELS", "metadata.labels")],
    "GlobalNetworkPolicy": [("NAMESPACESELECTOR", "spec.namespaceSelector"),
                            ("LABELS", "metadata.labels")],
    "WorkloadEndpoint": [("POD", "spec.pod"), ("CONTAINER", "spec.containerID"),
                         ("MAC", "spec.mac")],
    "IPReservation": [("LABELS", "metadata.labels")],
    "NodeStatus": [("INSYNC", "status.inSync"), ("VERSION", "status.version")],
    "HostEndpoint": [],
    "FelixConfiguration": [("FAILSAFEIN", "spec.failsafeInboundHostPorts"),
                           ("FAILSAFEOUT", "spec.failsafeOutboundHostPorts")],
}
# Staged policies have their enforced twins' specs, hence their columns.
for _staged, _twin in (("StagedNetworkPolicy", "NetworkPolicy"),
                       ("StagedGlobalNetworkPolicy", "GlobalNetworkPolicy")):
    COLUMNS[_staged], WIDE_COLUMNS[_staged] = COLUMNS[_twin], WIDE_COLUMNS[_twin]

GET_FORMATS = ("table", "wide", "name", "json", "yaml")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("apply", help="create or update resources from YAML/JSON")
    a.add_argument("-f", "--filename", required=True, help="file with one or more documents, or -")
    a.set_defaults(func=cmd_apply)
    kinds = sorted({k.lower() for k in model.KINDS} | set(model.ALIASES))

    g = sub.add_parser("get", help="show resources (the VALID column says whether the stored "
                                    "value parses; a node's health: fabricctl node status)")
    complete_with(g.add_argument(
        "kind", help="ippool, bgpconfig, bgppeer, node, namespace, networkpolicy, "
                     "globalnetworkpolicy, workloadendpoint, ipreservation, ipamconfig, "
                     "nodestatus, hostendpoint, felixconfiguration"), kinds)
    g.add_argument("name", nargs="?", help="one resource (default: all of the kind)")
    g.add_argument("-n", "--namespace", default=None,
                   help="namespace of namespaced kinds (default: default)")
    g.add_argument("-A", "--all-namespaces", action="store_true",
                   help="namespaced kinds: list every namespace")
    g.add_argument("-l", "--selector", default=None, metavar="SELECTOR",
                   help="only resources whose labels match, as kubectl takes it: "
                        "'k=v,k2!=v2,k3 in (a,b),k4 notin (c),k5,!k6' (workload endpoints: "
                        "the pod's labels)")
    add_output_flag(g, GET_FORMATS)
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("delete", help="delete resources named on the line or in a file")
    complete_with(d.add_argument("kind", nargs="?", help="the resource's kind (as for get)"),
                  kinds)
    d.add_argument("name", nargs="?", help="the resource's name")
    d.add_argument("-n", "--namespace", default=None,
                   help="namespace of namespaced kinds (default: default)")
    d.add_argument("-f", "--filename", default=None,
                   help="delete what this file (or - for stdin) describes, as apply takes it")
    d.add_argument("--ignore-not-found", action="store_true",
                   help="a resource that does not exist is not an error")
    d.set_defaults(func=cmd_delete)

    lab = sub.add_parser("label", help="set (k=v) or remove (k-) labels")
    lab.add_argument("target", choices=["workload", "namespace"],
                     help="what to label: workload or namespace")
    lab.add_argument("name", help="NS/POD for a workload, NS for a namespace")
    lab.add_argument("labels", nargs="+", metavar="key=value|key-",
                     help="labels to set (key=value) or remove (key-)")
    add_output_flag(lab, default=None)
    lab.set_defaults(func=cmd_label)


# -- helpers ---------------------------------------------------------------------------

def resolve_kind(name: str) -> type[model.Resource]:
    kind = model.ALIASES.get(name.lower())
    if kind is None:
        known = ", ".join(sorted({k.lower() for k in model.KINDS}))
        raise CliError(f"unknown kind {name!r} (known: {known})", usage=True)
    return model.KINDS[kind]


def load_documents(filename: str) -> list[Any]:
    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    except OSError as e:
        raise CliError(f"{filename}: {e.strerror}") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise CliError(f"{filename}: not valid YAML/JSON: {str(e).splitlines()[0]}") from e
    out: list[Any] = []
    for d in docs:
        # `kind: List` (kubectl) and plain lists both hold several objects.
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(d["items"])
        elif isinstance(d, list):
            out.extend(d)
        else:
            out.append(d)
    if not out:
        raise CliError(f"{filename}: no documents")
    return out


def _describe(res: model.Resource) -> str:
    ns = f"{res.metadata.namespace}/" if res.metadata.namespace else ""
    return f"{res.kind} {ns}{res.metadata.name}"


def _row_obj(kv: KV) -> dict[str, Any]:
    """The framed object of a stored value, or an ``invalid`` record with the reason."""
    try:
        res = model.decode(kv.key, kv.value)
    except ValueError as e:
        parsed = keys.parse(kv.key)
        return {"key": keys.relative(kv.key), "invalid": str(e),
                "name": parsed.name if parsed else kv.key,
                "namespace": parsed.namespace if parsed else None,
                "raw": kv.value.decode("utf-8", "replace")[:200]}
    return res.to_dict()


# -- commands --------------------------------------------------------------------------

def _warner(where: str) -> calico_yaml.Warn:
    def warn(msg: str) -> None:
        print(f"{where}: {msg}", file=sys.stderr)
    return warn


def _parse_all(filename: str) -> list[model.Resource]:
    """Every document of a file, validated; the first bad one stops everything."""
    resources: list[model.Resource] = []
    for i, doc in enumerate(load_documents(filename)):
        try:
            doc = calico_yaml.translate(doc, _warner(f"{filename}: document {i + 1}"))
            resources.append(model.parse_document(doc))
        except ValueError as e:
            raise CliError(f"{filename}: document {i + 1}: {e}") from e
    return resources


def cmd_apply(args: argparse.Namespace) -> int:
    resources = _parse_all(args.filename)

    async def go(ds: Datastore) -> list[str]:
        try:
            await ensure_schema(ds)
        except SchemaError as e:
            raise CliError(str(e)) from e
        lines = []
        for res in resources:
            key = model.key_for(res)
            value = model.encode(res)

            async def write(key: str = key, value: bytes = value) -> str:
                cur = await ds.get(key)
                if cur is None:
                    await ds.create(key, value)
                    return "created"
                if cur.value == value:
                    return "unchanged"
                await ds.update(key, value, cur.mod_revision)
                return "configured"

            verb = await cas_retry(write)
            lines.append(f"{_describe(res)} {verb}")
        return lines

    for line in run(args, go):
        print(line)
    return 0


def _list_prefix(cls: type[model.Resource], namespace: str | None) -> str:
    return model.key_prefix_for_kind(cls.kind, namespace)


def _labels_of(obj: dict[str, Any]) -> dict[str, str]:
    """The labels ``-l`` matches: a workload endpoint's are its pod's (``spec.labels``)."""
    if "invalid" in obj:
        return {}
    path = "spec.labels" if obj.get("kind") == "WorkloadEndpoint" else "metadata.labels"
    return dict(dig(obj, path) or {})


def _split_kind_name(args: argparse.Namespace) -> None:
    """``KIND/NAME`` (what ``get -o name`` prints) as ``KIND NAME``."""
    if args.kind and "/" in args.kind:
        if args.name:
            raise CliError(f"{args.kind} already names the resource; drop {args.name!r}",
                           usage=True)
        args.kind, _, args.name = args.kind.partition("/")


def cmd_get(args: argparse.Namespace) -> int:
    _split_kind_name(args)
    cls = resolve_kind(args.kind)
    ns = args.namespace
    if cls.namespaced and ns is None and not args.all_namespaces:
        ns = "default"
    if args.all_namespaces:
        ns = None
    selector = None
    if args.selector is not None:
        try:
            selector = parse_label_selector(args.selector)
        except ValueError as e:
            raise CliError(f"-l: {e}", usage=True) from e

    async def go(ds: Datastore) -> list[KV]:
        kvs, _ = await ds.list(_list_prefix(cls, ns))
        return kvs

    kvs = run(args, go)
    objs = [_row_obj(kv) for kv in kvs]
    objs = [o for o in objs if _kind_of(o) in (cls.kind, None)]
    if cls.namespaced and ns is not None:  # workload keys group by node, not namespace
        objs = [o for o in objs
                if (o.get("namespace") if "invalid" in o else dig(o, "metadata.namespace")) == ns]
    if args.name:
        objs = [o for o in objs if _name_of(o) == args.name]
        if not objs:
            where = f" in namespace {ns}" if cls.namespaced and ns else ""
            raise CliError(f"{cls.kind} {args.name!r} not found{where}")
    if selector is not None:
        objs = [o for o in objs if selector.matches(_labels_of(o))]
    if args.output in ("json", "yaml"):
        dump(objs[0] if args.name and len(objs) == 1 else objs, args.output)
    elif not objs:
        # As kubectl: a message on stderr, nothing on stdout, success.
        where = f" in {ns} namespace" if cls.namespaced and ns else ""
        print(f"No resources found{where}.", file=sys.stderr)
    elif args.output == "name":
        for o in objs:
            print(f"{cls.kind.lower()}/{_name_of(o)}")
    else:
        _print_table(cls, objs, show_ns=cls.namespaced, wide=args.output == "wide")
    invalid = [o for o in objs if "invalid" in o]
    if args.name and invalid:
        print(f"fabricctl: {invalid[0]['invalid']}", file=sys.stderr)
        return 1
    return 0


def _kind_of(obj: dict[str, Any]) -> str | None:
    return None if "invalid" in obj else str(obj.get("kind"))


def _name_of(obj: dict[str, Any]) -> str:
    return str(obj["name"] if "invalid" in obj else dig(obj, "metadata.name"))


def _print_table(cls: type[model.Resource], objs: Iterable[dict[str, Any]],
                 show_ns: bool, wide: bool = False) -> None:
    cols = COLUMNS.get(cls.kind, []) + (WIDE_COLUMNS.get(cls.kind, []) if wide else [])
    headers = (["NAMESPACE"] if show_ns else []) + ["NAME"] + [h for h, _ in cols] + ["VALID"]
    rows = []
    for o in objs:
        if "invalid" in o:
            row = ([o.get("namespace") or ""] if show_ns else []) + [o["name"]]
            row += [""] * len(cols) + [f"no: {o['invalid']}"]
        else:
            row = ([dig(o, "metadata.namespace")] if show_ns else []) + [dig(o, "metadata.name")]
            row += [dig(o, path) for _, path in cols] + ["yes"]
        rows.append(row)
    table(headers, rows)
    if cls.kind in ("Node", "NodeStatus"):
        print("VALID says whether the stored value parses; whether a node is healthy: "
              "fabricctl node status", file=sys.stderr)


async def _delete_one(ds: Datastore, cls: type[model.Resource], name: str,
                      ns: str | None) -> bool:
    """Delete one resource the way its kind needs; False when it does not exist."""
    if cls.kind == "Node":
        from ipam.removal import remove_node

        removal = await remove_node(ds, name)
        print(f"node {name}: {removal}")
        return removal.node_existed
    if cls.kind == "IPPool":
        from ipam.allocator import delete_pool  # refuses while the pool has allocations
        from ipam.values import IpamError

        if await ds.get(keys.ippool(name)) is None:
            return False
        try:
            await delete_pool(ds, name)
        except IpamError as e:
            raise CliError(str(e)) from e
        return True
    kvs, _ = await ds.list(_list_prefix(cls, ns))
    for kv in kvs:
        parsed = keys.parse(kv.key)
        if (parsed and parsed.kind == cls.kind and parsed.name == name
                and (not cls.namespaced or (parsed.namespace or "default") == ns)):
            return await ds.delete(kv.key, kv.mod_revision)
    return False


def _targets_from_args(args: argparse.Namespace
                       ) -> list[tuple[type[model.Resource], str, str | None]]:
    """What ``delete`` removes: KIND NAME on the line, or every document of ``-f``."""
    if args.filename is not None:
        if args.kind or args.name:
            raise CliError("delete takes KIND NAME or -f FILE, not both", usage=True)
        out: list[tuple[type[model.Resource], str, str | None]] = []
        for res in _parse_all(args.filename):
            ns = (res.metadata.namespace or "default") if res.namespaced else None
            out.append((type(res), res.metadata.name, ns))
        return out
    _split_kind_name(args)
    if not args.kind or not args.name:
        raise CliError("delete needs KIND NAME (or KIND/NAME), or -f FILE", usage=True)
    cls = resolve_kind(args.kind)
    return [(cls, args.name, (args.namespace or "default") if cls.namespaced else None)]


def cmd_delete(args: argparse.Namespace) -> int:
    targets = _targets_from_args(args)

    async def go(ds: Datastore) -> list[bool]:
        return [await _delete_one(ds, cls, name, ns) for cls, name, ns in targets]

    missing = 0
    for (cls, name, ns), existed in zip(targets, run(args, go), strict=True):
        what = f"{cls.kind} {(ns + '/') if ns else ''}{name}"
        if existed:
            print(f"{what} deleted")
        elif not args.ignore_not_found:
            where = f" in namespace {ns}" if ns else ""
            print(f"fabricctl: {cls.kind} {name!r} not found{where}", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


def parse_label_args(items: list[str]) -> tuple[dict[str, str], list[str]]:
    sets: dict[str, str] = {}
    removes: list[str] = []
    for item in items:
        if item.endswith("-") and "=" not in item:
            removes.append(item[:-1])
        elif "=" in item:
            k, _, v = item.partition("=")
            sets[k] = v
        else:
            raise CliError(f"bad label {item!r}: use key=value or key-", usage=True)
    return sets, removes


def _relabel(obj: dict[str, Any], path: str, sets: dict[str, str], removes: list[str]) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = obj
    for part in parent_path.split("."):
        parent = parent.setdefault(part, {})
    labels = dict(parent.get(leaf) or {})
    labels.update(sets)
    for k in removes:
        labels.pop(k, None)
    parent[leaf] = labels


def cmd_label(args: argparse.Namespace) -> int:
    sets, removes = parse_label_args(args.labels)

    async def go(ds: Datastore) -> dict[str, Any]:
        if args.target == "namespace":
            key = keys.namespace(args.name)
            path = "metadata.labels"
        else:
            ns, sep, pod = args.name.partition("/")
            if not sep or not ns or not pod:
                raise CliError("workload must be given as NS/POD", usage=True)
            key = await _find_workload_key(ds, ns, pod)
            path = "spec.labels"

        async def write() -> dict[str, Any]:
            cur = await ds.get(key)
            if cur is None:
                if args.target != "namespace":
                    raise CliError(f"workload {args.name} not found")
                obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": args.name}}
            else:
                obj = model.decode(key, cur.value).to_dict()
            _relabel(obj, path, sets, removes)
            res = model.parse_document(obj)  # validate label syntax before writing
            value = model.encode(res)
            if cur is None:
                await ds.create(key, value)
            else:
                await ds.update(key, value, cur.mod_revision)
            return res.to_dict()

        return await cas_retry(write)

    obj = run(args, go)
    if args.output:
        dump(obj, args.output)
    else:
        labels = dig(obj, path="metadata.labels" if args.target == "namespace" else "spec.labels")
        print(f"{args.target} {args.name} labelled: {json.dumps(labels or {}, sort_keys=True)}")
    return 0


async def _find_workload_key(ds: Datastore, ns: str, pod: str) -> str:
    kvs, _ = await ds.list(keys.full(keys.WORKLOADS), keys_only=True)
    found = []
    for kv in kvs:
        # workloads/<node>/<ns>.<pod>.<iface>: pod names may hold dots, ns and iface not.
        leaf = kv.key.rsplit("/", 1)[-1]
        kns, _, rest = leaf.partition(".")
        kpod, _, _iface = rest.rpartition(".")
        if kns == ns and kpod == pod:
            found.append(kv.key)
    if not found:
        raise CliError(f"workload {ns}/{pod} not found")
    if len(found) > 1:
        # Several interfaces: the first one (eth0 sorts first in practice) carries labels.
        found.sort()
    return found[0]
