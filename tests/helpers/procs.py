"""Process checks shared by the tests."""

from __future__ import annotations

from pathlib import Path


def running(pid: int | str) -> bool:
    """Alive and not a zombie: a daemon re-parented when its agent died may stay a zombie
    here (this container's init does not reap), which is stopped for every purpose."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
