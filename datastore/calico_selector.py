"""Calico selector expressions: parsed once into a small immutable AST, evaluated many times.

Owned here: the grammar, the canonical text form and label-matching semantics of selector
strings used by IPPool.nodeSelector, BGPPeer.nodeSelector and GlobalNetworkPolicy.

Grammar (precedence low to high: ``||``, ``&&``, ``!``)::

    expr    := and ("||" and)*
    and     := unary ("&&" unary)*
    unary   := "!" unary | primary
    primary := "(" expr ")" | "all()" | "has(" KEY ")"
             | KEY ("==" | "!=") STRING | KEY ["not"] "in" "{" [STRING ("," STRING)*] "}"
             | KEY ("contains" | "starts" "with" | "ends" "with") STRING

``KEY`` is ``[A-Za-z0-9_./-]+`` (so ``kubernetes.io/metadata.name`` is one key), ``STRING`` is
single- or double-quoted with no escapes. The empty string selects everything, like ``all()``.
As in Calico, ``k != "v"`` and ``k not in {...}`` also match when ``k`` is absent, while
``contains``, ``starts with`` and ``ends with`` (substring tests on the value) need ``k``.

Invariant: the AST is canonical. ``And``/``Or`` flatten nested operands of their own kind and
set literals are sorted and de-duplicated at construction, so ``parse_selector(str(s)) == s``
for every selector and equal selectors hash equally (the policy renderer shares one named set
per distinct selector). Parse failures raise :class:`SelectorError` with a 1-based column.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

log = logging.getLogger(__name__)

__all__ = [
    "All",
    "And",
    "Contains",
    "EndsWith",
    "Eq",
    "Has",
    "In",
    "Ne",
    "Not",
    "NotIn",
    "Or",
    "Selector",
    "SelectorError",
    "StartsWith",
    "parse_selector",
]


class SelectorError(ValueError):
    """A selector string that does not parse; ``column`` is 1-based into the original text."""

    def __init__(self, text: str, column: int, message: str) -> None:
        super().__init__(f"{message} at column {column}")
        self.text = text
        self.column = column
        self.message = message


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


def _check_value(value: str) -> None:
    if '"' in value and "'" in value:
        raise ValueError(f"selector value {value!r} has both quote characters: cannot be written")


_KEY_RE = re.compile(r"[A-Za-z0-9_./-]+")


def _check_key(key: str) -> None:
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"selector label key {key!r} is not [A-Za-z0-9_./-]+")


class Selector:
    """Base of all AST nodes. Subclasses are frozen dataclasses: hashable and comparable."""

    # Binding strength used by __str__ to decide where parentheses are needed.
    precedence: ClassVar[int] = 3

    def matches(self, labels: Mapping[str, str]) -> bool:
        raise NotImplementedError

    def _child(self, child: Selector) -> str:
        return f"({child})" if child.precedence < self.precedence else str(child)


@dataclass(frozen=True)
class All(Selector):
    """``all()`` and the empty selector: matches every label set."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Has(Selector):
    key: str

    def __post_init__(self) -> None:
        _check_key(self.key)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class Eq(Selector):
    key: str
    value: str

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) == self.value

    def __str__(self) -> str:
        return f"{self.key} == {_quote(self.value)}"


@dataclass(frozen=True)
class Ne(Selector):
    """``k != v``: true when ``k`` is absent too (Calico semantics)."""

    key: str
    value: str

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) != self.value

    def __str__(self) -> str:
        return f"{self.key} != {_quote(self.value)}"


@dataclass(frozen=True)
class _Substring(Selector):
    """``k <op> "s"``: a test on the value of ``k``; false when ``k`` is absent (Calico)."""

    key: str
    value: str

    operator: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_key(self.key)
        _check_value(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.key)
        return v is not None and self._test(v)

    def _test(self, v: str) -> bool:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.key} {self.operator} {_quote(self.value)}"


@dataclass(frozen=True)
class Contains(_Substring):
    operator: ClassVar[str] = "contains"

    def _test(self, v: str) -> bool:
        return self.value in v


@dataclass(frozen=True)
class StartsWith(_Substring):
    operator: ClassVar[str] = "starts with"

    def _test(self, v: str) -> bool:
        return v.startswith(self.value)


@dataclass(frozen=True)
class EndsWith(_Substring):
    operator: ClassVar[str] = "ends with"

    def _test(self, v: str) -> bool:
        return v.endswith(self.value)


def _canonical_set(values: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(values)))
    for v in out:
        _check_value(v)
    return out


