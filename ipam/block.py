"""One IPAM block as a value: pure address arithmetic, the allocation state machine and its JSON.

Owns: the in-memory form of ``ipam/blocks/<cidr->`` and every rule about which ordinal may
be handed out next. Nothing here does I/O; the allocator decodes a block from the bytes it
read, mutates the working copy and writes the bytes back under a compare-and-swap.

Invariants (checked by `Block.problems`, enforced by every mutator):

* every ordinal ``0 .. size-1`` is either allocated (``allocations[o]`` indexes an entry
  of ``attributes``) or listed exactly once in ``unallocated``;
* ``unallocated`` is a FIFO: a released ordinal is appended at the end, so it is reused
  last; ``releasedAt`` remembers when, for the optional cool-down;
* ``sequence[o]`` grows by one on every assignment of ``o``. A release that names the
  sequence it was handed (``release(o, handle, seq)``) cannot free the address after it was
  released and handed out again - the stale-release race of a slow CNI DEL.

The value in etcd (read it only through `Block.from_json`; ``fabricctl ipam show`` and the
BGP exporter do)::

    {"cidr": "10.244.0.0/26", "affinity": "node:n1",
     "allocations": "0,_1,1-2,_60",         # per ordinal: index into attributes, or null
     "unallocated": "4-63,1",               # FIFO of free ordinals
     "attributes": [["<handle>", "<namespace>", "<pod>", <time>],               # node n1
                    ["<handle>", "<namespace>", "<pod>", <time>, "n2"],         # borrowed
                    ["<handle>", "<namespace>", "<pod>", <time>, null, {extra}]],
     "sequence": "1,2,1*2,0*60", "releasedAt": {"1": <time>}}

The three per-ordinal arrays are run-length strings (grammar at `_runs`): ``a-b`` a run of
consecutive numbers, ``_n`` n nulls, ``v*n`` n times v. Blocks written with plain JSON
arrays there (``[0, null, 1, ...]``) are still read.

An attribute row omits its node when it is the block's affinity node (nearly always), and
times are kept to the millisecond: every allocation rewrites the whole block, so its size is
paid on each one. Blocks written with one object per attribute (``{"handle": ...}``) are
still read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from json.encoder import encode_basestring_ascii
from typing import Any

import netaddr

AFFINITY_PREFIX = "node:"

_compact = json.JSONEncoder(separators=(",", ":")).encode


class BlockFormatError(ValueError):
    """A block value that is not valid JSON or breaks the block invariants."""


@dataclass(frozen=True)
class AllocationAttrs:
    """Who holds an address: the handle plus the pod information stored beside it."""

    handle: str
    namespace: str = ""
    pod: str = ""
    node: str = ""
    time: float = 0.0
    extra: Mapping[str, str] = field(default_factory=dict)
    # Encoded fragments by owner node (see `Block.to_json`): an allocation's attributes never
    # change, so each is encoded once, not on every write of its block.
    _encoded: dict[str, str] = field(default_factory=dict, init=False, repr=False,
                                     compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The readable object form (``fabricctl ipam show -o json`` and the like)."""
        d: dict[str, Any] = {"handle": self.handle, "namespace": self.namespace,
                             "pod": self.pod, "node": self.node, "time": self.time}
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    def encoded(self, owner: str) -> str:
        """The compact JSON array stored in a block whose affinity node is ``owner``:
        ``[handle, namespace, pod, time]``, then ``node`` unless it is ``owner``, then
        ``extra`` if any (``node`` is then null when it is ``owner``)."""
        got = self._encoded.get(owner)
        if got is None:
            # Milliseconds are plenty for a grace period; a full float repr costs 5 bytes more
            # per address. Rounded down: a stored time never lies in the future, or an
            # address checked within half a millisecond would look younger than it is.
            t = math.floor(self.time * 1000) / 1000
            if self.node == owner and not self.extra:
                # One per allocation: the bytes `_compact` makes of the row (ASCII strings,
                # float repr), built directly.
                q = encode_basestring_ascii
                got = f"[{q(self.handle)},{q(self.namespace)},{q(self.pod)},{t!r}]"
            else:
                row: list[Any] = [self.handle, self.namespace, self.pod, t,
                                  None if self.node == owner else self.node]
                if self.extra:
                    row.append(dict(self.extra))
                got = _compact(row)
            if len(self._encoded) > 4:
                self._encoded.clear()
            self._encoded[owner] = got
        return got

    @classmethod
    def from_json(cls, d: Any, owner: str = "") -> AllocationAttrs:
        """Decode either form: the compact array (``owner`` fills an omitted node) or the
        object form of blocks written before the compact encoding."""
        if isinstance(d, list):
            return cls._from_row(d, owner)
        if not isinstance(d, dict) or not isinstance(d.get("handle"), str):
            raise BlockFormatError(f"attribute {d!r} has no handle")
        extra = d.get("extra") or {}
        if not isinstance(extra, dict):
            raise BlockFormatError(f"attribute extra {extra!r} is not an object")
        return cls(handle=d["handle"], namespace=str(d.get("namespace", "")),
                   pod=str(d.get("pod", "")), node=str(d.get("node", "")),
                   time=float(d.get("time", 0.0)),
                   extra={str(k): str(v) for k, v in extra.items()})

    @classmethod
    def _from_row(cls, row: list[Any], owner: str) -> AllocationAttrs:
        if not 4 <= len(row) <= 6 or not isinstance(row[0], str):
            raise BlockFormatError(f"attribute {row!r} is not [handle, namespace, pod, time"
                                   f"(, node(, extra))]")
        node = row[4] if len(row) > 4 and row[4] is not None else owner
        extra = row[5] if len(row) > 5 else {}
        if not isinstance(extra, dict):
            raise BlockFormatError(f"attribute extra {extra!r} is not an object")
        return cls(handle=row[0], namespace=str(row[1]), pod=str(row[2]), node=str(node),
                   time=float(row[3]),
                   extra={str(k): str(v) for k, v in extra.items()} if extra else {})


