"""Error results in the request's cniVersion wherever they are made (the handler, the
socket server, the agent's fast answer while etcd is away), and ``ipam check``'s finding
of endpoints whose address IPAM does not hold for them (pure, from a snapshot)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cni import protocol as proto
from cni import shim
from datastore import keys
from datastore import model as m
from datastore.client import KV
from felix_like.agent import Agent, AgentConfig
from felix_like.cni_server import CniServer
from ipam.block import AllocationAttrs, Block
from ipam.check import find_problems
from ipam.snapshot import build_snapshot

CONF_100 = json.dumps({"cniVersion": "1.0.0", "name": "l3net", "type": "l3fabric"})


def test_requested_version_is_the_configs_when_spoken_else_ours() -> None:
    assert proto.requested_version(CONF_100) == "1.0.0"
    assert proto.requested_version('{"cniVersion": "0.3.1"}') == "0.3.1"
    assert proto.requested_version('{"cniVersion": "9.9.9"}') == proto.CURRENT_VERSION
    assert proto.requested_version("not json") == proto.CURRENT_VERSION
    assert proto.requested_version("") == proto.CURRENT_VERSION


async def test_agent_fast_answer_while_etcd_is_away_is_in_the_requests_version(
        tmp_path: Path) -> None:
    agent = Agent(AgentConfig(node="n1", socket=str(tmp_path / "agent.sock")))
    agent.syncer.connected = False
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x",
           "CNI_IFNAME": "eth0"}
    code, out, _ = await agent._serve_cni("l3fabric", env, CONF_100)
    answer = json.loads(out)
    assert code == 1 and answer["code"] == proto.ERR_TRY_AGAIN_LATER
    assert answer["cniVersion"] == "1.0.0"


async def test_handler_refusal_of_a_bad_request_is_in_the_requests_version() -> None:
    """CNI_CONTAINERID missing: the request does not parse, its config's version holds."""
    from felix_like.cni_handler import CniHandler

    handler = CniHandler("n1", None, None)  # type: ignore[arg-type]  # never reached
    code, out, _ = await handler.handle("l3fabric", {"CNI_COMMAND": "ADD", "CNI_NETNS": "/x",
                                                     "CNI_IFNAME": "eth0"}, CONF_100)
    answer = json.loads(out)
    assert code == 1 and answer["code"] == proto.ERR_INVALID_ENV
    assert answer["cniVersion"] == "1.0.0"


async def test_server_errors_are_in_the_requests_version(tmp_path: Path) -> None:
    """A handler that crashes is answered with 11 in the request's version."""

    async def crashes(plugin: str, env: dict[str, str], stdin: str) -> tuple[int, str, str]:
        raise RuntimeError("boom (test)")

    server = CniServer(str(tmp_path / "s.sock"), crashes)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(server.path)
        writer.write(shim.encode_message({"plugin": "l3fabric", "env": {"CNI_COMMAND": "ADD"},
                                          "stdin": CONF_100}))
        writer.write_eof()
        answer = shim.decode_message(await reader.read())
        writer.close()
    finally:
        await server.stop()
    err = json.loads(answer["stdout"])
    assert answer["exit"] == 1 and err["code"] == 11 and err["cniVersion"] == "1.0.0"


def _kv(key: str, obj: object) -> KV:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return KV(key, raw, 1, 1, 1)


def _wep(pod: str, cid: str, ip: str) -> KV:
    key = keys.workload("n1", "default", pod, "eth0")
    return _kv(key, {"apiVersion": m.API_VERSION, "kind": "WorkloadEndpoint",
                     "metadata": {"name": f"{pod}.eth0", "namespace": "default"},
                     "spec": {"node": "n1", "pod": pod, "endpoint": "eth0",
                              "containerID": cid, "ipNetworks": [f"{ip}/32"],
                              "hostInterface": "fab0"}})


def test_check_finds_endpoints_whose_address_ipam_does_not_hold_for_them() -> None:
    blk = Block.new("10.244.0.0/30", None)
    blk.assign_ordinal(0, AllocationAttrs("l3net.c-held.eth0", "default", "held", "n1"))
    blk.assign_ordinal(1, AllocationAttrs("l3net.c-other.eth0", "default", "other", "n1"))
    pool = _kv(keys.full(keys.IPPOOLS) + "p1",
               {"apiVersion": m.API_VERSION, "kind": "IPPool", "metadata": {"name": "p1"},
                "spec": {"cidr": "10.244.0.0/16", "blockSize": 30}})
    kvs = [pool, _kv(keys.ipam_block("10.244.0.0/30"), blk.to_json()),
           _wep("held", "c-held", "10.244.0.0"),      # held for it: fine
           _wep("stale", "c-stale", "10.244.0.1"),    # held for another attachment
           _wep("freed", "c-freed", "10.244.0.2"),    # free in its block
           _wep("nopool", "c-np", "192.168.7.7")]     # another IPAM's address: not judged
    problems = [p for p in find_problems(build_snapshot(kvs, 1), now=0.0)
                if p.kind == "endpoint-without-address"]
    assert sorted(p.subject for p in problems) == ["workloads/n1/default.freed.eth0",
                                                   "workloads/n1/default.stale.eth0"]
    detail = {p.subject: p.detail for p in problems}
    assert "free" in detail["workloads/n1/default.freed.eth0"]
    assert "l3net.c-other.eth0" in detail["workloads/n1/default.stale.eth0"]


def test_a_veths_alias_names_its_attachment_only_when_its_name_agrees() -> None:
    """GC trusts an alias only when the veth's name is the hash of what it names."""
    from felix_like import plumbing

    name = plumbing.host_veth_name("l3net", "c.1", "eth0")
    alias = plumbing.attachment_alias("l3net", "c.1", "eth0")
    assert plumbing.parse_alias(name, alias) == plumbing.VethAttachment("l3net", "c.1", "eth0")
    assert plumbing.parse_alias("fab00000000000", alias) is None  # set by hand elsewhere
    assert plumbing.parse_alias(name, "uplink to rack 3") is None
    assert plumbing.parse_alias(name, "l3fabric/l3net/c.1") is None
    assert plumbing.attachment_alias("l3net", "c" * 300, "eth0") == ""  # over IFALIASZ
