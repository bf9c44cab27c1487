"""How etcd's gRPC errors reach callers: transient ones as `UnavailableError`, which the
bounded CAS retry runs again; others as `DatastoreError`, which it does not."""
from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from datastore.client import DatastoreError, NotFoundError, UnavailableError, _translate


def _rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


@pytest.mark.parametrize(("code", "details"), [
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    # What a member answered when the leader of three was killed during allocations.
    (grpc.StatusCode.UNKNOWN, "context deadline exceeded"),
    (grpc.StatusCode.UNKNOWN, "etcdserver: request timed out"),
    (grpc.StatusCode.UNKNOWN, "etcdserver: no leader"),
])
def test_election_and_timeouts_are_unavailable(code: grpc.StatusCode, details: str) -> None:
    err = _translate(_rpc_error(code, details))
    assert isinstance(err, UnavailableError)
    assert details in str(err)


def test_not_found_is_its_own_error() -> None:
    assert isinstance(_translate(_rpc_error(grpc.StatusCode.NOT_FOUND, "lease not found")),
                      NotFoundError)


@pytest.mark.parametrize(("code", "details"), [
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    (grpc.StatusCode.UNKNOWN, "something else"),
])
def test_other_errors_are_not_retried(code: grpc.StatusCode, details: str) -> None:
    err = _translate(_rpc_error(code, details))
    assert type(err) is DatastoreError
    assert code.name in str(err)
