"""Pure block logic: FIFO reuse, sequence numbers, cool-down, reservations, JSON round trip."""

from __future__ import annotations

import json
import math
from typing import Any

import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.block import (
    AllocationAttrs,
    Block,
    BlockFormatError,
    _counts,
    _runs,
    _slots,
    block_cidr_for,
    iter_block_cidrs,
    node_of_affinity,
    reserved_ordinals,
)

A = AllocationAttrs("net.c1.eth0", "ns", "pod", "n1", 1.0)
B = AllocationAttrs("net.c2.eth0", "ns", "pod2", "n1", 2.0)


def test_new_block_hands_out_in_address_order() -> None:
    b = Block.new("10.0.0.0/30", "node:n1")
    assert [b.address(o) for o in b.assign(3, A)] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert b.in_use() == 3 and b.free_ordinals() == [3]


def test_released_address_is_reused_last() -> None:
    b = Block.new("10.0.0.0/29", None)
    b.assign(3, A)
    assert b.release(0)
    got = b.assign(6, B)
    assert got == [3, 4, 5, 6, 7, 0]  # the freed ordinal comes after every never-used one


def test_sequence_grows_on_every_assignment_and_guards_release() -> None:
    b = Block.new("10.0.0.0/30", None)
    (o,) = b.assign(1, A)
    assert b.sequence[o] == 1
    stale_seq = b.sequence[o]
    assert b.release(o, handle=A.handle, seq=stale_seq)
    b.assign_ordinal(o, B)
    assert b.sequence[o] == 2
    # A slow DEL of the first holder must not free the re-assigned address.
    assert not b.release(o, handle=A.handle, seq=stale_seq)
    assert not b.release(o, handle=B.handle, seq=stale_seq)
    assert b.attrs(o) == B
    assert b.release(o, handle=B.handle, seq=2)


def test_cooldown_keeps_released_address_resting() -> None:
    b = Block.new("10.0.0.0/31", None)
    b.assign(2, A)
    b.release(0, now=100.0)
    assert b.assign(1, B, now=105.0, cooldown=10.0) == []
    assert b.assign(1, B, now=111.0, cooldown=10.0) == [0]
    assert 0 not in b.released_at


def test_reserved_ordinals_are_never_handed_out() -> None:
    reserved = reserved_ordinals("10.0.0.0/29", netaddr.IPSet(["10.0.0.0/31", "10.0.0.7/32",
                                                               "192.168.0.0/16"]))
    assert reserved == frozenset({0, 1, 7})
    b = Block.new("10.0.0.0/29", None)
    assert b.assign(8, A, reserved=reserved) == [2, 3, 4, 5, 6]


def test_json_round_trip_and_attribute_compaction() -> None:
    b = Block.new("fd00::/126", "node:n1")
    b.assign(2, A)
    b.assign(1, B)
    b.release(0, now=5.0)
    assert len(b.attributes) == 2
    c = Block.from_json(b.to_json())
    assert c == b
    assert c.attrs(2) == B and c.address(3) == "fd00::3" and c.version == 6


def test_corrupt_block_is_rejected() -> None:
    b = Block.new("10.0.0.0/30", None)
    b.unallocated.append(0)
    with pytest.raises(BlockFormatError, match="listed twice"):
        Block.from_json(b.to_json())
    with pytest.raises(BlockFormatError):
        Block.from_json(b"{nope")


def test_block_cidr_helpers() -> None:
    assert block_cidr_for("10.1.2.77", "10.0.0.0/8", 26) == "10.1.2.64/26"
    assert block_cidr_for("fd00::1:5", "fd00::/48", 122) == "fd00::1:0/122"
    assert list(iter_block_cidrs("10.0.0.0/24", 26, skip=lambda c: c == "10.0.0.64/26")) == [
        "10.0.0.0/26", "10.0.0.128/26", "10.0.0.192/26"]
    with pytest.raises(ValueError):
        block_cidr_for("11.0.0.1", "10.0.0.0/8", 26)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 15)), max_size=80))
