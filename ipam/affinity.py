"""The value of ``ipam/affinities/<node>/<cidr->``: a claim's state and when it was entered.

States: ``pending`` (claim in progress: never used for allocation nor advertised),
``confirmed`` (the node owns the block) and ``pendingDeletion`` (release in progress).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PENDING = "pending"
CONFIRMED = "confirmed"
PENDING_DELETION = "pendingDeletion"
STATES = (PENDING, CONFIRMED, PENDING_DELETION)


@dataclass(frozen=True)
class AffinityState:
    state: str  # one of STATES, or "invalid"
    time: float = 0.0


def affinity_value(state: str, now: float) -> bytes:
    return json.dumps({"state": state, "time": now}, separators=(",", ":")).encode()


def parse_affinity(raw: bytes | str) -> AffinityState:
    """The state of an affinity value; unreadable values are ``invalid`` (never used)."""
    try:
        d = json.loads(raw)
        state = d.get("state") if isinstance(d, dict) else None
        t = float(d.get("time", 0.0)) if isinstance(d, dict) else 0.0
    except (ValueError, TypeError):
        return AffinityState("invalid")
    return AffinityState(state if state in STATES else "invalid", t)
