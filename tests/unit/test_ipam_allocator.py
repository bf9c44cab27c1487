"""The allocator against the in-memory etcd (`FakeDatastore`): one round trip, borrowing,
strict affinity, requested addresses, reservations, pools, release, node removal, crashes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import netaddr
import pytest

from datastore import keys
from datastore.client import KV, Compare, Datastore, Op, TxnResult
from datastore.fake import FakeDatastore
from ipam import crashpoints
from ipam.allocator import IpamClient, delete_pool, release_node
from ipam.block import Block
from ipam.check import check
from ipam.inputs import load_inputs, static_inputs
from ipam.testing import put_ipam_config, put_nodes, put_pool, put_reservation
from ipam.values import (
    AddressInUseError,
    AddressNotInPoolError,
    AddressReservedError,
    IpamInputs,
    PoolExhaustedError,
    PoolInUseError,
)


async def setup(ds: Datastore, cidr: str = "10.0.0.0/28", size: int = 30,
                nodes: int = 2) -> list[IpamClient]:
    await put_pool(ds, "p", cidr, size)
    names = [f"n{i}" for i in range(1, nodes + 1)]
    await put_nodes(ds, names)
    return [IpamClient(ds, n) for n in names]


async def test_common_case_is_one_round_trip() -> None:
    ds = FakeDatastore()
    (a, _) = await setup(ds, size=28)
    await a.auto_assign("h0", namespace="ns", pod="p0")
    before = a.stats.round_trips
    for i in range(1, 10):
        (got,) = await a.auto_assign(f"h{i}", namespace="ns", pod=f"p{i}")
        assert not got.borrowed and got.prefix_len == 28
    assert a.stats.round_trips - before == 9
    before = a.stats.round_trips
    assert await a.release_by_handle("h3") == 1
    assert a.stats.round_trips - before == 1


async def test_conflict_refreshes_in_the_same_round_trip() -> None:
    ds = FakeDatastore()
    await setup(ds, size=28, nodes=1)
    a, b = IpamClient(ds, "n1"), IpamClient(ds, "n1")  # two processes of one node
    x = await a.auto_assign("ha", namespace="ns", pod="a")
    y = await b.auto_assign("hb", namespace="ns", pod="b")
    before = a.stats.round_trips
    z = await a.auto_assign("hc", namespace="ns", pod="c")  # a's cached block is stale
    assert a.stats.round_trips - before == 2 and a.stats.conflicts == 1
    assert len({x[0].address, y[0].address, z[0].address}) == 3


async def test_auto_assign_is_idempotent_per_handle() -> None:
    ds = FakeDatastore()
    (a, _) = await setup(ds)
    first = await a.auto_assign("h", namespace="ns", pod="p")
    again = await IpamClient(ds, "n1").auto_assign("h", namespace="ns", pod="p")
    assert first == again
    both = await a.auto_assign("h", namespace="ns", pod="p", num_v4=2)
    assert len(both) == 2 and both[0] == first[0]


async def test_borrowing_and_strict_affinity() -> None:
    ds = FakeDatastore()
    clients = await setup(ds, cidr="10.0.0.0/28", size=30, nodes=6)  # 4 blocks of 4
    for c in clients[:4]:
        await c.auto_assign(f"{c.node}.h", namespace="ns", pod="p")
    (got,) = await clients[4].auto_assign("n5.h", namespace="ns", pod="p")
    assert got.borrowed
    assert await clients[4].borrowed_addresses() == [got.address]
    assert await clients[4].affine_blocks() == []
    await put_ipam_config(ds, strict_affinity=True)
    strict = IpamClient(ds, "n6")
    with pytest.raises(PoolExhaustedError, match="strictAffinity"):
        await strict.auto_assign("n6.h", namespace="ns", pod="p")


async def test_max_blocks_per_host_then_borrow() -> None:
    ds = FakeDatastore()
    (a, b) = await setup(ds, size=30)
    await put_ipam_config(ds, max_blocks_per_host=1)
    await b.auto_assign("b0", namespace="ns", pod="p")
    for i in range(4):
        await a.auto_assign(f"a{i}", namespace="ns", pod="p")
    (got,) = await a.auto_assign("a4", namespace="ns", pod="p")
    assert got.borrowed and got.block == "10.0.0.0/30"  # b's block


async def test_requested_addresses() -> None:
    ds = FakeDatastore()
    (a, b) = await setup(ds)
    await put_reservation(ds, "r", ["10.0.0.9/32"])
    got = await a.assign_ip("10.0.0.6", "h1", namespace="ns", pod="p")
    assert got.address == "10.0.0.6" and got.block == "10.0.0.4/30" and not got.borrowed
    assert await a.assign_ip("10.0.0.6", "h1", namespace="ns", pod="p") == got
    with pytest.raises(AddressInUseError, match=r"10\.0\.0\.6 is in use .*h1"):
        await b.assign_ip("10.0.0.6", "h2", namespace="ns", pod="q")
    with pytest.raises(AddressReservedError, match=r"10\.0\.0\.9 is reserved"):
        await b.assign_ip("10.0.0.9", "h2", namespace="ns", pod="q")
    with pytest.raises(AddressNotInPoolError, match=r"10\.9\.0\.1 is outside every enabled"):
        await b.assign_ip("10.9.0.1", "h2", namespace="ns", pod="q")
    borrowed = await b.assign_ip("10.0.0.7", "h3", namespace="ns", pod="q")
    assert borrowed.borrowed


async def test_reservations_are_skipped_by_auto_assign() -> None:
    ds = FakeDatastore()
    (a, _) = await setup(ds)
    await put_reservation(ds, "r", ["10.0.0.0/31", "10.0.0.4/30"])
    got = [(await a.auto_assign(f"h{i}", namespace="ns", pod="p"))[0].address
           for i in range(3)]
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.8"]  # fully reserved block never claimed


async def test_disabled_pool_and_delete_pool() -> None:
    ds = FakeDatastore()
    (a, _) = await setup(ds)
    await a.auto_assign("h", namespace="ns", pod="p")
    with pytest.raises(PoolInUseError, match="ippool p still has 1 allocated"):
        await delete_pool(ds, "p")
    await put_pool(ds, "p", "10.0.0.0/28", 30, disabled=True)
    fresh = IpamClient(ds, "n2")
    with pytest.raises(PoolExhaustedError, match="no enabled IPv4 pool"):
        await fresh.auto_assign("h2", namespace="ns", pod="p")
    assert await a.release_by_handle("h") == 1
    await delete_pool(ds, "p")
    assert ds.snapshot().keys() == {keys.node("n1"), keys.node("n2")}


async def test_release_is_idempotent_and_release_ips_updates_handle() -> None:
    ds = FakeDatastore()
    (a, _) = await setup(ds)
    got = await a.auto_assign("h", namespace="ns", pod="p", num_v4=2)
    assert await a.release_by_handle("unknown") == 0
    assert await a.release_ips([got[0].address]) == [got[0].address]
    assert await a.release_ips([got[0].address]) == []
    assert await a.release_by_handle("h") == 1
    assert await a.release_by_handle("h") == 0
    assert [r for r in await check(ds, leak_grace=0)] == []


async def test_stale_release_by_address_and_seq() -> None:
    ds = FakeDatastore()
    (a,) = await setup(ds, size=31, cidr="10.0.0.0/31", nodes=1)
    x = await a.assign_ip("10.0.0.0", "h1", namespace="ns", pod="p")
    await a.release_by_handle("h1")
    y = await a.assign_ip("10.0.0.0", "h2", namespace="ns", pod="q")
    assert y.seq == x.seq + 1
    assert await a.release_ips(["10.0.0.0"], seqs={"10.0.0.0": x.seq}) == []


async def test_release_node_deletes_empty_blocks_and_orphans_others() -> None:
    ds = FakeDatastore()
    (a, b) = await setup(ds, size=30)
    for i in range(5):
        await a.auto_assign(f"a{i}", namespace="ns", pod="p")
    await a.release_by_handle("a4")
    out = await release_node(ds, "n1")
    assert out.deleted_blocks == ("10.0.0.4/30",)
    assert out.orphaned_blocks == ("10.0.0.0/30",) and len(out.still_allocated) == 4
    assert await a.affine_blocks() == []
    # b adopts the orphaned block only after its own claim fails; here it simply claims.
    (got,) = await b.auto_assign("b0", namespace="ns", pod="p")
    assert not got.borrowed


@pytest.mark.parametrize("point", crashpoints.CLAIM_POINTS + crashpoints.ALLOC_POINTS)
async def test_crash_at_each_step_then_recover_and_fix(point: str) -> None:
    ds = FakeDatastore()
    (a, b) = await setup(ds, size=30)
    crashpoints.arm(point)
    try:
        with pytest.raises(crashpoints.SimulatedCrash):
            await a.auto_assign("crashed", namespace="ns", pod="p")
    finally:
        crashpoints.disarm()
    problems = await check(ds, leak_grace=0, claim_grace=0)
    if point in ("after_pending_affinity", "after_block_create", "before_confirm"):
        assert {r.problem.kind for r in problems} == {"pending-affinity"}
    elif point == "after_alloc_txn":
        assert {r.problem.kind for r in problems} == {"leaked-address"}
    fixed = await check(ds, fix=True, leak_grace=0, claim_grace=0)
    assert all(r.fixed for r in fixed)
    assert await check(ds, leak_grace=0, claim_grace=0) == []
    # The restarted allocator and the other node keep going without duplicates.
    a2 = IpamClient(ds, "n1")
    got = [x.address for i in range(6) for x in
           await (a2 if i % 2 else b).auto_assign(f"h{i}", namespace="ns", pod="p")]
    assert len(set(got)) == 6


async def test_pending_claim_recovered_by_next_allocation() -> None:
    ds = FakeDatastore()
    (a, _) = await setup(ds, size=30)
    crashpoints.arm("before_confirm")
    with pytest.raises(crashpoints.SimulatedCrash):
        await a.auto_assign("x", namespace="ns", pod="p")
    a2 = IpamClient(ds, "n1")
    (got,) = await a2.auto_assign("y", namespace="ns", pod="p")
    assert got.block == "10.0.0.0/30" and not got.borrowed
    assert [r.problem.kind for r in await check(ds, claim_grace=0)] == []
    assert await a2.affine_blocks() == ["10.0.0.0/30"]


async def test_next_block_is_claimed_ahead_so_allocations_stay_one_round_trip() -> None:
    ds = FakeDatastore()
    await put_pool(ds, "big", "10.64.0.0/16", 26)
    await put_nodes(ds, ["n1"])
    a = IpamClient(ds, "n1")
    for i in range(48):  # 16 of 64 left: not short yet
        await a.auto_assign(f"h{i}", namespace="ns", pod=f"p{i}")
    await a.aclose()
    assert await a.affine_blocks() == ["10.64.0.0/26"] and a.stats.claims_ahead == 0
    await a.auto_assign("h48", namespace="ns", pod="p48")  # 15 left: claim one ahead
    await a.aclose()
    assert await a.affine_blocks() == ["10.64.0.0/26", "10.64.0.64/26"]
    # One read (this node's affinities and every block's key, at one revision; the full
    # block is cached, so not read again), then the claim's three steps.
    assert a.stats.claims_ahead == 1 and a.stats.background_round_trips == 4
    before = a.stats.round_trips
    got = [await a.auto_assign(f"h{i}", namespace="ns", pod=f"p{i}") for i in range(49, 80)]
    assert a.stats.round_trips - before == 31  # crossing into the new block: no claim
    assert got[-1][0].block == "10.64.0.64/26" and not got[-1][0].borrowed
    assert await check(ds) == []


async def test_no_claim_ahead_in_small_pools_under_max_blocks_or_when_off() -> None:
    ds = FakeDatastore()
    await put_pool(ds, "small", "10.9.0.0/22", 26)  # 16 blocks: none to spare
    await put_nodes(ds, ["n1", "n2", "n3"])
    a = IpamClient(ds, "n1")
    for i in range(60):
        await a.auto_assign(f"a{i}", namespace="ns", pod="p")
    await a.aclose()
    assert a.stats.claims_ahead == 0 and len(await a.affine_blocks()) == 1
    await put_pool(ds, "small", "10.9.0.0/16", 26)
    await put_ipam_config(ds, max_blocks_per_host=4)
    b = IpamClient(ds, "n2")
    c = IpamClient(ds, "n3", claim_ahead=False)
    await put_ipam_config(ds, max_blocks_per_host=0)
    for i in range(60):
        await c.auto_assign(f"c{i}", namespace="ns", pod="p")
    await c.aclose()
    assert c.stats.claims_ahead == 0 and len(await c.affine_blocks()) == 1
    await put_ipam_config(ds, max_blocks_per_host=4)
    for i in range(60):
        await b.auto_assign(f"b{i}", namespace="ns", pod="p")
    await b.aclose()
    assert b.stats.claims_ahead == 0 and len(await b.affine_blocks()) == 1


async def test_a_node_that_lost_a_block_race_claims_elsewhere_from_then_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes claiming at the same moment all pick the lowest free block; the losers move to
    a random place in the pool and keep claiming from there, instead of colliding again
    on every next block (three wasted requests each time)."""
    picked: list[int] = []

    def randrange(n: int) -> int:  # the random block: the middle of the pool
        picked.append(n)
        return n // 2

    monkeypatch.setattr("ipam.claims.random.randrange", randrange)
    ds = FakeDatastore()
    a, b = await setup(ds, cidr="10.0.0.0/16", size=26, nodes=2)  # 1,024 blocks of 64
    (first_a,) = await a.auto_assign("a0", namespace="ns", pod="a0")
    assert first_a.block == "10.0.0.0/26"

    load = b._claims.load_affinities

    async def stale_listing(inputs: IpamInputs, *, refresh: bool = False) -> dict[str, KV]:
        got = await load(inputs, refresh=refresh)  # b listed the blocks just before a claimed
        b._cache.block_heads.pop("10.0.0.0/26", None)
        return got

    b._claims.load_affinities = stale_listing  # type: ignore[method-assign]
    (first_b,) = await b.auto_assign("b0", namespace="ns", pod="b0")
    b._claims.load_affinities = load  # type: ignore[method-assign]
    assert picked == [1024] and b.stats.claims == 2  # one race lost, one block won
    assert first_b.block == "10.0.128.0/26"
    # The lost attempt left no affinity of b behind.
    kvs, _ = await ds.list(keys.ipam_affinities_of("n2"))
    assert [kv.key.rsplit("/", 1)[-1] for kv in kvs] == [keys.cidr_to_segment(first_b.block)]

    # b's next block follows its first one; a, which never lost, still claims the pool's
    # lowest free block.
    for i in range(1, 65):
        await b.auto_assign(f"b{i}", namespace="ns", pod=f"b{i}")
        await a.auto_assign(f"a{i}", namespace="ns", pod=f"a{i}")
    await a.aclose()
    await b.aclose()
    assert sorted(await b.affine_blocks()) == ["10.0.128.0/26", "10.0.128.64/26"]
    assert sorted(await a.affine_blocks()) == ["10.0.0.0/26", "10.0.0.64/26"]
    assert await check(ds) == []


