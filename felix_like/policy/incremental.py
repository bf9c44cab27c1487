"""Incremental policy calculation: the same :class:`~felix_like.policy.program.Ruleset` as
:func:`~felix_like.policy.ruleset.calculate`, recomputing only what a change touches (pure).

Owned here: a cache of the last calculation and the indexes that make a change cheap.

* **Change detection.** From the agent's `ClusterState` (`update_from`), the keys it
  changed since the last update: O(changed keys). From a plain mapping (`update`: tools,
  tests), a change is a key whose object is not the one seen last time (an equal object
  counts as unchanged), found by one pass over the keys.
* **Policy chains** are rendered once per policy object and direction
  (:func:`ruleset.policy_program`) and exist while some local endpoint uses them (a reference
  count per chain name). A set exists while some existing chain references it.
* **Set membership** is kept per set and per endpoint (which elements each endpoint put
  into which set). Sets filled from the same selector (one per IP family) form a group;
  an endpoint change evaluates each group once against the old and the new endpoint:
  O(distinct selectors) per pod add, never O(policies x endpoints). A set that comes into
  use is filled once: a NetworkPolicy peer's set from the endpoints of the namespaces it
  can select, any other set by evaluating each (namespace, labels) group of endpoints once.
* **Endpoint chains** of a local endpoint depend on the policies selecting it; each local
  endpoint keeps the keys of the policies selecting it. A policy change re-evaluates only
  the local endpoints of its namespace (a GlobalNetworkPolicy: every local endpoint), and
  only endpoints whose selection or selecting policy changed get their chains rebuilt, at
  the end of the update, once each.
* Unchanged chains and element sets keep their object identity across updates, so the
  backends' diff can skip them with an ``is`` check.

Invariant (a property test holds us to it): after every :meth:`IncrementalCalculation.update`
the returned ruleset equals ``calculate(inputs_from_state(state, node, hosts))``.

Failure mode: a bug here would leave a wrong ruleset in force until the next full
recalculation; :meth:`IncrementalCalculation.reset` (the manager calls it on every periodic
resync) forgets every cache, so the next update rebuilds from the complete state.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datastore import keys, model
from felix_like.owned import HOST_IF_PREFIX
from felix_like.policy.program import HOST_SETS, LocalEndpoint, Rule, Ruleset, SetSpec
from felix_like.policy.ruleset import (
    endpoint_chains,
    filler_matches,
    fixed_elements,
    gnp_chain_name,
    member_elements,
    np_chain_name,
    policy_program,
)
from felix_like.policy.selection import (
    PolicyInputs,
    ep_namespace,
    gnp_order_key,
    gnp_selects,
    namespace_labels,
    np_selects,
)
from felix_like.policy.staged import shadow
from felix_like.state import ChangeLog, ClusterState

log = logging.getLogger(__name__)

Chains = dict[str, tuple[Rule, ...]]


@dataclass
class _Local:
    """A local endpoint with a host interface of ours, and the policies selecting it."""

    key: str  # in the cluster state
    wep: model.WorkloadEndpoint
    name: str  # model.key_for(wep): what the ruleset calls it (normally the same)
    gnps: set[str] = field(default_factory=set)  # keys of the GNPs selecting it
    nps: set[str] = field(default_factory=set)  # keys of the NetworkPolicies selecting it
    chains: Chains = field(default_factory=dict)  # its own four chains
    endpoint: LocalEndpoint | None = None
    uses: tuple[str, ...] = ()  # policy chain names its chains jump to

    @property
    def iface(self) -> str:
        iface = self.wep.spec.host_interface
        assert iface is not None
        return iface


@dataclass
class _Set:
    spec: SetSpec
    filler: tuple[Any, ...]
    group: str  # sets filled from one selector (one per family) share a group
    refs: int = 0  # policy chains (and fixed users) referencing it
    counts: Counter[Any] = field(default_factory=Counter)  # element -> contributors
    members: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # wep key -> elems
    filled: bool = False


def _relevant(key: str, value: Any, node_key: str) -> bool:
    return isinstance(value, model.NetworkPolicy | model.GlobalNetworkPolicy
                      | model.Namespace | model.WorkloadEndpoint) or (
        key == node_key and isinstance(value, model.Node))


class IncrementalCalculation:
    """``update(state, host_addresses) -> Ruleset`` for one node, keeping what it can."""

    def __init__(self, node: str, log_allowed: bool = False) -> None:
        self.node = node
        self.log_allowed = log_allowed  # flow-log allowed connections too
        self.node_key = keys.node(node)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next update recalculates from the complete state."""
        self._full = True  # update_from reads every policy input, not only the changes
        self._log: ChangeLog | None = None
        self._log_of: ClusterState | None = None
        self.seen: dict[str, Any] = {}
        self.namespaces: dict[str, model.Namespace] = {}
        self.inputs = PolicyInputs(node=self.node, namespaces=self.namespaces,
                                   log_allowed=self.log_allowed)
        self.nps: dict[str, model.NetworkPolicy] = {}
        self.nps_by_ns: dict[str, dict[str, model.NetworkPolicy]] = {}
        self.gnps: dict[str, model.GlobalNetworkPolicy] = {}
        self.weps: dict[str, model.WorkloadEndpoint] = {}
        self.weps_by_ns: dict[str, set[str]] = {}
        self.groups: dict[tuple[str, Mapping[str, str]], set[str]] = {}  # (ns, labels)
        self.local: dict[str, _Local] = {}
        self.local_by_ns: dict[str, set[str]] = {}
        self.iface_owners: dict[str, set[str]] = {}
        self.wep_sets: dict[str, set[str]] = {}  # wep key -> sets it has elements in
        # policy chains: name -> (policy object, chain rules, set names), and their users
        self.programs: dict[str, tuple[Any, tuple[Rule, ...], tuple[str, ...]]] = {}
        self.chain_refs: Counter[str] = Counter()
        self.sets: dict[str, _Set] = {}
        self.set_groups: dict[str, dict[str, _Set]] = {}  # group -> family set name -> set
        self.hosts: tuple[str, ...] = ()
        # the published ruleset, kept up to date piece by piece
        self.chains: Chains = {}
        self.elements: dict[str, frozenset[Any]] = {}
        self.from_pod: dict[str, str] = {}
        self.to_pod: dict[str, str] = {}
        self.endpoints: dict[str, LocalEndpoint] = {}
        # work collected during one update
        self._dirty_locals: set[str] = set()
        self._dirty_ifaces: set[str] = set()
        self._dirty_sets: set[str] = set()
        self._released: set[str] = set()  # policy chains that lost a user
        # policy chains whose policy changed only in its rules: name -> (kind, policy, dir)
        self._rerender: dict[str, tuple[str, Any, str]] = {}
        self._set_candidates: set[str] = set()  # sets created or that lost a reference
        self._warned: set[str] = set()
        # Addresses that some endpoint (of any node) held and no longer does under its
        # key, since the caller last took them (``take_released``): flows to or from
        # them belong to nobody now.
        self.released: set[str] = set()
        for v in (4, 6):
            name = HOST_SETS[v]
            spec = SetSpec(name, v, "net", "this node's addresses")
            self.sets[name] = _Set(spec, ("nets", ()), name, refs=1, filled=True)
            self.elements[name] = frozenset()

    # --- the entry point ----------------------------------------------------------------

    def update(self, state: Mapping[str, Any], host_addresses: Iterable[str] = ()) -> Ruleset:
        """The ruleset of ``state`` (key -> decoded value), found by one pass over it."""
        self._full = False
        return self._update(self._diff(state), host_addresses)

    def update_from(self, state: ClusterState, host_addresses: Iterable[str] = ()) -> Ruleset:
        """The ruleset of ``state``, from the keys it changed since the last call (all of
        its policy inputs after `reset`, or from a state not seen before): O(changed)."""
        if self._full or self._log is None or self._log_of is not state:
            self._full = False
            self._log, self._log_of = state.policy_log(), state
            return self._update(self._diff(dict(state.policy_items())), host_addresses)
        changed_keys = self._log.take()
        changed: list[tuple[str, Any, Any]] = []
        for key in sorted(changed_keys):  # deterministic, as a pass over the keys is
            old = self.seen.get(key)
            new = state.values.get(key)
            if not _relevant(key, new, self.node_key):
                new = None
            if old is new:
                continue
            if old is not None and new is not None and old == new:
                self.seen[key] = new  # an equal object: remember it, change nothing
                continue
            changed.append((key, old, new))
        return self._update(changed, host_addresses)

    def _diff(self, state: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """(key, old, new) of every key of ``state`` that changed since the last update."""
        seen = self.seen
        node_key = self.node_key
        changed: list[tuple[str, Any, Any]] = []
        present = 0  # keys of ``seen`` still holding a relevant object
        for key, value in state.items():
            old = seen.get(key)
            if old is value:
                # The mirror holds None for every key the agent does not consume (IPAM
                # handles, ...): such a key is not in ``seen`` and must not count, or it
                # hides the deletion of a relevant one.
                if old is not None:
                    present += 1
                continue
            if not _relevant(key, value, node_key):
                continue
            if old is not None:
                present += 1
                if old == value:
                    seen[key] = value  # an equal object: remember it, change nothing
                    continue
            changed.append((key, old, value))
        if present < len(seen):
            changed.extend((k, v, None) for k, v in seen.items()
                           if not _relevant(k, state.get(k), node_key))
        return changed

    def _update(self, changed: list[tuple[str, Any, Any]],
                host_addresses: Iterable[str]) -> Ruleset:
        seen = self.seen
        # Order within a batch: namespaces (their labels decide set membership and GNP
        # selection), policies (so endpoints added below are evaluated against them
        # once), then endpoints. Each step keeps the indexes consistent on its own.
        order = {model.Namespace: 0, model.NetworkPolicy: 1, model.GlobalNetworkPolicy: 1,
                 model.StagedNetworkPolicy: 1, model.StagedGlobalNetworkPolicy: 1}
        changed.sort(key=lambda c: order.get(type(c[2] if c[2] is not None else c[1]), 2))
        for key, old, new in changed:
            if new is None:
                del seen[key]
            else:
                seen[key] = new
            obj = new if new is not None else old
            if isinstance(obj, model.Namespace):
                self._on_namespace(old, new)
            elif isinstance(obj, model.NetworkPolicy):
                self._on_np(key, old, new)
            elif isinstance(obj, model.GlobalNetworkPolicy):
                self._on_gnp(key, old, new)
            elif isinstance(obj, model.WorkloadEndpoint):
                self._on_wep(key, old, new)
        self._set_hosts(host_addresses)
        self._settle()
        return Ruleset(chains=dict(self.chains),
                       sets={n: s.spec for n, s in self.sets.items()},
                       elements=dict(self.elements), from_pod=dict(self.from_pod),
                       to_pod=dict(self.to_pod), endpoints=dict(self.endpoints),
                       host_addresses=self.hosts)

    def take_released(self) -> set[str]:
        """The addresses released since the last call (see ``released``)."""
        out, self.released = self.released, set()
        return out

    # --- changes ------------------------------------------------------------------------

    def _on_namespace(self, old: model.Namespace | None, new: model.Namespace | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        ns = obj.metadata.name
        members = list(self.weps_by_ns.get(ns, ()))
        for k in members:  # contributions under the old labels
            self._withdraw(k)
        if new is None:
            self.namespaces.pop(ns, None)
        else:
            self.namespaces[ns] = new
        for k in members:
            self._contribute(k, self.weps[k])
        for k in self.local_by_ns.get(ns, ()):  # GNP namespaceSelectors
            self._select_gnps(self.local[k])

    def _on_np(self, key: str, old: model.NetworkPolicy | None,
               new: model.NetworkPolicy | None) -> None:
        if (old is not None and new is not None
                and old.metadata.namespace == new.metadata.namespace
                and old.spec.pod_selector == new.spec.pod_selector
                and old.effective_policy_types == new.effective_policy_types):
            # Only its rules changed: the same endpoints jump to the same chain names.
            self.nps[key] = new
            self.nps_by_ns[new.metadata.namespace or "default"][key] = new
            for d in ("in", "out"):
                self._rerender[np_chain_name(new, d)] = ("np", new, d)
                twin = shadow(new)  # the staged pipeline's copy, where one uses it
                self._rerender[np_chain_name(twin, d)] = ("np", twin, d)
            return
        for pol, present in ((old, False), (new, True)):
            if pol is None:
                continue
            ns = pol.metadata.namespace or "default"
            if present:
                self.nps[key] = pol
                self.nps_by_ns.setdefault(ns, {})[key] = pol
            else:
                self.nps.pop(key, None)
                self.nps_by_ns.get(ns, {}).pop(key, None)
            for k in self.local_by_ns.get(ns, ()):
                loc = self.local[k]
                if present and np_selects(pol, loc.wep):
                    loc.nps.add(key)
                    self._dirty_locals.add(k)
                elif key in loc.nps:
                    loc.nps.discard(key)
                    self._dirty_locals.add(k)

    def _on_gnp(self, key: str, old: model.GlobalNetworkPolicy | None,
                new: model.GlobalNetworkPolicy | None) -> None:
        if (old is not None and new is not None
                and old.spec.selector == new.spec.selector
                and old.spec.namespace_selector == new.spec.namespace_selector
                and old.spec.effective_types == new.spec.effective_types
                and gnp_order_key(old) == gnp_order_key(new)):
            self.gnps[key] = new  # only its rules changed (see _on_np)
            for d in ("in", "out"):
                self._rerender[gnp_chain_name(new, d)] = ("gnp", new, d)
            return
        if new is None:
            self.gnps.pop(key, None)
        else:
            self.gnps[key] = new
        for k, loc in self.local.items():
            if new is not None and gnp_selects(self.inputs, new, loc.wep):
                loc.gnps.add(key)
                self._dirty_locals.add(k)
            elif key in loc.gnps:
                loc.gnps.discard(key)
                self._dirty_locals.add(k)

    def _on_wep(self, key: str, old: model.WorkloadEndpoint | None,
                new: model.WorkloadEndpoint | None) -> None:
        # Set membership depends on namespace, labels, addresses and ports only.
        same_members = (old is not None and new is not None
                        and ep_namespace(old) == ep_namespace(new)
                        and old.spec.labels == new.spec.labels
                        and old.spec.ip_networks == new.spec.ip_networks
                        and old.spec.ports == new.spec.ports)
        previous: _Local | None = None
        if old is not None:
            kept = set() if new is None else {str(n) for n in new.spec.ip_networks}
            self.released.update(str(n) for n in old.spec.ip_networks if str(n) not in kept)
            if not same_members:
                self._withdraw(key)
            ns = ep_namespace(old)
            self.weps_by_ns.get(ns, set()).discard(key)
            group = self.groups.get((ns, old.spec.labels))
            if group is not None:
                group.discard(key)
                if not group:
                    del self.groups[(ns, old.spec.labels)]
            del self.weps[key]
            if key in self.local:
                loc = previous = self.local.pop(key)
                self.local_by_ns.get(ep_namespace(loc.wep), set()).discard(key)
                owners = self.iface_owners.get(loc.iface, set())
                owners.discard(key)
                if not owners:
                    self.iface_owners.pop(loc.iface, None)
                self._dirty_ifaces.add(loc.iface)
                self._release(loc.uses)
                self._dirty_locals.discard(key)
        if new is None:
            return
        ns = ep_namespace(new)
        self.weps[key] = new
        self.weps_by_ns.setdefault(ns, set()).add(key)
        self.groups.setdefault((ns, new.spec.labels), set()).add(key)
        if not same_members:
            self._contribute(key, new)
        iface = new.spec.host_interface
        if new.spec.node != self.node or not iface:
            return
        if not iface.startswith(HOST_IF_PREFIX):
            if key not in self._warned:
                self._warned.add(key)
                log.warning("endpoint %s: host interface %s is not ours (%s*): not policed",
                            key, iface, HOST_IF_PREFIX)
            return
        loc = _Local(key, new, model.key_for(new))
        if previous is not None and previous.iface == iface:
            loc.chains = previous.chains  # unchanged chains keep their identity
        self.local[key] = loc
        self.local_by_ns.setdefault(ns, set()).add(key)
        self.iface_owners.setdefault(iface, set()).add(key)
        self._dirty_ifaces.add(iface)
        loc.nps = {k for k, p in self.nps_by_ns.get(ns, {}).items() if np_selects(p, new)}
        self._select_gnps(loc)

    def _select_gnps(self, loc: _Local) -> None:
        loc.gnps = {k for k, g in self.gnps.items() if gnp_selects(self.inputs, g, loc.wep)}
        self._dirty_locals.add(loc.key)

    def _set_hosts(self, host_addresses: Iterable[str]) -> None:
        hosts = {ipaddress.ip_address(a.split("/")[0]) for a in host_addresses}
        node = self.seen.get(self.node_key)
        if isinstance(node, model.Node) and node.spec.bgp:
            hosts.add(node.spec.bgp.ipv4_address.ip)
            if node.spec.bgp.ipv6_address is not None:
                hosts.add(node.spec.bgp.ipv6_address.ip)
        text = tuple(sorted(str(a) for a in hosts))
        if text == self.hosts:
            return
        self.hosts = text
        for v in (4, 6):
            self.elements[HOST_SETS[v]] = frozenset(
                f"{a}/{32 if v == 4 else 128}" for a in text
                if ipaddress.ip_address(a).version == v)

    # --- set membership -----------------------------------------------------------------

    def _withdraw(self, key: str) -> None:
        """Take every element ``key``'s endpoint put into a set back out."""
        for name in self.wep_sets.pop(key, ()):
            s = self.sets[name]
            for e in s.members.pop(key, ()):
                s.counts[e] -= 1
                if not s.counts[e]:
                    del s.counts[e]
            self._dirty_sets.add(name)

    def _contribute(self, key: str, wep: model.WorkloadEndpoint) -> None:
        """Evaluate each selector group once against ``wep`` (sets not filled yet are
        filled from every endpoint when they settle)."""
        for group in self.set_groups.values():
            hit: bool | None = None
            for name, s in group.items():
                if not s.filled:
                    continue
                if hit is None:
                    hit = filler_matches(self.inputs, s.filler, wep)
                if not hit:
                    break
                self._add_member(name, s, key, wep)

    def _add_member(self, name: str, s: _Set, key: str, wep: model.WorkloadEndpoint) -> None:
        elems = member_elements(s.filler, s.spec.version, wep)
        if not elems:
            return
        s.members[key] = elems
        for e in elems:
            s.counts[e] += 1
        self.wep_sets.setdefault(key, set()).add(name)
        self._dirty_sets.add(name)

    def _fill(self, name: str, s: _Set) -> None:
        """A set came into use: fill it from its candidates (`_candidates`), else from
        every endpoint (one evaluation per group)."""
        s.filled = True
        self._dirty_sets.add(name)
        if s.filler[0] == "nets":
            s.counts.update(fixed_elements(s.filler))
            return
        candidates = self._candidates(s.filler)
        if candidates is not None:
            for k in candidates:
                wep = self.weps[k]
                if filler_matches(self.inputs, s.filler, wep):
                    self._add_member(name, s, k, wep)
            return
        for members in self.groups.values():
            first = self.weps[next(iter(members))]
            if s.filler[0] != "port" and not filler_matches(self.inputs, s.filler, first):
                continue
            for k in members:
                self._add_member(name, s, k, self.weps[k])

    def _candidates(self, filler: tuple[Any, ...]) -> list[str] | None:
        """The endpoints that can match a NetworkPolicy peer's filler: those of the
        namespaces it can select (the policy's own, or those whose labels its namespace
        selector matches); None for the other fillers (every group is evaluated). Filling
        a set then reads a few namespaces, not the cluster: ~50,000 (namespace, labels)
        groups at 1,000 nodes x 50 pods."""
        if filler[0] != "k8s":
            return None
        policy_ns: str = filler[1]
        nsel = filler[2].namespace_selector
        if nsel is None:
            return list(self.weps_by_ns.get(policy_ns, ()))
        return [k for ns, members in self.weps_by_ns.items()
                if nsel.matches(namespace_labels(self.inputs, ns)) for k in members]

    # --- chains and their references ----------------------------------------------------

    def _use(self, kind: str, policy: Any, direction: str) -> str:
        """A local endpoint's chain jumps to this policy chain: count it, render it if new."""
        name = np_chain_name(policy, direction) if kind == "np" else gnp_chain_name(
            policy, direction)
        self.chain_refs[name] += 1
        prog = self.programs.get(name)
        if prog is None or prog[0] is not policy:
            self._render(name, kind, policy, direction)
        return name

    def _render(self, name: str, kind: str, policy: Any, direction: str) -> None:
        _, rules, sets = policy_program(kind, policy, direction, self.log_allowed)
        names = tuple(dict.fromkeys(s[0] for s in sets))
        for set_name, spec, filler in sets:
            if set_name not in self.sets:
                group = ("port " if filler[0] == "port" else "") + spec.what
                s = _Set(spec, filler, group)
                self.sets[set_name] = s
                self._set_candidates.add(set_name)
                if filler[0] != "nets":  # fixed elements: no endpoint contributes
                    self.set_groups.setdefault(group, {})[set_name] = s
        for n in names:
            self.sets[n].refs += 1
        old = self.programs.get(name)
        if old is not None:
            self._unref_sets(old[2])
            if old[1] == rules:
                rules = old[1]  # keep the object: the backends skip it by identity
        self.programs[name] = (policy, rules, names)
        self.chains[name] = rules

    def _release(self, uses: Iterable[str]) -> None:
        for name in uses:
            self.chain_refs[name] -= 1
            self._released.add(name)

    def _unref_sets(self, names: Iterable[str]) -> None:
        for n in names:
            self.sets[n].refs -= 1
            self._set_candidates.add(n)

    def _rebuild(self, loc: _Local) -> None:
        uses: list[str] = []

        def gnp_chain(g: model.GlobalNetworkPolicy, direction: str) -> str:
            uses.append(self._use("gnp", g, direction))
            return uses[-1]

        def np_chain(p: model.NetworkPolicy, direction: str) -> str:
            uses.append(self._use("np", p, direction))
            return uses[-1]

        gnps = sorted((self.gnps[k] for k in loc.gnps), key=gnp_order_key)
        nps = sorted((self.nps[k] for k in loc.nps), key=lambda p: p.metadata.name)
        chains, endpoint = endpoint_chains(loc.name, loc.wep, gnps, nps, gnp_chain, np_chain)
        self._release(loc.uses)
        loc.uses = tuple(uses)
        for name, rules in chains.items():
            before = loc.chains.get(name)
            if before is not None and before == rules:
                chains[name] = before
        if chains != loc.chains or endpoint != loc.endpoint:
            self._dirty_ifaces.add(loc.iface)
        loc.chains, loc.endpoint = chains, endpoint

    def _publish(self, iface: str) -> None:
        """The chains of ``iface`` are those of its owner (the greatest key wins, as in
        the full calculation, which walks endpoints in key order)."""
        for prefix in ("fo-", "fon-", "fi-", "fin-", "so-", "son-", "si-", "sin-"):
            self.chains.pop(prefix + iface, None)  # staged chains: felix_like.policy.staged
        owners = self.iface_owners.get(iface)
        if not owners:
            self.from_pod.pop(iface, None)
            self.to_pod.pop(iface, None)
            self.endpoints.pop(iface, None)
            return
        loc = max((self.local[k] for k in owners), key=lambda loc: loc.name)
        assert loc.endpoint is not None
        self.chains.update(loc.chains)
        self.from_pod[iface] = f"fo-{iface}"
        self.to_pod[iface] = f"fi-{iface}"
        self.endpoints[iface] = loc.endpoint

    def _settle(self) -> None:
        """Rebuild dirty endpoints, drop unused chains and sets, fill new sets, publish."""
        for k in sorted(self._dirty_locals):
            loc = self.local.get(k)
            if loc is not None:
                self._rebuild(loc)
        self._dirty_locals.clear()
        for name, (kind, policy, direction) in self._rerender.items():
            prog = self.programs.get(name)
            if prog is not None and prog[0] is not policy and self.chain_refs[name] > 0:
                self._render(name, kind, policy, direction)
        self._rerender.clear()
        # Users of a policy chain are exactly the endpoints its policy selects, and all
        # of them were rebuilt above when the policy changed: a chain nobody uses goes.
        for name in self._released:
            if self.chain_refs[name] <= 0 and name in self.programs:
                del self.chain_refs[name]
                self._unref_sets(self.programs.pop(name)[2])
                self.chains.pop(name, None)
        self._released.clear()
        for name in self._set_candidates:
            s = self.sets[name]
            if s.refs > 0:
                if not s.filled:
                    self._fill(name, s)
                continue
            for k in s.members:
                self.wep_sets[k].discard(name)
            del self.sets[name]
            group = self.set_groups.get(s.group, {})
            group.pop(name, None)
            if not group:
                self.set_groups.pop(s.group, None)
            self.elements.pop(name, None)
            self._dirty_sets.discard(name)
        self._set_candidates.clear()
        for name in self._dirty_sets:
            self.elements[name] = frozenset(self.sets[name].counts)
        self._dirty_sets.clear()
        for iface in self._dirty_ifaces:
            self._publish(iface)
        self._dirty_ifaces.clear()
