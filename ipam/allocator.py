"""The block allocator of one node: hands out addresses, borrows, releases.

`IpamClient` is the facade the agent, the CNI handler and ``fabricctl`` use. It owns the
writes of allocations and releases (`IpamClient._commit`, one transaction each) and the
retries around them; the rooms behind it are:

* `ipam.counted`: the etcd requests, counted (`IpamStats`);
* `ipam.blockcache`: this node's cache of its confirmed blocks (``cidr -> KV``), of other
  blocks it has seen and of the handles it wrote;
* `ipam.planner`: which addresses an allocation takes, no I/O;
* `ipam.claims`: claiming blocks (Calico's three resumable steps), also ahead of need;
* `ipam.teardown`: what a removed node or a deleted pool gives back.

etcd is the truth; every write compares the cached ``mod_revision`` (or
``create_revision == 0``), and a lost compare refreshes the cache from the ``Get``s in the
same transaction's failure branch, so a conflict costs no extra read.

Common case of `IpamClient.auto_assign`: ONE etcd transaction - compare the block's cached
revision and the handle's absence, put the block and the handle. Calico needs two writes
(block, then handle); a crash between them leaks. Here the two cannot disagree.

Races, by name:

* two processes of one node allocate from the same block: one compare wins, the loser's
  failure branch returns the new block, it re-plans (bounded by ``max_attempts``);
* a timeout on a transaction that committed: the retry finds the handle already present
  and returns its addresses (`auto_assign` is idempotent per handle), so nothing leaks;
* a stale release (slow CNI DEL after the address was re-assigned): the handle record
  carries each address's sequence number and the block refuses a release whose sequence
  no longer matches.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import netaddr

from datastore import keys
from datastore.client import KV, Compare, Datastore, Delete, Get, Op, Put, UnavailableError
from ipam import crashpoints
from ipam.affinity import CONFIRMED, parse_affinity
from ipam.block import AllocationAttrs, affinity_of, block_cidr_for
from ipam.blockcache import BlockCache
from ipam.claims import BlockClaims, overlaps_existing
from ipam.counted import CountedStore, IpamStats, OnCommit
from ipam.inputs import EtcdInputs, InputsProvider
from ipam.planner import BlockPlanner, Plan
from ipam.teardown import NodeRelease, delete_pool, finish_block_release, release_node
from ipam.values import (
    AddressInUseError,
    AddressNotInPoolError,
    AddressReservedError,
    Assignment,
    HandleEntry,
    HandleRecord,
    IpamConflictError,
    IpamError,
    IpamInputs,
    IpamUnavailableError,
    PoolExhaustedError,
    PoolInUseError,
    PoolSpec,
    pools_text,
)

log = logging.getLogger(__name__)

# Blocks read at a time when borrowing from the blocks the inputs say have room.
_BORROW_BATCH = 4

# How long an allocation or a release keeps retrying lost block CAS races (beyond
# max_attempts).
CONFLICT_BUDGET = 10.0

T = TypeVar("T")


class IpamClient:
    """The allocator of one node. Not thread-safe; one per asyncio program and node."""

    def __init__(self, ds: Datastore, node: str, *, now: Callable[[], float] = time.time,
                 inputs: InputsProvider | None = None, max_attempts: int = 25,
                 unavailable_budget: float = 20.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 claim_ahead: bool = True, on_commit: OnCommit | None = None) -> None:
        if not node:
            raise ValueError("node name is empty")
        self._ds = ds
        self.node = node
        self._now = now
        # ``inputs``: the provider of the caller's process (the agent's cluster state);
        # without one, this client reads etcd itself.
        self._etcd_inputs = EtcdInputs(ds, node) if inputs is None else None
        self._inputs: InputsProvider = inputs or self._etcd_inputs  # type: ignore[assignment]
        self._max_attempts = max_attempts
        self._unavailable_budget = unavailable_budget
        self._sleep = sleep
        self.stats = IpamStats()
        # ``on_commit``: told of each committed transaction (blocks, affinities, handles)
        self._store = CountedStore(ds, self.stats, on_commit)
        self._cache = BlockCache(node)
        self._planner = BlockPlanner(self._cache, now)
        self._claims = BlockClaims(self._store, self._cache, self._planner, node, now=now,
                                   stats=self.stats, claim_ahead=claim_ahead)

    @property
    def affinity(self) -> str:
        return affinity_of(self.node)

    @property
    def inputs(self) -> InputsProvider:
        """The one provider of pools and IPAM configuration this client decides with."""
        return self._inputs

    async def current_inputs(self) -> IpamInputs:
        """The inputs as of now (CNI STATUS answers for this moment): the provider's,
        read again first when this client reads etcd itself."""
        if self._etcd_inputs is not None:
            self._etcd_inputs.invalidate()
        return await self._inputs()

    @property
    def config_requests(self) -> int:
        """etcd requests made to read configuration (pools, IPAMConfig, reservations)."""
        return self._etcd_inputs.requests if self._etcd_inputs is not None else 0

    def invalidate(self) -> None:
        """Forget cached configuration and blocks (the next call re-reads them)."""
        if self._etcd_inputs is not None:
            self._etcd_inputs.invalidate()
        self._cache.forget()

    async def aclose(self) -> None:
        """Wait for a claim ahead still in flight (call before closing the datastore)."""
        await self._claims.aclose()

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn``; on `UnavailableError` retry with backoff for ``unavailable_budget`` s.

        Every IPAM operation is safe to re-run after an ambiguous failure (see module doc).
        """
        deadline = time.monotonic() + self._unavailable_budget
        delay = 0.05
        while True:
            try:
                return await fn()
            except UnavailableError as e:
                if time.monotonic() + delay > deadline:
                    raise IpamUnavailableError(
                        f"{what}: etcd unavailable for {self._unavailable_budget:.0f}s: {e}"
                    ) from e
                self.stats.unavailable_retries += 1
                log.info("ipam: %s: etcd unavailable, retrying in %.2fs: %s", what, delay, e)
                await self._sleep(delay)
                delay = min(delay * 2, 1.0)

    def _assignments(self, handle: str, entries: Iterable[HandleEntry]) -> list[Assignment]:
        affine = self._cache.affine or {}
        return [Assignment(address=e.address, prefix_len=int(e.block.rpartition("/")[2]),
                           block=e.block, borrowed=e.block not in affine, seq=e.seq,
                           handle=handle) for e in entries]

    async def _rounds(self) -> AsyncIterator[int]:
        """The attempt numbers of one compare-and-swap loop over blocks.

        Bounded by count AND time: a block is one CAS unit, so a second client writing
        the same block in a tight loop (two processes of one node, a borrower, a release
        beside allocations) can win many rounds in a row. Both sides re-read and retry at
        once, so they stay in lockstep; a short jittered pause before every round after
        the first breaks it, and the loser keeps trying for ``CONFLICT_BUDGET`` seconds.
        """
        deadline = time.monotonic() + CONFLICT_BUDGET
        attempt = 0
        while attempt < self._max_attempts or time.monotonic() < deadline:
            if attempt:
                await self._sleep(random.uniform(0, min(0.02, 0.001 * 2 ** min(attempt, 8))))
            attempt += 1
            yield attempt

    async def _commit(self, plan: Plan, handle: str, handle_kv: KV | None,
                      record: HandleRecord | None, *, fills: bool = False
                      ) -> tuple[bool, KV | None]:
        """One transaction: every planned block and the handle record (None = delete).

        Returns (committed, the handle's KV now). On a lost compare, caches are refreshed
        from the failure branch's Gets. ``fills``: the plan only assigned addresses.
        """
        hkey = keys.ipam_handle(handle)
        cmps: list[Compare] = []
        succ: list[Op] = []
        fail: list[Op] = []
        values: dict[str, tuple[str, bytes]] = {}
        for cidr, (kv, blk) in plan.blocks.items():
            bkey = keys.ipam_block(cidr)
            cmps.append(Compare(bkey, "mod", "==", kv.mod_revision if kv else 0))
            value = blk.to_json()
            values[cidr] = (bkey, value)
            succ.append(Put(bkey, value))
            fail.append(Get(bkey))
        if handle_kv is None:
            cmps.append(Compare(hkey, "create", "==", 0))
        else:
            cmps.append(Compare(hkey, "mod", "==", handle_kv.mod_revision))
        hvalue = record.to_json() if record is not None and record.entries else None
        succ.append(Put(hkey, hvalue) if hvalue is not None else Delete(hkey))
        fail.append(Get(hkey))
        res = await self._store.txn(cmps, succ, fail)
        if res.succeeded:
            self.stats.block_writes += len(values)
            self.stats.block_bytes += sum(len(v) for _, v in values.values())
            for cidr, (kv, blk) in plan.blocks.items():
                bkey, value = values[cidr]
                new = KV(bkey, value, kv.create_revision if kv else res.revision,
                         res.revision, (kv.version if kv else 0) + 1)
                self._cache.wrote(cidr, new, blk, fills=fills)
            new_h = None if hvalue is None else KV(
                hkey, hvalue, handle_kv.create_revision if handle_kv else res.revision,
                res.revision, (handle_kv.version if handle_kv else 0) + 1)
            self._cache.remember_handle(handle, new_h)
            return True, new_h
        self.stats.conflicts += 1
        for cidr, got in zip(plan.blocks, res.gets[:-1], strict=True):
            self._cache.remember(got, cidr)
        self._cache.remember_handle(handle, res.gets[-1])
        return False, res.gets[-1]

    # -- public API: assignment --------------------------------------------------------

    async def auto_assign(self, handle: str, *, namespace: str, pod: str, num_v4: int = 1,
                          num_v6: int = 0, attrs: Mapping[str, str] | None = None
                          ) -> list[Assignment]:
        """Addresses for ``handle``: ``num_v4`` IPv4 and ``num_v6`` IPv6.

        Idempotent per handle: if the handle already holds addresses, they count toward the
        request and are returned (a CNI ADD retried after a timeout gets the same IPs).
        """
        if not handle:
            raise ValueError("handle is empty")
        if num_v4 < 0 or num_v6 < 0 or num_v4 + num_v6 == 0:
            raise ValueError("ask for at least one address")
        self.stats.assign_calls += 1
        return await self._retrying(
            f"assigning addresses to {handle}",
            lambda: self._auto_assign(handle, namespace, pod, {4: num_v4, 6: num_v6},
                                      dict(attrs or {})))

    async def _auto_assign(self, handle: str, namespace: str, pod: str, want: dict[int, int],
                           extra: dict[str, str]) -> list[Assignment]:
        handle_kv = self._cache.handles.get(handle)
        verified = False  # handle_kv read from etcd by this call
        _attempt = 0
        async for _attempt in self._rounds():
            inputs = await self._inputs()
            affine = await self._claims.ensure_affine(inputs)
            record = HandleRecord.from_json(handle_kv.value) if handle_kv else \
                HandleRecord(handle, ())
            have = {4: 0, 6: 0}
            for e in record.entries:
                have[6 if ":" in e.address else 4] += 1
            attrs = AllocationAttrs(handle=handle, namespace=namespace, pod=pod,
                                    node=self.node, time=self._now(), extra=extra)
            plan = Plan()
            borrowed = 0
            for version in (4, 6):
                n = want[version] - have[version]
                if n <= 0:
                    continue
                n -= self._planner.take_affine(plan, affine, n, attrs, inputs, version)
                why: list[str] = []
                claims = 0
                while n > 0 and claims < 8 and await self._claims.claim_one(
                        inputs, version, plan, why):
                    claims += 1
                    affine = self._cache.affine or {}
                    n -= self._planner.take_affine(plan, affine, n, attrs, inputs, version)
                if n > 0 and not inputs.config.strict_affinity:
                    got = await self._borrow(plan, n, attrs, inputs, version)
                    borrowed += got
                    n -= got
                if n > 0:
                    raise self._exhausted(inputs, version, why)
            if not plan.blocks:  # already satisfied, by the record as this client knows it
                if handle_kv is not None and not verified:
                    # Another client (fabricctl ipam release, check --fix) may have freed
                    # its addresses since: read it once before answering from it.
                    verified = True
                    fresh = await self._store.get(keys.ipam_handle(handle))
                    if fresh is None or fresh.mod_revision != handle_kv.mod_revision:
                        self._cache.remember_handle(handle, fresh)
                        handle_kv = fresh
                        continue
                return self._assignments(handle, record.entries)
            new_record = HandleRecord(handle, record.entries + tuple(plan.entries))
            crashpoints.reached("before_alloc_txn")
            ok, handle_kv = await self._commit(plan, handle, handle_kv, new_record,
                                               fills=True)
            if ok:
                crashpoints.reached("after_alloc_txn")
                self.stats.allocations += len(plan.entries)
                self.stats.borrowed += borrowed
                self._claims.maybe_claim_ahead(inputs, (v for v in (4, 6) if want[v]))
                return self._assignments(handle, new_record.entries)
        raise IpamConflictError(
            f"assigning addresses to {handle}: blocks kept changing under us "
            f"({_attempt} attempts over {CONFLICT_BUDGET:.0f} s)")

    async def _borrow(self, plan: Plan, n: int, attrs: AllocationAttrs, inputs: IpamInputs,
                      version: int) -> int:
        """Take up to ``n`` addresses from other nodes' blocks into ``plan``; how many.

        Where the inputs know each block's room (the agent's cluster state), the blocks
        with room are read a few at a time, in order, until ``n`` are found: a borrowing
        ADD in a cluster of 1,000 nodes reads a few blocks, not all of them (megabytes).
        Their view can lag etcd's (or a block has room only in addresses reserved or in
        their cool-down): what they do not find, every block, read now, is searched for.
        """
        taken = 0
        if inputs.room is not None:
            order = self._planner.room_order(inputs.room, inputs, version)
            for i in range(0, len(order), _BORROW_BATCH):
                kvs = await self._block_kvs(order[i:i + _BORROW_BATCH])
                taken += self._planner.take(plan, self._borrowable(kvs.items()), n - taken,
                                            attrs, inputs)
                if taken >= n:
                    return taken
        others = await self._claims.all_blocks()
        return taken + self._planner.take(
            plan, self._borrowable(self._planner.eligible(others, inputs, version)),
            n - taken, attrs, inputs)

    def _borrowable(self, blocks: Iterable[tuple[str, KV | None]]) -> list[tuple[str, KV]]:
        """Other nodes' blocks (never one of ours, confirmed or a pending claim)."""
        mine = self._cache.affine or {}
        return [(c, kv) for c, kv in blocks
                if kv is not None and c not in mine
                and (b := self._cache.block(c, kv)) is not None and b.affinity != self.affinity]

    def _exhausted(self, inputs: IpamInputs, version: int, why: list[str]) -> IpamError:
        pools = inputs.usable_pools(version)
        reasons = "; ".join(dict.fromkeys(why)) or "the node's blocks are full"
        if inputs.config.strict_affinity:
            tail = "strictAffinity is set, so addresses are not borrowed from other nodes' blocks"
        else:
            tail = "no block of another node has a free address to borrow"
        return PoolExhaustedError(
            f"no free IPv{version} address for node {self.node} in pools "
            f"[{pools_text(pools)}]: {reasons}; {tail}")

    async def assign_ip(self, address: str, handle: str, *, namespace: str, pod: str,
                        attrs: Mapping[str, str] | None = None) -> Assignment:
        """Assign exactly ``address`` to ``handle`` (a requested IP), or say why not."""
        try:
            ip = netaddr.IPAddress(address)
        except (netaddr.AddrFormatError, ValueError) as e:
            raise AddressNotInPoolError(f"{address} is not an IP address") from e
        self.stats.assign_calls += 1
        return await self._retrying(
            f"assigning {address} to {handle}",
            lambda: self._assign_ip(str(ip), handle, namespace, pod, dict(attrs or {})))

    async def _assign_ip(self, address: str, handle: str, namespace: str, pod: str,
                         extra: dict[str, str]) -> Assignment:
        handle_kv = self._cache.handles.get(handle)
        _attempt = 0
        async for _attempt in self._rounds():
            inputs = await self._inputs()
            pool = inputs.pool_of(address)
            if pool is None or pool.disabled:
                enabled = [p for p in inputs.pools if not p.disabled]
                raise AddressNotInPoolError(
                    f"{address} is outside every enabled IP pool "
                    f"(enabled: {pools_text(enabled)})")
            if inputs.is_reserved(address):
                raise AddressReservedError(f"{address} is reserved by an IPReservation")
            cidr = block_cidr_for(address, pool.cidr, pool.block_size)
            affine = await self._claims.ensure_affine(inputs)
            kv = affine.get(cidr) or self._cache.others.get(cidr)
            if kv is None:
                kv = await self._store.get(keys.ipam_block(cidr))
                if kv is None:
                    # A block of another size may hold it (the pool's blockSize changed
                    # while blocks existed): use that one, never one overlapping it.
                    existing = set(await self._claims.block_cidrs())
                    ip = netaddr.IPAddress(address)
                    holder = next((c for c in existing
                                   if c != cidr and ip in netaddr.IPNetwork(c)), None)
                    if holder is None:
                        if overlaps_existing(existing, pool.block_size, pool.version)(cidr):
                            raise IpamError(
                                f"{address}: its block {cidr} (blockSize "
                                f"{pool.block_size} of pool {pool.name}) would overlap "
                                f"blocks of another size; request an address inside one")
                        # Nobody owns this block yet: claim it for this node.
                        await self._claims.claim_serialised(cidr)
                        continue
                    cidr, kv = holder, await self._store.get(keys.ipam_block(holder))
                    if kv is None:
                        continue  # deleted meanwhile: decide again
                self._cache.remember(kv, cidr)
            shared = self._cache.block(cidr, kv)
            if shared is None:
                raise IpamError(f"{address}: block {cidr} is corrupt (run ipam check)")
            blk = shared.copy()
            o = blk.ordinal(address)
            held = blk.attrs(o)
            if held is None and address in inputs.in_use:
                raise AddressInUseError(
                    f"{address} is in use by a workload endpoint (free in block {cidr}: "
                    f"released while its pod runs?)")
            if held is not None:
                if held.handle == handle:
                    return self._assignments(handle, [HandleEntry(
                        cidr, o, blk.sequence[o], address)])[0]
                raise AddressInUseError(
                    f"{address} is in use (handle {held.handle}, pod "
                    f"{held.namespace}/{held.pod} on node {held.node})")
            record = HandleRecord.from_json(handle_kv.value) if handle_kv else \
                HandleRecord(handle, ())
            blk.assign_ordinal(o, AllocationAttrs(handle, namespace, pod, self.node,
                                                  self._now(), extra))
            entry = HandleEntry(cidr, o, blk.sequence[o], address)
            plan = Plan({cidr: (kv, blk)}, [entry])
            crashpoints.reached("before_alloc_txn")
            ok, handle_kv = await self._commit(plan, handle, handle_kv,
                                               HandleRecord(handle, (*record.entries, entry)),
                                               fills=True)
            if ok:
                crashpoints.reached("after_alloc_txn")
                self.stats.allocations += 1
                return self._assignments(handle, [entry])[0]
        raise IpamConflictError(f"assigning {address}: block kept changing "
                                f"({_attempt} attempts over {CONFLICT_BUDGET:.0f} s)")

    # -- public API: release -----------------------------------------------------------

    async def _block_kvs(self, cidrs: Iterable[str]) -> dict[str, KV | None]:
        affine = self._cache.affine or {}
        out: dict[str, KV | None] = {}
        missing = []
        for c in cidrs:
            kv = affine.get(c) or self._cache.others.get(c)
            if kv is None:
                missing.append(c)
            else:
                out[c] = kv
        got = await asyncio.gather(*(self._store.get(keys.ipam_block(c)) for c in missing))
        for c, kv in zip(missing, got, strict=True):
            out[c] = kv
            if kv is not None:
                self._cache.remember(kv, c)
        return out

    async def release_by_handle(self, handle: str) -> int:
        """Release every address of ``handle``; how many were freed (unknown handle: 0)."""
        return await self._retrying(f"releasing {handle}", lambda: self._release_handle(handle))

    async def _release_handle(self, handle: str) -> int:
        hkv = self._cache.handles.get(handle) or await self._store.get(keys.ipam_handle(handle))
        _attempt = 0
        async for _attempt in self._rounds():
            if hkv is None:
                return 0
            try:
                record = HandleRecord.from_json(hkv.value)
            except ValueError:
                record = HandleRecord(handle, ())
            kvs = await self._block_kvs(record.blocks())
            plan = Plan()
            freed = 0
            for e in record.entries:
                kv = kvs.get(e.block)
                if kv is None:
                    continue
                if e.block not in plan.blocks:
                    shared = self._cache.block(e.block, kv)
                    if shared is None:
                        continue
                    plan.blocks[e.block] = (kv, shared.copy())
                if plan.blocks[e.block][1].release(e.ordinal, handle=handle, seq=e.seq,
                                                   now=self._now()):
                    freed += 1
            ok, hkv = await self._commit(plan, handle, hkv, None)
            if ok:
                crashpoints.reached("after_release_txn")
                self.stats.releases += freed
                return freed
        raise IpamConflictError(f"releasing {handle}: blocks kept changing "
                                f"({_attempt} attempts over {CONFLICT_BUDGET:.0f} s)")

    async def release_ips(self, addresses: Iterable[str], *,
                          seqs: Mapping[str, int] | None = None) -> list[str]:
        """Release addresses whoever holds them; the ones actually freed are returned.

        With ``seqs`` an address is only freed while its sequence number still matches.
        """
        addrs = [str(netaddr.IPAddress(a)) for a in addresses]
        seqs = {str(netaddr.IPAddress(k)): v for k, v in (seqs or {}).items()}
        out: list[str] = []
        for a in addrs:
            if await self._release_one(a, seqs.get(a)):
                out.append(a)
        return out

    async def _release_one(self, address: str, seq: int | None) -> bool:
        return await self._retrying(f"releasing {address}",
                                    lambda: self._release_ip(address, seq))

    async def _find_block(self, address: str) -> str | None:
        inputs = await self._inputs()
        pool = inputs.pool_of(address)
        if pool is not None:
            cidr = block_cidr_for(address, pool.cidr, pool.block_size)
            kvs = await self._block_kvs([cidr])
            if kvs.get(cidr) is not None:
                return cidr
        ip = netaddr.IPAddress(address)
        for cidr in await self._claims.all_blocks():
            if ip in netaddr.IPNetwork(cidr):
                return cidr
        return None

    async def _release_ip(self, address: str, seq: int | None) -> bool:
        cidr = await self._find_block(address)
        if cidr is None:
            return False
        _attempt = 0
        async for _attempt in self._rounds():
            kv = (await self._block_kvs([cidr]))[cidr]
            shared = None if kv is None else self._cache.block(cidr, kv)
            if kv is None or shared is None:
                return False
            blk = shared.copy()
            o = blk.ordinal(address)
            held = blk.attrs(o)
            if held is None:
                return False
            handle = held.handle
            hkv = self._cache.handles.get(handle) or await self._store.get(keys.ipam_handle(handle))
            record = HandleRecord.from_json(hkv.value) if hkv else HandleRecord(handle, ())
            if not blk.release(o, seq=seq, now=self._now()):
                return False
            ok, _ = await self._commit(Plan({cidr: (kv, blk)}), handle, hkv,
                                       record.without(cidr, o))
            if ok:
                self.stats.releases += 1
                return True
        raise IpamConflictError(f"releasing {address}: block kept changing "
                                f"({_attempt} attempts over {CONFLICT_BUDGET:.0f} s)")

    # -- public API: queries and node removal ------------------------------------------

    async def affine_blocks(self) -> list[str]:
        """The blocks this node owns (confirmed affinity), in address order."""
        async def run() -> list[str]:
            kvs = await self._store.list(keys.ipam_affinities_of(self.node))
            out = [keys.segment_to_cidr(kv.key.rsplit("/", 1)[-1]) for kv in kvs
                   if parse_affinity(kv.value).state == CONFIRMED]
            return sorted(out, key=lambda c: (netaddr.IPNetwork(c).version,
                                              int(netaddr.IPNetwork(c).first)))
        return await self._retrying("listing affine blocks", run)

    async def borrowed_addresses(self) -> list[str]:
        """Addresses this node holds inside blocks it does not own (advertised as /32, /128)."""
        async def run() -> list[str]:
            out: list[netaddr.IPAddress] = []
            for cidr, kv in (await self._claims.all_blocks()).items():
                blk = self._cache.block(cidr, kv)
                if blk is None:
                    continue
                if blk.affinity == self.affinity:
                    continue
                out.extend(netaddr.IPAddress(blk.address(o)) for o, at in blk.allocated()
                           if at.node == self.node)
            return [str(a) for a in sorted(out, key=lambda a: (a.version, int(a)))]
        return await self._retrying("listing borrowed addresses", run)

    async def release_node(self, node: str) -> NodeRelease:
        return await self._retrying(f"releasing node {node}",
                                    lambda: release_node(self._ds, node, now=self._now))


__all__ = [
    "AddressInUseError",
    "AddressNotInPoolError",
    "AddressReservedError",
    "Assignment",
    "IpamClient",
    "IpamError",
    "IpamStats",
    "NodeRelease",
    "PoolExhaustedError",
    "PoolInUseError",
    "PoolSpec",
    "delete_pool",
    "finish_block_release",
    "overlaps_existing",
    "release_node",
]
