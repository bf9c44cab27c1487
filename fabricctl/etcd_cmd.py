"""``fabricctl etcd start|stop|status``: the embedded single-member etcd for demos and trials.

Owns: one etcd process on loopback and its state file ``<state dir>/etcd.json`` (pid,
ports, data dir), so that ``stop`` works from another shell and after a crash. Start is
idempotent: a healthy etcd recorded in the state file is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from datastore.embedded import EmbeddedEtcd, EmbeddedEtcdError, state_dir

DEFAULT_CLIENT_PORT = 2379
DEFAULT_PEER_PORT = 2380


def _state_file() -> Path:
    return state_dir() / "etcd.json"


def _read_state() -> dict[str, object] | None:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("etcd", help="run the embedded local etcd (demo, trials)")
    esub = p.add_subparsers(dest="etcd_cmd", required=True, metavar="start|stop|status")
    s = esub.add_parser("start", help="start a single-member etcd on loopback")
    s.add_argument("--client-port", type=int, default=DEFAULT_CLIENT_PORT,
                   help=f"loopback port for clients (default {DEFAULT_CLIENT_PORT})")
    s.add_argument("--peer-port", type=int, default=DEFAULT_PEER_PORT,
                   help=f"loopback port for peers (default {DEFAULT_PEER_PORT})")
    s.add_argument("--data-dir", type=Path, default=None,
                   help="default: <state dir>/etcd (XDG_STATE_HOME/l3fabric)")
    s.set_defaults(func=cmd_start)
    t = esub.add_parser("stop", help="stop the embedded etcd (its data is kept)")
    t.add_argument("--purge", action="store_true", help="also delete its data directory")
    t.set_defaults(func=cmd_stop)
    st = esub.add_parser("status", help="is the embedded etcd running, and where")
    st.set_defaults(func=cmd_status)


def cmd_start(args: argparse.Namespace) -> int:
    state = _read_state()
    if state and _alive(int(str(state["pid"]))):
        member = EmbeddedEtcd(Path(str(state["data_dir"])), int(str(state["client_port"])),
                              int(str(state["peer_port"])))
        if member.healthy():
            print(f"etcd already running at {member.endpoint} (pid {state['pid']})")
            return 0
    data_dir = args.data_dir or state_dir() / "etcd"
    member = EmbeddedEtcd(data_dir, args.client_port, args.peer_port)
    try:
        member.start()
    except EmbeddedEtcdError as e:
        print(f"fabricctl: etcd start failed: {e}", file=sys.stderr)
        return 1
    assert member.proc is not None
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps({
        "pid": member.proc.pid, "client_port": member.client_port,
        "peer_port": member.peer_port, "data_dir": str(data_dir),
        "endpoint": member.endpoint,
    }))
    print(f"etcd running at {member.endpoint} (pid {member.proc.pid}, data {data_dir})")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    state = _read_state()
    if not state:
        print("etcd is not running (no state file)")
        return 0
    pid = int(str(state["pid"]))
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    _state_file().unlink(missing_ok=True)
    if args.purge:
        import shutil

        shutil.rmtree(str(state["data_dir"]), ignore_errors=True)
    print(f"etcd stopped (pid {pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _read_state()
    if not state or not _alive(int(str(state["pid"]))):
        print("etcd is not running")
        return 1
    print(f"etcd running at {state['endpoint']} (pid {state['pid']}, data {state['data_dir']})")
    return 0
