"""Failover: the leader of a 3-member cluster dies in the middle of sequential CAS writes
through one Datastore configured with all three endpoints.

Every write either succeeds or raises a typed `DatastoreError`; every write reported as
successful survives; the measured gap is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

import functools
import itertools
import time

import pytest
from helpers.etcd_cluster import etcd_cluster  # tests/ is on sys.path (rootdir conftest)

from datastore.cas import cas_retry, create_if_absent
from datastore.client import Datastore, DatastoreError, EtcdConfig

P = "/l3fabric/v1/test/failover/"
N = 200
KILL_AT = 60


@pytest.mark.parametrize(("timeout", "retries"), [(2.0, 0), (1.0, 3)],
                         ids=["timeout2s-raw", "timeout1s-cas_retry"])
async def test_leader_kill_during_writes(timeout: float, retries: int) -> None:
    """With ``retries``, each write goes through `cas_retry` (re-read, so a write that
    landed despite a timeout is found present: "exists" then means our own earlier try)."""
    with etcd_cluster(3) as cluster:
        leader = cluster.leader()
        outcomes: list[tuple[int, str, float, float]] = []  # i, outcome, start, end
        killed_at = 0.0
        cfg = EtcdConfig.from_strings(cluster.endpoints, timeout=timeout)
        async with Datastore(cfg) as ds:
            for i in range(N):
                if i == KILL_AT:
                    killed_at = time.monotonic()
                    leader.kill()
                t0 = time.monotonic()
                try:
                    ok = await cas_retry(functools.partial(
                        create_if_absent, ds, P + f"{i:04d}", str(i).encode()),
                        unavailable_retries=retries)
                    outcome = "ok" if ok else "exists"
                except DatastoreError as e:  # typed: anything else fails the test
                    outcome = type(e).__name__
                outcomes.append((i, outcome, t0, time.monotonic()))

            # Verify through the survivors (a fresh client; the old one is fine too).
            kvs, _ = await ds.list(P)
        present = {kv.key for kv in kvs}
        succeeded = [i for i, o, _, _ in outcomes if o == "ok"]
        failed = [(i, o) for i, o, _, _ in outcomes if o not in ("ok", "exists")]
        assert not [i for i in succeeded if P + f"{i:04d}" not in present], "lost writes"
        if retries:
            assert not failed  # every timeout was absorbed by a retry
            assert all(P + f"{i:04d}" in present for i in range(N))
        else:
            assert not [i for i, o, _, _ in outcomes if o == "exists"]  # nobody else writes
            assert len(succeeded) >= N - 10, f"too many failures: {failed}"
        assert cluster.leader() is not leader

        after = [(s, e) for i, o, s, e in outcomes if o == "ok" and i >= KILL_AT]
        first_ok_after = after[0][1] - killed_at
        ends = [e for _, o, _, e in outcomes if o == "ok"]
        max_gap = max(b - a for a, b in itertools.pairwise(ends))
        slowest = max(e - s for _, _, s, e in outcomes)
        print(f"\n[timeout {timeout}s, {retries} retries] leader kill: first successful "
              f"write {first_ok_after:.2f}s after the kill; "
              f"largest gap between successful writes {max_gap:.2f}s; slowest call "
              f"{slowest:.2f}s; {len(failed)} typed failures {failed}; "
              f"{len(succeeded)}/{N} succeeded, all present")
        assert first_ok_after < 5.0
