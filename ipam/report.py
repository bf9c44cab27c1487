"""``ipam show``: pool and block utilisation as plain data (pure; printing is fabricctl's).

A block's ``borrowed`` count is the number of its addresses held by a node other than its
owner (those addresses are advertised by the borrowing node as host routes).
"""

from __future__ import annotations

from typing import Any

import netaddr

from ipam.block import reserved_ordinals
from ipam.snapshot import Snapshot


def _pct(used: int, total: int) -> float:
    return round(100.0 * used / total, 1) if total else 0.0


def _block_order(cidr: str) -> tuple[int, int]:
    net = netaddr.IPNetwork(cidr)
    return net.version, int(net.first)


def block_rows(s: Snapshot) -> list[dict[str, Any]]:
    reserved = netaddr.IPSet(s.reservations)
    rows: list[dict[str, Any]] = []
    for cidr in sorted(s.blocks, key=_block_order):
        blk = s.parsed.get(cidr)
        pool = s.pool_of(cidr)
        if blk is None:
            rows.append({"block": cidr, "pool": pool.name if pool else None, "node": None,
                         "state": "corrupt", "size": 0, "allocated": 0, "free": 0,
                         "reserved": 0, "borrowed": 0, "utilisation": 0.0})
            continue
        node = blk.node
        state = None
        if node is not None:
            aff = s.affinities.get((node, cidr))
            state = aff[1].state if aff else "missing"
        allocated = blk.in_use()
        res = len(reserved_ordinals(cidr, reserved)) if s.reservations else 0
        borrowed = sum(1 for _, at in blk.allocated() if at.node != node)
        rows.append({"block": cidr, "pool": pool.name if pool else None, "node": node,
                     "state": state, "size": blk.size, "allocated": allocated,
                     "free": max(blk.size - allocated - res, 0), "reserved": res,
                     "borrowed": borrowed, "utilisation": _pct(allocated, blk.size)})
    return rows


def pool_rows(s: Snapshot, blocks: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    blocks = block_rows(s) if blocks is None else blocks
    rows: list[dict[str, Any]] = []
    for p in s.pools:
        mine = [b for b in blocks if b["pool"] == p.name]
        size = int(p.network.size)
        allocated = sum(int(b["allocated"]) for b in mine)
        total_blocks = 1 << (p.block_size - p.network.prefixlen)
        rows.append({"pool": p.name, "cidr": p.cidr, "blockSize": p.block_size,
                     "disabled": p.disabled, "blocks": len(mine), "blocksTotal": total_blocks,
                     "size": size, "allocated": allocated,
                     "borrowed": sum(int(b["borrowed"]) for b in mine),
                     "utilisation": _pct(allocated, size)})
    return rows


def utilisation(s: Snapshot, with_blocks: bool = False) -> dict[str, Any]:
    blocks = block_rows(s)
    out: dict[str, Any] = {"revision": s.revision, "pools": pool_rows(s, blocks)}
    if with_blocks:
        out["blocks"] = blocks
    return out


def address_holder(s: Snapshot, address: str) -> dict[str, Any]:
    """Who holds ``address`` (``ipam show --ip``): its pool, block and the block's node, and,
    when allocated, the handle, pod and node stored with it, and whether the handle record
    and a WorkloadEndpoint agree. ``allocated`` is False for a free address, and ``block``
    None when no block covers it yet. Raises ValueError for a string that is no address."""
    ip = netaddr.IPAddress(address)
    addr = str(ip)
    pool = next((p for p in s.pools if p.contains(addr)), None)
    out: dict[str, Any] = {
        "address": addr, "pool": pool.name if pool else None, "block": None,
        "blockNode": None, "allocated": False, "handle": None, "namespace": None,
        "pod": None, "node": None, "since": None, "handleRecord": None,
        "workloadEndpoint": addr in s.workload_ips,
        "reserved": bool(s.reservations) and ip in netaddr.IPSet(s.reservations),
    }
    for cidr in s.blocks:
        net = netaddr.IPNetwork(cidr)
        if ip.version != net.version or ip not in net:
            continue
        out["block"] = cidr
        blk = s.parsed.get(cidr)
        if blk is None:
            out["problem"] = f"block {cidr} is corrupt: {s.corrupt_blocks.get(cidr)}"
            break
        out["blockNode"] = blk.node
        at = blk.attrs(blk.ordinal(addr))
        if at is not None:
            rec = s.handle_records.get(at.handle)
            out.update(allocated=True, handle=at.handle, namespace=at.namespace or None,
                       pod=at.pod or None, node=at.node or blk.node, since=at.time or None,
                       handleRecord=rec is not None and any(
                           e.address == addr for e in rec.entries))
        break
    return out


def node_usage(s: Snapshot) -> dict[str, dict[str, Any]]:
    """Per node, what IPAM holds for it (``fabricctl node status``): ``blocks``, the blocks
    affine to it; ``addresses``, the addresses allocated to it in any block; ``borrowed``,
    how many of those lie in another node's block. A node with none is absent."""
    out: dict[str, dict[str, Any]] = {}

    def entry(node: str) -> dict[str, Any]:
        return out.setdefault(node, {"blocks": [], "addresses": 0, "borrowed": 0})

    for cidr in sorted(s.parsed, key=_block_order):
        blk = s.parsed[cidr]
        if blk.node is not None:
            entry(blk.node)["blocks"].append(cidr)
        for _, at in blk.allocated():
            who = at.node or blk.node
            if who is None:  # an address of an unowned block without a node: nobody's
                continue
            entry(who)["addresses"] += 1
            if who != blk.node:
                entry(who)["borrowed"] += 1
    return out