def test_random_assign_release_keeps_invariants(ops: list[tuple[bool, int]]) -> None:
    """Model check: the block agrees with a dict of held ordinals; free order is FIFO."""
    b = Block.new("10.0.0.0/28", "node:n1")
    held: dict[int, int] = {}  # ordinal -> seq
    fifo = list(range(16))
    for i, (assign, o) in enumerate(ops):
        if assign:
            got = b.assign(1, AllocationAttrs(f"h{i}"))
            if fifo:
                assert got == [fifo.pop(0)]
                held[got[0]] = b.sequence[got[0]]
            else:
                assert got == []
        else:
            freed = b.release(o, seq=held.get(o, -1))
            assert freed == (o in held)
            if freed:
                del held[o]
                fifo.append(o)
        assert b.problems() == []
        assert b.unallocated == fifo
        assert {o for o, _ in b.allocated()} == set(held)
    assert Block.from_json(b.to_json()) == b


def test_compact_attributes_omit_the_owner_node_and_read_back() -> None:
    b = Block.new("10.0.0.0/29", "node:n1")
    b.assign(1, A)
    b.assign_ordinal(5, AllocationAttrs("net.c3.eth0", "ns", "p3", "n2", 3.25))
    b.assign_ordinal(6, AllocationAttrs("net.c4.eth0", "ns", "p4", "n1", 4.0, {"k": "v"}))
    raw = b.to_json()
    assert b'["net.c1.eth0","ns","pod",1.0]' in raw  # the owner's node is implied
    assert b'["net.c3.eth0","ns","p3",3.25,"n2"]' in raw
    assert b'["net.c4.eth0","ns","p4",4.0,null,{"k":"v"}]' in raw
    c = Block.from_json(raw)
    held = c.attrs(5)
    assert c == b and held is not None and held.node == "n2"
    # Orphaned (no affinity): every node is written out and read back.
    c.affinity = None
    d = Block.from_json(c.to_json())
    assert [at.node for _, at in d.allocated()] == ["n1", "n2", "n1"]
    # Adopted by n2: n2's own allocation now implies its node, n1's are explicit.
    d.affinity = "node:n2"
    assert [at.node for _, at in Block.from_json(d.to_json()).allocated()] == ["n1", "n2",
                                                                                 "n1"]


def test_blocks_in_the_object_attribute_format_are_still_read() -> None:
    old = (b'{"cidr":"10.0.0.0/30","affinity":"node:n1","allocations":[0,null,null,null],'
           b'"unallocated":[1,2,3],"attributes":[{"handle":"net.c1.eth0","namespace":"ns",'
           b'"pod":"pod","node":"n1","time":1.0}],"sequence":[1,0,0,0],"releasedAt":{}}')
    b = Block.from_json(old)
    assert b.attrs(0) == A and b.unallocated == [1, 2, 3]
    assert Block.from_json(b.to_json()) == b


def test_a_full_block_value_is_compact() -> None:
    """Every allocation rewrites its block: a full /26 with these handles stays under 4.3 KB
    (one JSON object per address would take ~7 KB)."""
    b = Block.new("10.244.0.0/26", "node:node-1")
    for i in range(64):
        b.assign(1, AllocationAttrs(f"l3fabric.w0-{1000 + i}.eth0", "bench", f"p{1000 + i}",
                                    "node-1", 1795814628.6627321 + i))
    assert len(b.to_json()) < 4300
    assert Block.from_json(b.to_json()).attrs(63) == AllocationAttrs(
        "l3fabric.w0-1063.eth0", "bench", "p1063", "node-1", 1795814691.662)  # ms, rounded down


def test_per_ordinal_arrays_are_run_length_strings() -> None:
    b = Block.new("10.0.0.0/28", "node:n1")
    b.assign(6, A)
    b.release(2)
    b.release(4)
    raw = b.to_json()
    assert b'"allocations":"0-1,_1,2,_1,3,_10"' in raw
    assert b'"unallocated":"6-15,2,4"' in raw
    assert b'"sequence":"1*6,0*10"' in raw
    assert Block.from_json(raw) == b
    # A block written before the run-length form (plain arrays) reads the same.
    old = (b'{"cidr":"10.0.0.0/30","affinity":"node:n1","allocations":[null,0,null,null],'
           b'"unallocated":[2,0,3],"attributes":[["net.c1.eth0","ns","pod",1.0]],'
           b'"sequence":[2,1,0,0],"releasedAt":{}}')
    c = Block.from_json(old)
    assert c.attrs(1) == A and c.unallocated == [2, 0, 3] and c.sequence == [2, 1, 0, 0]
    assert Block.from_json(c.to_json()) == c


