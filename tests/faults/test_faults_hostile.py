"""Hostile and malformed input: fuzzed CNI calls, bad values written with etcdctl.

The CNI fuzzing drives the agent's real handler (real etcd, real node namespace, real
plumbing) in this process, and the real unix socket with raw bytes; every example checks
the answer is one of the spec's (or our documented) error codes and that nothing changed:
no WorkloadEndpoint, no IPAM handle, no address held, no veth.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cni import Fabric as CniFabric
from helpers.cni import fabric, ippool
from helpers.fabric import Node, wait_for
from helpers.faults import (
    OUR_CODES,
    POOL_CIDR,
    SPEC_CODES,
    Namespaces,
    conf,
    fab_links,
    get_json,
    metric,
    put_raw,
    shim,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("L3FABRIC_FUZZ_EXAMPLES", "150"))
CODES = SPEC_CODES | OUR_CODES


class Lab:
    def __init__(self, loop: asyncio.AbstractEventLoop, fab: CniFabric, node: str,
                 pod: str) -> None:
        self.loop, self.fab, self.node, self.pod = loop, fab, node, pod

    def call(self, env: dict[str, str], stdin: str) -> tuple[int, str, str]:
        return self.loop.run_until_complete(self.fab.handler.handle("l3fabric", env, stdin))

    def state(self) -> tuple[Any, ...]:
        async def read() -> tuple[Any, ...]:
            return (sorted(await self.fab.workloads()), sorted(await self.fab.handles()),
                    await self.fab.allocated())
        return (*self.loop.run_until_complete(read()), fab_links(self.node))


@pytest.fixture(scope="module")
def lab(module_etcd: EmbeddedEtcd, module_ns: Namespaces,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    node, pod = module_ns("node"), module_ns("pod")
    loop = asyncio.new_event_loop()
    cm = fabric(module_etcd.endpoint, node, tmp_path_factory.mktemp("fuzz"),
                pools=[ippool("p1", POOL_CIDR, 26)])
    fab = loop.run_until_complete(cm.__aenter__())
    try:
        yield Lab(loop, fab, node, pod)
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


def _check_answer(lab: Lab, before: tuple[Any, ...], code: int, out: str, err: str,
                  env: dict[str, str], stdin: str) -> None:
    assert "Traceback" not in out + err
    if code == 0:  # a valid call slipped through: undo it, then it must leave nothing
        if env.get("CNI_COMMAND") == "ADD":
            lab.call({**env, "CNI_COMMAND": "DEL"}, stdin)
        assert lab.state() == before
        return
    obj = json.loads(out)
    assert obj["code"] in CODES, obj
    assert isinstance(obj["msg"], str) and obj["msg"], obj
    assert lab.state() == before, f"state changed by a failed call: {obj}"


_text = st.text(max_size=40) | st.sampled_from(
    ["", ".", "..", "eth0", "a" * 300, "x/y", "c1", "../../etc", "\x00", "é", "ADD"])
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(
                         st.text(max_size=10), c, max_size=4), max_leaves=10)


@st.composite
def cni_call(draw: st.DrawFn, pod_ns: str, socket_path: str) -> tuple[dict[str, str], str]:
    env = {"CNI_COMMAND": draw(st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "GC",
                                                "STATUS", "add", "", "BOGUS"])),
           "CNI_CONTAINERID": draw(st.sampled_from(["fz1", "fz2"]) | _text),
           "CNI_NETNS": draw(st.sampled_from([f"/var/run/netns/{pod_ns}", "/proc/1/ns/net",
                                              "/nonexistent", ""]) | _text),
           "CNI_IFNAME": draw(st.sampled_from(["eth0", "eth1"]) | _text),
           "CNI_ARGS": draw(st.sampled_from(["", "IP=10.244.0.5", "IP=1.2.3.4", "IP=bogus",
                                             "K8S_POD_NAME=x;K8S_POD_NAMESPACE=../y",
                                             "a", "=;="]) | _text),
           "CNI_PATH": "/nonexistent"}
    for k in list(env):
        if draw(st.integers(0, 9)) == 0:
            del env[k]
    base = conf(socket_path)
    kind = draw(st.integers(0, 3))
    if kind == 0:
        stdin = draw(st.text(max_size=200))
    elif kind == 1:
        stdin = json.dumps(draw(_json))
    else:
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(["cniVersion", "name", "type", "ipam", "mtu", "args",
                                        "runtimeConfig", "prevResult", "dns", "agentSocket",
                                        "capabilities", "zzz"]))
            base[key] = draw(_json)
        stdin = json.dumps(base)
        if kind == 3:
            stdin = stdin[: draw(st.integers(0, len(stdin)))]
    # Only failing calls are asserted strictly; keep the stdin always erroneous enough
    # by never letting a mutated config address a real socket elsewhere.
    return env, stdin


def test_fuzz_cni_env_and_stdin(lab: Lab) -> None:
    before = lab.state()
    t0 = time.monotonic()
    n = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cni_call(lab.pod, lab.fab.socket))
    def run(call: tuple[dict[str, str], str]) -> None:
        nonlocal n
        n += 1
        env, stdin = call
        code, out, err = lab.call(env, stdin)
        _check_answer(lab, before, code, out, err, env, stdin)

    run()
    print(f"CNI fuzz: {n} calls in {time.monotonic() - t0:.1f}s, state unchanged")


def test_fuzz_raw_socket_bytes(lab: Lab) -> None:
    before = lab.state()
    t0 = time.monotonic()

    def send(data: bytes) -> dict[str, Any]:
        async def go() -> bytes:
            r, w = await asyncio.open_unix_connection(lab.fab.socket)
            w.write(data)
            await w.drain()
            w.write_eof()
            out = await asyncio.wait_for(r.read(), 10)
            w.close()
            return out
        return dict(json.loads(lab.loop.run_until_complete(go())))

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), _json))
    def run(data: bytes) -> None:
        ans = send(data)
        if ans["exit"] != 0:
            assert json.loads(ans["stdout"])["code"] in CODES, ans
        assert lab.state() == before

    run()
    # Beyond the 16 MiB frame limit the agent stops reading, answers and closes: the
    # writer sees the answer or a reset, never a hang; the agent serves the next call.
    t1 = time.monotonic()
    try:
        big = send(b"{" + b" " * (64 << 20))
        assert big["exit"] == 1 and json.loads(big["stdout"])["code"] in CODES, big
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert time.monotonic() - t1 < 15
    assert json.loads(send(b"[]")["stdout"])["code"] in CODES
    print(f"socket fuzz: {EXAMPLES} frames + one 64 MiB frame in {time.monotonic() - t0:.1f}s")
    assert os.stat(lab.fab.socket).st_mode & 0o777 == 0o600


# -- raw values written with etcdctl --------------------------------------------------------

GOOD_POOL = {"apiVersion": "l3fabric.io/v1", "kind": "IPPool", "metadata": {"name": "p1"},
             "spec": {"cidr": POOL_CIDR, "blockSize": 26}}
BAD_VALUES: list[tuple[str, str]] = [
    ("config/ippools/p1", json.dumps(GOOD_POOL)[:-7]),  # truncated JSON
    ("config/ippools/p1", json.dumps({**GOOD_POOL, "spec": {"cidr": 42}})),  # wrong type
    ("config/ippools/p1", json.dumps({**GOOD_POOL, "spec": {"cidr": "10.244.0.0/33"}})),
    ("config/ippools/p1", json.dumps({**GOOD_POOL, "spec": {"cidr": "10.244.0.1/16"}})),
    ("config/ippools/p1", json.dumps({**GOOD_POOL, "spec": {**GOOD_POOL["spec"],  # type: ignore[dict-item]
                                                             "blockSize": 8}})),
    ("config/ippools/p1", json.dumps({**GOOD_POOL, "bogusField": 1})),  # unknown field
    ("config/ippools/p1", "[]"),
    ("config/ippools/p1", "null"),
    ("config/ippools/p1", "\xff\xfe binary"),
    ("config/ippools/p1", json.dumps({**GOOD_POOL, "metadata": {"name": "other"}})),
    ("config/ippools/p1", '{"a":' * 5000 + "1" + "}" * 5000),  # deep nesting
    ("config/ippools/p1", json.dumps({**GOOD_POOL, "pad": "x" * (1 << 20)})),  # 1 MiB
    ("config/bgp/default", json.dumps({"apiVersion": "l3fabric.io/v1",
                                       "kind": "BGPConfiguration",
                                       "metadata": {"name": "default"},
                                       "spec": {"asNumber": "lots", "holdTime": 1}})),
    ("config/bgppeers/evil", json.dumps({"apiVersion": "l3fabric.io/v1", "kind": "BGPPeer",
                                         "metadata": {"name": "evil"},
                                         "spec": {"peerIP": "300.1.1.1", "asNumber": -1,
                                                  "password": 'x"; }\nneighbor'}})),
    ("nodes/n9", json.dumps({"apiVersion": "l3fabric.io/v1", "kind": "Node",
                             "metadata": {"name": "n9"},
                             "spec": {"bgp": {"ipv4Address": "10.0.0.1"}}})),
    ("globalpolicies/g", json.dumps({"apiVersion": "l3fabric.io/v1",
                                     "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
                                     "spec": {"selector": "app ==", "order": "first"}})),
    ("policies/default/p", json.dumps({"apiVersion": "networking.k8s.io/v1",
                                       "kind": "NetworkPolicy",
                                       "metadata": {"name": "p", "namespace": "default"},
                                       "spec": {"podSelector": {"matchLabels": [1]},
                                                "ingress": [{"from": [{"ipBlock": {
                                                    "cidr": "10.0.0.0/99"}}]}]}})),
    ("namespaces/x", '{"apiVersion": "v1", "kind": "Namespace"'),
]


def test_bad_values_written_with_etcdctl(namespaces: Namespaces, etcd: EmbeddedEtcd,
                                         tmp_path: Path) -> None:
    put_raw(etcd.endpoint, "config/ippools/p1", json.dumps(GOOD_POOL))
    ns = namespaces("node")
    os.system(f"ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1")
    n = Node("n1", ns, "10.99.1.1/30", tmp_path / "n1")
    n.start(etcd)
    try:
        # A running node: it has allocated from the pool before the bad writes.
        assert shim("ADD", n.socket, "before", namespaces("pod")).exit == 0
        t0 = time.monotonic()
        for i, (key, value) in enumerate(BAD_VALUES):
            put_raw(etcd.endpoint, key, value)

            def counted(i: int = i) -> bool:
                return metric(n.http("/metrics")[1], "l3fabric_config_errors_total") >= i + 1
            wait_for(counted, 10, f"config error counted for {key}: {value[:80]!r}", 0.05)
            assert n.http("/livez")[0] == 200
        print(f"{len(BAD_VALUES)} bad values: each counted, agent alive "
              f"({time.monotonic() - t0:.1f}s)")
        log = n.log.read_text()
        for key in {k for k, _ in BAD_VALUES}:
            assert f"/l3fabric/v1/{key}" in log, f"no log line names {key}"

        def listed() -> Any:
            st = get_json(etcd.endpoint, "status/nodes/n1")
            return st and len(st["status"]["errors"]) >= len({k for k, _ in BAD_VALUES})
        wait_for(listed, 15, "NodeStatus lists the errors", 0.2)
        errors = get_json(etcd.endpoint, "status/nodes/n1")["status"]["errors"]
        print("NodeStatus errors, e.g.:", errors[:3])
        assert n.proc is not None and n.proc.poll() is None
        # The last good pool is still in use: a pod gets an address from it.
        r = shim("ADD", n.socket, "after", namespaces("pod"))
        assert r.exit == 0 and r.ip.startswith("10.244."), r.stdout
    finally:
        n.cleanup()


def test_shim_socket_is_root_only(namespaces: Namespaces, etcd: EmbeddedEtcd,
                                  tmp_path: Path) -> None:
    """Covered in the socket fuzz too; here for the real agent's socket and its dir."""
    put_raw(etcd.endpoint, "config/ippools/p1", json.dumps(GOOD_POOL))
    n = Node("n1", namespaces("node"), "10.99.1.1/30", tmp_path / "n1")
    n.start(etcd)
    try:
        st = os.stat(n.socket)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0)
        # An unprivileged user cannot connect.
        pid = os.fork()
        if pid == 0:  # child: drop to nobody and try
            try:
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX)
                s.connect(n.socket)
                os._exit(1)
            except PermissionError:
                os._exit(0)
            except BaseException:
                os._exit(2)
        assert os.waitpid(pid, 0)[1] == 0, "nobody could connect to the agent socket"
    finally:
        n.cleanup()
