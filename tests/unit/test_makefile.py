"""The README's commands (`make demo`, `make test`) for each kind of user, read with
``make -n``: root runs the recipes, another user runs the same make through sudo, and
a user with neither gets one line saying what to run. The Makefile takes ``USER_ID``
and ``SUDO`` from the command line, so no user has to be switched here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_n(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-n", "-C", str(REPO), "--no-print-directory", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_root_runs_the_recipes() -> None:
    r = make_n("test", "USER_ID=0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["scripts/setup.sh",
                                         ".venv/bin/python -m pytest -q tests"]


@pytest.mark.parametrize("goals", [["demo"], ["test"], ["lint", "test"]])
def test_another_user_runs_the_same_make_through_sudo(goals: list[str]) -> None:
    r = make_n(*goals, "USER_ID=1000", "SUDO=/usr/bin/sudo")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (f'/usr/bin/sudo -- make --no-print-directory -C "{REPO}" '
                        f'{" ".join(goals)}')
    # Nothing else runs as the user: the goals themselves do nothing.
    assert set(lines[1:]) <= {":"}


def test_no_root_and_no_sudo_is_one_line_saying_what_to_run() -> None:
    r = make_n("test", "USER_ID=1000", "SUDO=")
    assert r.returncode != 0
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    assert "needs root and there is no sudo here" in line
    assert "su -c 'make test'" in line
