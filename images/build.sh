#!/usr/bin/env bash
# `make images`: the images the containerlab/*.clab.yml files name, built on this machine
# from Debian's packages, with no container registry:
#
#   1. a Debian 12 root filesystem per image family, from mmdebstrap (Debian's own
#      packages, from the host's apt mirror), imported with `podman import`:
#        l3fabric/rootfs-node    systemd, Python, iproute2, nftables, etcd-server/-client
#        l3fabric/rootfs-router  BIRD 2, iproute2
#   2. the images, from the Containerfiles beside this script, built with `podman build
#      --network none` (nothing is fetched while building):
#        l3fabric/node:latest    + l3fabric as a wheel built from this checkout, its
#                                  dependencies from a wheelhouse made on the host, the
#                                  CNI plugins; systemd is PID 1
#        l3fabric/bird:2.0.12    the router
#        l3fabric/etcd:3.4.23    Debian's etcd, the lab's mgmt node
#
# A root filesystem is rebuilt only when its package list changes (its tar is kept under
# $L3FABRIC_IMAGES_CACHE, default /var/cache/l3fabric-images). Needs root; installs
# mmdebstrap (Debian's) if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${L3FABRIC_IMAGES_CACHE:-/var/cache/l3fabric-images}
SUITE=bookworm
PY=${PYTHON:-$REPO/.venv/bin/python}
mkdir -p "$CACHE"

if ! command -v mmdebstrap >/dev/null; then
  echo "images: installing mmdebstrap (Debian's)"
  apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi
command -v podman >/dev/null || {
  echo "make images: podman is missing: apt-get install podman runc" >&2; exit 1; }

NODE_PACKAGES=systemd,systemd-sysv,python3,python3-venv,iproute2,nftables,iptables,libnftables1,iputils-ping,procps,etcd-server,etcd-client,ca-certificates
ROUTER_PACKAGES=bird2,iproute2,iputils-ping,procps

# rootfs NAME PACKAGES: mmdebstrap a root filesystem and import it as l3fabric/rootfs-NAME,
# unless the image exists for this very package list (its label says which).
rootfs() {
  local name=$1 pkgs=$2 sum tar
  sum=$(printf '%s %s' "$SUITE" "$pkgs" | sha256sum | cut -c1-16)
  if [ "$(podman image inspect --format '{{index .Labels "l3fabric.rootfs"}}' \
          "l3fabric/rootfs-$name:latest" 2>/dev/null)" = "$sum" ]; then
    echo "images: rootfs-$name is up to date"
    return
  fi
  tar=$CACHE/rootfs-$name-$sum.tar
  if [ ! -s "$tar" ]; then
    echo "images: mmdebstrap $SUITE for $name ($pkgs)"
    # No documentation, man pages or apt lists in the image; apt is still usable.
    mmdebstrap --quiet --format=tar --variant=minbase --include="$pkgs" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      "$SUITE" "$tar.part"
    mv "$tar.part" "$tar"
  fi
  echo "images: podman import rootfs-$name"
  replaced+=("$(image_id "l3fabric/rootfs-$name:latest")")
  podman import --change "LABEL l3fabric.rootfs=$sum" "$tar" "l3fabric/rootfs-$name:latest" >/dev/null
}

# The images a rebuild replaces, removed at the end (derived images first) so that rebuilds
# do not pile up untagged copies; one still used by a container stays.
replaced=()
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

rootfs node "$NODE_PACKAGES"
rootfs router "$ROUTER_PACKAGES"

# The wheel of this checkout and every dependency's wheel, for the image's Python (the
# same Debian 12 Python 3.11 as the host's), so that the build itself needs no network.
ctx=$(mktemp -d /tmp/l3fabric-images.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp images/node/Containerfile images/node/l3fabric-pod "$ctx/"
# The working tree by default; L3FABRIC_IMAGES_REF=<git ref> builds from that commit instead
# (a tree with edits in progress need not be importable).
src=$REPO
if [ -n "${L3FABRIC_IMAGES_REF:-}" ]; then
  src=$ctx/src
  mkdir -p "$src"
  git -C "$REPO" archive "$L3FABRIC_IMAGES_REF" | tar -x -C "$src"
fi
echo "images: wheels of l3fabric ($src${L3FABRIC_IMAGES_REF:+ at $L3FABRIC_IMAGES_REF}) and its dependencies"
"$PY" -m pip wheel -q --disable-pip-version-check -w "$ctx/wheels" "$src" \
  >"$ctx/pip.log" 2>&1 || { cat "$ctx/pip.log" >&2; exit 1; }

# The node image's label l3fabric.source: a digest of the Python source it was built from
# (tests/e2e/test_lab_podman.py computes the same from its tree and skips on a stale image).
SOURCE=$(images/source-digest.sh "$src")

build() {  # build TAG DIR [podman build flags]
  local tag=$1 dir=$2 old
  shift 2
  echo "images: podman build $tag"
  old=$(image_id "$tag")
  podman build -q --network none --pull=never "$@" -t "$tag" -f "$dir/Containerfile" "$dir" \
    >/dev/null 2>"$ctx/build.log" || { cat "$ctx/build.log" >&2; exit 1; }
  [ "$old" = "$(image_id "$tag")" ] || replaced=("$old" "${replaced[@]}")
}
build l3fabric/node:latest "$ctx" --label "l3fabric.source=$SOURCE"
build l3fabric/bird:2.0.12 images/router
build l3fabric/etcd:3.4.23 images/etcd
for id in "${replaced[@]}"; do
  [ -n "$id" ] && podman rmi "$id" >/dev/null 2>&1 || true
done
podman images --filter reference='l3fabric/*' --format '{{.Repository}}:{{.Tag}} {{.Size}}'
