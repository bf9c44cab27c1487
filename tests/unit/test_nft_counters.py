"""Rule counters read from an nf_tables rule dump (`felix_like.policy.nft_counters`), on
messages built here as the kernel sends them: the same counts as a libnftables listing of
the same rules gives, and the dump request the kernel filters by table and chain."""

from __future__ import annotations

import struct
from typing import Any

from felix_like.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, _attr, _str
from felix_like.policy.nft import ChainCounts, gather_counts, parse_counters
from felix_like.policy.nft_counters import (
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET,
    NFT_MSG_GETRULE,
    NFTA_COUNTER_BYTES,
    NFTA_COUNTER_PACKETS,
    NFTA_EXPR_DATA,
    NFTA_EXPR_NAME,
    NFTA_LIST_ELEM,
    NFTA_RULE_CHAIN,
    NFTA_RULE_EXPRESSIONS,
    NFTA_RULE_TABLE,
    NFTA_RULE_USERDATA,
    NFTNL_UDATA_RULE_COMMENT,
    Nftnl,
    comment,
    parse_rules,
)
from felix_like.policy.program import Counted

NESTED = 0x8000
ALLOW = Counted("np", "shop", "db", "ingress", 0, "allow")
DENY = Counted("default-deny", "shop", "", "ingress", None, "deny")

#: (chain, comment or None, [counter (packets, bytes), ...], other expressions) per rule.
RULES: list[tuple[str, str | None, list[tuple[int, int]], list[str]]] = [
    ("pi-1", ALLOW.text, [(4, 240)], ["meta", "cmp"]),
    ("pi-1", ALLOW.text, [(3, 180)], ["immediate"]),  # the same counter: summed
    ("pi-1", DENY.text, [(2**40, 2**50)], []),  # 64-bit counts
    ("pi-1", "traffic from this node", [(1, 1)], []),  # not a counter's comment
    ("pi-1", None, [(5, 5)], []),  # no comment at all
    ("pi-1", ALLOW.text, [], ["immediate"]),  # counted comment, no counter
    ("pi-2", DENY.text, [(1, 60), (2, 120)], ["limit"]),  # two counters in one rule
]


def _expr(name: str, data: bytes = b"") -> bytes:
    body = _str(NFTA_EXPR_NAME, name)
    if data:
        body += _attr(NFTA_EXPR_DATA | NESTED, data)
    return _attr(NFTA_LIST_ELEM | NESTED, body)


def _counter(packets: int, size: int) -> bytes:
    return _expr("counter", _attr(NFTA_COUNTER_BYTES, struct.pack(">Q", size))
                 + _attr(NFTA_COUNTER_PACKETS, struct.pack(">Q", packets))
                 + _attr(3, b"\0" * 4))  # NFTA_COUNTER_PAD


def _udata(kind: int, text: str) -> bytes:
    value = text.encode() + b"\0"
    return bytes([kind, len(value)]) + value


def rule_body(chain: str, text: str | None, counts: list[tuple[int, int]],
              others: list[str]) -> bytes:
    """One NFT_MSG_NEWRULE body of a dump: nfgenmsg, table, chain, handle, expressions,
    user data (a record libnftnl does not know first, then the comment)."""
    exprs = b"".join(_expr(o, b"\x00\x01\x00\x00") for o in others)
    exprs += b"".join(_counter(p, b) for p, b in counts)
    body = (struct.pack("=BBH", NFPROTO_INET, 0, 0) + _str(NFTA_RULE_TABLE, "l3fabric")
            + _str(NFTA_RULE_CHAIN, chain) + _attr(3, struct.pack(">Q", 7))
            + _attr(NFTA_RULE_EXPRESSIONS | NESTED, exprs))
    if text is not None:
        body += _attr(NFTA_RULE_USERDATA, _udata(9, "x") + _udata(NFTNL_UDATA_RULE_COMMENT, text))
    return body


