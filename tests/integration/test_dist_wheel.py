"""``make dist``'s wheel installed into a fresh virtualenv runs the lab without the checkout.

``python -m build`` makes the wheel and the sdist from the checkout, as ``make dist`` does;
the wheel goes into a new virtualenv with its dependencies (pip, as a user installs it),
and that venv's ``fabricctl``, run from a directory outside the checkout with nothing of
the checkout on its path, finds the shipped ``two-node`` topology by name (``lab
render``) and brings it up and down (``lab up``/``lab down``, its agents the venv's
``fabric-agent``). The lab runs under a unique name (a copy of the wheel's file): lab
namespaces are named after the lab, and a ``two-node`` lab someone has up here is not
this test's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fabricctl.lab import runner
from fabricctl.lab.state import LabState

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["two-node.clab.yml", "leaf-spine.clab.yml", "route-reflector.clab.yml",
           "configs/two-node/tor1.conf", "configs/leaf-spine/resources.yaml",
           "demo/policy.yaml"]

pytestmark = [
    pytest.mark.skipif(shutil.which("bird") is None or shutil.which("etcd") is None,
                       reason="needs BIRD 2 (bird2) and etcd (etcd-server)"),
    pytest.mark.skipif(importlib.util.find_spec("build") is None,
                       reason="python -m build is missing: run `make setup`"),
]


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short directory outside the checkout (unix socket paths), the labs' state in it;
    any lab left in it is taken down."""
    d = Path(tempfile.mkdtemp(prefix="wh", dir="/tmp"))
    monkeypatch.setenv("XDG_STATE_HOME", str(d / "state"))
    try:
        yield d
    finally:
        for f in (d / "state/l3fabric/labs").glob("*.json"):
            st = LabState.load(f.stem)
            if st is not None:
                runner.down(st)
        shutil.rmtree(d, ignore_errors=True)


def sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


def test_wheel_in_a_fresh_venv_runs_lab_up_and_down(work: Path) -> None:
    dist = work / "dist"
    sh(sys.executable, "-m", "build", "--outdir", dist, REPO, cwd=work)
    wheel, = dist.glob("l3fabric-*.whl")
    sdist, = dist.glob("l3fabric-*.tar.gz")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert {f"fabricctl/lab/topologies/{f}" for f in SHIPPED} <= in_wheel
    with tarfile.open(sdist) as t:
        in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {f"fabricctl/lab/topologies/{f}" for f in SHIPPED} <= in_sdist

    venv = work / "venv"
    sh(sys.executable, "-m", "venv", venv, cwd=work)
    sh(venv / "bin/pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=work)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("L3FABRIC_")}
    env["PATH"] = f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
    fabricctl = venv / "bin/fabricctl"
    where = sh(venv / "bin/python", "-c", "import fabricctl.lab.topology as t; "
               "print(t.TOPOLOGIES)", cwd=work, env=env).stdout.strip()
    assert where.startswith(str(venv))  # the wheel's copy, not the checkout's

    # A shipped topology by its bare name.
    r = sh(fabricctl, "lab", "render", "two-node", "--dir", work / "render", cwd=work, env=env)
    assert (work / "render/tor1.conf").exists(), r.stdout

    doc = yaml.safe_load((Path(where) / "two-node.clab.yml").read_text())
    doc["name"] = lab = f"w{uuid.uuid4().hex[:6]}"
    (work / f"{lab}.clab.yml").write_text(yaml.safe_dump(doc))
    r = sh(fabricctl, "lab", "up", f"{lab}.clab.yml", cwd=work, env=env)
    assert f"lab {lab} is up" in r.stdout
    namespaces = [ns for ns in runner.existing_netns() if ns.startswith(f"clab-{lab}-")]
    assert {f"clab-{lab}-node1", f"clab-{lab}-node2", f"clab-{lab}-tor1"} <= set(namespaces)
    st = LabState.load(lab)
    assert st is not None
    agents = [p for p in st.processes if p.what.startswith("agent ")]
    assert len(agents) == 2 and all(p.alive() for p in agents)
    for p in agents:  # the venv's agent, from the wheel
        argv = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
        assert str(venv / "bin/fabric-agent").encode() in argv, argv

    r = sh(fabricctl, "lab", "down", lab, cwd=work, env=env)
    assert f"lab {lab} removed" in r.stdout
    assert not [ns for ns in runner.existing_netns() if ns.startswith(f"clab-{lab}-")]
