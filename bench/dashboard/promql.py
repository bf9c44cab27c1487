"""An approximation of PromQL, just large enough for the expressions of
dashboards/l3fabric.json, evaluated over a recorded series of ``/metrics`` scrapes.

Owns: parsing those expressions and evaluating them at each scrape's time. What it knows:
selectors with label matchers (``=``, ``!=``, ``=~``, ``!~``) and a range; ``rate`` and
``increase``; ``sum``, ``count``, ``max``, ``min``, ``avg`` with ``by (…)``;
``histogram_quantile``; ``vector(N)``; comparisons with a number (``== 0``, ``> 0``, as
filters); ``and on (…)``, ``and``, ``or``. Anything else raises `PromQLError`, so a panel
the renderer cannot draw fails loudly instead of drawing nothing.

Where it differs from Prometheus: ``rate`` and ``increase`` do not extrapolate to the
window's edges (``increase`` is the counter's rise between the first and last sample in the
window, counter resets included), there are no staleness markers (a series exists at the
scrapes that carry it), and the result of a binary operator keeps the left side's labels.
Good enough for a picture of a short live run, not a query engine.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, __name__ included


class PromQLError(ValueError):
    """An expression this evaluator does not handle."""


@dataclass(frozen=True)
class Sample:
    labels: Labels
    value: float

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


Vector = list[Sample]


@dataclass
class Series:
    """Scrapes of one or more agents: each sample's values over time, by labels."""

    times: list[float] = field(default_factory=list)
    points: dict[Labels, list[tuple[float, float]]] = field(default_factory=dict)

    def add_scrape(self, t: float, text: str, instance: str) -> None:
        """Add one scrape of ``instance`` taken at ``t`` (seconds); the ``instance`` label is
        what Prometheus would attach. Scrapes must be added in time order."""
        if not self.times or self.times[-1] != t:
            self.times.append(t)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = {**s.labels, "__name__": s.name, "instance": instance}
                self.points.setdefault(_key(labels), []).append((t, float(s.value)))

    def at(self, t: float) -> Vector:
        """Every series' latest sample at ``t``, if it was scraped at ``t`` (no staleness
        look-back: a series gone from a scrape is gone)."""
        out = []
        for labels, pts in self.points.items():
            i = bisect.bisect_right(pts, (t, math.inf)) - 1
            if i >= 0 and pts[i][0] == t:
                out.append(Sample(labels, pts[i][1]))
        return out

    def window(self, t: float, seconds: float) -> list[tuple[Labels, list[tuple[float, float]]]]:
        """Every series' samples in ``(t - seconds, t]``."""
        out = []
        for labels, pts in self.points.items():
            lo = bisect.bisect_right(pts, (t - seconds, math.inf))
            hi = bisect.bisect_right(pts, (t, math.inf))
            if hi > lo:
                out.append((labels, pts[lo:hi]))
        return out


def _key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


