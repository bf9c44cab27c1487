#!/usr/bin/env bash
# source-digest.sh [DIR]: a digest of l3fabric's Python source under DIR (default: this
# checkout). images/build.sh labels the node image with it (l3fabric.source), and
# tests/e2e/test_lab_podman.py compares it with its own tree's to tell a stale image.
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
find datastore ipam cni felix_like bgp fabricctl -name '*.py' -type f \
  | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64
