"""The chaos soak: pods, policies and labels churn on the leaf-spine lab while faults are
injected at random and overlap; at each settle point (every fault healed, a quiet window)
the checker (`soak.checker`) must find nothing within `CONVERGE` seconds.

``python -m soak.run`` (``make soak``): ``SOAK_SECONDS`` (600), ``SOAK_SEED`` (random,
printed first: the same seed replays the same choices), ``SOAK_FAULTS`` (a comma list of
fault kinds, default all), ``SOAK_TOPOLOGY`` (only ``leaf-spine``), ``SOAK_DUMP`` (where
state dumps go on a violation; a new directory under /tmp by default). The last line is
``soak: D s, seed S, N pod ops, F faults, K settles, V violations``; the exit status is 1
when V > 0.

A run replays its *choices* from the seed; timings on a shared machine differ, so a replay
reproduces the same schedule of operations and faults, not the same interleaving.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabricctl.lab import runner

from . import churn
from .checker import (
    Deleted,
    LogScanner,
    PodView,
    check_addresses,
    check_endpoints,
    check_etcd_members,
    check_ipam,
    check_node_state,
    check_reach,
    etcd_objects,
    expected_reach,
    rss_kib,
)
from .lab import ETCD_QUOTA, NAMESPACES, POOLS, PREFIX, SoakLab, build
from .prober import Prober

CONVERGE = 30.0  # N: every invariant holds within this many seconds of a settle start
FAULTS = ("agent_kill9", "agent_restart", "exabgp_kill9", "bird_restart", "link_flap",
          "etcd_member_kill", "etcd_leader_kill", "etcd_outage", "etcd_partition",
          "etcd_quota", "cni_add_killed")
JUNK = f"{PREFIX}soak/junk/"  # where etcd_quota fills the cluster (no agent watches it)
FILL_MB = ETCD_QUOTA // 2 // 1_000_000  # half the quota, in 1 MB values
MIN_PODS, MAX_PODS = 10, 40
MEMORY_RUN = 300.0  # RSS growth is judged in runs this long or longer


@dataclass
class Pod(PodView):
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "new"  # adding, live, del (needs a DEL), deleting
    retry_at: float = 0.0
    kill_add: bool = False

    def view(self) -> PodView:
        return PodView(self.key, self.ns, self.name, self.node, self.netns, self.container,
                       list(self.ips))


@dataclass
class Active:
    kind: str
    targets: frozenset[str]
    heal_at: float
    heal: Any
    what: str


class Soak:
    def __init__(self, lab: SoakLab, seed: int, seconds: float, faults: list[str],
                 dump_dir: Path, say: Any = print) -> None:
        self.lab, self.seed, self.seconds = lab, seed, seconds
        self.rng = random.Random(seed)
        self.fault_kinds = faults
        self.dump_dir = dump_dir
        self.say = say
        self.t0 = time.monotonic()
        self.history: list[str] = []
        self.pods: dict[str, Pod] = {}
        self.deleted: list[Deleted] = []
        self.procs: dict[str, tuple[subprocess.Popen[str], Pod, str, float]] = {}
        self.active: list[Active] = []
        self.counter = 0
        self.pod_ops = 0
        self.faults: Counter[str] = Counter()
        self.settles = 0
        self.settle_times: list[float] = []
        self.violations: list[str] = []
        self.prober = Prober()
        self.logs = LogScanner()
        self.rss: dict[tuple[str, int], list[int]] = {}
        self.pool_disabled = False
        self.cni_bin = runner._cni_bin(lab.st)

    # -- history ---------------------------------------------------------------------------

    def event(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:8.2f}  {text}"
        self.history.append(line)
        if os.environ.get("SOAK_VERBOSE"):
            self.say(line)

    def violate(self, items: list[str], where: str) -> None:
        for v in items:
            self.event(f"VIOLATION ({where}): {v}")
        self.violations += [f"{where}: {v}" for v in items]

    # -- pods ----------------------------------------------------------------------------------

    def _cni_argv(self, command: str, pod: Pod) -> tuple[list[str], str]:
        # Labels go with the ADD only, as a runtime sends them; the container ID is the
        # soak's own, so a retried ADD (its shim killed) and the DEL name the same one.
        conf, env = runner.cni_request(
            self.lab.topo.name, command, self.lab.agent_socket(pod.node), pod.ns, pod.name,
            pod.netns, pod.labels if command == "ADD" else {}, str(self.cni_bin), ipv6=True,
            container=pod.container)
        argv = runner.in_netns(runner.netns_name(self.lab.topo.name, pod.node), "env", "-i",
                               *[f"{k}={v}" for k, v in env.items()],
                               str(self.cni_bin / "l3fabric"))
        return argv, json.dumps(conf)

    def _spawn(self, command: str, pod: Pod) -> None:
        argv, stdin = self._cni_argv(command, pod)
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert p.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            p.stdin.write(stdin)
            p.stdin.close()
        p.stdin = None
        kill_at = 0.0
        if command == "ADD" and pod.kill_add:
            kill_at = time.monotonic() + self.rng.uniform(0.01, 0.3)
        self.procs[pod.key] = (p, pod, command, kill_at)
        pod.state = "adding" if command == "ADD" else "deleting"
        self.pod_ops += 1
        self.event(f"{command} {pod.key} on {pod.node} ({pod.container})"
                   + (" [shim to be killed]" if kill_at else ""))

    def add_pod(self, kill: bool = False) -> None:
        self.counter += 1
        ns = self.rng.choice(sorted(NAMESPACES))
        name = f"p{self.counter}"
        node = self.rng.choice(self.lab.nodes)
        pod = Pod(f"{ns}/{name}", ns, name, node,
                  runner.pod_netns_name(self.lab.topo.name, ns, name),
                  f"soak-{self.seed}-{name}", [], labels=churn.pod_labels(self.rng),
                  kill_add=kill)
        self.lab.st.add_namespace(pod.netns)
        runner.sh("ip", "netns", "add", pod.netns)
        runner.sh("ip", "-n", pod.netns, "link", "set", "lo", "up")
        self.pods[pod.key] = pod
        self._spawn("ADD", pod)

    def del_pod(self, pod: Pod) -> None:
        self.prober.forget(pod.key)
        self._spawn("DEL", pod)

    def reap(self) -> None:
        """Collect finished shims; kill the ones chosen to die half-way."""
        now = time.monotonic()
        for key, (p, pod, command, kill_at) in list(self.procs.items()):
            if kill_at and now >= kill_at and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                del self.procs[key]
                pod.kill_add = False
                self.faults["cni_add_killed"] += 1
                self.event(f"FAULT cni_add_killed: ADD {key} shim killed; the runtime retries")
                self._spawn("ADD", pod)
                continue
            if p.poll() is None:
                if now - self._started(p) > 150:
                    os.killpg(p.pid, signal.SIGKILL)
                continue
            out, err = p.communicate()
            del self.procs[key]
            if command == "ADD" and p.returncode == 0 and kill_at:
                # The shim was to be killed but finished first: a plain ADD.
                pod.kill_add = False
            if command == "ADD":
                if p.returncode == 0:
                    try:
                        res = json.loads(out)
                        pod.ips = [str(i["address"]).split("/")[0] for i in res["ips"]]
                        self.prober.serve(pod.key, pod.netns)
                        self.prober.serve(pod.key, pod.netns, socket.AF_INET6)
                        pod.state = "live"
                        self.event(f"ADD {key} ok: {pod.ips}")
                        dup = [o.key for o in self.pods.values() if o is not pod
                               and o.state == "live" and set(o.ips) & set(pod.ips)]
                        if dup:
                            self.violate([f"ADD {key} got {pod.ips}, held by live {dup}"],
                                         "continuous")
                    except (ValueError, KeyError, OSError) as e:
                        self.event(f"ADD {key} answered 0 but {e!r}: {out[:300]}")
                        pod.state, pod.retry_at = "del", now
                else:
                    self.event(f"ADD {key} failed ({p.returncode}): {(out or err)[:300]}")
                    pod.state, pod.retry_at = "del", now  # the runtime cleans up with DEL
            else:
                if p.returncode == 0:
                    self.event(f"DEL {key} ok")
                    runner.sh("ip", "netns", "del", pod.netns, check=False)
                    self.deleted.append(Deleted(key, pod.node, pod.container, pod.ips))
                    del self.pods[key]
                else:
                    self.event(f"DEL {key} failed ({p.returncode}): {(out or err)[:300]}; "
                               f"the runtime retries")
                    pod.state, pod.retry_at = "del", now + 1.0

    _start_times: dict[int, float] = {}

    def _started(self, p: subprocess.Popen[str]) -> float:
        return self._start_times.setdefault(p.pid, time.monotonic())

    def retry_dels(self) -> None:
        now = time.monotonic()
        for pod in list(self.pods.values()):
            if pod.state == "del" and pod.retry_at <= now and pod.key not in self.procs:
                self.del_pod(pod)

    def live(self) -> list[Pod]:
        return [p for p in self.pods.values() if p.state == "live"]

    def churn_pod(self) -> None:
        n, total = len(self.live()), len(self.pods)
        if len(self.procs) >= 4:
            return
        if n < MIN_PODS or (total < MAX_PODS and self.rng.random() < 0.55):
            self.add_pod(kill="cni_add_killed" in self.fault_kinds and self.rng.random() < 0.1)
        else:
            live = self.live()
            if live:
                self.del_pod(self.rng.choice(live))

    # -- resources -----------------------------------------------------------------------------

    def put(self, key: str, doc: dict[str, Any]) -> None:
        assert self.lab.etcd is not None
        res = self.lab.etcd.call("put", key=PREFIX + key, value=json.dumps(doc), timeout=6)
        self.event(f"put {key}: {'ok' if res.get('ok') else res.get('error')}")

    def delete(self, key: str) -> None:
        assert self.lab.etcd is not None
        res = self.lab.etcd.call("delete", key=PREFIX + key, timeout=6)
        self.event(f"delete {key}: {'ok' if res.get('ok') else res.get('error')}")

    def churn_resource(self) -> None:
        r = self.rng.random()
        if r < 0.3:
            ns = self.rng.choice(sorted(NAMESPACES))
            name = self.rng.choice(churn.NP_NAMES)
            if self.rng.random() < 0.3:
                self.delete(f"policies/{ns}/{name}")
            else:
                self.put(f"policies/{ns}/{name}", churn.network_policy(self.rng, ns, name))
        elif r < 0.55:
            name = self.rng.choice(churn.GNP_NAMES)
            if self.rng.random() < 0.3:
                self.delete(f"globalpolicies/{name}")
            else:
                self.put(f"globalpolicies/{name}", churn.global_policy(self.rng, name))
        elif r < 0.65:
            ns = self.rng.choice(sorted(NAMESPACES))
            self.put(f"namespaces/{ns}", churn.namespace(self.rng, ns))
        elif r < 0.72:
            self.pool_disabled = not self.pool_disabled
            self.put("config/ippools/pb", {
                "apiVersion": "l3fabric.io/v1", "kind": "IPPool", "metadata": {"name": "pb"},
                "spec": {"cidr": POOLS["pb"], "blockSize": 26,
                         "disabled": self.pool_disabled}})
        else:
            self.relabel()

    def relabel(self) -> None:
        """A pod's labels change, as an orchestrator writes them: its endpoint, by CAS."""
        live = self.live()
        if not live:
            return
        pod = self.rng.choice(live)
        role = churn.pod_labels(self.rng)["role"]
        assert self.lab.etcd is not None
        res = self.lab.etcd.call("dump", prefix=f"{PREFIX}workloads/{pod.node}/", timeout=6)
        if not res.get("ok"):
            self.event(f"relabel {pod.key}: {res.get('error')}")
            return
        for k, (v, mod) in res["kvs"].items():
            w = json.loads(v)
            if w.get("spec", {}).get("containerID") != pod.container:
                continue
            w["spec"]["labels"] = {**(w["spec"].get("labels") or {}), "role": role}
            r = self.lab.etcd.call("cas", key=k, value=json.dumps(w), mod=mod, timeout=6)
            self.event(f"relabel {pod.key} role={role}: "
                       f"{'ok' if r.get('ok') else r.get('error')}")
            return

    # -- faults ------------------------------------------------------------------------------------

    def busy(self) -> set[str]:
        return {t for a in self.active for t in a.targets}

    def inject(self) -> None:
        kinds = [k for k in self.fault_kinds if k != "cni_add_killed"]
        if not kinds:
            return
        kind = self.rng.choice(kinds)
        lab, rng, now = self.lab, self.rng, time.monotonic()
        node = rng.choice(lab.nodes)
        busy = self.busy()
        members = lab.members

        def start(targets: set[str], dur: float, heal: Any, what: str) -> None:
            self.active.append(Active(kind, frozenset(targets), now + dur, heal, what))
            self.faults[kind] += 1
            self.event(f"FAULT {kind}: {what} for {dur:.1f} s")

        if kind in ("agent_kill9", "agent_restart"):
            if f"agent:{node}" in busy:
                return
            if kind == "agent_kill9":
                lab.stop_agent(node, signal.SIGKILL)
                start({f"agent:{node}"}, rng.uniform(0.5, 5),
                      lambda n=node: lab.start_agent(n), f"kill -9 agent {node}")
            else:
                lab.stop_agent(node, signal.SIGTERM)
                lab.start_agent(node)
                start({f"agent:{node}"}, 3, lambda: None, f"restart agent {node}")
        elif kind == "exabgp_kill9":
            pids = lab.exabgp_pids(node)
            for pid in pids:
                runner._kill_group(pid, signal.SIGKILL)
            start(set(), 0, lambda: None, f"kill -9 ExaBGP {pids} on {node}")
        elif kind == "bird_restart":
            leaf = rng.choice(lab.leaves + lab.routers[-2:])
            if f"bird:{leaf}" in busy:
                return
            lab.kill_bird(leaf)
            start({f"bird:{leaf}"}, rng.uniform(0.5, 4), lambda r=leaf: lab.start_bird(r),
                  f"BIRD {leaf} killed, restarted after")
        elif kind == "link_flap":
            if f"link:{node}" in busy:
                return
            ns = lab.ns(node)
            runner.sh("ip", "-n", ns, "link", "set", "eth1", "down")
            start({f"link:{node}"}, rng.uniform(0.5, 3),
                  lambda ns=ns: runner.sh("ip", "-n", ns, "link", "set", "eth1", "up"),
                  f"{node} eth1 (to its leaf) down")
        elif kind in ("etcd_member_kill", "etcd_leader_kill", "etcd_partition"):
            free = [m for m in members if f"etcd:{m.name}" not in busy]
            if len(free) < len(members) or "etcd:*" in busy:
                return  # one member at a time keeps a quorum
            m = lab.leader() if kind == "etcd_leader_kill" else rng.choice(members)
            if m is None:
                return
            if kind == "etcd_partition":
                port = lab.member_port(m)
                runner.sh("ip", "-n", lab.st.mgmt_netns, "link", "set", port, "down")
                start({f"etcd:{m.name}"}, rng.uniform(3, 10),
                      lambda p=port: runner.sh("ip", "-n", lab.st.mgmt_netns, "link", "set",
                                               p, "up"), f"etcd {m.name} partitioned")
            else:
                lab.kill_member(m)
                start({f"etcd:{m.name}"}, rng.uniform(2, 8),
                      lambda m=m: lab.start_member(m), f"kill -9 etcd {m.name}")
        elif kind == "etcd_quota":
            if any(t.startswith("etcd:") for t in busy):
                return
            what = self.fill_etcd()
            start({"etcd:*"} | {f"etcd:{m.name}" for m in members}, rng.uniform(3, 8),
                  self.free_etcd, what)
        elif kind == "etcd_outage":
            if any(t.startswith("etcd:") for t in busy):
                return
            for m in members:
                lab.kill_member(m)

            def heal() -> None:
                for m in members:
                    lab.start_member(m)
            start({"etcd:*"} | {f"etcd:{m.name}" for m in members}, rng.uniform(5, 15),
                  heal, "every etcd member killed")

    def fill_etcd(self) -> str:
        """Disk full: 1 MB values fill half the quota (real data for the recovery to
        compact and defragment), then the NOSPACE alarm is raised on every member, as a
        member reaching its quota raises it. From then on every member refuses every write
        with "database space exceeded", which is what the agents and the shims must
        survive.

        The soak does not write on until the quota is hit: etcd checks the quota when each
        member applies a write, against that member's own database file, and the files of
        three members differ in size (compactions and defragmentations land at different
        moments). At the limit one member applies a write the others refuse, and from then
        on the members' revisions differ and so do their answers: a compare-and-swap that
        succeeds on one fails on another. Seed 777 met it (stale WorkloadEndpoints read
        back from one member, duplicate addresses). It is etcd's failure, not one l3fabric
        can survive; docs/install.md ("Space") tells operators to keep headroom."""
        assert self.lab.etcd is not None
        blob = "x" * 1_000_000
        for i in range(FILL_MB):
            res = self.lab.etcd.call("put", key=f"{JUNK}{i}", value=blob, timeout=20)
            if not res.get("ok"):
                return f"etcd refused a 1 MB value after {i} MB ({res.get('error', '')[:80]})"
        res = self.lab.etcd.call("alarm_nospace", timeout=20)
        if not res.get("ok"):
            return f"etcd filled with {FILL_MB} MB; raising NOSPACE failed: {res.get('error')}"
        probe = self.lab.etcd.call("put", key=f"{JUNK}probe", value="x", timeout=20)
        return (f"etcd filled with {FILL_MB} MB, NOSPACE raised: a put now answers "
                f"{(probe.get('error') or 'ok')[:80]}")

    def free_etcd(self) -> None:
        """The operator's recovery: delete, compact, defragment every member, disarm."""
        assert self.lab.etcd is not None
        res = self.lab.etcd.call("delete_prefix", prefix=JUNK, timeout=30)
        status = self.lab.etcdctl("endpoint", "status", "-w", "json")
        rev = 0
        with contextlib.suppress(ValueError, KeyError, TypeError):
            rev = max(int(r["Status"]["header"]["revision"]) for r in json.loads(status))
        out = [f"delete: {res.get('ok') or res.get('error')}"]
        if rev:
            out.append(self.lab.etcdctl("compact", str(rev), "--physical"))
        for m in self.lab.members:
            out.append(self.lab.etcdctl("defrag", endpoints=m.endpoint))
        out.append(self.lab.etcdctl("alarm", "disarm"))
        self.event("etcd freed: " + " | ".join(o.replace("\n", " ")[:120] for o in out))

    def heal_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for a in list(self.active):
            if force or a.heal_at <= now:
                self.active.remove(a)
                a.heal()
                self.event(f"HEAL {a.kind}: {a.what}")

    # -- settle ------------------------------------------------------------------------------------

    def settle(self) -> None:
        """Heal everything, finish every pending CNI call, then check every invariant until
        it holds or `CONVERGE` seconds pass."""
        self.settles += 1
        n = self.settles
        self.heal_due(force=True)
        self.ensure_running()
        t_heal = time.monotonic()
        self.event(f"SETTLE {n}: faults healed, finishing pending CNI calls")
        deadline = t_heal + 120
        while (self.procs or any(p.state == "del" for p in self.pods.values())) \
                and time.monotonic() < deadline:
            self.reap()
            self.retry_dels()
            time.sleep(0.05)
        stuck = [p.key for p in self.pods.values() if p.state != "live"]
        if stuck:
            self.violate([f"pods whose CNI calls did not finish in 120 s: {stuck}"],
                         f"settle {n}")
        converge_from = time.monotonic()
        last: list[str] = []
        expected: dict[Any, bool] = {}
        while True:
            last, expected = self._check_once()
            if not last or time.monotonic() - converge_from > CONVERGE:
                break
            self.event(f"SETTLE {n}: not yet ({len(last)}): {'; '.join(last[:3])}")
            time.sleep(1.0)
        took = time.monotonic() - t_heal
        self.settle_times.append(took)
        self.violate(last, f"settle {n}")
        self.violate(self.logs.scan(Path(self.lab.st.dir)), f"settle {n} logs")
        self.sample_rss()
        allowed = sum(expected.values())
        self.event(f"SETTLE {n} done in {took:.1f} s: {len(self.live())} pods, "
                   f"{len(expected)} probes ({allowed} allowed), {len(last)} violations")
        self.say(f"soak: settle {n} at {time.monotonic() - self.t0:.0f} s: "
                 f"{len(self.live())} pods, {len(expected)} probes ({allowed} allowed), "
                 f"settled in {took:.1f} s, {len(last)} violations")
        if last:
            self.dump(f"settle{n}")

    def _check_once(self) -> tuple[list[str], dict[Any, bool]]:
        objs = etcd_objects(self.lab)
        if objs is None:
            return ["etcd: cannot read the datastore"], {}
        live = [p.view() for p in self.live()]
        out: list[str] = []
        for node in self.lab.nodes:
            code, body = runner.http_get_in(self.lab.ns(node),
                                            f"http://{self.lab.mgmt_ip(node)}:9091/readyz", 2)
            if code != 200:
                out.append(f"{node}: /readyz {code} {body[:200]}")
        for router in self.lab.routers:
            for proto in runner.bird_protocols(runner.bird_socket(self.lab.st, router)):
                if not proto["info"].startswith("Established"):
                    out.append(f"{router}: BGP {proto['name']} {proto['state']} "
                               f"{proto['info']}")
        out += check_addresses(self.lab, objs, live)
        out += check_endpoints(self.lab, objs, live, self.deleted)
        out += check_node_state(self.lab, objs, live, self.deleted)
        out += check_ipam(self.lab)
        out += check_etcd_members(self.lab)
        expected = expected_reach(objs, live)
        if not out:
            wrong = check_reach(self.prober, expected)
            if wrong:
                # One retry of the mismatches alone: a single lost UDP datagram is not a
                # verdict.
                wrong = check_reach(self.prober, expected, list(wrong))
            for p, seen in sorted(wrong.items(), key=lambda kv: str(kv[0]))[:20]:
                out.append(f"reach: {p.proto} {p.src} -> {p.dst} ({p.dst_ip}) "
                           f"{'connected' if seen else 'blocked'}, the policies say "
                           f"{'allow' if expected[p] else 'deny'}")
            if len(wrong) > 20:
                out.append(f"reach: … and {len(wrong) - 20} more probe mismatches")
        return out, expected

    def ensure_running(self) -> None:
        for node in self.lab.nodes:
            p = self.lab.agents.get(node)
            if p is None or not p.alive():
                self.event(f"agent {node} not running: start")
                self.lab.start_agent(node)
        for r in self.lab.routers:
            if not self.lab.birds[r].alive():
                self.lab.start_bird(r)
        for m in self.lab.members:
            if not m.alive():
                self.lab.start_member(m)

    def sample_rss(self) -> None:
        for node in self.lab.nodes:
            procs = [("agent", self.lab.agents[node].pid)]
            procs += [("exabgp", pid) for pid in self.lab.exabgp_pids(node)]
            for what, pid in procs:
                kib = rss_kib(pid)
                if kib:
                    self.rss.setdefault((f"{what} {node}", pid), []).append(kib)

    def check_memory(self) -> list[str]:
        """RSS growth under 10 % per process, from the first settle after churn began to
        the last, for processes seen at three settles or more; judged only in runs of
        `MEMORY_RUN` seconds or more (a short run's agents are still warming up: their
        growth is reported, not judged)."""
        out = []
        for (what, pid), series in self.rss.items():
            if len(series) >= 3:
                base = series[1]  # the first settle after churn began
                growth = (series[-1] - base) / base
                self.event(f"RSS {what} pid {pid}: {series} KiB ({growth:+.1%})")
                if growth > 0.10 and self.seconds >= MEMORY_RUN:
                    out.append(f"RSS of {what} (pid {pid}) grew {growth:.1%}: {series} KiB")
        return out

    def memory_summary(self) -> str:
        rows = []
        for (what, _pid), series in sorted(self.rss.items()):
            if len(series) >= 2:
                rows.append(f"{what}: {series[0] // 1024}->{series[-1] // 1024} MiB "
                            f"over {len(series)} settles")
        return "; ".join(rows)

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> int:
        self.say(f"soak: seed {self.seed}, {self.seconds:.0f} s, faults "
                 f"{','.join(self.fault_kinds)}, lab {self.lab.topo.name}")
        end = self.t0 + self.seconds
        while len(self.pods) < MIN_PODS:
            self.add_pod()
            self.reap()
            time.sleep(0.05)
        self.settle()  # the baseline
        windows = max(1, round(self.seconds / 60))
        window = max(20.0, (end - time.monotonic()) / windows - 25)
        while time.monotonic() < end - 15:
            w_end = min(time.monotonic() + window, end - 10)
            next_fault = time.monotonic() + self.rng.uniform(1, 4)
            next_res = time.monotonic() + self.rng.uniform(0.5, 2)
            next_check = time.monotonic() + 5
            self.event("CHAOS window")
            while time.monotonic() < w_end:
                now = time.monotonic()
                self.reap()
                self.retry_dels()
                self.heal_due()
                if now >= next_fault:
                    self.inject()
                    next_fault = now + self.rng.uniform(2, 7)
                if now >= next_res:
                    self.churn_resource()
                    next_res = now + self.rng.uniform(0.5, 2.5)
                self.churn_pod()
                if now >= next_check:
                    self.violate(self.logs.scan(Path(self.lab.st.dir)), "continuous logs")
                    next_check = now + 5
                time.sleep(self.rng.uniform(0.1, 0.4))
            self.settle()
        self.violate(self.check_memory(), "memory")
        worst = max(self.settle_times, default=0.0)
        self.say(f"soak: faults by kind: {dict(sorted(self.faults.items()))}")
        self.say(f"soak: worst settle {worst:.1f} s; memory: {self.memory_summary()}")
        if self.violations:
            path = self.dump("final")
            self.say(f"soak: {len(self.violations)} violations (seed {self.seed}); "
                     f"history and state dumps in {path}")
            for v in self.violations[:30]:
                self.say(f"  {v}")
        elapsed = time.monotonic() - self.t0
        self.say(f"soak: {elapsed:,.0f} s, seed {self.seed}, {self.pod_ops:,} pod ops, "
                 f"{sum(self.faults.values()):,} faults, {self.settles} settles, "
                 f"{len(self.violations)} violations")
        return 1 if self.violations else 0

    # -- dumps ------------------------------------------------------------------------------------

    def dump(self, tag: str) -> Path:
        d = self.dump_dir / tag
        d.mkdir(parents=True, exist_ok=True)
        (d / "seed").write_text(f"{self.seed}\n")
        (d / "history.txt").write_text("\n".join(self.history) + "\n")
        (d / "violations.txt").write_text("\n".join(self.violations) + "\n")
        objs = etcd_objects(self.lab)
        (d / "etcd.json").write_text(json.dumps(objs, indent=1, sort_keys=True))
        (d / "pods.json").write_text(json.dumps(
            {k: vars(p) for k, p in self.pods.items()}, indent=1, default=str))
        for node in self.lab.nodes + self.lab.routers:
            ns = self.lab.ns(node)
            parts = []
            for cmd in (["ip", "-d", "link"], ["ip", "addr"], ["ip", "route", "show", "table",
                                                                "all"],
                        ["nft", "list", "ruleset"], ["iptables-save"], ["ipset", "list"],
                        ["cat", "/proc/net/nf_conntrack"]):
                p = subprocess.run(runner.in_netns(ns, *cmd), capture_output=True, text=True,
                                   timeout=30)
                parts.append(f"$ {' '.join(cmd)}\n{p.stdout}{p.stderr}")
            if node in self.lab.nodes:
                code, text = runner.http_get_in(ns, f"http://{self.lab.mgmt_ip(node)}:9091"
                                                    "/metrics", 2)
                parts.append(f"$ GET /metrics ({code})\n{text}")
            (d / f"{node}.txt").write_text("\n".join(parts))
        logs = d / "logs"
        for f in Path(self.lab.st.dir).rglob("*.log"):
            dst = logs / f.relative_to(self.lab.st.dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(f, dst)
        return d

    def close(self) -> None:
        for p, _, _, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        self.prober.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("SOAK_SECONDS", "600")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED") or
                                                    random.SystemRandom().randrange(1 << 31)))
    ap.add_argument("--faults", default=os.environ.get("SOAK_FAULTS", ",".join(FAULTS)),
                    help="comma list of fault kinds (default: all): " + ", ".join(FAULTS))
    ap.add_argument("--topology", default=os.environ.get("SOAK_TOPOLOGY", "leaf-spine"))
    ap.add_argument("--dump", default=os.environ.get("SOAK_DUMP", ""))
    args = ap.parse_args(argv)
    if args.topology != "leaf-spine":
        ap.error("only the leaf-spine topology is supported")
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULTS)}")
    print(f"soak: seed {args.seed} (replay: SOAK_SEED={args.seed})", flush=True)
    dump_dir = Path(args.dump) if args.dump else Path(tempfile.mkdtemp(prefix="soak-",
                                                                        dir="/tmp"))
    home = Path(tempfile.mkdtemp(prefix="soak-lab-", dir="/tmp"))

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # the lab comes down in the finally below

    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGHUP, terminated)
    lab: SoakLab | None = None
    soak: Soak | None = None
    try:
        t = time.monotonic()
        lab = build(home)
        print(f"soak: lab {lab.topo.name} up in {time.monotonic() - t:.1f} s", flush=True)
        soak = Soak(lab, args.seed, args.seconds, faults, dump_dir,
                    say=lambda s: print(s, flush=True))
        return soak.run()
    finally:
        if soak is not None:
            soak.close()
        if lab is not None:
            problems = lab.close()
            if problems:
                print(f"soak: teardown left {problems}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
        if (soak is None or not soak.violations) and not args.dump:  # made here, empty
            shutil.rmtree(dump_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