# ---------------------------------------------------------------------------------------
# Parsing

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<range>\[[0-9]+(?:ms|[smhdw])\])
  | (?P<num>[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[=(){},<>])
)""", re.VERBOSE)

_AGGREGATIONS = {"sum", "count", "max", "min", "avg"}
_COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise PromQLError(f"cannot read {expr[pos:]!r}")
        out.append(m.group().strip())
        pos = m.end()
    return out


def _seconds(rng: str) -> float:
    m = re.fullmatch(r"\[([0-9]+)(ms|[smhdw])\]", rng)
    assert m is not None
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Node:
    """One parsed expression: ``op`` names what it is, the rest its operands."""

    op: str  # selector, number, func, agg, binop
    name: str = ""  # metric, function, aggregation or operator
    matchers: tuple[tuple[str, str, str], ...] = ()  # (label, op, value)
    seconds: float = 0.0  # a selector's range, 0 for an instant selector
    args: tuple[Node, ...] = ()
    labels: tuple[str, ...] = ()  # by (…) / on (…)
    number: float = 0.0


class _Parser:
    def __init__(self, expr: str) -> None:
        self.toks = _tokens(expr)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i] if self.i < len(self.toks) else ""

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if not tok or (want is not None and tok != want):
            raise PromQLError(f"expected {want or 'more'}, found {tok or 'the end'}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.expr()
        if self.peek():
            raise PromQLError(f"unexpected {self.peek()!r}")
        return node

    def expr(self) -> Node:  # or  <  and  <  comparison
        node = self.conjunction()
        while self.peek() == "or":
            self.take()
            node = Node("binop", "or", args=(node, self.conjunction()))
        return node

    def conjunction(self) -> Node:
        node = self.comparison()
        while self.peek() == "and":
            self.take()
            on: tuple[str, ...] = ()
            if self.peek() == "on":
                self.take()
                on = self.label_list()
            node = Node("binop", "and", args=(node, self.comparison()), labels=on)
        return node

    def comparison(self) -> Node:
        node = self.operand()
        while self.peek() in _COMPARISONS:
            op = self.take()
            right = self.operand()
            if right.op != "number":
                raise PromQLError(f"only comparisons with a number are handled ({op})")
            node = Node("binop", op, args=(node, right))
        return node

    def label_list(self) -> tuple[str, ...]:
        self.take("(")
        names = []
        while self.peek() != ")":
            names.append(self.take())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return tuple(names)

    def operand(self) -> Node:
        tok = self.take()
        if tok == "(":
            node = self.expr()
            self.take(")")
            return node
        if re.fullmatch(r"[0-9.].*", tok):
            return Node("number", number=float(tok))
        if tok in _AGGREGATIONS:
            by: tuple[str, ...] = ()
            if self.peek() == "by":
                self.take()
                by = self.label_list()
            self.take("(")
            inner = self.expr()
            self.take(")")
            if self.peek() == "by":
                self.take()
                by = self.label_list()
            return Node("agg", tok, args=(inner,), labels=by)
        if self.peek() == "(":  # a function
            self.take("(")
            args = [self.expr()]
            while self.peek() == ",":
                self.take()
                args.append(self.expr())
            self.take(")")
            return Node("func", tok, args=tuple(args))
        matchers = []
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                label, op, value = self.take(), self.take(), self.take()
                if op not in ("=", "!=", "=~", "!~") or not value.startswith('"'):
                    raise PromQLError(f"bad matcher {label}{op}{value}")
                matchers.append((label, op, value[1:-1].encode().decode("unicode_escape")))
                if self.peek() == ",":
                    self.take()
            self.take("}")
        seconds = _seconds(self.take()) if self.peek().startswith("[") else 0.0
        return Node("selector", tok, matchers=tuple(matchers), seconds=seconds)


def parse(expr: str) -> Node:
    return _Parser(expr).parse()


# ---------------------------------------------------------------------------------------
# Evaluation


def _matches(labels: Labels, name: str, matchers: Sequence[tuple[str, str, str]]) -> bool:
    got = dict(labels)
    if got.get("__name__") != name:
        return False
    for label, op, value in matchers:
        have = got.get(label, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None,
              "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def _drop_name(labels: Labels) -> Labels:
    return tuple(kv for kv in labels if kv[0] != "__name__")


def _rise(points: Sequence[tuple[float, float]]) -> float:
    """A counter's rise over ``points``, counting a drop as a reset to zero."""
    total = 0.0
    for (_, a), (_, b) in itertools.pairwise(points):
        total += b - a if b >= a else b
    return total


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over cumulative ``(le, count)`` buckets: linear
    interpolation inside the bucket that holds the rank; NaN with no observations."""
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0 or buckets[-1][0] != math.inf:
        return math.nan
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return prev_le  # in the +Inf bucket: the highest finite bound
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return math.nan


class Evaluator:
    """Evaluates parsed expressions against a `Series` at one of its scrape times."""

    def __init__(self, series: Series) -> None:
        self.series = series

    def eval(self, node: Node, t: float) -> Vector:
        if node.op == "selector":
            if node.seconds:
                raise PromQLError(f"a range vector needs rate() or increase(): {node.name}")
            return [s for s in self.series.at(t) if _matches(s.labels, node.name,
                                                             node.matchers)]
        if node.op == "number":
            return [Sample((), node.number)]
        if node.op == "func":
            return self._func(node, t)
        if node.op == "agg":
            return self._agg(node, self.eval(node.args[0], t))
        return self._binop(node, t)

    def _func(self, node: Node, t: float) -> Vector:
        if node.name in ("rate", "increase"):
            sel = node.args[0]
            if sel.op != "selector" or not sel.seconds:
                raise PromQLError(f"{node.name}() needs a range selector")
            out = []
            for labels, pts in self.series.window(t, sel.seconds):
                if len(pts) < 2 or not _matches(labels, sel.name, sel.matchers):
                    continue
                rise = _rise(pts)
                value = rise / (pts[-1][0] - pts[0][0]) if node.name == "rate" else rise
                out.append(Sample(_drop_name(labels), value))
            return out
        if node.name == "histogram_quantile":
            q = node.args[0]
            if q.op != "number":
                raise PromQLError("histogram_quantile's quantile must be a number")
            groups: dict[Labels, list[tuple[float, float]]] = {}
            for s in self.eval(node.args[1], t):
                rest = tuple(kv for kv in _drop_name(s.labels) if kv[0] != "le")
                groups.setdefault(rest, []).append((float(s.label("le")), s.value))
            out = [Sample(k, _quantile(q.number, b)) for k, b in groups.items()]
            return [s for s in out if not math.isnan(s.value)]
        if node.name == "vector":
            return [Sample((), node.args[0].number)]
        raise PromQLError(f"function {node.name}() is not handled")

    @staticmethod
    def _agg(node: Node, vec: Vector) -> Vector:
        groups: dict[Labels, list[float]] = {}
        for s in vec:
            key = tuple(kv for kv in s.labels if kv[0] in node.labels)
            groups.setdefault(key, []).append(s.value)
        folds: dict[str, Callable[[list[float]], float]] = {
            "sum": sum, "count": len, "max": max, "min": min,
            "avg": lambda xs: sum(xs) / len(xs)}
        return [Sample(k, float(folds[node.name](xs))) for k, xs in groups.items()]

    def _binop(self, node: Node, t: float) -> Vector:
        left = self.eval(node.args[0], t)
        if node.name in _COMPARISONS:
            n = node.args[1].number
            keep = {"==": lambda v: v == n, "!=": lambda v: v != n, ">": lambda v: v > n,
                    "<": lambda v: v < n, ">=": lambda v: v >= n, "<=": lambda v: v <= n}
            return [s for s in left if keep[node.name](s.value)]
        right = self.eval(node.args[1], t)
        if node.name == "and":
            def match(s: Sample) -> Labels:
                return tuple(kv for kv in _drop_name(s.labels)
                             if not node.labels or kv[0] in node.labels)
            have = {match(s) for s in right}
            return [s for s in left if match(s) in have]
        # or: the left side, and those of the right whose labels the left has not
        seen = {_drop_name(s.labels) for s in left}
        return left + [s for s in right if _drop_name(s.labels) not in seen]


def evaluate(expr: str, series: Series, t: float) -> Vector:
    """``expr`` (Grafana variables already substituted) at scrape time ``t``."""
    return Evaluator(series).eval(parse(expr), t)
