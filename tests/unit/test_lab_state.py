"""The lab state file: atomic, round-trips, and never mistakes a recycled pid for ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fabricctl.lab import state


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))


def test_round_trip_and_listing(tmp_path: Path) -> None:
    st = state.LabState(lab="demo", topology="/t.clab.yml", dir=str(tmp_path / "d"))
    st.add_namespace("clab-demo-node1")
    st.add_process(state.Proc(pid=os.getpid(), start=state.proc_start_time(os.getpid()),
                              what="agent node1", netns="clab-demo-node1"))
    st.pods["default/web"] = {"node": "node1", "netns": "clab-demo-pod-default-web"}
    st.save()
    assert state.state_path("demo") == tmp_path / "l3fabric/labs/demo.json"
    back = state.LabState.load("demo")
    assert back == st
    assert state.list_labs() == ["demo"]
    assert back is not None and back.processes[0].alive()
    back.remove()
    assert state.LabState.load("demo") is None and state.list_labs() == []


def test_recycled_pid_is_not_alive() -> None:
    p = state.Proc(pid=os.getpid(), start=1, what="etcd", netns="x")
    assert not p.alive()
    assert not state.Proc(pid=2**22 + 7, start=5, what="etcd", netns="x").alive()


def test_start_time_of_a_process_with_spaces_in_its_name() -> None:
    assert isinstance(state.proc_start_time(os.getpid()), int)
    assert state.proc_start_time(2**22 + 7) is None