def test_block_cidrs_from_a_start_wrap_around() -> None:
    from ipam.block import iter_block_cidrs

    assert list(iter_block_cidrs("10.0.0.0/24", 26, start=2)) == [
        "10.0.0.128/26", "10.0.0.192/26", "10.0.0.0/26", "10.0.0.64/26"]
    assert list(iter_block_cidrs("10.0.0.0/24", 26, skip=lambda c: c == "10.0.0.0/26",
                                 start=7)) == ["10.0.0.192/26", "10.0.0.64/26",
                                               "10.0.0.128/26"]


async def test_an_address_freed_in_a_full_block_is_handed_out_before_later_blocks() -> None:
    """Allocations skip the node's blocks known to be full; a release (by handle or by
    address) makes its block a candidate again, in address order as before."""
    ds = FakeDatastore()
    (a,) = await setup(ds, cidr="10.0.0.0/27", size=30, nodes=1)  # blocks of 4
    got = [(await a.auto_assign(f"h{i}", namespace="ns", pod=f"p{i}"))[0].address
           for i in range(9)]
    assert got == [f"10.0.0.{i}" for i in range(9)]  # two full blocks and one started
    assert await a.release_by_handle("h1") == 1
    (x,) = await a.auto_assign("x", namespace="ns", pod="x")
    assert x.address == "10.0.0.1"
    assert await a.release_ips(["10.0.0.6"]) == ["10.0.0.6"]
    (y,) = await a.auto_assign("y", namespace="ns", pod="y")
    (z,) = await a.auto_assign("z", namespace="ns", pod="z")
    assert (y.address, z.address) == ("10.0.0.6", "10.0.0.9")


