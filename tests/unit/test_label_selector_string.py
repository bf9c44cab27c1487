"""``fabricctl get -l``: the string form of a Kubernetes label selector."""

from __future__ import annotations

import pytest

from datastore.labelselector import ValidationError, parse_label_selector

LABELS = {"app": "web", "tier": "front", "env": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app = web , tier=front", True),
    ("app=db", False),
    ("app!=db", True),
    ("missing!=x", True),  # absent counts as "not equal", as in Kubernetes
    ("app in (db, web)", True),
    ("app in (db)", False),
    ("app notin (db)", True),
    ("missing notin (db)", True),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("env=", True),  # an empty value is a value
    ("kubernetes.io/name", False),
    ("app=web,!tier", False),
])
def test_matches(text: str, expected: bool) -> None:
    assert parse_label_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize("text", ["app web", "app in db", "app in (db", "=web", "app=web,",
                                  "app=(x)", "app=we b", "Bad Key=x", "app=-x-", "a;b"])
def test_errors_name_the_selector(text: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_label_selector(text)
    assert str(e.value)
