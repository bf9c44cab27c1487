"""Kubernetes label syntax and ``metav1.LabelSelector``, validated as the API server does.

Owned here: label key/value syntax checks (used for every ``metadata.labels`` too),
:class:`LabelSelector` (``matchLabels`` AND ``matchExpressions``), and the two small shared
value types the resource model builds on: :class:`ValidationError` and :class:`FrozenMap`.
They live in this module only because it is the lowest one that needs them;
``datastore.model`` re-exports both, and callers should import them from there.

Failure mode: malformed input raises :class:`ValidationError` naming the field path
(``spec.podSelector.matchExpressions[0].values``), never a bare ``KeyError``/``TypeError``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

__all__ = [
    "FrozenMap",
    "LabelSelector",
    "LabelSelectorRequirement",
    "ValidationError",
    "check_label_key",
    "check_label_value",
    "check_labels",
    "parse_label_selector",
    "type_name",
]


class ValidationError(ValueError):
    """One problem in one resource: ``"<key>: <path>: <message>"``.

    ``key`` is relative to ``/l3fabric/v1/`` and is None until the error is tied to a key
    (``decode`` fills it in); ``path`` is the JSON field path (``spec.blockSize``), empty
    when the problem is the whole value.
    """

    def __init__(self, key: str | None, path: str, message: str) -> None:
        self.key = key
        self.path = path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.key, self.path) if p]
        return ": ".join([*parts, self.message])

    def with_key(self, key: str) -> ValidationError:
        return ValidationError(key, self.path, self.message)


V = TypeVar("V")


class FrozenMap(Mapping[str, V], Generic[V]):
    """An immutable, hashable ``str -> V`` mapping, so resources holding labels stay hashable."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, V] | None = None) -> None:
        self._data: dict[str, V] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def type_name(value: object) -> str:
    """The JSON-ish name of a value's type, for "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def check_label_key(key: str, path: str) -> None:
    """A qualified name: optional DNS-1123 subdomain prefix (<=253) + '/' + name (<=63)."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            raise ValidationError(None, path, f"label key {key!r}: prefix part must be non-empty")
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            raise ValidationError(
                None,
                path,
                f"label key {key!r}: prefix must be a DNS-1123 subdomain "
                "(lowercase alphanumerics, '-' and '.', at most 253 characters)",
            )
    if not name:
        raise ValidationError(None, path, f"label key {key!r}: name part must be non-empty")
    if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        raise ValidationError(
            None,
            path,
            f"label key {key!r}: name part must be at most 63 characters of alphanumerics, "
            "'-', '_' or '.', starting and ending with an alphanumeric",
        )


def check_label_value(value: str, path: str) -> None:
    """Empty, or at most 63 characters of ``[-A-Za-z0-9_.]`` starting/ending alphanumeric."""
    if value and (len(value) > 63 or not _QUALIFIED_NAME.fullmatch(value)):
        raise ValidationError(
            None,
            path,
            f"label value {value!r} must be empty or at most 63 characters of alphanumerics, "
            "'-', '_' or '.', starting and ending with an alphanumeric",
        )


#: The one empty label map (immutable, so every resource without labels shares it).
EMPTY_LABELS: FrozenMap[str] = FrozenMap()


# Label maps already checked, by their items: a cluster's endpoints repeat a few label
# sets (one per deployment), so an agent decoding 50,000 of them checks each set once and
# holds one map per set, not one per endpoint. Bounded: cleared when full.
_CHECKED: dict[tuple[tuple[Any, Any], ...], FrozenMap[str]] = {}
_CHECKED_MAX = 4096


def check_labels(value: Any, path: str) -> FrozenMap[str]:
    """A ``{key: value}`` label object, checked entry by entry; None means no labels.
    Equal label objects (same items, same order) give the same map."""
    if value is None:
        return EMPTY_LABELS
    if not isinstance(value, Mapping):
        raise ValidationError(None, path, f"expected an object, got {type_name(value)}")
    items = tuple(value.items())
    try:
        return _CHECKED[items]
    except KeyError:
        pass
    except TypeError:  # an unhashable value: not a string, reported below
        items = ()
    checked = _check_labels(value, path)
    if items:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[items] = checked
    return checked


# Label keys already checked: a cluster uses few, and a label set seen once per pod (one
# with a pod-template-hash) still has its keys checked once.
_GOOD_KEYS: set[str] = set()


def _check_labels(value: Mapping[Any, Any], path: str) -> FrozenMap[str]:
    for k, v in value.items():
        if not isinstance(k, str):
            raise ValidationError(None, path, f"expected string keys, got {type_name(k)}")
        if k not in _GOOD_KEYS:
            check_label_key(k, f"{path}.{k}")
            if len(_GOOD_KEYS) >= _CHECKED_MAX:
                _GOOD_KEYS.clear()
            _GOOD_KEYS.add(k)
        if not isinstance(v, str):
            raise ValidationError(None, f"{path}.{k}", f"expected a string, got {type_name(v)}")
        check_label_value(v, f"{path}.{k}")
    if not value:
        return EMPTY_LABELS
    # Interned: a cluster's label keys and most values repeat over thousands of endpoints.
    return FrozenMap({sys.intern(k): sys.intern(v) for k, v in value.items()})


OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class LabelSelectorRequirement:
    """One ``matchExpressions`` entry; ``values`` keeps the order it was written in."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.operator in ("In", "NotIn"):
            out["values"] = list(self.values)
        return out

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> LabelSelectorRequirement:
        if not isinstance(obj, Mapping):
            raise ValidationError(None, path, f"expected an object, got {type_name(obj)}")
        for k in obj:
            if k not in ("key", "operator", "values"):
                raise ValidationError(None, f"{path}.{k}", "unknown field")
        key = obj.get("key")
        if key is None:
            raise ValidationError(None, f"{path}.key", "required")
        if not isinstance(key, str):
            raise ValidationError(None, f"{path}.key", f"expected a string, got {type_name(key)}")
        check_label_key(key, f"{path}.key")
        op = obj.get("operator")
        if op is None:
            raise ValidationError(None, f"{path}.operator", "required")
        if op not in OPERATORS:
            raise ValidationError(
                None, f"{path}.operator", f"{op!r} is not one of {', '.join(OPERATORS)}"
            )
        raw = obj.get("values")
        values: list[str] = []
        if raw is not None:
            if not isinstance(raw, list):
                raise ValidationError(
                    None, f"{path}.values", f"expected a list, got {type_name(raw)}"
                )
            for i, v in enumerate(raw):
                if not isinstance(v, str):
                    raise ValidationError(
                        None, f"{path}.values[{i}]", f"expected a string, got {type_name(v)}"
                    )
                check_label_value(v, f"{path}.values[{i}]")
                values.append(v)
        if op in ("In", "NotIn") and not values:
            raise ValidationError(
                None, f"{path}.values", f"must be specified when operator is {op}"
            )
        if op in ("Exists", "DoesNotExist") and values:
            raise ValidationError(
                None, f"{path}.values", f"may not be specified when operator is {op}"
            )
        return cls(key, op, tuple(values))


@dataclass(frozen=True)
class LabelSelector:
    """``matchLabels`` AND every ``matchExpressions`` entry; the empty selector selects all.

    Note the Kubernetes distinction this type does not erase: an *absent* selector field in
    a NetworkPolicy peer is represented by ``None`` at the call site, not by an empty
    LabelSelector (which selects everything).
    """

    match_labels: FrozenMap[str] = field(default_factory=FrozenMap)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for k, v in self.match_labels.items():
            if labels.get(k) != v:
                return False
        return all(req.matches(labels) for req in self.match_expressions)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [r.to_dict() for r in self.match_expressions]
        return out

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> LabelSelector:
        """Validate and build; None (YAML ``podSelector:`` with no value) is the empty selector."""
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise ValidationError(None, path, f"expected an object, got {type_name(obj)}")
        for k in obj:
            if k not in ("matchLabels", "matchExpressions"):
                raise ValidationError(None, f"{path}.{k}", "unknown field")
        labels = check_labels(obj.get("matchLabels"), f"{path}.matchLabels")
        raw = obj.get("matchExpressions")
        exprs: list[LabelSelectorRequirement] = []
        if raw is not None:
            if not isinstance(raw, list):
                raise ValidationError(
                    None, f"{path}.matchExpressions", f"expected a list, got {type_name(raw)}"
                )
            for i, item in enumerate(raw):
                exprs.append(
                    LabelSelectorRequirement.from_dict(item, f"{path}.matchExpressions[{i}]")
                )
        return cls(labels, tuple(exprs))


_SELECTOR_TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|=|!|\(|\)|,)|(?P<word>[A-Za-z0-9_./-]+))")


def parse_label_selector(text: str) -> LabelSelector:
    """The string form of a label selector, as ``kubectl get -l`` takes it: requirements
    separated by commas, all of which must hold. ``k=v`` (or ``k==v``), ``k!=v``,
    ``k in (a,b)``, ``k notin (a,b)``, ``k`` (has the label) and ``!k`` (has not). As in
    Kubernetes, ``k!=v`` and ``k notin (...)`` also hold when ``k`` is absent. ``""``
    selects everything. Raises `ValidationError` naming the selector and the problem."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _SELECTOR_TOKEN.match(text, pos)
        if m is None:
            raise ValidationError(None, "", f"label selector {text!r}: unexpected "
                                            f"{text[pos:].strip()[0]!r} at column {pos + 1}")
        kind = "op" if m.group("op") else "word"
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    reqs: list[LabelSelectorRequirement] = []
    i = 0

    def fail(what: str) -> ValidationError:
        got = repr(tokens[i][1]) if i < len(tokens) else "the end"
        return ValidationError(None, "", f"label selector {text!r}: expected {what}, got {got}")

    def take(kind: str, value: str | None = None) -> str | None:
        nonlocal i
        if i < len(tokens) and tokens[i][0] == kind and value in (None, tokens[i][1]):
            i += 1
            return tokens[i - 1][1]
        return None

    def key() -> str:
        k = take("word")
        if k is None:
            raise fail("a label key")
        check_label_key(k, "selector")
        return k

    def value() -> str:
        v = take("word") or ""  # "k=" selects an empty value
        check_label_value(v, "selector")
        return v

    def value_set() -> tuple[str, ...]:
        if take("op", "(") is None:
            raise fail("'('")
        values = [value()]
        while take("op", ","):
            values.append(value())
        if take("op", ")") is None:
            raise fail("',' or ')'")
        return tuple(values)

    while i < len(tokens):
        if take("op", "!"):
            reqs.append(LabelSelectorRequirement(key(), "DoesNotExist"))
        else:
            k = key()
            if take("op", "=") or take("op", "=="):
                reqs.append(LabelSelectorRequirement(k, "In", (value(),)))
            elif take("op", "!="):
                reqs.append(LabelSelectorRequirement(k, "NotIn", (value(),)))
            elif take("word", "in"):
                reqs.append(LabelSelectorRequirement(k, "In", value_set()))
            elif take("word", "notin"):
                reqs.append(LabelSelectorRequirement(k, "NotIn", value_set()))
            else:
                reqs.append(LabelSelectorRequirement(k, "Exists"))
        if i < len(tokens):
            if take("op", ",") is None:
                raise fail("',' or the end")
            if i == len(tokens):
                raise fail("a label key")
    return LabelSelector(FrozenMap(), tuple(reqs))
