"""The agent's typed, indexed view of the cluster: `ClusterState`.

Owned here: what the calculation reads of ``/l3fabric/v1/`` (pools, IPAM config and
reservations, blocks and affinities, workload endpoints, host endpoints, policies,
namespaces, nodes, BGP configuration and peers, the FelixConfiguration), decoded by
`decode_value`, and the indexes the calculation asks through (endpoints by node and by
address, confirmed affinities and borrowed addresses by node). The syncer's events
(`Update`, `Deleted`) feed it through `apply`, each in O(size of the changed value); the
CNI handler's endpoint reports go through the same path (`put`, `remove`), so an
endpoint reported before etcd's watch echoes it is simply already there when the echo
arrives, and the echo changes nothing.

Last good values: the syncer never emits an `Update` for a value that does not decode
(it emits `ConfigError` and keeps the last good one), so a key here always holds the last
value that validated.

Pure: no etcd, no netlink, no sockets; it is fed events and read by the calculation
(``felix_like.calc``, ``felix_like.policy``, ``bgp.export``, ``bgp.controller``). Change
tracking for incremental consumers: `generation` counts changes, and each consumer of the
policy inputs holds a `ChangeLog` of the keys changed since it last looked.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from bgp.export import BlockSummary, decode_block
from datastore import keys, model
from ipam.affinity import CONFIRMED, parse_affinity


class SyncEvent(Protocol):
    """A `datastore.syncer.Update` or `Deleted` (which has no ``value``); the syncer's
    module holds the etcd client, so its events are described here, not imported."""

    @property
    def key(self) -> str: ...


@dataclass(frozen=True)
class Affinity:
    """A decoded ``ipam/affinities/<node>/<cidr>`` entry."""

    node: str
    cidr: str
    state: str


def consumed(key: str) -> bool:
    """Whether the calculation reads ``key`` at all. The others (IPAM handles, status,
    keys that hold no resource) decode to None, so writing or deleting them changes
    nothing the agent computes."""
    rel = keys.relative(key)
    if rel.startswith((keys.IPAM_AFFINITIES, keys.IPAM_BLOCKS, keys.IPAM_RESERVATIONS)) \
            or rel == keys.IPAM_CONFIG:
        return True
    if rel.startswith(("ipam/", "status/")):
        return False
    return keys.parse(key) is not None


def decode_value(key: str, value: bytes) -> Any:
    """The agent's decoder for everything under PREFIX (the syncer calls it).

    Modelled resources are validated (ValueError on a bad value, so the syncer keeps the
    last good one); affinities become `Affinity`; blocks what BGP exports of them; what
    the agent does not consume (see `consumed`) decodes to None and is ignored.
    """
    wep = model.decode_canonical_endpoint(key, value)  # most keys, in one pass
    if wep is not None:
        return wep
    if not consumed(key):
        return None
    rel = keys.relative(key)
    if rel.startswith(keys.IPAM_AFFINITIES):
        node, _, seg = rel[len(keys.IPAM_AFFINITIES):].partition("/")
        return Affinity(node, keys.segment_to_cidr(seg), parse_affinity(value).state)
    if rel.startswith(keys.IPAM_BLOCKS):
        return decode_block(value)  # BlockFormatError is a ValueError
    return model.decode(key, value)


def _workload_node(key: str) -> str:
    """The node of a ``workloads/<node>/<name>`` key."""
    return keys.relative(key)[len(keys.WORKLOADS):].partition("/")[0]


def _host(addr: str) -> str:
    """``10.0.0.5`` -> ``10.0.0.5/32`` (``/128`` for IPv6)."""
    return f"{addr}/128" if ":" in addr else f"{addr}/32"


def _addresses(wep: model.WorkloadEndpoint) -> Iterator[str]:
    return (str(n.network_address) for n in wep.spec.ip_networks)


@dataclass(eq=False)
class ChangeLog:
    """The keys of one consumer's inputs changed since it last took them (`take`)."""

    keys: set[str] = field(default_factory=set)

    def take(self) -> set[str]:
        out, self.keys = self.keys, set()
        return out


