"""The counts of the counted rules of table ``inet l3fabric`` (of one chain, or of every
chain), read over raw nf_tables netlink: what an apply reads of the chains it is about to
rewrite, and what a scrape reads of the whole table.

Why not libnftables: a listing, even of one chain, first fills libnftables' cache with
every set of the table (~5-16 ms per chain listed, whatever the chain holds), and one
batch cannot list several chains. The kernel filters a rule dump by table and chain itself
(``NFTA_RULE_TABLE``/``NFTA_RULE_CHAIN`` in an ``NLM_F_DUMP`` request), so one dump returns
those rules and nothing else; of each rule this reads only its comment
(``NFTA_RULE_USERDATA``) and its ``counter`` expressions, with ``struct``, passing over the
other expressions unparsed.

The result is what `felix_like.policy.nft.parse_counters` makes of a listing of the same
rules: (packets, bytes) by chain and `Counted`, the counted rules found by the comment that
spells their `Counted`, the rest skipped.

A dump spans several datagrams; it sees one consistent table because only the backend
writes it, holding the same lock as while it reads. One request in flight at a time: use an
instance from one thread at a time. It reads the namespace given to `Nftnl.open`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from felix_like.netlink import NLM_F_DUMP, Rtnl, _parse_attrs, _str
from felix_like.policy.nft import TABLE, ChainCounts, add_rule_counts

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETRULE = 7
NFPROTO_INET = 1  # the family of our table (nft.FAMILY)
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_USERDATA = 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NFTNL_UDATA_RULE_COMMENT = 0  # libnftnl's user data: type (1 byte), length (1 byte), value

_NFGENMSG = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), resource id (BE)
_ATTR = struct.Struct("=HH")
_BE64 = struct.Struct(">Q")


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every attribute of ``data`` in order (a list's elements share a type)."""
    offset = 0
    while offset + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, offset)
        if size < _ATTR.size:
            return
        yield kind & 0x3FFF, data[offset + _ATTR.size:offset + size]
        offset += (size + 3) & ~3


def comment(userdata: bytes) -> str | None:
    """The comment in a rule's user data (libnftnl's type-length-value records), if any."""
    offset = 0
    while offset + 2 <= len(userdata):
        kind, size = userdata[offset], userdata[offset + 1]
        value = userdata[offset + 2:offset + 2 + size]
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return value.split(b"\0", 1)[0].decode(errors="replace")
        offset += 2 + size
    return None


#: How an expression whose name is ``counter`` starts: the kernel puts the name first.
_COUNTER_NAME = _str(NFTA_EXPR_NAME, "counter")


def counters(expressions: bytes) -> Iterator[tuple[int, int]]:
    """(packets, bytes) of each ``counter`` expression of a rule's expression list. The
    other expressions are passed over by their first bytes, unparsed: a whole-table read
    meets tens of thousands of them."""
    for kind, elem in _attrs(expressions):
        if kind != NFTA_LIST_ELEM or not elem.startswith(_COUNTER_NAME):
            continue
        data = _parse_attrs(_parse_attrs(elem, 0).get(NFTA_EXPR_DATA, b""), 0)
        packets, size = data.get(NFTA_COUNTER_PACKETS), data.get(NFTA_COUNTER_BYTES)
        yield (_BE64.unpack(packets[:8])[0] if packets else 0,
               _BE64.unpack(size[:8])[0] if size else 0)


def parse_rules(bodies: Iterable[bytes]) -> ChainCounts:
    """The counts by chain and `Counted` of the rules of a GETRULE dump (message bodies,
    each an ``nfgenmsg`` and the rule's attributes)."""
    found: ChainCounts = {}
    for body in bodies:
        attrs = _parse_attrs(body, _NFGENMSG.size)
        userdata = attrs.get(NFTA_RULE_USERDATA)
        text = comment(userdata) if userdata is not None else None
        if text is None:
            continue
        chain = attrs.get(NFTA_RULE_CHAIN, b"").split(b"\0", 1)[0].decode(errors="replace")
        add_rule_counts(found, chain, text, counters(attrs.get(NFTA_RULE_EXPRESSIONS, b"")))
    return found


class Nftnl(Rtnl):
    """An nf_tables netlink socket: `Rtnl`'s transport over ``NETLINK_NETFILTER``."""

    protocol = NETLINK_NETFILTER

    def rules(self, chain: str | None = None) -> list[bytes]:
        """The rules of ``chain`` of our table (every chain's: None), as message bodies:
        one dump, which the kernel filters. A chain that does not exist has none."""
        body = _NFGENMSG.pack(NFPROTO_INET, 0, 0) + _str(NFTA_RULE_TABLE, TABLE)
        if chain is not None:
            body += _str(NFTA_RULE_CHAIN, chain)
        return self._request((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE, NLM_F_DUMP, body)

    def counts(self, chain: str | None = None) -> ChainCounts:
        """The counts of the counted rules of ``chain`` (None: of every chain)."""
        return parse_rules(self.rules(chain))