@pytest.mark.parametrize(("before", "after"), [(30, 29), (29, 30)])
async def test_a_pools_block_size_changed_in_use_never_makes_overlapping_blocks(
        before: int, after: int) -> None:
    """An IPPool's blockSize rewritten while its blocks exist (etcdctl accepts it): blocks
    of the new size must not overlap the old ones, or two blocks (two nodes) hand out the
    same address. Claims skip every candidate that overlaps an existing block, and a
    requested address is looked up in the block that holds it, whatever its size."""
    ds = FakeDatastore()
    (a, b) = await setup(ds, size=before)
    (held,) = await a.auto_assign("ha", namespace="ns", pod="a")
    await put_pool(ds, "p", "10.0.0.0/28", after)
    with pytest.raises(AddressInUseError):
        await b.assign_ip(held.address, "hb", namespace="ns", pod="b")
    got = [(await b.auto_assign(f"h{i}", namespace="ns", pod=f"b{i}"))[0] for i in range(3)]
    assert held.address not in {g.address for g in got}
    spans = sorted((int(n.first), int(n.last)) for n in
                   (netaddr.IPNetwork(c) for c in await a._claims.block_cidrs()))
    assert all(x[1] < y[0] for x, y in itertools.pairwise(spans)), spans


async def test_an_address_a_workload_uses_is_never_handed_out_though_free_in_its_block(
        ) -> None:
    """``IpamInputs.in_use`` (the agent's WorkloadEndpoints): an address released while its
    pod runs is skipped by automatic assignment and refused when requested."""
    ds = FakeDatastore()
    await setup(ds, size=30, nodes=1)
    inputs = await load_inputs(ds, "n1")
    a = IpamClient(ds, "n1", inputs=static_inputs(replace(inputs, in_use=frozenset(
        {"10.0.0.0", "10.0.0.2"}))))
    got = [(await a.auto_assign(f"h{i}", namespace="ns", pod=f"p{i}"))[0].address
           for i in range(2)]
    assert got == ["10.0.0.1", "10.0.0.3"]
    with pytest.raises(AddressInUseError):
        await a.assign_ip("10.0.0.2", "hx", namespace="ns", pod="x")
    (nxt,) = await a.auto_assign("h2", namespace="ns", pod="p2")
    assert nxt.address == "10.0.0.4"  # a new block, not 10.0.0.0 or 10.0.0.2


