#!/usr/bin/env bash
# Idempotent set-up: the Debian packages l3fabric needs, then the virtualenv at .venv/
# with l3fabric installed in it (editable). Safe to run again; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installing Debian packages needs root: another user runs this again through sudo, or,
# where there is none, gets one line saying what to run.
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$PWD/scripts/setup.sh" "$@"
  fi
  echo "setup: needs root and there is no sudo here: run \`su -c '$PWD/scripts/setup.sh'\`" >&2
  exit 1
fi

DEB_PACKAGES=(
  etcd-server etcd-client bird2 nftables iptables ipset iproute2 libnftables1
  iputils-ping iperf3 tcpdump graphviz procps psmisc openssl util-linux
  python3-venv frr containernetworking-plugins podman runc busybox-static
  golang-go golang-github-appc-cni-dev dpkg-dev prometheus mmdebstrap
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages like etcd-server and frr start their daemon on install, in the root
  # namespace. l3fabric runs them itself, in namespaces it made: forbid service starts
  # for the duration of the install (policy-rc.d exit 101), as container images do.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
  fi
  trap '[ -n "$guard" ] && rm -f "$guard"' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.l3fabric-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing l3fabric and its test tools into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
