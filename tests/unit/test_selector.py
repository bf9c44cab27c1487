"""Calico selector expressions: parsing, canonical text, evaluation, errors with columns."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datastore.calico_selector import (
    All,
    And,
    Contains,
    EndsWith,
    Eq,
    Has,
    In,
    Ne,
    Not,
    NotIn,
    Or,
    Selector,
    SelectorError,
    StartsWith,
    parse_selector,
)

PARSES = [
    ("", All()),
    ("   ", All()),
    ("all()", All()),
    ("has(app)", Has("app")),
    ("app == 'web'", Eq("app", "web")),
    ('app=="web"', Eq("app", "web")),
    ("kubernetes.io/metadata.name == 'prod'", Eq("kubernetes.io/metadata.name", "prod")),
    ("app != \"db\"", Ne("app", "db")),
    ("tier in {'a', \"b\"}", In("tier", ("a", "b"))),
    ("tier in {'b','a','b'}", In("tier", ("a", "b"))),
    ("tier not in {}", NotIn("tier", ())),
    ("!has(x)", Not(Has("x"))),
    ("!a == 'b'", Not(Eq("a", "b"))),
    ("a == '1' && b == '2' || c == '3'", Or((And((Eq("a", "1"), Eq("b", "2"))), Eq("c", "3")))),
    ("a == '1' && (b == '2' || c == '3')", And((Eq("a", "1"), Or((Eq("b", "2"), Eq("c", "3")))))),
    ("has(a) && (has(b) && has(c))", And((Has("a"), Has("b"), Has("c")))),
    ("((has(a)))", Has("a")),
    ("my_key-1.x/y == ''", Eq("my_key-1.x/y", "")),
]


@pytest.mark.parametrize(("text", "ast"), PARSES)
def test_parse(text: str, ast: Selector) -> None:
    sel = parse_selector(text)
    assert sel == ast
    assert parse_selector(str(sel)) == sel


def test_canonical_text() -> None:
    sel = parse_selector("(a=='1'||b=='2')&&!(c in {'y','x'})&&!!has(d)")
    assert str(sel) == '(a == "1" || b == "2") && !(c in {"x", "y"}) && !!has(d)'


def test_equal_selectors_hash_equal() -> None:
    a = parse_selector("a == 'x' && b in {'2', '1'}")
    b = parse_selector('(a=="x") && b in {"1","2","1"}')
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1


# (selector, labels, expected)
EVALS: list[tuple[str, dict[str, str], bool]] = [
    ("", {}, True),
    ("all()", {"a": "b"}, True),
    ("has(app)", {"app": ""}, True),
    ("has(app)", {}, False),
    ("app == 'web'", {"app": "web"}, True),
    ("app == 'web'", {"app": "db"}, False),
    ("app == 'web'", {}, False),
    ("app != 'web'", {}, True),  # Calico: != also matches when absent
    ("app != 'web'", {"app": "web"}, False),
    ("app in {'web', 'db'}", {"app": "db"}, True),
    ("app in {'web', 'db'}", {}, False),
    ("app not in {'web'}", {}, True),
    ("app not in {'web'}", {"app": "web"}, False),
    ("!has(a) || a == '1'", {"a": "2"}, False),
    ("!has(a) || a == '1'", {}, True),
    ("a == '1' && b == '2'", {"a": "1", "b": "2"}, True),
    ("a == '1' && b == '2'", {"a": "1"}, False),
    ("kubernetes.io/metadata.name == 'prod'", {"kubernetes.io/metadata.name": "prod"}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), EVALS)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


# (text, column of the problem)
ERRORS = [
    ("a ==", 5),
    ("a == b", 6),
    ("a && b", 3),
    ("a == 'x' &&", 12),
    ("(has(a)", 8),
    ("has(a) has(b)", 8),
    ("a == 'x", 6),
    ("a in {'x' 'y'}", 11),
    ("a in 'x'", 6),
    ("a not 'x'", 7),
    ("foo(a)", 1),
    ("all(x)", 5),
    ("a == 'x' # c", 10),
    ("&& a", 1),
    ("has()", 5),
]


@pytest.mark.parametrize(("text", "column"), ERRORS)
def test_errors_name_the_column(text: str, column: int) -> None:
    with pytest.raises(SelectorError) as exc:
        parse_selector(text)
    assert exc.value.column == column
    assert f"at column {column}" in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_ast_nodes_are_frozen() -> None:
    sel = Eq("a", "b")
    with pytest.raises(AttributeError):
        sel.key = "c"  # type: ignore[misc]


def test_value_with_both_quotes_is_rejected() -> None:
    with pytest.raises(ValueError):
        Eq("a", "it's \"x\"")


def test_value_with_double_quote_uses_single_quotes() -> None:
    sel = Eq("a", 'say "hi"')
    assert str(sel) == "a == 'say \"hi\"'"
    assert parse_selector(str(sel)) == sel


# --- property: str() re-parses to an equal AST, and evaluation agrees -------------------------

_keys = st.from_regex(r"[a-z][a-z0-9_.\-]{0,6}(/[a-z0-9]{1,4})?", fullmatch=True)
_values = st.one_of(
    st.from_regex(r"[A-Za-z0-9 _.\-]{0,6}", fullmatch=True),
    st.from_regex(r"[a-z']{1,4}", fullmatch=True),
    st.from_regex(r'[a-z"]{1,4}', fullmatch=True),
)
_leaves: st.SearchStrategy[Selector] = st.one_of(
    st.just(All()),
    st.builds(Has, _keys),
    st.builds(Eq, _keys, _values),
    st.builds(Ne, _keys, _values),
    st.builds(In, _keys, st.lists(_values, max_size=3).map(tuple)),
    st.builds(NotIn, _keys, st.lists(_values, max_size=3).map(tuple)),
    st.builds(Contains, _keys, _values),
    st.builds(StartsWith, _keys, _values),
    st.builds(EndsWith, _keys, _values),
)
selectors: st.SearchStrategy[Selector] = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=3).map(lambda ops: And(tuple(ops))),
        st.lists(inner, min_size=2, max_size=3).map(lambda ops: Or(tuple(ops))),
    ),
    max_leaves=8,
)
_label_sets = st.dictionaries(st.sampled_from(["a", "b", "c.d/e", "x"]), _values, max_size=4)


@settings(max_examples=300)
@given(selectors)
def test_round_trip(sel: Selector) -> None:
    text = str(sel)
    again = parse_selector(text)
    assert again == sel
    assert str(again) == text
    assert hash(again) == hash(sel)


@settings(max_examples=200)
@given(selectors, _label_sets)
def test_round_trip_preserves_meaning(sel: Selector, labels: dict[str, str]) -> None:
    assert parse_selector(str(sel)).matches(labels) == sel.matches(labels)


@settings(max_examples=200)
@given(st.text(alphabet="ab=!&|(){},' inothasl", max_size=20))
def test_garbage_never_crashes(text: str) -> None:
    try:
        sel = parse_selector(text)
    except SelectorError as e:
        assert 1 <= e.column <= len(text) + 1
    else:
        assert parse_selector(str(sel)) == sel


@pytest.mark.parametrize(("text", "ast"), [
    ('app contains "web"', Contains("app", "web")),
    ("app starts with 'we'", StartsWith("app", "we")),
    ('a/b ends  with "-db"', EndsWith("a/b", "-db")),
    ('!(app contains "x") && has(y)', And((Not(Contains("app", "x")), Has("y")))),
    ('contains == "k"', Eq("contains", "k")),  # an operator word is still a key
])
def test_substring_operators_parse(text: str, ast: Selector) -> None:
    assert parse_selector(text) == ast
    assert parse_selector(str(ast)) == ast


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ('app contains "eb"', {"app": "web"}, True),
    ('app contains ""', {"app": "web"}, True),
    ('app contains "x"', {"app": "web"}, False),
    ('app starts with "we"', {"app": "web"}, True),
    ('app starts with "eb"', {"app": "web"}, False),
    ('app ends with "eb"', {"app": "web"}, True),
    ('app ends with "we"', {"app": "web"}, False),
    # Calico: the substring tests need the label; their negation then matches.
    ('app contains ""', {}, False),
    ('app starts with ""', {"other": "x"}, False),
    ('!(app ends with "b")', {}, True),
])
def test_substring_operators_match(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize("text", ['app starts "x"', "app ends with", 'app contains x',
                                  'app with "x"'])
def test_substring_operator_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)
