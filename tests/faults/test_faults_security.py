"""Security: etcd over TLS with client certificates, BGP MD5 + TTL security against BIRD,
the metrics/health bind address, anti-spoofing, and `fabric-agent --cleanup` leaving the
node namespace exactly as it found it."""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.bird import Bird, BirdPeer
from helpers.exabgp import link
from helpers.fabric import Node, wait_for
from helpers.faults import (
    POOL_CIDR,
    Namespaces,
    etcd_in_netns,
    node_snapshot,
    put_raw,
    sh,
    shim,
)

from datastore.embedded import EmbeddedEtcd, free_port

pytestmark = pytest.mark.integration

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
POOL = json.dumps({"apiVersion": "l3fabric.io/v1", "kind": "IPPool",
                   "metadata": {"name": "p1"}, "spec": {"cidr": POOL_CIDR, "blockSize": 26}})


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> None:
    _openssl(d, "req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days",
             "1", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _cert(d: Path, ca: str, name: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl(d, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
             f"/CN={name}")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
             f"{ca}.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
             "-extfile", f"{name}.ext")


@pytest.fixture
def pki() -> Iterator[Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = Path(tempfile.mkdtemp(prefix="l3fabric-fpki-"))
    try:
        _ca(d, "ca")
        _ca(d, "otherca")
        _cert(d, "ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        _cert(d, "ca", "agent", "extendedKeyUsage=clientAuth\n")
        _cert(d, "otherca", "intruder", "extendedKeyUsage=clientAuth\n")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _agent(ns: str, tmp: Path, endpoint: str, *extra: str) -> subprocess.Popen[bytes]:
    log = open(tmp / "agent.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, str(BIN / "fabric-agent"), "--node", "n1",
             "--etcd-endpoints", endpoint, "--socket", str(tmp / "agent.sock"),
             "--metrics-addr", "127.0.0.1:9091", "--node-ip", "10.99.1.1/30", *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def test_etcd_tls_client_certificates(namespaces: Namespaces, pki: Path,
                                      tmp_path: Path) -> None:
    ns = namespaces("node")
    member = EmbeddedEtcd.temporary()
    member.scheme = "https"
    member.client_port, member.peer_port = free_port(), free_port()
    import ssl
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "agent.crt"), str(pki / "agent.key"))
    member.ssl_context = ctx
    member.extra_args = ("--cert-file", str(pki / "server.crt"), "--key-file",
                         str(pki / "server.key"), "--client-cert-auth", "--trusted-ca-file",
                         str(pki / "ca.crt"))
    with etcd_in_netns(ns, member):
        ep = member.endpoint
        sh("ip", "netns", "exec", ns, "etcdctl", "--endpoints", ep, "--cacert",
           str(pki / "ca.crt"), "--cert", str(pki / "agent.crt"), "--key",
           str(pki / "agent.key"), "put", "/l3fabric/v1/config/ippools/p1", POOL)
        (tmp_path / "bad").mkdir()
        intruder = _agent(ns, tmp_path / "bad", ep, "--etcd-ca", str(pki / "ca.crt"),
                          "--etcd-cert", str(pki / "intruder.crt"), "--etcd-key",
                          str(pki / "intruder.key"))
        try:
            time.sleep(4)
            log = (tmp_path / "bad" / "agent.log").read_text()
            assert not (tmp_path / "bad" / "agent.sock").exists(), log[-1500:]
        finally:
            intruder.kill()
            intruder.wait(10)
        (tmp_path / "ok").mkdir()
        agent = _agent(ns, tmp_path / "ok", ep, "--etcd-ca", str(pki / "ca.crt"),
                       "--etcd-cert", str(pki / "agent.crt"), "--etcd-key",
                       str(pki / "agent.key"))
        try:
            wait_for(lambda: (tmp_path / "ok" / "agent.sock").exists(), 30,
                     "the agent's CNI socket", 0.1,
                     lambda: (tmp_path / "ok" / "agent.log").read_text()[-1500:])
            r = shim("ADD", str(tmp_path / "ok" / "agent.sock"), "c1", namespaces("pod"))
            assert r.exit == 0, r.stdout
            print(f"TLS etcd: intruder cert refused ({log.splitlines()[-1][:160]}); "
                  f"agent with its cert served ADD -> {r.ip}")
        finally:
            agent.terminate()
            agent.wait(10)
            sh("ip", "netns", "exec", ns, str(BIN / "fabric-agent"), "--cleanup", "--socket",
               str(tmp_path / "ok" / "agent.sock"), check=False)


def test_md5_ttl_bind_antispoof_and_cleanup(namespaces: Namespaces, etcd: EmbeddedEtcd,
                                            tmp_path: Path) -> None:
    ns, tor_ns = namespaces("node"), namespaces("tor")
    link(tor_ns, "10.99.1.2/30", ns, "10.99.1.1/30")
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    # The kernel settles the link first (IPv6 link-local after DAD), then we look.
    wait_for(lambda: "fe80" in sh("ip", "-n", ns, "-6", "addr") and "tentative" not in
             sh("ip", "-n", ns, "-6", "addr"), 10, "link-local address", 0.1)
    time.sleep(0.5)
    before = node_snapshot(ns)
    ep = etcd.endpoint
    put_raw(ep, "config/ippools/p1", POOL)
    put_raw(ep, "config/bgp/default", json.dumps({
        "apiVersion": "l3fabric.io/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": {"nodeToNodeMesh": False, "holdTime": 9}}))
    put_raw(ep, "config/bgppeers/tor", json.dumps({
        "apiVersion": "l3fabric.io/v1", "kind": "BGPPeer", "metadata": {"name": "tor"},
        "spec": {"peerIP": "10.99.1.2", "asNumber": 65000, "node": "n1",
                 "password": "s3cret-md5", "ttlSecurity": 1}}))
    bird = Bird(tor_ns, tmp_path / "bird", "10.99.1.2", 65000,
                peers=[BirdPeer("n1", "10.99.1.1", 64512, "10.99.1.2", "s3cret-md5", True)])
    bird.start()
    n = Node("n1", ns, "10.99.1.1/30", tmp_path / "n1")
    try:
        n.spawn(etcd)
        # Metrics and health only where --metrics-addr says (127.0.0.1:9091 in the node ns).
        wait_for(n.ready, 30, "agent ready", 0.1, n.log_tail)
        listen = sh("ip", "netns", "exec", ns, "ss", "-Hltn").split("\n")
        assert [ln for ln in listen if ":9091" in ln and "127.0.0.1:9091" not in ln] == [], \
            listen
        assert any("127.0.0.1:9091" in ln for ln in listen), listen
        wait_for(lambda: bird.established("n1"), 30, "MD5+GTSM session with BIRD", 0.2,
                 lambda: bird.birdc("show", "protocols", "all", "n1") + n.log_tail())
        print("BGP MD5 + TTL security: established with BIRD")
        # Anti-spoofing: a pod sending from an address that is not its own is dropped.
        a, b = namespaces("pod"), namespaces("pod")
        ip_a = shim("ADD", n.socket, "ca", a).ip
        ip_b = shim("ADD", n.socket, "cb", b).ip
        spoof = "10.244.200.7"
        sh("ip", "-n", a, "addr", "add", f"{spoof}/32", "dev", "eth0")
        rx = subprocess.Popen(
            ["ip", "netns", "exec", b, str(BIN / "python"), "-c",
             "import socket,sys\ns=socket.socket(2,2)\ns.bind(('0.0.0.0',7777))\n"
             "s.settimeout(3)\nseen=[]\n"
             "try:\n  while True: seen.append(s.recvfrom(100)[1][0])\n"
             "except OSError: pass\nprint(' '.join(seen))"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        for src in (ip_a, spoof, ip_a):
            sh("ip", "netns", "exec", a, str(BIN / "python"), "-c",
               f"import socket\ns=socket.socket(2,2)\ns.bind(('{src}',0))\n"
               f"s.sendto(b'x',('{ip_b}',7777))")
        seen = rx.communicate(timeout=10)[0].split()
        assert seen == [ip_a, ip_a], f"spoofed source not dropped: {seen}"
        print(f"anti-spoofing: {ip_a} delivered twice, {spoof} (spoofed) dropped")
        # --cleanup: the node namespace exactly as before the agent (pods' netns aside).
        n.kill()
        sh("ip", "netns", "exec", ns, str(BIN / "fabric-agent"), "--cleanup", "--socket",
           n.socket)
        after = node_snapshot(ns)
        diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert diff == {}, "cleanup left the node changed: " + "\n".join(
            f"--- {k}\n" + "\n".join(difflib.unified_diff(v[0].splitlines(),
                                                           v[1].splitlines(), lineterm=""))
            for k, v in diff.items())
        print(f"--cleanup: {len(before)} views of the node namespace identical")
    finally:
        n.kill()
        sh("ip", "netns", "exec", ns, str(BIN / "fabric-agent"), "--cleanup", "--socket",
           n.socket, check=False)
        bird.stop()
