"""`make demo` twice in a row, then `make demo-down`, through the real command line.

`make demo` is ``fabricctl lab demo`` (leaf-spine) and `make demo-down` is ``fabricctl lab
down leaf-spine``. This test runs the same commands on a copy of leaf-spine under another
name and a private state directory, so that it neither removes nor trips over a demo
somebody has up on the machine. The second run must succeed on top of the first (it
removes the first lab itself) and print the same connectivity matrix, with nothing of the
first run left running; `lab down` then leaves no namespace, process, nft table or route.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers.procs import running_with

REPO = Path(__file__).parents[2]
FABRICCTL = str(Path(sys.executable).parent / "fabricctl")

pytestmark = [
    pytest.mark.skipif(shutil.which("bird") is None or shutil.which("etcd") is None,
                       reason="needs BIRD 2 (bird2) and etcd (etcd-server)"),
]


def matrix(stdout: str) -> str:
    m = re.search(r"^from \\ to.*?(?=^ok = reached)", stdout, re.M | re.S)
    assert m, f"no connectivity matrix in the demo's output:\n{stdout[-2000:]}"
    return m.group(0)


@pytest.fixture
def demo_env() -> Iterator[tuple[dict[str, str], str, Path]]:
    d = Path(tempfile.mkdtemp(prefix="dm", dir="/tmp"))
    doc = yaml.safe_load((REPO / "containerlab/leaf-spine.clab.yml").read_text())
    name = f"d{uuid.uuid4().hex[:6]}"
    doc["name"] = name
    path = d / f"{name}.clab.yml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "XDG_STATE_HOME": str(d)}
    try:
        yield env, name, path
    finally:
        subprocess.run([FABRICCTL, "lab", "down", name], env=env, capture_output=True,
                       timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def test_demo_twice_then_down_leaves_nothing(demo_env: tuple[dict[str, str], str, Path]
                                             ) -> None:
    env, name, path = demo_env
    state_dir = env["XDG_STATE_HOME"]
    t0 = time.monotonic()
    first = subprocess.run([FABRICCTL, "lab", "demo", str(path)], env=env,
                           capture_output=True, text=True, timeout=150)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    t1 = time.monotonic()
    running_after_first = len(running_with(state_dir))
    assert running_after_first >= 1 + 4 + 4 * 3  # etcd, BIRDs, agents + ExaBGPs + relays
    second = subprocess.run([FABRICCTL, "lab", "demo", str(path)], env=env,
                            capture_output=True, text=True, timeout=150)
    t2 = time.monotonic()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert f"removing the previous {name} lab" in second.stdout
    m1, m2 = matrix(first.stdout), matrix(second.stdout)
    assert "FAIL!" not in m2 and "LEAK!" not in m2, m2
    assert m1 == m2
    # Nothing of the first lab still runs next to the second: the same process count
    # (etcd, 4 BIRD, 4 agents, their ExaBGPs and relays), one namespace per node and pod.
    assert len(running_with(state_dir)) == running_after_first
    ours = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True
                                      ).stdout.split() if n.startswith(f"clab-{name}-")]
    assert len(ours) == 9 + 8, ours  # mgmt, 2 spines, 2 leaves, 4 nodes; 8 pods

    down = subprocess.run([FABRICCTL, "lab", "down", name], env=env, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    print(f"\ndemo: first {t1 - t0:.1f}s, second {t2 - t1:.1f}s, "
          f"down {time.monotonic() - t2:.1f}s")
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout.split()
                if n.startswith(f"clab-{name}-")]
    assert running_with(state_dir) == []
    # The root namespace never had any of it: no l3fabric table, no lab route.
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "l3fabric" not in tables
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    assert "10.244." not in routes and "10.77." not in routes
    assert not (Path(state_dir) / "l3fabric" / "labs" / f"{name}.json").exists()