# The kinds the policy calculation reads (and the node's own Node, for its addresses).
_POLICY_KINDS = (model.NetworkPolicy, model.GlobalNetworkPolicy, model.Namespace,
                 model.WorkloadEndpoint, model.Node)


# The kinds BGP's neighbours are drawn from.
_BGP_KINDS = (model.Node, model.BGPConfiguration, model.BGPPeer)


class ClusterState:
    """The typed, indexed cluster view. See the module docstring.

    The public dicts are the indexes; read them, never write them (only `apply`, `put`
    and `remove` keep them consistent with each other).
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}  # key -> decoded value, every consumed key
        self.pools: dict[str, model.IPPool] = {}  # by key
        self.reservations: dict[str, model.IPReservation] = {}  # by key
        self.ipam_config: model.IPAMConfig | None = None
        self.bgp_configs: dict[str, model.BGPConfiguration] = {}  # by name
        self.peers: dict[str, model.BGPPeer] = {}  # by key
        self.nodes: dict[str, model.Node] = {}  # by name
        self.namespaces: dict[str, model.Namespace] = {}  # by name
        self.policies: dict[str, model.NetworkPolicy] = {}  # by key
        self.global_policies: dict[str, model.GlobalNetworkPolicy] = {}  # by key
        # Staged (counted, never enforced) policies of both kinds, by key.
        self.staged_policies: dict[str, model.NetworkPolicy | model.GlobalNetworkPolicy] = {}
        self.endpoints: dict[str, model.WorkloadEndpoint] = {}  # by key
        self.blocks: dict[str, BlockSummary] = {}  # by key
        self.felix_configs: dict[str, model.FelixConfiguration] = {}  # by name
        self.host_endpoints: dict[str, model.HostEndpoint] = {}  # by key
        self._namespace_keys: dict[str, model.Namespace] = {}  # by key
        self._endpoints_by_node: dict[str, dict[str, model.WorkloadEndpoint]] = {}
        # address -> the key of the endpoint holding it, or a set of keys when several do
        # (a set per address would cost ~200 bytes for each of the cluster's endpoints)
        self._by_address: dict[str, str | set[str]] = {}
        self._blocks_by_node: dict[str | None, set[str]] = {}  # owner -> block keys
        self._room: dict[str, int] = {}  # block cidr -> free addresses
        self._room_view = MappingProxyType(self._room)
        self._orphans: dict[str, None] = {}  # cidrs of blocks without an affinity
        self._borrowed: dict[str, dict[str, tuple[str, ...]]] = {}  # holder -> key -> addrs
        self._affinities: dict[str, dict[str, Affinity]] = {}  # node -> key -> affinity
        self._policy_logs: weakref.WeakSet[ChangeLog] = weakref.WeakSet()
        self.generation = 0  # bumped on every change of a value
        self.bgp_generation = 0  # bumped on every change of a Node, BGP config or peer

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> ClusterState:
        """A state holding ``values`` (key -> decoded value), as if each was an `Update`."""
        st = cls()
        for key, value in values.items():
            st.put(key, value)
        return st

    # -- feeding -----------------------------------------------------------------------

    def apply(self, ev: SyncEvent) -> bool:
        """Take one syncer event; True if it changed what the calculation reads. A
        `Deleted` has no value: the key goes, as does one whose new value is None."""
        return self.put(ev.key, getattr(ev, "value", None))

    def put(self, key: str, value: Any) -> bool:
        """``key`` now holds ``value`` (None: a key the calculation does not read)."""
        if value is None:
            return self.remove(key)
        old = self.values.get(key)
        if old is value or (old is not None and type(old) is type(value) and old == value):
            return False
        if old is not None:
            self._unindex(key, old)
        self.values[key] = value
        self._index(key, value)
        self.generation += 1
        return True

    def remove(self, key: str) -> bool:
        old = self.values.pop(key, None)
        if old is None:
            return False
        self._unindex(key, old)
        self.generation += 1
        return True

    def _index(self, key: str, v: Any) -> None:
        if isinstance(v, _BGP_KINDS):
            self.bgp_generation += 1
        if isinstance(v, _POLICY_KINDS):
            for log in self._policy_logs:
                log.keys.add(key)
        if isinstance(v, model.WorkloadEndpoint):
            self.endpoints[key] = v
            self._endpoints_by_node.setdefault(_workload_node(key), {})[key] = v
            for addr in _addresses(v):
                held = self._by_address.get(addr)
                if held is None or held == key:
                    self._by_address[addr] = key
                elif isinstance(held, str):
                    self._by_address[addr] = {held, key}
                else:
                    held.add(key)
        elif isinstance(v, BlockSummary):
            self.blocks[key] = v
            self._blocks_by_node.setdefault(v.node, set()).add(key)
            if v.free is not None:
                self._room[v.cidr] = v.free
            if v.node is None:
                self._orphans[v.cidr] = None
            for holder, addrs in _holders(v).items():
                self._borrowed.setdefault(holder, {})[key] = addrs
        elif isinstance(v, Affinity):
            self._affinities.setdefault(v.node, {})[key] = v
        elif isinstance(v, model.IPPool):
            self.pools[key] = v
        elif isinstance(v, model.IPReservation):
            self.reservations[key] = v
        elif isinstance(v, model.IPAMConfig):
            self.ipam_config = v
        elif isinstance(v, model.Node):
            self.nodes[v.metadata.name] = v
        elif isinstance(v, model.BGPConfiguration):
            self.bgp_configs[v.metadata.name] = v
        elif isinstance(v, model.BGPPeer):
            self.peers[key] = v
        elif isinstance(v, model.Namespace):
            self.namespaces[v.metadata.name] = v
            self._namespace_keys[key] = v
        elif isinstance(v, model.StagedNetworkPolicy | model.StagedGlobalNetworkPolicy):
            self.staged_policies[key] = v  # before the twins: never in their indexes
        elif isinstance(v, model.NetworkPolicy):
            self.policies[key] = v
        elif isinstance(v, model.GlobalNetworkPolicy):
            self.global_policies[key] = v
        elif isinstance(v, model.FelixConfiguration):
            self.felix_configs[v.metadata.name] = v
        elif isinstance(v, model.HostEndpoint):
            self.host_endpoints[key] = v

    def _unindex(self, key: str, v: Any) -> None:
        if isinstance(v, _BGP_KINDS):
            self.bgp_generation += 1
        if isinstance(v, _POLICY_KINDS):
            for log in self._policy_logs:
                log.keys.add(key)
        if isinstance(v, model.WorkloadEndpoint):
            self.endpoints.pop(key, None)
            node = _workload_node(key)
            local = self._endpoints_by_node.get(node)
            if local is not None:
                local.pop(key, None)
                if not local:
                    del self._endpoints_by_node[node]
            for addr in _addresses(v):
                held = self._by_address.get(addr)
                if held == key:
                    del self._by_address[addr]
                elif isinstance(held, set):
                    held.discard(key)
                    if len(held) == 1:
                        self._by_address[addr] = held.pop()
        elif isinstance(v, BlockSummary):
            self.blocks.pop(key, None)
            self._room.pop(v.cidr, None)
            self._orphans.pop(v.cidr, None)
            _discard(self._blocks_by_node, v.node, key)
            for holder in _holders(v):
                borrowed = self._borrowed.get(holder)
                if borrowed is not None:
                    borrowed.pop(key, None)
                    if not borrowed:
                        del self._borrowed[holder]
        elif isinstance(v, Affinity):
            affs = self._affinities.get(v.node)
            if affs is not None:
                affs.pop(key, None)
                if not affs:
                    del self._affinities[v.node]
        elif isinstance(v, model.IPPool):
            self.pools.pop(key, None)
        elif isinstance(v, model.IPReservation):
            self.reservations.pop(key, None)
        elif isinstance(v, model.IPAMConfig):
            self.ipam_config = None
        elif isinstance(v, model.Node):
            self.nodes.pop(v.metadata.name, None)
        elif isinstance(v, model.BGPConfiguration):
            self.bgp_configs.pop(v.metadata.name, None)
        elif isinstance(v, model.BGPPeer):
            self.peers.pop(key, None)
        elif isinstance(v, model.Namespace):
            self.namespaces.pop(v.metadata.name, None)
            self._namespace_keys.pop(key, None)
        elif isinstance(v, model.StagedNetworkPolicy | model.StagedGlobalNetworkPolicy):
            self.staged_policies.pop(key, None)
        elif isinstance(v, model.NetworkPolicy):
            self.policies.pop(key, None)
        elif isinstance(v, model.GlobalNetworkPolicy):
            self.global_policies.pop(key, None)
        elif isinstance(v, model.FelixConfiguration):
            self.felix_configs.pop(v.metadata.name, None)
        elif isinstance(v, model.HostEndpoint):
            self.host_endpoints.pop(key, None)

    # -- reading -----------------------------------------------------------------------

    def felix_config(self) -> model.FelixConfigurationSpec:
        """The FelixConfiguration named ``default``, or the defaults when there is none."""
        fc = self.felix_configs.get("default")
        return fc.spec if fc is not None else model.FelixConfigurationSpec()

    def endpoints_of(self, node: str) -> Mapping[str, model.WorkloadEndpoint]:
        """The workload endpoints of ``node``, by key."""
        return self._endpoints_by_node.get(node, {})

    def endpoints_at(self, address: str) -> set[str]:
        """The keys of the endpoints holding ``address`` (a bare IP)."""
        held = self._by_address.get(address)
        if held is None:
            return set()
        return {held} if isinstance(held, str) else set(held)

    def addresses_in_use(self) -> AbstractSet[str]:
        """Every address some endpoint of any node holds (bare IPs): a live, read-only
        view of the index (O(1) to take, whatever the cluster's size)."""
        return self._by_address.keys()

    def block_room(self) -> Mapping[str, int]:
        """Free addresses by block cidr, every block: a live, read-only view (IPAM's
        borrowing reads only blocks with room instead of every block of the cluster)."""
        return self._room_view

    def orphan_blocks(self) -> AbstractSet[str]:
        """The cidrs of blocks no node has: a live, read-only view."""
        return self._orphans.keys()

    def confirmed_blocks(self, node: str) -> list[str]:
        """The CIDRs of ``node``'s confirmed affinities, sorted."""
        return sorted(a.cidr for a in self._affinities.get(node, {}).values()
                      if a.state == CONFIRMED)

    def blocks_of(self, node: str | None) -> list[BlockSummary]:
        """The blocks whose affinity is ``node`` (None: orphaned blocks)."""
        return [self.blocks[k] for k in sorted(self._blocks_by_node.get(node, ()))]

    def borrowed_addresses(self, node: str) -> set[str]:
        """Host prefixes (``/32``, ``/128``) of the addresses ``node`` holds in other
        nodes' blocks."""
        return {_host(a) for addrs in self._borrowed.get(node, {}).values() for a in addrs}

    def policy_items(self) -> Iterator[tuple[str, Any]]:
        """Every value the policy calculation reads, by key (nodes included)."""
        yield from self._namespace_keys.items()
        yield from self.policies.items()
        yield from self.global_policies.items()
        yield from self.staged_policies.items()
        yield from self.endpoints.items()
        yield from ((keys.node(name), n) for name, n in self.nodes.items())

    def policy_log(self) -> ChangeLog:
        """A new log of the policy inputs' changes, from now on (read `policy_items`
        once for the rest); it stops when the consumer drops it."""
        log = ChangeLog()
        self._policy_logs.add(log)
        return log


def _holders(b: BlockSummary) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for addr, holder in b.holders:
        if holder != b.node:
            out.setdefault(holder, []).append(addr)
    return {h: tuple(a) for h, a in out.items()}


def _discard(index: dict[Any, set[str]], at: Any, key: str) -> None:
    members = index.get(at)
    if members is not None:
        members.discard(key)
        if not members:
            del index[at]

