"""The user guide's etcdctl examples are values the datastore accepts at their keys."""

from __future__ import annotations

import re
from pathlib import Path

from datastore import model

DOC = Path(__file__).parents[2] / "docs" / "index.md"


def test_every_etcdctl_example_validates() -> None:
    found = re.findall(r"put (/l3fabric/v1/\S+) \\\n  '(.*?)'", DOC.read_text(), re.S)
    assert len(found) >= 9
    for key, value in found:
        res = model.decode(key, value.encode())
        assert model.key_for(res) == key