def affinity_of(node: str) -> str:
    return AFFINITY_PREFIX + node


def node_of_affinity(affinity: str | None) -> str | None:
    if affinity and affinity.startswith(AFFINITY_PREFIX):
        return affinity[len(AFFINITY_PREFIX):]
    return None


def reserved_ordinals(cidr: str, reservations: netaddr.IPSet) -> frozenset[int]:
    """The ordinals of ``cidr`` covered by a reservation."""
    net = netaddr.IPNetwork(cidr)
    overlap = reservations & netaddr.IPSet([net])
    first = int(net.first)
    return frozenset(int(ip) - first for ip in overlap)


@dataclass
class Block:
    """A mutable working copy of one block. Build with `new` or `from_json`."""

    cidr: str
    affinity: str | None
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[AllocationAttrs]
    sequence: list[int]
    released_at: dict[int, float] = field(default_factory=dict)
    # Derived from cidr once (netaddr objects are slow to build on the hot path).
    _first: int = field(init=False, repr=False, compare=False, default=0)
    _size: int = field(init=False, repr=False, compare=False, default=0)
    _version: int = field(init=False, repr=False, compare=False, default=4)
    _prefix: int = field(init=False, repr=False, compare=False, default=0)
    # The JSON of cidr and affinity (see `to_json`), for the affinity it was made with.
    _head: str | None = field(init=False, repr=False, compare=False, default=None)
    _head_affinity: str | None = field(init=False, repr=False, compare=False, default=None)
    # (owner, attributes, their JSON) of the last write: a copy that only appended to the
    # attributes (an allocation) encodes just the new rows and splices them on.
    _attr_json: tuple[str, list[AllocationAttrs], str] | None = field(
        init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        net = netaddr.IPNetwork(self.cidr)
        self._first, self._size = int(net.first), int(net.size)
        self._version, self._prefix = int(net.version), int(net.prefixlen)

    # -- construction and JSON --------------------------------------------------------

    @classmethod
    def new(cls, cidr: str, affinity: str | None) -> Block:
        net = netaddr.IPNetwork(cidr)
        if net.cidr != net:
            raise ValueError(f"{cidr} is not a network address")
        size = net.size
        return cls(cidr=str(net), affinity=affinity, allocations=[None] * size,
                   unallocated=list(range(size)), attributes=[], sequence=[0] * size)

    def to_json(self) -> bytes:
        """The block's etcd value. Attributes are compact arrays (`AllocationAttrs.encoded`),
        each encoded once and spliced in: a /26 with 64 allocations is ~40% smaller than
        with one object per attribute, and re-encoding it costs a join, not 64 dumps. The
        per-ordinal arrays are run-length strings (`_runs`, `_slots`, `_counts`): a /26's
        three arrays of 64 numbers each take a few bytes instead of ~500."""
        owner = node_of_affinity(self.affinity) or ""
        head = self._head
        if head is None:
            dumps = _compact
            head = self._head = (f'{{"cidr":{dumps(self.cidr)},'
                                 f'"affinity":{dumps(self.affinity)},')
            self._head_affinity = self.affinity
        elif self._head_affinity != self.affinity:
            self._head = None
            return self.to_json()
        if self.released_at:
            released = "{" + ",".join(f'"{k}":{_compact(v)}'
                                      for k, v in sorted(self.released_at.items())) + "}"
        else:
            released = "{}"
        return (f'{head}"allocations":"{_slots(self.allocations)}",'
                f'"unallocated":"{_runs(self.unallocated)}",'
                f'"attributes":[{self._attributes_json(owner)}],'
                f'"sequence":"{_counts(self.sequence)}","releasedAt":{released}}}').encode()

    def _attributes_json(self, owner: str) -> str:
        attrs = self.attributes
        cached = self._attr_json
        if cached is not None and cached[0] == owner:
            done = cached[1]
            m = len(done)
            # List equality checks identity first: C speed for the unchanged prefix.
            if m <= len(attrs) and attrs[:m] == done:
                if m == len(attrs):
                    return cached[2]
                tail = ",".join([a.encoded(owner) for a in attrs[m:]])
                text = f"{cached[2]},{tail}" if m else tail
                self._attr_json = (owner, list(attrs), text)
                return text
        text = ",".join([a.encoded(owner) for a in attrs])
        self._attr_json = (owner, list(attrs), text)
        return text

    @classmethod
    def from_json(cls, raw: bytes | str) -> Block:
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise BlockFormatError(f"not JSON: {e}") from e
        if not isinstance(d, dict):
            raise BlockFormatError("a block must be a JSON object")
        try:
            net = netaddr.IPNetwork(d["cidr"])
            size = net.size
            raw_alloc, raw_free = d["allocations"], d["unallocated"]
            allocations = (_unslots(raw_alloc, size) if isinstance(raw_alloc, str)
                           else [None if a is None else int(a) for a in raw_alloc])
            unallocated = (_unruns(raw_free, size) if isinstance(raw_free, str)
                           else [int(o) for o in raw_free])
            affinity = d.get("affinity")
            owner = (node_of_affinity(affinity) or "") if isinstance(affinity, str) else ""
            attributes = [AllocationAttrs.from_json(a, owner)
                          for a in d.get("attributes", [])]
            raw_seq = d.get("sequence") or [0] * size
            sequence = (_uncounts(raw_seq, size) if isinstance(raw_seq, str)
                        else [int(s) for s in raw_seq])
            released = {int(k): float(v) for k, v in (d.get("releasedAt") or {}).items()}
        except (KeyError, TypeError, ValueError, netaddr.AddrFormatError) as e:
            if isinstance(e, BlockFormatError):
                raise
            raise BlockFormatError(f"bad block field: {e!r}") from e
        if affinity is not None and not isinstance(affinity, str):
            raise BlockFormatError(f"affinity {affinity!r} is not a string")
        b = cls(cidr=str(net), affinity=affinity, allocations=allocations,
                unallocated=unallocated, attributes=attributes, sequence=sequence,
                released_at=released)
        problems = b.problems()
        if problems:
            raise BlockFormatError(f"block {b.cidr}: {problems[0]}")
        return b

    def problems(self) -> list[str]:
        """Every broken invariant, as sentences (empty when the block is sound)."""
        out: list[str] = []
        size = self.size
        if len(self.allocations) != size:
            out.append(f"{len(self.allocations)} allocation slots for {size} addresses")
        if len(self.sequence) != size:
            out.append(f"{len(self.sequence)} sequence numbers for {size} addresses")
        seen: set[int] = set()
        for o in self.unallocated:
            if not 0 <= o < size:
                out.append(f"unallocated ordinal {o} outside the block")
            elif o in seen:
                out.append(f"ordinal {o} listed twice as unallocated")
            seen.add(o)
        for o, a in enumerate(self.allocations):
            if a is None:
                if o not in seen:
                    out.append(f"ordinal {o} is neither allocated nor unallocated")
            else:
                if o in seen:
                    out.append(f"ordinal {o} is both allocated and unallocated")
                if not 0 <= a < len(self.attributes):
                    out.append(f"ordinal {o} points at missing attribute {a}")
        return out

    # -- arithmetic ------------------------------------------------------------------

    @property
    def network(self) -> netaddr.IPNetwork:
        return netaddr.IPNetwork(self.cidr)

    @property
    def size(self) -> int:
        return self._size

    @property
    def version(self) -> int:
        return self._version

    @property
    def prefix_len(self) -> int:
        return self._prefix

    @property
    def first(self) -> int:
        """The block's first address as an integer (sort key)."""
        return self._first

    def address(self, ordinal: int) -> str:
        n = self._first + ordinal
        if self._version == 4:  # on every allocation: skip netaddr's object
            return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        return str(netaddr.IPAddress(n, 6))

    def ordinal(self, address: str) -> int:
        """The ordinal of ``address``; ValueError if it is not inside this block."""
        net = self.network
        ip = netaddr.IPAddress(address)
        if ip.version != net.version or ip not in net:
            raise ValueError(f"{address} is not in block {self.cidr}")
        return int(ip) - int(net.first)

    # -- queries ---------------------------------------------------------------------

    @property
    def node(self) -> str | None:
        return node_of_affinity(self.affinity)

    def attrs(self, ordinal: int) -> AllocationAttrs | None:
        a = self.allocations[ordinal]
        return None if a is None else self.attributes[a]

    def in_use(self) -> int:
        return sum(1 for a in self.allocations if a is not None)

    def is_empty(self) -> bool:
        return not self.attributes and all(a is None for a in self.allocations)

    def allocated(self) -> Iterable[tuple[int, AllocationAttrs]]:
        for o, a in enumerate(self.allocations):
            if a is not None:
                yield o, self.attributes[a]

    def ordinals_of(self, handle: str) -> list[int]:
        return [o for o, at in self.allocated() if at.handle == handle]

    def free_ordinals(self, *, now: float = 0.0, cooldown: float = 0.0,
                      reserved: frozenset[int] = frozenset()) -> list[int]:
        """Ordinals that may be handed out now, in the order they would be (FIFO)."""
        if cooldown <= 0 and not reserved:
            return list(self.unallocated)
        return [o for o in self.unallocated
                if o not in reserved and not self._cooling(o, now, cooldown)]

    def _cooling(self, ordinal: int, now: float, cooldown: float) -> bool:
        if cooldown <= 0:
            return False
        t = self.released_at.get(ordinal)
        return t is not None and now - t < cooldown

    # -- mutators --------------------------------------------------------------------

    def assign(self, count: int, attrs: AllocationAttrs, *, now: float = 0.0,
               cooldown: float = 0.0, reserved: frozenset[int] = frozenset()) -> list[int]:
        """Hand out up to ``count`` ordinals (fewer if the block runs out), oldest-free first."""
        if cooldown <= 0 and not reserved:
            chosen = self.unallocated[:count]  # the common case, without a full scan
        else:
            chosen = self.free_ordinals(now=now, cooldown=cooldown, reserved=reserved)[:count]
        for o in chosen:
            self._take(o, attrs)
        return chosen

    def assign_ordinal(self, ordinal: int, attrs: AllocationAttrs) -> None:
        """Hand out one named ordinal; ValueError if it is in use.

        Requested addresses ignore the cool-down: the caller asked for exactly this one.
        """
        if not 0 <= ordinal < self.size:
            raise ValueError(f"ordinal {ordinal} outside block {self.cidr}")
        if self.allocations[ordinal] is not None:
            raise ValueError(f"{self.address(ordinal)} is in use")
        self._take(ordinal, attrs)

    def _take(self, ordinal: int, attrs: AllocationAttrs) -> None:
        self.unallocated.remove(ordinal)
        self.attributes.append(attrs)
        self.allocations[ordinal] = len(self.attributes) - 1
        self.sequence[ordinal] += 1
        self.released_at.pop(ordinal, None)

    def release(self, ordinal: int, *, handle: str | None = None, seq: int | None = None,
                now: float = 0.0) -> bool:
        """Free ``ordinal``; with ``handle``/``seq`` only if they still match. True if freed."""
        at = self.attrs(ordinal)
        if at is None:
            return False
        if handle is not None and at.handle != handle:
            return False
        if seq is not None and self.sequence[ordinal] != seq:
            return False
        self.allocations[ordinal] = None
        self.unallocated.append(ordinal)
        self.released_at[ordinal] = now
        self._compact_attributes()
        return True

    def _compact_attributes(self) -> None:
        """Drop attributes no ordinal uses; number the rest in ordinal order, so that the
        ``allocations`` runs in the JSON stay few after releases."""
        used = list(dict.fromkeys(a for a in self.allocations if a is not None))
        if used == list(range(len(self.attributes))):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[old] for old in used]
        self.allocations = [None if a is None else remap[a] for a in self.allocations]

    def expire_cooldowns(self, now: float, cooldown: float) -> None:
        """Forget release times older than the cool-down (keeps the JSON small)."""
        self.released_at = {o: t for o, t in self.released_at.items()
                            if cooldown > 0 and now - t < cooldown}

    def copy(self) -> Block:
        """A working copy that shares nothing mutable with this block."""
        b = object.__new__(Block)
        b.__dict__.update(self.__dict__)
        b.allocations, b.unallocated = list(self.allocations), list(self.unallocated)
        b.attributes, b.sequence = list(self.attributes), list(self.sequence)
        b.released_at = dict(self.released_at)
        return b


