"""``ipam check [--fix]``: find what crashes and node removals left behind, and repair it.

Owns: the list of IPAM inconsistencies (a pure function of a `Snapshot`) and their repairs.
Blocks are the truth for who holds an address; handles and affinities are derived indexes
and are rewritten to agree with the blocks.

Problems found (``kind``):

* ``leaked-address`` - allocated, no WorkloadEndpoint uses it, older than ``leak_grace``;
  fix: release it (by handle and sequence, so a re-assignment in between is not freed);
* ``endpoint-without-address`` - a WorkloadEndpoint claims an address of an IP pool that
  IPAM does not hold for it (free, or held for another attachment): a DEL cut short, or
  an address released by hand. Nothing else ever frees such an address for reuse, and
  the node routes it to a veth that is gone. Fix: delete the endpoint (compared on its
  revision; the agent then drops its routes and policy). Every CNI path deletes an
  endpoint before freeing its address, so no grace period applies;
* ``orphaned-handle`` - a handle record whose addresses no block holds; fix: delete it;
* ``handle-mismatch`` / ``missing-handle`` - handle records that disagree with the blocks;
  fix: rewrite the record from the blocks;
* ``affinity-missing-node`` - an affinity of a node that has no ``nodes/<name>``; fix: as
  node removal (empty block deleted, others lose their affinity);
* ``pending-affinity`` / ``pending-deletion`` - a claim or release left half-way for longer
  than ``claim_grace``; fix: roll the claim back (delete the affinity and the empty block)
  or finish the release;
* ``affinity-without-block`` / ``affinity-mismatch`` - a confirmed affinity whose block is
  missing or names another owner; fix: delete the affinity;
* ``block-without-affinity`` - a block naming an owner that has no affinity for it; fix:
  recreate the confirmed affinity if the node exists, else orphan/delete the block;
* ``corrupt-block``, ``block-outside-pool`` - reported, never touched automatically.

Repairs re-read every key they change and write with compare-and-swap, so a check running
beside live allocators never undoes their work; a repair that loses a race is reported as
not fixed and the next run sees the new state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import netaddr

from datastore import keys
from datastore.client import KV, Compare, Datastore, Delete, Op, Put
from ipam.affinity import CONFIRMED, PENDING, PENDING_DELETION, affinity_value
from ipam.allocator import finish_block_release
from ipam.block import Block, BlockFormatError, affinity_of
from ipam.snapshot import Snapshot, load_snapshot
from ipam.values import HandleEntry, HandleRecord

log = logging.getLogger(__name__)

DEFAULT_LEAK_GRACE = 900.0  # a CNI ADD writes its WorkloadEndpoint well within this
DEFAULT_CLAIM_GRACE = 60.0  # a live claim takes milliseconds


@dataclass(frozen=True)
class Problem:
    kind: str
    subject: str  # the address, handle, block or node/cidr concerned
    detail: str
    fixable: bool = True

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail,
                "fixable": self.fixable}


def _expected_handles(s: Snapshot) -> dict[str, set[tuple[str, int, int]]]:
    out: dict[str, set[tuple[str, int, int]]] = {}
    for cidr, blk in s.parsed.items():
        for o, at in blk.allocated():
            out.setdefault(at.handle, set()).add((cidr, o, blk.sequence[o]))
    return out


def _endpoints_without_address(s: Snapshot) -> list[Problem]:
    """Endpoints whose pool addresses IPAM does not hold for their attachment (a handle
    ``<network>.<containerID>.<endpoint>``). Addresses outside every pool come from
    another IPAM (a delegated one): not ours to judge."""
    held: dict[str, str] = {}
    for blk in s.parsed.values():
        for o, at in blk.allocated():
            held[blk.address(o)] = at.handle
    out = []
    for rel, (_kv, wep) in sorted(s.workloads.items()):
        spec = wep.spec
        suffix = f".{spec.container_id}.{spec.endpoint}"
        for net in spec.ip_networks:
            addr = str(netaddr.IPNetwork(str(net)).ip)
            if s.pool_of(str(net)) is None or any(
                    addr in netaddr.IPNetwork(c) for c in s.corrupt_blocks):
                continue
            owner = held.get(addr)
            if owner is not None and owner.endswith(suffix):
                continue
            whose = "nobody (it is free)" if owner is None else f"handle {owner}"
            out.append(Problem("endpoint-without-address", rel,
                               f"{rel} (container {spec.container_id}) claims {addr}, which "
                               f"IPAM holds for {whose}"))
            break
    return out


def find_problems(s: Snapshot, *, now: float, leak_grace: float = DEFAULT_LEAK_GRACE,
                  claim_grace: float = DEFAULT_CLAIM_GRACE) -> list[Problem]:
    """Every inconsistency in ``s`` (pure)."""
    out: list[Problem] = []
    for cidr, why in sorted(s.corrupt_blocks.items()):
        out.append(Problem("corrupt-block", cidr, why, fixable=False))
    for cidr, blk in sorted(s.parsed.items()):
        if s.pool_of(cidr) is None:
            out.append(Problem("block-outside-pool", cidr,
                               f"block {cidr} is in no IP pool", fixable=False))
        for o, at in blk.allocated():
            addr = blk.address(o)
            if addr not in s.workload_ips and now - at.time >= leak_grace:
                out.append(Problem(
                    "leaked-address", addr,
                    f"{addr} (handle {at.handle}, pod {at.namespace}/{at.pod}, node "
                    f"{at.node}) has no WorkloadEndpoint for {now - at.time:.0f}s"))
    out += _endpoints_without_address(s)
    expected = _expected_handles(s)
    for handle, _kv in sorted(s.handles.items()):
        rec = s.handle_records.get(handle)
        actual = {(e.block, e.ordinal, e.seq) for e in rec.entries} if rec else None
        want = expected.get(handle)
        if want is None:
            out.append(Problem("orphaned-handle", handle,
                               f"handle {handle} holds no address in any block"))
        elif actual != want:
            out.append(Problem("handle-mismatch", handle,
                               f"handle {handle} lists {len(actual or ())} address(es), "
                               f"blocks hold {len(want)}"))
    for handle in sorted(set(expected) - set(s.handles)):
        out.append(Problem("missing-handle", handle,
                           f"blocks hold {len(expected[handle])} address(es) for handle "
                           f"{handle} but it has no record"))
    for (node, cidr), (_kv, st) in sorted(s.affinities.items()):
        subject = f"{node}/{cidr}"
        owner = s.parsed.get(cidr)
        age = now - st.time
        if node not in s.nodes:
            out.append(Problem("affinity-missing-node", subject,
                               f"node {node} does not exist but holds block {cidr}"))
        elif st.state == PENDING and age >= claim_grace:
            out.append(Problem("pending-affinity", subject,
                               f"claim of {cidr} by {node} pending for {age:.0f}s"))
        elif st.state == PENDING_DELETION and age >= claim_grace:
            out.append(Problem("pending-deletion", subject,
                               f"release of {cidr} by {node} pending for {age:.0f}s"))
        elif st.state == CONFIRMED and cidr not in s.blocks:
            out.append(Problem("affinity-without-block", subject,
                               f"{node} has a confirmed affinity to {cidr} but no such block"))
        elif st.state == CONFIRMED and owner is not None and owner.affinity != affinity_of(node):
            out.append(Problem("affinity-mismatch", subject,
                               f"{node} has a confirmed affinity to {cidr} but the block "
                               f"belongs to {owner.affinity or 'nobody'}"))
        elif st.state not in (PENDING, CONFIRMED, PENDING_DELETION):
            out.append(Problem("affinity-mismatch", subject, f"affinity {subject} unreadable"))
    for cidr, blk in sorted(s.parsed.items()):
        n = blk.node
        if n is not None and (n, cidr) not in s.affinities:
            out.append(Problem("block-without-affinity", cidr,
                               f"block {cidr} names node {n}, which has no affinity for it"))
    return out


@dataclass(frozen=True)
class FixResult:
    problem: Problem
    fixed: bool
    note: str = ""


async def _release_leak(ds: Datastore, s: Snapshot, address: str) -> str:
    for cidr, blk in s.parsed.items():
        try:
            o = blk.ordinal(address)
        except ValueError:
            continue
        at = blk.attrs(o)
        if at is None:
            return "already free"
        seq = blk.sequence[o]
        bkey, hkey = keys.ipam_block(cidr), keys.ipam_handle(at.handle)
        bkv, hkv = await ds.get(bkey), await ds.get(hkey)
        if bkv is None:
            return "block gone"
        fresh = Block.from_json(bkv.value)
        if not fresh.release(o, handle=at.handle, seq=seq, now=time.time()):
            return "re-assigned meanwhile; left alone"
        cmps = [Compare(bkey, "mod", "==", bkv.mod_revision)]
        ops: list[Op] = [Put(bkey, fresh.to_json())]
        if hkv is not None:
            cmps.append(Compare(hkey, "mod", "==", hkv.mod_revision))
            try:
                rec = HandleRecord.from_json(hkv.value).without(cidr, o)
            except ValueError:
                rec = HandleRecord(at.handle, ())
            ops.append(Put(hkey, rec.to_json()) if rec.entries else Delete(hkey))
        res = await ds.txn(cmps, ops)
        return "released" if res.succeeded else "changed meanwhile; run check again"
    return "no block holds it"


async def _rewrite_handle(ds: Datastore, handle: str) -> str:
    """Make ``handle``'s record agree with the blocks (read fresh, one CAS)."""
    hkey = keys.ipam_handle(handle)
    blocks, _ = await ds.list(keys.full(keys.IPAM_BLOCKS))
    entries: list[HandleEntry] = []
    cmps: list[Compare] = []
    for kv in blocks:
        try:
            blk = Block.from_json(kv.value)
        except BlockFormatError:
            continue
        mine = blk.ordinals_of(handle)
        if mine:
            cmps.append(Compare(kv.key, "mod", "==", kv.mod_revision))
        entries.extend(HandleEntry(blk.cidr, o, blk.sequence[o], blk.address(o))
                       for o in mine)
    hkv = await ds.get(hkey)
    cmps.append(Compare(hkey, "mod", "==", hkv.mod_revision) if hkv
                else Compare(hkey, "create", "==", 0))
    op: Op = Put(hkey, HandleRecord(handle, tuple(entries)).to_json()) if entries \
        else Delete(hkey)
    res = await ds.txn(cmps, [op])
    if not res.succeeded:
        return "changed meanwhile; run check again"
    return f"rewritten with {len(entries)} address(es)" if entries else "deleted"


