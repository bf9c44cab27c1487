"""Named crash points inside the IPAM write paths, so tests can kill an allocator mid-way.

Owns: the set of armed points of this process. Production never arms one; ``reached()`` is a
set lookup. A test arms a point in-process (``arm(name)`` - the allocator then raises
`SimulatedCrash`, a ``BaseException`` that no IPAM code catches) or for a child process
through the environment variable ``L3FABRIC_IPAM_CRASH=<name>[,<name>…]`` (the child then
``os._exit(CRASH_EXIT_CODE)``s at that point: no cleanup, no finally blocks that write).

Points:

* claim of a block: ``after_pending_affinity`` (pending affinity written, no block yet),
  ``after_block_create`` (block written with our affinity, affinity still pending),
  ``before_confirm`` (same etcd state as the previous point, but after the claimer has
  re-read nothing - kept separate so tests name the step they mean);
* allocation: ``before_alloc_txn`` and ``after_alloc_txn`` (the single transaction has
  committed but the caller never hears of it: the address leaks until ``check --fix``).
  There is no ``after_block_write_before_handle``: block and handle are written in one
  transaction, so that intermediate state cannot exist;
* release: ``after_release_txn``; node removal: ``after_pending_deletion``.
"""

from __future__ import annotations

import os

CLAIM_POINTS = ("after_pending_affinity", "after_block_create", "before_confirm")
ALLOC_POINTS = ("before_alloc_txn", "after_alloc_txn")
OTHER_POINTS = ("after_release_txn", "after_pending_deletion")
POINTS = CLAIM_POINTS + ALLOC_POINTS + OTHER_POINTS

ENV = "L3FABRIC_IPAM_CRASH"
CRASH_EXIT_CODE = 77


class SimulatedCrash(BaseException):
    """Raised at an armed point; derives from BaseException so nothing swallows it."""

    def __init__(self, point: str) -> None:
        super().__init__(f"simulated crash at {point}")
        self.point = point


_armed: set[str] = set()
_exit_armed: set[str] = {p for p in os.environ.get(ENV, "").split(",") if p}


def arm(point: str) -> None:
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r} (known: {', '.join(POINTS)})")
    _armed.add(point)


def disarm(point: str | None = None) -> None:
    if point is None:
        _armed.clear()
    else:
        _armed.discard(point)


def reached(point: str) -> None:
    """Called by IPAM code at ``point``: crash here if a test armed it."""
    if point in _exit_armed:
        os._exit(CRASH_EXIT_CODE)
    if point in _armed:
        _armed.discard(point)
        raise SimulatedCrash(point)