def test_releases_keep_the_attribute_rows_in_ordinal_order() -> None:
    b = Block.new("10.0.0.0/29", "node:n1")
    for i in range(8):
        b.assign(1, AllocationAttrs(f"net.c{i}.eth0", "ns", f"p{i}", "n1", float(i)))
    assert b.release(0) and b.release(5)
    assert [b.allocations[o] for o in (1, 2, 3, 4, 6, 7)] == [0, 1, 2, 3, 4, 5]
    assert b'"allocations":"_1,0-3,_1,4-5"' in b.to_json()


@pytest.mark.parametrize("field,value", [("allocations", "_99999"), ("unallocated", "0-99999"),
                                         ("sequence", "1*99999"), ("unallocated", "3-1"),
                                         ("sequence", "x")])
def test_corrupt_run_length_arrays_are_rejected(field: str, value: str) -> None:
    b = Block.new("10.0.0.0/30", "node:n1")
    raw = b.to_json().decode()
    start = raw.index(f'"{field}":"') + len(field) + 4
    bad = raw[:start] + value + raw[raw.index('"', start):]
    with pytest.raises(BlockFormatError):
        Block.from_json(bad)


def test_an_allocation_reencodes_only_its_new_attribute_row() -> None:
    b = Block.new("10.0.0.0/29", "node:n1")
    b.assign(2, A)
    first = b.to_json()
    c = b.copy()
    c.assign(1, B)
    assert c.to_json() == Block.from_json(c.to_json()).to_json()
    assert b'["net.c2.eth0","ns","pod2",2.0]' in c.to_json() and b.to_json() == first
    c.affinity = "node:n2"  # an adopted block writes its old owner's node out
    assert b'["net.c1.eth0","ns","pod",1.0,"n1"]' in c.to_json()


def _fresh_json(b: Block) -> bytes:
    """The block's value encoded from scratch with `json.dumps` (no cached fragment): the
    format `Block.to_json` must produce byte for byte, however much of it came from caches."""
    owner = node_of_affinity(b.affinity) or ""
    rows: list[list[Any]] = []
    for at in b.attributes:
        row: list[Any] = [at.handle, at.namespace, at.pod, math.floor(at.time * 1000) / 1000]
        if at.node != owner or at.extra:
            row.append(None if at.node == owner else at.node)
        if at.extra:
            row.append(dict(at.extra))
        rows.append(row)
    d = {"cidr": b.cidr, "affinity": b.affinity, "allocations": _slots(b.allocations),
         "unallocated": _runs(b.unallocated), "attributes": rows,
         "sequence": _counts(b.sequence),
         "releasedAt": {str(k): v for k, v in sorted(b.released_at.items())}}
    return json.dumps(d, separators=(",", ":")).encode()


_attrs = st.builds(
    AllocationAttrs, handle=st.text(max_size=12), namespace=st.text(max_size=6),
    pod=st.text(max_size=6), node=st.sampled_from(["n1", "n2", ""]),
    time=st.floats(0, 4e9, allow_nan=False),
    extra=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)
    | st.just({}))
_block_ops = st.one_of(
    st.tuples(st.just("assign"), st.integers(1, 3), _attrs),
    st.tuples(st.just("release"), st.integers(0, 15), st.floats(0, 4e9, allow_nan=False)),
    st.tuples(st.just("copy"), st.none(), st.none()),
    st.tuples(st.just("affinity"), st.sampled_from(["node:n1", "node:n2", None]), st.none()))


@settings(max_examples=300, deadline=None)
@given(st.lists(_block_ops, max_size=40))
def test_cached_encoding_equals_a_fresh_one(ops: list[tuple[str, Any, Any]]) -> None:
    """`to_json` splices cached fragments (attribute rows, the attribute list of the last
    write, the cidr/affinity head); after any sequence of allocations, releases, copies and
    affinity changes its bytes are those of an encoding from scratch, for any strings."""
    b = Block.new("10.0.0.0/28", "node:n1")
    assert b.to_json() == _fresh_json(b)
    for op, x, y in ops:
        if op == "assign":
            b.assign(x, y)
        elif op == "release":
            b.release(x, now=y)
        elif op == "copy":
            b = b.copy()  # the allocator's pattern: copy the shared block, change, write
        else:
            b.affinity = x
        assert b.to_json() == _fresh_json(b)
    assert Block.from_json(b.to_json()).to_json() == _fresh_json(Block.from_json(b.to_json()))