async def _rollback_claim(ds: Datastore, node: str, cidr: str, akv: KV) -> str:
    bkey = keys.ipam_block(cidr)
    bkv = await ds.get(bkey)
    cmps = [Compare(akv.key, "mod", "==", akv.mod_revision)]
    ops: list[Op] = [Delete(akv.key)]
    note = "pending affinity deleted"
    if bkv is not None:
        try:
            blk = Block.from_json(bkv.value)
        except BlockFormatError:
            blk = None
        if blk is not None and blk.affinity == affinity_of(node):
            if blk.is_empty():
                cmps.append(Compare(bkey, "mod", "==", bkv.mod_revision))
                ops.append(Delete(bkey))
                note += " with its empty block"
            else:
                # Cannot happen through the allocator (pending blocks are never used);
                # someone wrote by hand. Keep the addresses: confirm instead.
                ops = [Put(akv.key, affinity_value(CONFIRMED, time.time()))]
                note = "block has allocations: affinity confirmed"
    res = await ds.txn(cmps, ops)
    return note if res.succeeded else "changed meanwhile; run check again"


async def _fix_one(ds: Datastore, s: Snapshot, p: Problem) -> tuple[bool, str]:
    if p.kind == "endpoint-without-address":
        kv = s.workloads[p.subject][0]
        res = await ds.txn([Compare(kv.key, "mod", "==", kv.mod_revision)], [Delete(kv.key)])
        return res.succeeded, "endpoint deleted" if res.succeeded else "changed meanwhile"
    if p.kind == "leaked-address":
        note = await _release_leak(ds, s, p.subject)
        return note in ("released", "already free"), note
    if p.kind in ("orphaned-handle", "handle-mismatch", "missing-handle"):
        note = await _rewrite_handle(ds, p.subject)
        return "meanwhile" not in note, note
    if p.kind in ("affinity-missing-node", "pending-deletion"):
        node, _, seg = p.subject.partition("/")
        out = await finish_block_release(ds, node, seg)
        if out == "deleted":
            return True, "affinity and empty block deleted"
        if out is None:
            return True, "affinity deleted"
        return True, f"affinity deleted; block kept without owner ({len(out)} address(es))"
    if p.kind == "pending-affinity":
        node, _, cidr = p.subject.partition("/")
        akv = await ds.get(keys.ipam_affinity(node, cidr))
        if akv is None:
            return True, "already gone"
        return True, await _rollback_claim(ds, node, cidr, akv)
    if p.kind in ("affinity-without-block", "affinity-mismatch"):
        node, _, cidr = p.subject.partition("/")
        akv = s.affinities[(node, cidr)][0]
        res = await ds.txn([Compare(akv.key, "mod", "==", akv.mod_revision)],
                           [Delete(akv.key)])
        return res.succeeded, "affinity deleted" if res.succeeded else "changed meanwhile"
    if p.kind == "block-without-affinity":
        blk = s.parsed[p.subject]
        node = blk.node or ""
        akey = keys.ipam_affinity(node, p.subject)
        if node in s.nodes:
            res = await ds.txn([Compare(akey, "create", "==", 0)],
                               [Put(akey, affinity_value(CONFIRMED, time.time()))])
            return res.succeeded, "confirmed affinity recreated"
        out = await finish_block_release(ds, node, p.subject)
        return True, "empty block deleted" if out == "deleted" else "block kept without owner"
    return False, "not fixed automatically"


async def check(ds: Datastore, *, fix: bool = False, now: Callable[[], float] = time.time,
                leak_grace: float = DEFAULT_LEAK_GRACE,
                claim_grace: float = DEFAULT_CLAIM_GRACE) -> list[FixResult]:
    """Find problems (and with ``fix`` repair them). One result per problem found."""
    snap = await load_snapshot(ds)
    problems = find_problems(snap, now=now(), leak_grace=leak_grace, claim_grace=claim_grace)
    if not fix:
        return [FixResult(p, False) for p in problems]
    # Stale endpoints and releases first (they change blocks and handles), then handle
    # records (rebuilt from the blocks as they are after the releases), then affinities.
    order = {"endpoint-without-address": 0, "leaked-address": 0, "orphaned-handle": 1,
             "handle-mismatch": 1, "missing-handle": 1}
    results: list[FixResult] = []
    for p in sorted(problems, key=lambda p: order.get(p.kind, 2)):
        if not p.fixable:
            results.append(FixResult(p, False, "not fixed automatically"))
            continue
        ok, note = await _fix_one(ds, snap, p)
        log.info("ipam check: %s %s: %s", p.kind, p.subject, note)
        results.append(FixResult(p, ok, note))
    return results