def listing() -> dict[str, Any]:
    """The same rules as libnftables' JSON listing shows them."""
    out: list[dict[str, Any]] = [{"metainfo": {}}]
    for chain, text, counts, others in RULES:
        rule: dict[str, Any] = {"family": "inet", "table": "l3fabric", "chain": chain,
                                "handle": 7, "expr": [
                                    {o: {}} for o in others] + [
                                    {"counter": {"packets": p, "bytes": b}} for p, b in counts]}
        if text is not None:
            rule["comment"] = text
        out.append({"rule": rule})
    return {"nftables": out}


def test_a_dump_gives_what_the_listing_of_the_same_rules_gives() -> None:
    got = parse_rules(rule_body(*r) for r in RULES)
    assert got == parse_counters(listing())
    assert got == {"pi-1": {ALLOW: (7, 420), DENY: (2**40, 2**50)}, "pi-2": {DENY: (3, 180)}}


def test_the_comment_is_found_among_the_user_data_records() -> None:
    assert comment(_udata(NFTNL_UDATA_RULE_COMMENT, ALLOW.text)) == ALLOW.text
    assert comment(_udata(1, "\x01") + _udata(NFTNL_UDATA_RULE_COMMENT, "a b c")) == "a b c"
    assert comment(_udata(1, "\x01")) is None
    assert comment(b"") is None


class FakeSocket:
    """Records what is sent; answers with the datagrams given."""

    def __init__(self, replies: list[bytes]) -> None:
        self.sent: list[bytes] = []
        self.replies = replies

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def _msg(kind: int, seq: int, body: bytes) -> bytes:
    size = 16 + len(body)
    return struct.pack("=IHHII", size, kind, 2, seq, 0) + body + b"\0" * (-size % 4)


def test_a_dump_is_of_one_chain_of_our_table_the_kernel_filters() -> None:
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE
    sock = FakeSocket([
        _msg(kind, 1, rule_body(*RULES[0])) + _msg(kind, 1, rule_body(*RULES[2])),
        _msg(kind, 1, rule_body(*RULES[1])) + _msg(NLMSG_DONE, 1, struct.pack("=i", 0)),
        _msg(NLMSG_DONE, 2, struct.pack("=i", 0)),  # a chain that does not exist: no rule
    ])
    reader = Nftnl(sock)  # type: ignore[arg-type]
    assert reader.counts("pi-1") == {"pi-1": {ALLOW: (7, 420), DENY: (2**40, 2**50)}}
    assert reader.counts(None) == {}
    [first, second] = sock.sent
    size, mtype, flags, seq, _ = struct.unpack_from("=IHHII", first)
    assert (size, mtype, seq) == (len(first), kind, 1)
    assert flags == NLM_F_REQUEST | NLM_F_DUMP
    assert first[16:20] == struct.pack("=BBH", NFPROTO_INET, 0, 0)
    assert first[20:] == _str(NFTA_RULE_TABLE, "l3fabric") + _str(NFTA_RULE_CHAIN, "pi-1")
    assert second[20:] == _str(NFTA_RULE_TABLE, "l3fabric")


def test_a_few_chains_are_read_one_by_one_many_in_one_read_of_the_table() -> None:
    every = parse_rules(rule_body(*r) for r in RULES)
    reads: list[str | None] = []

    def read(chain: str | None) -> ChainCounts:
        reads.append(chain)
        return every if chain is None else {c: n for c, n in every.items() if c == chain}

    assert gather_counts(read, ["pi-2", "pi-none"]) == {"pi-2": every["pi-2"]}
    assert reads == ["pi-2", "pi-none"]
    reads.clear()
    assert gather_counts(read, [f"pi-x{i}" for i in range(8)] + ["pi-2"]) == {
        "pi-2": every["pi-2"]}  # the other chains read are not among those asked for
    assert gather_counts(read, None) == every
    assert reads == [None, None]
