"""bench.common.progress: a long wait in a benchmark says what it waits for on stderr, a
short one says nothing."""

from __future__ import annotations

import io
import time

import pytest

from bench.common import progress

pytestmark = pytest.mark.unit


def test_a_long_wait_prints_lines_then_done() -> None:
    out = io.StringIO()
    with progress("waiting for the agent's /readyz", every=0.01, out=out) as p:
        p.note = "12 keys"
        deadline = time.monotonic() + 10
        while "bench:" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2
    assert all(ln.startswith("bench: waiting for the agent's /readyz: ") for ln in lines)
    assert lines[0].endswith(" s, 12 keys")
    assert lines[-1].endswith("(done)")


def test_a_short_wait_prints_nothing() -> None:
    out = io.StringIO()
    with progress("writing the cluster", every=60, out=out):
        pass
    assert out.getvalue() == ""
