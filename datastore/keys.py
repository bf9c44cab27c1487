"""Every etcd key string of l3fabric is built and parsed here, nowhere else.

The keys are listed in docs/architecture.md §4.

Keys live under ``/l3fabric/v1/``. CIDRs in keys have their ``/`` replaced by ``-`` so that
one CIDR stays one path segment (``10.244.0.0/26`` -> ``10.244.0.0-26``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

PREFIX = "/l3fabric/v1/"

# Sub-prefixes, relative to PREFIX.
IPPOOLS = "config/ippools/"
BGP_CONFIGS = "config/bgp/"
BGP_PEERS = "config/bgppeers/"
FELIX_CONFIGS = "config/felix/"
HOST_ENDPOINTS = "hostendpoints/"
NODES = "nodes/"
NAMESPACES = "namespaces/"
POLICIES = "policies/"
GLOBAL_POLICIES = "globalpolicies/"
STAGED_POLICIES = "stagedpolicies/"
STAGED_GLOBAL_POLICIES = "stagedglobalpolicies/"
WORKLOADS = "workloads/"
IPAM_BLOCKS = "ipam/blocks/"
IPAM_AFFINITIES = "ipam/affinities/"
IPAM_HANDLES = "ipam/handles/"
IPAM_RESERVATIONS = "ipam/reservations/"
IPAM_CONFIG = "ipam/config"
NODE_STATUS = "status/nodes/"
SCHEMA_VERSION = "schema/version"


def full(rel: str) -> str:
    """The absolute key for a key relative to PREFIX."""
    return PREFIX + rel


def relative(key: str) -> str:
    """The key relative to PREFIX; raises ValueError for keys outside it."""
    if not key.startswith(PREFIX):
        raise ValueError(f"{key}: not an l3fabric key (outside {PREFIX})")
    return key[len(PREFIX) :]


def cidr_to_segment(cidr: str) -> str:
    return cidr.replace("/", "-")


def segment_to_cidr(segment: str) -> str:
    head, sep, tail = segment.rpartition("-")
    if not sep or not tail.isdigit():
        raise ValueError(f"{segment!r} is not a CIDR key segment")
    return f"{head}/{tail}"


def ippool(name: str) -> str:
    return full(IPPOOLS + name)


def bgp_config(name: str = "default") -> str:
    return full(BGP_CONFIGS + name)


def bgppeer(name: str) -> str:
    return full(BGP_PEERS + name)


def felix_config(name: str = "default") -> str:
    return full(FELIX_CONFIGS + name)


def host_endpoint(name: str) -> str:
    return full(HOST_ENDPOINTS + name)


def node(name: str) -> str:
    return full(NODES + name)


def namespace(name: str) -> str:
    return full(NAMESPACES + name)


def policy(ns: str, name: str) -> str:
    return full(f"{POLICIES}{ns}/{name}")


def global_policy(name: str) -> str:
    return full(GLOBAL_POLICIES + name)


def staged_policy(ns: str, name: str) -> str:
    return full(f"{STAGED_POLICIES}{ns}/{name}")


def staged_global_policy(name: str) -> str:
    return full(STAGED_GLOBAL_POLICIES + name)


def workload(node_name: str, ns: str, pod: str, iface: str) -> str:
    return full(f"{WORKLOADS}{node_name}/{ns}.{pod}.{iface}")


def workloads_of(node_name: str) -> str:
    return full(f"{WORKLOADS}{node_name}/")


def ipam_block(cidr: str) -> str:
    return full(IPAM_BLOCKS + cidr_to_segment(cidr))


def ipam_affinity(node_name: str, cidr: str) -> str:
    return full(f"{IPAM_AFFINITIES}{node_name}/{cidr_to_segment(cidr)}")


def ipam_affinities_of(node_name: str) -> str:
    return full(f"{IPAM_AFFINITIES}{node_name}/")


def ipam_handle(handle: str) -> str:
    return full(IPAM_HANDLES + handle)


def ipam_reservation(name: str) -> str:
    return full(IPAM_RESERVATIONS + name)


def node_status(node_name: str) -> str:
    return full(NODE_STATUS + node_name)


def ipam_config() -> str:
    """The single IPAMConfig key (its resource is always named ``default``)."""
    return full(IPAM_CONFIG)


@dataclass(frozen=True)
class ParsedKey:
    """What a key names: its kind and the identifying parts (namespace, name, node)."""

    kind: str
    name: str
    namespace: str | None = None
    node: str | None = None


#: (sub-prefix, kind, path segments after it), in the order parse() tries them.
_KINDS_BY_PREFIX: tuple[tuple[str, str, int], ...] = (
    (IPPOOLS, "IPPool", 1),
    (BGP_CONFIGS, "BGPConfiguration", 1),
    (BGP_PEERS, "BGPPeer", 1),
    (FELIX_CONFIGS, "FelixConfiguration", 1),
    (HOST_ENDPOINTS, "HostEndpoint", 1),
    (NODES, "Node", 1),
    (NAMESPACES, "Namespace", 1),
    (POLICIES, "NetworkPolicy", 2),
    (GLOBAL_POLICIES, "GlobalNetworkPolicy", 1),
    (STAGED_POLICIES, "StagedNetworkPolicy", 2),
    (STAGED_GLOBAL_POLICIES, "StagedGlobalNetworkPolicy", 1),
    (WORKLOADS, "WorkloadEndpoint", 2),
    (IPAM_RESERVATIONS, "IPReservation", 1),
    (NODE_STATUS, "NodeStatus", 1),
)


# Cached: decoding a value parses its key twice (is it read at all, then which kind it
# must hold), once each for the ~50,000 keys of a 1,000-node snapshot. ParsedKey is frozen.
@functools.lru_cache(maxsize=256)
def parse(key: str) -> ParsedKey | None:
    """Which resource a key names, or None for keys we do not model (ipam internals)."""
    try:
        rel = relative(key)
    except ValueError:
        return None
    if rel == IPAM_CONFIG:
        return ParsedKey("IPAMConfig", name="default")
    for prefix, kind, nparts in _KINDS_BY_PREFIX:
        if not rel.startswith(prefix):
            continue
        rest = rel[len(prefix) :].split("/")
        if len(rest) != nparts or not all(rest):
            return None
        if kind in ("NetworkPolicy", "StagedNetworkPolicy"):
            return ParsedKey(kind, name=rest[1], namespace=rest[0])
        if kind == "WorkloadEndpoint":
            ns, _, name = rest[1].partition(".")
            return ParsedKey(kind, name=name, namespace=ns, node=rest[0])
        return ParsedKey(kind, name=rest[0])
    return None
