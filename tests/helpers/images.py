"""The lab's podman images (`make images`) as the e2e tests find them: missing, or built
from other source than this tree's, in which case a test would exercise other code and
skips, saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
PODMAN = ["podman", "--cgroup-manager", "cgroupfs"]
NODE_IMAGE = "l3fabric/node:latest"
IMAGES = (NODE_IMAGE, "l3fabric/bird:2.0.12", "l3fabric/etcd:3.4.23")


def missing(images: tuple[str, ...] = IMAGES) -> list[str]:
    if shutil.which("podman") is None:
        return list(images)
    return [i for i in images
            if subprocess.run([*PODMAN, "image", "exists", i]).returncode != 0]


def node_image_stale() -> bool:
    """The node image was built from other source than this tree's (its l3fabric.source
    label against images/source-digest.sh here)."""
    built = subprocess.run([*PODMAN, "image", "inspect", "--format",
                            '{{index .Labels "l3fabric.source"}}', NODE_IMAGE],
                           capture_output=True, text=True).stdout.strip()
    here = subprocess.run([str(REPO / "images/source-digest.sh")], capture_output=True,
                          text=True).stdout.strip()
    return built != here


def skip_unless_built(images: tuple[str, ...] = IMAGES) -> list[pytest.MarkDecorator]:
    """The marks of a test module that runs these images: skipped without podman, when an
    image is missing, and when the node image is stale."""
    absent = missing(images) if os.geteuid() == 0 else []
    stale = (os.geteuid() == 0 and not absent and NODE_IMAGE in images
             and node_image_stale())
    return [
        pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman"),
        pytest.mark.skipif(bool(absent), reason="the lab's podman images are not built: run "
                           f"`make images` (missing: {', '.join(absent)})"),
        pytest.mark.skipif(stale, reason=f"{NODE_IMAGE} was built from other source than "
                           "this tree: run `make images`"),
    ]
