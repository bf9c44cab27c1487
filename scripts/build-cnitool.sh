#!/usr/bin/env bash
# Build cnitool offline from Debian's golang-github-appc-cni source (PLATFORM.md).
# Idempotent: an existing binary is reused. Output: ${CNITOOL_CACHE:-.cache}/bin/cnitool.
# The source is fetched with a private apt sources list; /etc/apt is left untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=$(realpath -m "${CNITOOL_CACHE:-.cache}")
out="$cache/bin/cnitool"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi

need=()
for p in golang-go golang-github-appc-cni-dev dpkg-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-cnitool: missing packages (${need[*]}); run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work="$cache/cnitool-build"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/src" "$cache/bin"

# A private sources list with the deb-src line of the system's Debian release.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mirror=$(grep -rhoE '^(deb|URIs:) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ \
         2>/dev/null | awk '{print $2}' | grep -m1 -E 'debian/?$' || true)
mirror=${mirror:-http://deb.debian.org/debian}
echo "deb-src $mirror $codename main" > "$work/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$work/apt/lists" -o "APT::Get::List-Cleanup=0")
apt-get "${apt_opts[@]}" update -qq
(cd "$work/src" && apt-get "${apt_opts[@]}" source -qq --download-only golang-github-appc-cni \
   && dpkg-source -x --no-check ./*.dsc pkg >/dev/null)

src=$(find "$work/src/pkg" -type d -path '*/cnitool' | head -n1)
if [ -z "$src" ]; then
  echo "build-cnitool: no cnitool directory in the source package" >&2
  exit 1
fi
# GOPATH mode: the vendored libcni from golang-github-appc-cni-dev under /usr/share/gocode.
gopath="$work/gopath"
mkdir -p "$gopath/src/github.com/containernetworking"
ln -s "$(dirname "$src")" "$gopath/src/github.com/containernetworking/cni"
(cd "$gopath/src/github.com/containernetworking/cni/cnitool" \
  && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$work/gocache" \
     GOFLAGS=-mod=vendor go build -o "$out" . 2>/dev/null \
  || GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$work/gocache" \
     go build -o "$out" .)
rm -rf "$work"
echo "$out"
