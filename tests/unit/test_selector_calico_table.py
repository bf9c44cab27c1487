"""Calico's documented selector operators, as a table of resources and the ones each selects.

The expected matches follow the "Selectors" table of Calico's NetworkPolicy resource
reference (projectcalico.org/v3), row by row:

- ``all()``: every resource;
- ``k == 'v'``: label ``k`` with value ``v``;
- ``k != 'v'``: label ``k`` with a value that is not ``v``; a resource without ``k`` matches
  too, as Calico's selector evaluator (libcalico-go's ``selector`` package) decides, and as
  the row's counterpart ``k not in {...}`` says in words;
- ``has(k)``: label ``k``, whatever its value; ``!has(k)``: no label ``k``;
- ``k in { 'v1', 'v2' }``: label ``k`` with a value in the set;
- ``k not in { 'v1', 'v2' }``: no label ``k``, or ``k`` with a value not in the set;
- ``k contains 's'``, ``k starts with 's'``, ``k ends with 's'``: label ``k`` whose value
  contains, starts with, ends with ``s``;
- ``!``, ``&&``, ``||`` and parentheses combine them, ``!`` binding tightest, then ``&&``.
"""

from __future__ import annotations

import pytest

from datastore.calico_selector import parse_selector

# A small fleet of labelled resources, named so the expected sets read easily.
RESOURCES: dict[str, dict[str, str]] = {
    "web-prod": {"app": "web", "env": "prod", "tier": "frontend"},
    "web-dev": {"app": "web", "env": "dev", "tier": "frontend"},
    "db-prod": {"app": "database", "env": "prod", "tier": "backend"},
    "cache": {"app": "webcache", "tier": "backend"},
    "bare": {},
    "empty-app": {"app": ""},
}

# (selector, names of the resources it selects)
TABLE: list[tuple[str, set[str]]] = [
    ("all()", set(RESOURCES)),
    ("", set(RESOURCES)),
    ("!all()", set()),
    ("app == 'web'", {"web-prod", "web-dev"}),
    ("app != 'web'", {"db-prod", "cache", "bare", "empty-app"}),
    ("has(env)", {"web-prod", "web-dev", "db-prod"}),
    ("has(app)", {"web-prod", "web-dev", "db-prod", "cache", "empty-app"}),
    ("!has(env)", {"cache", "bare", "empty-app"}),
    ("!has(app)", {"bare"}),
    ("env in { 'prod', 'staging' }", {"web-prod", "db-prod"}),
    ("env in {}", set()),
    ("env not in { 'prod', 'staging' }", {"web-dev", "cache", "bare", "empty-app"}),
    ("env not in {}", set(RESOURCES)),
    ("app contains 'web'", {"web-prod", "web-dev", "cache"}),
    ("app contains 'a'", {"db-prod", "cache"}),
    ("app starts with 'web'", {"web-prod", "web-dev", "cache"}),
    ("app starts with 'data'", {"db-prod"}),
    ("app ends with 'cache'", {"cache"}),
    ("app ends with 'b'", {"web-prod", "web-dev"}),
    ("app contains ''", {"web-prod", "web-dev", "db-prod", "cache", "empty-app"}),
    ("!(app contains 'web')", {"db-prod", "bare", "empty-app"}),
    ("app == 'web' && env == 'prod'", {"web-prod"}),
    ("app == 'web' || tier == 'backend'", {"web-prod", "web-dev", "db-prod", "cache"}),
    ("has(app) && !has(env)", {"cache", "empty-app"}),
    ("tier == 'backend' && env not in {'prod'}", {"cache"}),
    ("app starts with 'web' && !has(env) || env == 'dev'", {"cache", "web-dev"}),
    ("app starts with 'web' && (!has(env) || env == 'dev')", {"cache", "web-dev"}),
    ("!app == 'web' && has(tier)", {"db-prod", "cache"}),
    ("has(env) && env != 'prod' || app in {'database'}", {"web-dev", "db-prod"}),
]


@pytest.mark.parametrize(("selector", "expected"), TABLE)
def test_documented_operator_selects(selector: str, expected: set[str]) -> None:
    sel = parse_selector(selector)
    assert {name for name, labels in RESOURCES.items() if sel.matches(labels)} == expected
    # The canonical text is the same selector.
    again = parse_selector(str(sel))
    assert {name for name, labels in RESOURCES.items() if again.matches(labels)} == expected
