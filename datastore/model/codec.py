"""The registry of kinds, their etcd keys, and the bytes <-> resource codec.

Owned here: which class a kind (or CLI alias) names, where each kind is stored, and
``decode``: the only way from an etcd value to a resource, which checks that the value
is the kind its key holds and names the same resource."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from datastore import keys
from datastore.labelselector import (
    ValidationError,
    type_name,
)
from datastore.model.bgp import BGPConfiguration, BGPPeer
from datastore.model.felix import FelixConfiguration, HostEndpoint
from datastore.model.ipam import IPAMConfig, IPPool, IPReservation
from datastore.model.node import Namespace, Node, NodeStatus
from datastore.model.policy import (
    GlobalNetworkPolicy,
    NetworkPolicy,
    StagedGlobalNetworkPolicy,
    StagedNetworkPolicy,
)
from datastore.model.resource import Resource
from datastore.model.workload import WorkloadEndpoint

log = logging.getLogger(__name__)


#: Values larger than this are rejected by ``decode`` without parsing (etcd's default
#: request limit is 1.5 MiB; no valid resource of ours comes near 1 MiB).
MAX_VALUE_BYTES = 1 << 20


# --- registry, keys, codec ---------------------------------------------------------------------

KINDS: dict[str, type[Resource]] = {
    cls.kind: cls
    for cls in (
        IPPool,
        IPAMConfig,
        BGPConfiguration,
        BGPPeer,
        Node,
        Namespace,
        NetworkPolicy,
        GlobalNetworkPolicy,
        StagedNetworkPolicy,
        StagedGlobalNetworkPolicy,
        WorkloadEndpoint,
        IPReservation,
        NodeStatus,
        FelixConfiguration,
        HostEndpoint,
    )
}

ALIASES: dict[str, str] = {
    **{kind.lower(): kind for kind in KINDS},
    "ippools": "IPPool",
    "ipamconfigs": "IPAMConfig",
    "bgpconfig": "BGPConfiguration",
    "bgpconfigs": "BGPConfiguration",
    "bgpconfigurations": "BGPConfiguration",
    "bgppeers": "BGPPeer",
    "nodes": "Node",
    "namespaces": "Namespace",
    "ns": "Namespace",
    "networkpolicies": "NetworkPolicy",
    "netpol": "NetworkPolicy",
    "netpols": "NetworkPolicy",
    "globalnetworkpolicies": "GlobalNetworkPolicy",
    "gnp": "GlobalNetworkPolicy",
    "stagednetworkpolicies": "StagedNetworkPolicy",
    "snp": "StagedNetworkPolicy",
    "stagedglobalnetworkpolicies": "StagedGlobalNetworkPolicy",
    "sgnp": "StagedGlobalNetworkPolicy",
    "workloadendpoints": "WorkloadEndpoint",
    "wep": "WorkloadEndpoint",
    "weps": "WorkloadEndpoint",
    "ipreservations": "IPReservation",
    "nodestatuses": "NodeStatus",
    "felixconfig": "FelixConfiguration",
    "felixconfigs": "FelixConfiguration",
    "felixconfigurations": "FelixConfiguration",
    "hostendpoints": "HostEndpoint",
    "hep": "HostEndpoint",
    "heps": "HostEndpoint",
}


def resolve_kind(name: str) -> type[Resource]:
    """The class for a kind or CLI alias (case-insensitive); KeyError names the known kinds."""
    kind = ALIASES.get(name.lower())
    if kind is None:
        raise KeyError(f"unknown kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[kind]


# kind -> (list prefix relative to keys.PREFIX)
_PREFIXES: dict[str, str] = {
    "IPPool": keys.IPPOOLS,
    "IPAMConfig": keys.IPAM_CONFIG,
    "BGPConfiguration": keys.BGP_CONFIGS,
    "BGPPeer": keys.BGP_PEERS,
    "Node": keys.NODES,
    "Namespace": keys.NAMESPACES,
    "NetworkPolicy": keys.POLICIES,
    "GlobalNetworkPolicy": keys.GLOBAL_POLICIES,
    "StagedNetworkPolicy": keys.STAGED_POLICIES,
    "StagedGlobalNetworkPolicy": keys.STAGED_GLOBAL_POLICIES,
    "WorkloadEndpoint": keys.WORKLOADS,
    "IPReservation": keys.IPAM_RESERVATIONS,
    "NodeStatus": keys.NODE_STATUS,
    "FelixConfiguration": keys.FELIX_CONFIGS,
    "HostEndpoint": keys.HOST_ENDPOINTS,
}


def key_prefix_for_kind(kind: str, namespace: str | None = None) -> str:
    """The absolute etcd prefix to list ``kind`` (a kind or alias) under.

    With ``namespace``, NetworkPolicy narrows to ``policies/<ns>/``. WorkloadEndpoint keys
    are grouped by node, not namespace, so for them the caller filters by namespace.
    """
    cls = resolve_kind(kind)
    if cls is NetworkPolicy and namespace is not None:
        return keys.full(f"{keys.POLICIES}{namespace}/")
    if cls is StagedNetworkPolicy and namespace is not None:
        return keys.full(f"{keys.STAGED_POLICIES}{namespace}/")
    return keys.full(_PREFIXES[cls.kind])


def key_for(res: Resource) -> str:
    """The absolute etcd key ``res`` is stored at."""
    name = res.metadata.name
    if isinstance(res, StagedNetworkPolicy):
        return keys.staged_policy(res.metadata.namespace or "default", name)
    if isinstance(res, NetworkPolicy):
        return keys.policy(res.metadata.namespace or "default", name)
    if isinstance(res, WorkloadEndpoint):
        s = res.spec
        return keys.workload(s.node, res.metadata.namespace or "default", s.pod, s.endpoint)
    if isinstance(res, IPAMConfig):
        return keys.ipam_config()
    by_kind: dict[str, Callable[[str], str]] = {
        "IPPool": keys.ippool,
        "BGPConfiguration": keys.bgp_config,
        "BGPPeer": keys.bgppeer,
        "Node": keys.node,
        "Namespace": keys.namespace,
        "GlobalNetworkPolicy": keys.global_policy,
        "StagedGlobalNetworkPolicy": keys.staged_global_policy,
        "IPReservation": keys.ipam_reservation,
        "NodeStatus": keys.node_status,
        "FelixConfiguration": keys.felix_config,
        "HostEndpoint": keys.host_endpoint,
    }
    return by_kind[res.kind](name)


def encode(res: Resource) -> bytes:
    """The compact JSON value stored in etcd for ``res``."""
    return json.dumps(res.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def parse_document(obj: Any) -> Resource:
    """Validate one YAML/JSON document (``fabricctl apply``); its ``kind`` picks the class."""
    if not isinstance(obj, Mapping):
        raise ValidationError(None, "", f"expected an object, got {type_name(obj)}")
    kind = obj.get("kind")
    if kind is None:
        raise ValidationError(None, "kind", "required")
    if not isinstance(kind, str):
        raise ValidationError(None, "kind", f"expected a string, got {type_name(kind)}")
    cls = KINDS.get(kind)
    if cls is None:
        raise ValidationError(
            None, "kind", f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})"
        )
    return cls.from_dict(obj)


_WORKLOADS = keys.PREFIX + keys.WORKLOADS


def decode_canonical_endpoint(key: str, value: bytes) -> WorkloadEndpoint | None:
    """The endpoint at ``key`` if its value is in the form the CNI handler writes
    (`WorkloadEndpoint.from_canonical`), else None: ``decode`` then reads it the general
    way, and words any error. Every agent decodes every endpoint of the cluster."""
    if not key.startswith(_WORKLOADS) or len(value) > MAX_VALUE_BYTES:
        return None
    node, _, rest = key[len(_WORKLOADS) :].partition("/")
    namespace, dot, name = rest.partition(".")
    if not node or not dot or not namespace or "/" in rest:
        return None
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    return WorkloadEndpoint.from_canonical(obj, name, namespace, node)


def decode(key: str, value: bytes, revision: int | None = None) -> Resource:
    """Parse and validate the etcd value at ``key``; it must be the kind the key holds and
    name the same resource. A value without ``metadata.name``/``namespace`` takes them from
    the key (handy with ``etcdctl put``). ``revision`` goes into ``metadata.revision``.
    Every error is a ValidationError naming the key relative to ``/l3fabric/v1/``."""
    wep = decode_canonical_endpoint(key, value)
    if wep is not None:
        if revision is not None:
            wep = replace(wep, metadata=replace(wep.metadata, revision=revision))
        return wep
    try:
        rel = keys.relative(key)
    except ValueError:
        raise ValidationError(key, "", "not an l3fabric key") from None
    where = keys.parse(key)
    if where is None:
        raise ValidationError(rel, "", "not a key that holds a resource")
    if len(value) > MAX_VALUE_BYTES:
        raise ValidationError(
            rel, "", f"value is {len(value)} bytes, more than the {MAX_VALUE_BYTES} byte limit"
        )
    try:
        # Decode explicitly: json.loads(bytes) would guess UTF-16/32 from the first bytes.
        obj = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValidationError(rel, "", "value is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValidationError(
            rel, "", f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise ValidationError(rel, "", "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValidationError(rel, "", f"expected a JSON object, got {type_name(obj)}")
    kind = obj.get("kind")
    if isinstance(kind, str) and kind != where.kind:
        raise ValidationError(
            rel, "kind", f"{kind!r} does not match the key, which holds {where.kind}"
        )
    md = obj.get("metadata")
    if isinstance(md, dict):
        fill = {"name": where.name}
        if where.namespace is not None:
            fill["namespace"] = where.namespace
        obj = {**obj, "metadata": {**fill, **md}}
    try:
        res = parse_document(obj)
    except ValidationError as e:
        raise e.with_key(rel) from None
    if res.metadata.namespace != where.namespace:
        raise ValidationError(
            rel,
            "metadata.namespace",
            f"{res.metadata.namespace!r} does not match the key's namespace {where.namespace!r}",
        )
    if res.metadata.name != where.name:
        raise ValidationError(
            rel,
            "metadata.name",
            f"{res.metadata.name!r} does not match the key's name {where.name!r}",
        )
    if isinstance(res, WorkloadEndpoint) and res.spec.node != where.node:
        raise ValidationError(
            rel, "spec.node", f"{res.spec.node!r} does not match the key's node {where.node!r}"
        )
    if revision is not None:
        res = replace(res, metadata=replace(res.metadata, revision=revision))
    return res
