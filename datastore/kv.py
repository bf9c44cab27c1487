"""The datastore's vocabulary: typed errors, the values etcd hands back, the operations of a
transaction. Plain frozen values, no I/O: the calculation modules (``ipam.planner``) read
`KV` without reaching gRPC, and `datastore.client` speaks etcd in these terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class DatastoreError(Exception):
    """Base of every datastore failure."""


class NotFoundError(DatastoreError):
    pass


class ConflictError(DatastoreError):
    """A compare-and-swap lost: the key changed (or exists, or vanished) since it was read."""


class UnavailableError(DatastoreError):
    """No etcd member answered within the deadline."""


class CompactedError(DatastoreError):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available is {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    """One change. ``kv.value`` is empty for a delete; ``kv.mod_revision`` is the revision."""

    type: Literal["put", "delete"]
    kv: KV

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


# -- transaction vocabulary -------------------------------------------------------------

@dataclass(frozen=True)
class Page:
    """One range read of `Datastore.list_page`: ``more`` says keys remain after ``kvs``."""

    kvs: list[KV]
    revision: int
    more: bool


@dataclass(frozen=True)
class Compare:
    """``target`` of ``key`` compared with ``value`` (``op`` is one of == != < >).

    ``Compare(k, "create", "==", 0)`` means "k does not exist";
    ``Compare(k, "mod", "==", rev)`` means "k was not changed since rev".
    """

    key: str
    target: Literal["mod", "create", "version", "value"]
    op: Literal["==", "!=", "<", ">"]
    value: int | bytes


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int | None = None


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class Get:
    key: str


@dataclass(frozen=True)
class Range:
    """Every key under ``prefix``, in key order, inside a transaction: a read of several
    prefixes at one revision, in one request. ``keys_only``: the KVs come back without
    their values (``b""``), revisions and versions intact."""

    prefix: str
    keys_only: bool = False


Op = Put | Delete | Get | Range


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per Get in the executed branch: the KV, or None if absent.
    gets: tuple[KV | None, ...] = field(default_factory=tuple)
    # One entry per Range in the executed branch: its KVs in key order.
    ranges: tuple[tuple[KV, ...], ...] = field(default_factory=tuple)