@dataclass(frozen=True)
class In(Selector):
    key: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_key(self.key)
        object.__setattr__(self, "values", _canonical_set(self.values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels and labels[self.key] in self.values

    def __str__(self) -> str:
        return f"{self.key} in {{{', '.join(_quote(v) for v in self.values)}}}"


@dataclass(frozen=True)
class NotIn(Selector):
    """``k not in {...}``: true when ``k`` is absent too (Calico semantics)."""

    key: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_key(self.key)
        object.__setattr__(self, "values", _canonical_set(self.values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) not in self.values

    def __str__(self) -> str:
        return f"{self.key} not in {{{', '.join(_quote(v) for v in self.values)}}}"


@dataclass(frozen=True)
class Not(Selector):
    operand: Selector

    precedence: ClassVar[int] = 2

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        # Comparisons are parenthesised for the reader; grammatically they would not need it.
        if isinstance(self.operand, All | Has | Not):
            return f"!{self.operand}"
        return f"!({self.operand})"


def _flatten(kind: type[And | Or], operands: Iterable[Selector]) -> tuple[Selector, ...]:
    out: list[Selector] = []
    for op in operands:
        if isinstance(op, kind):
            out.extend(op.operands)
        else:
            out.append(op)
    if len(out) < 2:
        raise ValueError(f"{kind.__name__} needs at least two operands")
    return tuple(out)


@dataclass(frozen=True)
class And(Selector):
    operands: tuple[Selector, ...]

    precedence: ClassVar[int] = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", _flatten(And, self.operands))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(op.matches(labels) for op in self.operands)

    def __str__(self) -> str:
        return " && ".join(self._child(op) for op in self.operands)


@dataclass(frozen=True)
class Or(Selector):
    operands: tuple[Selector, ...]

    precedence: ClassVar[int] = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", _flatten(Or, self.operands))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(op.matches(labels) for op in self.operands)

    def __str__(self) -> str:
        return " || ".join(self._child(op) for op in self.operands)


# --- tokenizer -------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<op>&&|\|\||==|!=|[!(){},])
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<ident>[A-Za-z0-9_./-]+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "str", "ident", "end"
    text: str
    pos: int  # 0-based offset


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            if text[pos] in "\"'":
                raise SelectorError(text, pos + 1, "unterminated string")
            raise SelectorError(text, pos + 1, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(_Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the token list; every error names the column of the bad token."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def fail(self, expected: str, tok: _Token | None = None) -> SelectorError:
        tok = tok or self.tok
        got = "end of selector" if tok.kind == "end" else repr(tok.text)
        return SelectorError(self.text, tok.pos + 1, f"expected {expected}, got {got}")

    def take(self, kind: str, text: str | None = None) -> _Token | None:
        tok = self.tok
        if tok.kind == kind and (text is None or tok.text == text):
            self.i += 1
            return tok
        return None

    def expect(self, kind: str, text: str, expected: str) -> _Token:
        tok = self.take(kind, text)
        if tok is None:
            raise self.fail(expected)
        return tok

    def parse(self) -> Selector:
        if self.tok.kind == "end":
            return All()
        sel = self.expr()
        if self.tok.kind != "end":
            raise self.fail("'&&', '||' or end of selector")
        return sel

    def expr(self) -> Selector:
        ops = [self.conj()]
        while self.take("op", "||"):
            ops.append(self.conj())
        return ops[0] if len(ops) == 1 else Or(tuple(ops))

    def conj(self) -> Selector:
        ops = [self.unary()]
        while self.take("op", "&&"):
            ops.append(self.unary())
        return ops[0] if len(ops) == 1 else And(tuple(ops))

    def unary(self) -> Selector:
        if self.take("op", "!"):
            return Not(self.unary())
        return self.primary()

    def primary(self) -> Selector:
        if self.take("op", "("):
            sel = self.expr()
            self.expect("op", ")", "')'")
            return sel
        key = self.take("ident")
        if key is None:
            raise self.fail("a label key, 'has(', 'all()', '!' or '('")
        if self.take("op", "("):
            return self.function(key)
        if self.take("op", "=="):
            return Eq(key.text, self.string())
        if self.take("op", "!="):
            return Ne(key.text, self.string())
        if self.take("ident", "in"):
            return In(key.text, self.string_set())
        if self.tok.kind == "ident" and self.tok.text == "not":
            self.i += 1
            self.expect("ident", "in", "'in' after 'not'")
            return NotIn(key.text, self.string_set())
        if self.take("ident", "contains"):
            return Contains(key.text, self.string())
        if self.take("ident", "starts"):
            self.expect("ident", "with", "'with' after 'starts'")
            return StartsWith(key.text, self.string())
        if self.take("ident", "ends"):
            self.expect("ident", "with", "'with' after 'ends'")
            return EndsWith(key.text, self.string())
        raise self.fail("'==', '!=', 'in', 'not in', 'contains', 'starts with' or 'ends with'")

    def function(self, name: _Token) -> Selector:
        if name.text == "all":
            self.expect("op", ")", "')' (all() takes no argument)")
            return All()
        if name.text == "has":
            key = self.take("ident")
            if key is None:
                raise self.fail("a label key inside has()")
            self.expect("op", ")", "')'")
            return Has(key.text)
        raise SelectorError(self.text, name.pos + 1, f"unknown function {name.text!r}")

    def string(self) -> str:
        tok = self.take("str")
        if tok is None:
            raise self.fail("a quoted string")
        return tok.text[1:-1]

    def string_set(self) -> tuple[str, ...]:
        self.expect("op", "{", "'{'")
        values: list[str] = []
        if self.take("op", "}"):
            return ()
        values.append(self.string())
        while self.take("op", ","):
            values.append(self.string())
        self.expect("op", "}", "',' or '}'")
        return tuple(values)


def parse_selector(text: str) -> Selector:
    """Parse a Calico selector; ``""`` (or only whitespace) is :class:`All`."""
    return _Parser(text).parse()