async def test_a_repeated_assign_after_an_outside_release_holds_what_it_returns() -> None:
    """`auto_assign` is idempotent per handle from this client's cache of the handle; an
    operator's release (another client) emptied the handle meanwhile: the repeat must
    assign again, not return the address the handle no longer holds."""
    ds = FakeDatastore()
    (a,) = await setup(ds, size=28, nodes=1)
    (first,) = await a.auto_assign("h", namespace="ns", pod="p")
    assert await IpamClient(ds, "n1").release_ips([first.address]) == [first.address]
    (again,) = await a.auto_assign("h", namespace="ns", pod="p")
    kv = await ds.get(keys.ipam_handle("h"))
    assert kv is not None and again.address in kv.value.decode()


async def test_addresses_another_client_frees_in_a_full_block_are_seen_before_giving_up(
        ) -> None:
    """This node's one block is full and it may claim no other; another client (``ipam
    release``, ``check --fix``) frees an address in it. The next assign finds it instead
    of answering from its cached, full copy of the block that the pool is exhausted."""
    ds = FakeDatastore()
    await setup(ds, size=30, nodes=1)
    await put_ipam_config(ds, strict_affinity=True, max_blocks_per_host=1)
    a = IpamClient(ds, "n1")
    got = [(await a.auto_assign(f"h{i}", namespace="ns", pod=f"p{i}"))[0] for i in range(4)]
    with pytest.raises(PoolExhaustedError):
        await a.auto_assign("h4", namespace="ns", pod="p4")
    assert await IpamClient(ds, "n1").release_ips([got[2].address]) == [got[2].address]
    (again,) = await a.auto_assign("h4", namespace="ns", pod="p4")
    assert again.address == got[2].address