# -- run-length forms of the per-ordinal arrays (see `Block.to_json`) ---------------------
#
# ``unallocated`` ("3-9,1,0"): ascending runs ``a-b`` (a, a+1, .., b) and single ordinals,
# in FIFO order. ``allocations`` ("0-5,_3,6"): runs ``a-b`` of consecutive attribute indices
# on consecutive ordinals, single indices, and ``_n`` for n free ordinals. ``sequence``
# ("1*6,0*58"): values, ``v*n`` for n equal ones. An empty array is "". Blocks written with
# JSON arrays are still read (`Block.from_json` accepts either).


def _runs(values: list[int]) -> str:
    n = len(values)
    if not n:
        return ""
    first = values[0]
    if values[-1] - first == n - 1 and values == list(range(first, first + n)):
        return str(first) if n == 1 else f"{first}-{values[-1]}"  # the common case
    out: list[str] = []
    start = prev = first
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    out.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(out)


def _grow(out: list[Any], count: int, limit: int) -> None:
    if count < 1 or len(out) + count > limit:
        raise ValueError(f"more than {limit} entries for the block's {limit} addresses")


def _unruns(text: str, limit: int) -> list[int]:
    out: list[int] = []
    if not text:
        return out
    for tok in text.split(","):
        a, dash, b = tok.partition("-")
        if dash:
            lo, hi = int(a), int(b)
            _grow(out, hi - lo + 1, limit)
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(a))
    return out


