#!/usr/bin/env bash
# `make demo`: start the embedded local etcd, apply the example resources, show them.
# Idempotent: a second run reuses the running etcd and reports "unchanged".
set -euo pipefail
cd "$(dirname "$0")/.."
F=.venv/bin/fabricctl
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "starting the embedded etcd (loopback only)"
$F etcd start
step "applying examples/*.yaml"
for f in examples/*.yaml; do $F apply -f "$f"; done
for kind in ippool ipamconfig bgpconfig bgppeer node namespace; do
  step "fabricctl get $kind"; $F get "$kind"
done
step "fabricctl get networkpolicy -A"; $F get networkpolicy -A
step "fabricctl get globalnetworkpolicy"; $F get globalnetworkpolicy
cat <<'MSG'

The demo etcd keeps running on 127.0.0.1:2379. Try:
  .venv/bin/fabricctl get ippool default -o yaml
  etcdctl --endpoints 127.0.0.1:2379 get --prefix /l3fabric/v1/ --keys-only
  make demo-down        # stops the embedded etcd
MSG
