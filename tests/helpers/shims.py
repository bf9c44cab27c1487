"""The CNI plugin executables exactly as users install them: ``fabricctl install-cni``.

Tests and benchmarks that exec ``l3fabric`` / ``l3fabric-ipam`` as a runtime does take
them from :func:`installed`, which runs the real ``fabricctl install-cni`` once per
process into a temporary directory of its own. The test session's fixture
(``cni_shims`` in tests/conftest.py) removes it when the session ends, passed or failed;
outside pytest (a benchmark) it goes at interpreter exit.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FABRICCTL = REPO / ".venv" / "bin" / "fabricctl"

_root: Path | None = None
_lock = threading.Lock()  # tests exec shims from many threads at once: install once


def installed(name: str = "l3fabric") -> Path:
    """The executable ``name`` from this process's ``fabricctl install-cni``."""
    return bin_dir() / name


def bin_dir() -> Path:
    """The ``--bin-dir`` of this process's ``fabricctl install-cni`` (installed on first
    use; the reference plugins stay in their own directory)."""
    global _root
    with _lock:
        if _root is None:
            _root = _install()
        return _root / "bin"


def _install() -> Path:
    root = Path(tempfile.mkdtemp(prefix="l3fabric-cni-"))
    try:
        r = subprocess.run([str(FABRICCTL), "install-cni", "--bin-dir", str(root / "bin"),
                            "--conf-dir", str(root / "net.d")],
                           capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise AssertionError(f"fabricctl install-cni failed: {r.stdout}{r.stderr}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    atexit.register(remove)
    return root


def remove() -> None:
    """Delete what :func:`bin_dir` installed, if anything (again: nothing)."""
    global _root
    with _lock:
        if _root is not None:
            shutil.rmtree(_root, ignore_errors=True)
            _root = None