class _ContendedBlocks(FakeDatastore):
    """Another writer touches every block just before each of the next ``rounds`` IPAM
    transactions, so each of them loses its compare (two processes of one node in lockstep)."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        if self.rounds > 0 and compare:
            self.rounds -= 1
            blocks, _ = await self.list(keys.ipam_block(""))
            for kv in blocks:
                await self.put(kv.key, kv.value)  # a txn without compares
        return await super().txn(compare, success, failure)


@pytest.mark.parametrize("how", ["handle", "address"])
async def test_a_release_outlasts_more_lost_races_than_its_attempt_count(how: str) -> None:
    """A release that loses its block's compare round after round (another process of the
    node allocating in the same block) keeps trying, pausing a jittered moment between
    rounds, for the conflict budget — not just ``max_attempts`` rounds — and then frees."""
    ds = _ContendedBlocks()
    await setup(ds, size=28, nodes=1)
    pauses: list[float] = []

    async def sleep(s: float) -> None:
        pauses.append(s)

    a = IpamClient(ds, "n1", max_attempts=3, sleep=sleep)
    (got,) = await a.auto_assign("h", namespace="ns", pod="p")
    ds.rounds = 10
    if how == "handle":
        assert await a.release_by_handle("h") == 1
    else:
        assert await a.release_ips([got.address]) == [got.address]
    assert ds.rounds == 0 and len(pauses) == 10 and all(0 <= p <= 0.02 for p in pauses)
    assert await ds.get(keys.ipam_handle("h")) is None
    b = IpamClient(ds, "n1")  # the pool's one block of 16 has all 16 free again
    again = {(await b.auto_assign(f"h{i}", namespace="ns", pod=f"p{i}"))[0].address
             for i in range(16)}
    assert got.address in again and len(again) == 16


class _CountingReads(FakeDatastore):
    """Counts the reads of IPAM blocks: whole-prefix lists and single gets."""

    def __init__(self) -> None:
        super().__init__()
        self.block_lists = 0
        self.block_gets: list[str] = []

    async def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KV], int]:
        if prefix == keys.ipam_block("") and not keys_only:
            self.block_lists += 1
        return await super().list(prefix, keys_only)

    async def get(self, key: str) -> KV | None:
        if key.startswith(keys.ipam_block("")):
            self.block_gets.append(key)
        return await super().get(key)


async def _views(ds: Datastore, node: str) -> IpamInputs:
    """The inputs with each block's room and the orphans, as the agent's cluster state
    knows them."""
    kvs, _ = await ds.list(keys.ipam_block(""))
    blocks = [Block.from_json(kv.value) for kv in kvs]
    return replace(await load_inputs(ds, node),
                   room={b.cidr: len(b.unallocated) for b in blocks},
                   orphans=frozenset(b.cidr for b in blocks if b.affinity is None))


async def test_borrowing_reads_the_blocks_with_room_not_every_block() -> None:
    """With each block's room known (the agent's cluster state), a borrowing allocation
    reads a few blocks that have room, in order, and never every block of the pool."""
    ds = _CountingReads()
    clients = await setup(ds, cidr="10.0.0.0/26", size=30, nodes=17)  # 16 blocks of 4
    for c in clients[:16]:  # every block claimed; the first 12 full
        for i in range(4 if int(c.node[1:]) <= 12 else 1):
            await c.auto_assign(f"{c.node}.h{i}", namespace="ns", pod="p")
    me = IpamClient(ds, "n17", inputs=static_inputs(await _views(ds, "n17")))
    ds.block_lists, ds.block_gets = 0, []
    (got,) = await me.auto_assign("n17.h", namespace="ns", pod="p")
    assert got.borrowed and got.block == "10.0.0.48/30"  # the first block with room
    assert ds.block_lists == 0 and 0 < len(ds.block_gets) <= 4


async def test_borrowing_from_a_stale_view_of_the_blocks_room_still_finds_an_address(
        ) -> None:
    """The state's view of the blocks' room lags etcd's: the blocks it names are full by
    now, and it has not seen the one with room. The allocation then searches every block,
    as read now, and borrows."""
    ds = _CountingReads()
    clients = await setup(ds, cidr="10.0.0.0/28", size=30, nodes=5)  # 4 blocks of 4
    for c in clients[:4]:
        await c.auto_assign(f"{c.node}.h0", namespace="ns", pod="p")
    inputs = await _views(ds, "n5")
    (last,) = await clients[3].affine_blocks()
    assert inputs.room is not None
    stale = {c: free for c, free in inputs.room.items() if c != last}
    for c in clients[:3]:  # blocks 1-3 fill up behind the view's back
        for i in range(1, 4):
            await c.auto_assign(f"{c.node}.h{i}", namespace="ns", pod="p")
    me = IpamClient(ds, "n5", inputs=static_inputs(replace(inputs, room=stale)))
    ds.block_lists = 0
    (got,) = await me.auto_assign("n5.h", namespace="ns", pod="p")
    assert got.borrowed and got.block == last and ds.block_lists == 1


async def test_an_orphan_the_inputs_know_of_is_adopted_without_reading_every_block() -> None:
    ds = _CountingReads()
    clients = await setup(ds, cidr="10.0.0.0/29", size=30, nodes=3)  # 2 blocks of 4
    await clients[0].auto_assign("a0", namespace="ns", pod="p")
    await clients[1].auto_assign("b0", namespace="ns", pod="p")
    out = await release_node(ds, "n1")
    assert out.orphaned_blocks == ("10.0.0.0/30",)
    me = IpamClient(ds, "n3", inputs=static_inputs(await _views(ds, "n3")))
    ds.block_lists = 0
    (got,) = await me.auto_assign("c0", namespace="ns", pod="p")
    assert got.block == "10.0.0.0/30" and not got.borrowed and ds.block_lists == 0
    assert await me.affine_blocks() == ["10.0.0.0/30"]
