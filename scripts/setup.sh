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

# apt and pip run for minutes on a fresh machine: each step says what it does, one line
# per package as it is fetched and set up, and the whole output goes to a log that is
# shown (its end) if the step fails, kept then, and removed once setup succeeded.
log=""
step() {  # step WHAT PATTERN CMD...: run CMD, print the lines matching PATTERN as progress
  local what=$1 pattern=$2; shift 2
  [ -n "$log" ] || log=$(mktemp /tmp/l3fabric-setup.XXXXXX.log)
  echo "setup: $what (log: $log)"
  if ! "$@" 2>&1 | tee -a "$log" | { grep --line-buffered -E "$pattern" || true; } \
      | sed -u 's/^/setup:   /'; then
    echo "setup: $what failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

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
  step "apt-get update: reading the package lists" '^(Hit|Get|Err):' apt-get update
  step "apt-get install: ${#missing[@]} packages and their dependencies" \
    '^(Get:[0-9]+ |Setting up |E: )' \
    apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.l3fabric-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "pip: l3fabric (editable) and its test tools into .venv" \
    '^(Obtaining|Collecting|Processing|Installing collected|Successfully installed|ERROR)' \
    .venv/bin/pip install --disable-pip-version-check --progress-bar off -e '.[test]'
  touch "$stamp"
fi
if [ -n "$log" ]; then rm -f "$log"; fi