def _slots(values: list[int | None]) -> str:
    n = len(values)
    k = n - values.count(None)
    if values[:k] == list(range(k)):  # the common case: 0, 1, .., k-1, then only nulls
        head = "" if k == 0 else "0" if k == 1 else f"0-{k - 1}"
        return f"{head},_{n - k}" if head and k < n else head or (f"_{n}" if n else "")
    out: list[str] = []
    i = 0
    while i < n:
        v = values[i]
        j = i + 1
        if v is None:
            while j < n and values[j] is None:
                j += 1
            out.append(f"_{j - i}")
        else:
            while j < n and values[j] == v + (j - i):
                j += 1
            out.append(str(v) if j == i + 1 else f"{v}-{v + j - i - 1}")
        i = j
    return ",".join(out)


def _unslots(text: str, limit: int) -> list[int | None]:
    out: list[int | None] = []
    if not text:
        return out
    for tok in text.split(","):
        if tok.startswith("_"):
            k = int(tok[1:])
            _grow(out, k, limit)
            out.extend([None] * k)
        else:
            out.extend(_unruns(tok, limit - len(out)))
    return out


def _counts(values: list[int]) -> str:
    n = len(values)
    if n:
        v0 = values[0]
        a = values.count(v0)
        if values[:a] == [v0] * a:  # the common cases: one value, or two (1s then 0s)
            if a == n:
                return f"{v0}*{n}" if n > 1 else str(v0)
            v1 = values[a]
            if values.count(v1) == n - a:
                head = f"{v0}*{a}" if a > 1 else str(v0)
                return f"{head},{v1}*{n - a}" if n - a > 1 else f"{head},{v1}"
    out: list[str] = []
    for v, group in groupby(values):
        k = len(list(group))
        out.append(str(v) if k == 1 else f"{v}*{k}")
    return ",".join(out)


