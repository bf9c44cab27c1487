"""The lab's state file: every namespace, process and file a lab made, written *before*
each thing is made, so that ``lab down`` removes all of it even after the runner crashed
half-way (a namespace in the file that was never created is simply skipped).

Owns ``<state_dir>/labs/<lab>.json`` (``state_dir`` is :func:`datastore.embedded.state_dir`)
and the lab's working directory ``<state_dir>/labs/<lab>/`` (etcd data, BIRD and agent
configs, sockets and logs). Writes are atomic (temporary file + rename): a crash leaves
the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datastore.embedded import state_dir


def labs_dir() -> Path:
    return state_dir() / "labs"


def state_path(lab: str) -> Path:
    return labs_dir() / f"{lab}.json"


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), or None when
    it is gone (or a zombie). Recorded next to each pid, so that a recycled pid is never
    killed by mistake."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped by whoever adopted it
        return None
    return int(fields[19])


@dataclass
class Proc:
    pid: int
    start: int | None
    what: str  # "etcd", "bird tor1", "agent node1"
    netns: str
    log: str = ""

    def alive(self) -> bool:
        return self.start is not None and proc_start_time(self.pid) == self.start


@dataclass
class LabState:
    lab: str
    topology: str
    dir: str
    etcd_endpoint: str = ""
    mgmt_netns: str = ""
    namespaces: list[str] = field(default_factory=list)
    processes: list[Proc] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    phase: str = "creating"  # creating -> up; down removes the file
    runtime: str = "netns"  # "netns" (runner) or "podman" (podman: one container per node)
    ipv6: bool = False  # a dual-stack lab: pods get an IPv6 address too

    @property
    def path(self) -> Path:
        return state_path(self.lab)

    def save(self) -> None:
        p = self.path
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, p)

    def add_namespace(self, name: str) -> None:
        if name not in self.namespaces:
            self.namespaces.append(name)
        self.save()

    def add_process(self, proc: Proc) -> None:
        self.processes.append(proc)
        self.save()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabState:
        procs = [Proc(**p) for p in d.get("processes", [])]
        return cls(lab=d["lab"], topology=d.get("topology", ""), dir=d["dir"],
                   etcd_endpoint=d.get("etcd_endpoint", ""),
                   mgmt_netns=d.get("mgmt_netns", ""),
                   namespaces=list(d.get("namespaces", [])), processes=procs,
                   nodes=dict(d.get("nodes", {})), pods=dict(d.get("pods", {})),
                   phase=d.get("phase", "creating"), runtime=d.get("runtime", "netns"),
                   ipv6=bool(d.get("ipv6", False)))

    @classmethod
    def load(cls, lab: str) -> LabState | None:
        try:
            return cls.from_dict(json.loads(state_path(lab).read_text()))
        except FileNotFoundError:
            return None


def list_labs() -> list[str]:
    d = labs_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json"))