def _uncounts(text: str, limit: int) -> list[int]:
    out: list[int] = []
    if not text:
        return out
    for tok in text.split(","):
        v, star, k = tok.partition("*")
        n = int(k) if star else 1
        _grow(out, n, limit)
        out.extend([int(v)] * n)
    return out


def block_cidr_for(address: str, pool_cidr: str, block_size: int) -> str:
    """The block of a pool with ``block_size`` that contains ``address``."""
    ip = netaddr.IPAddress(address)
    pool = netaddr.IPNetwork(pool_cidr)
    if ip.version != pool.version or ip not in pool:
        raise ValueError(f"{address} is not in {pool_cidr}")
    return str(netaddr.IPNetwork(f"{ip}/{block_size}").cidr)


def block_count(pool_cidr: str, block_size: int) -> int:
    """How many blocks of ``block_size`` the pool has."""
    pool = netaddr.IPNetwork(pool_cidr)
    return 1 << (block_size - int(pool.prefixlen))


def iter_block_cidrs(pool_cidr: str, block_size: int,
                     skip: Callable[[str], bool] | None = None, start: int = 0) -> Iterable[str]:
    """The pool's block CIDRs in address order from its ``start``-th block, wrapping
    around to the first, lazily (IPv6 pools have very many)."""
    pool = netaddr.IPNetwork(pool_cidr)
    step = 1 << ((32 if pool.version == 4 else 128) - block_size)
    first, count = int(pool.first), block_count(pool_cidr, block_size)
    v = pool.version
    start %= count
    for i in range(count):
        n = first + ((start + i) % count) * step
        # A claim walks past every block that exists: IPv4 without netaddr's objects.
        c = (f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}/{block_size}" if v == 4
             else f"{netaddr.IPAddress(n, 6)}/{block_size}")
        if skip is None or not skip(c):
            yield c
