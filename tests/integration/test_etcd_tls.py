"""etcd with TLS client-certificate auth: a CA, a server cert for 127.0.0.1 (IP SAN) and a
client cert, all made with the openssl CLI in a temp dir that is always removed."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from datastore.client import Datastore, DatastoreError, EtcdConfig, UnavailableError
from datastore.embedded import EmbeddedEtcd, free_port

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_cert: Path  # signed by a CA etcd does not trust
    other_key: Path


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl(d, "req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "1", "-subj", f"/CN=l3fabric test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def make_cert(d: Path, ca: str, name: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    openssl(d, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
    openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
            f"{ca}.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
            "-extfile", f"{name}.ext")


@pytest.fixture
def pki() -> Iterator[Pki]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = Path(tempfile.mkdtemp(prefix="l3fabric-pki-"))
    try:
        make_ca(d, "ca")
        make_ca(d, "otherca")
        make_cert(d, "ca", "server", "subjectAltName=IP:127.0.0.1,DNS:etcd.l3fabric.test\n"
                  "keyUsage=digitalSignature,keyEncipherment\n"
                  "extendedKeyUsage=serverAuth,clientAuth\n")
        make_cert(d, "ca", "client", "keyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
        make_cert(d, "otherca", "other", "extendedKeyUsage=clientAuth\n")
        yield Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
                  d / "client.key", d / "other.crt", d / "other.key")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tls_etcd(pki: Pki) -> Iterator[EmbeddedEtcd]:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    member = EmbeddedEtcd.temporary()
    member.scheme = "https"
    member.ssl_context = ctx
    member.extra_args = ("--cert-file", str(pki.server_cert), "--key-file",
                         str(pki.server_key), "--client-cert-auth",
                         "--trusted-ca-file", str(pki.ca))
    try:
        member.start()
        yield member
    finally:
        member.stop()


async def test_put_get_with_client_cert(tls_etcd: EmbeddedEtcd, pki: Pki) -> None:
    assert tls_etcd.endpoint.startswith("https://127.0.0.1:")
    cfg = EtcdConfig.from_strings(tls_etcd.endpoint, ca=str(pki.ca), cert=str(pki.client_cert),
                                  key=str(pki.client_key))
    async with Datastore(cfg) as ds:
        rev = await ds.put("/l3fabric/v1/test/tls", b"secret")
        kv = await ds.get("/l3fabric/v1/test/tls")
        assert kv is not None and kv.value == b"secret" and kv.mod_revision == rev
    # The same member named without a scheme: TLS because a CA is given.
    cfg = EtcdConfig.from_strings(f"127.0.0.1:{tls_etcd.client_port}", ca=str(pki.ca),
                                  cert=str(pki.client_cert), key=str(pki.client_key))
    assert cfg.tls
    async with Datastore(cfg) as ds:
        assert (await ds.get("/l3fabric/v1/test/tls")) is not None
    # Several endpoints (one dead): the certificate is checked against each address.
    cfg = EtcdConfig.from_strings(f"https://127.0.0.1:{free_port()},{tls_etcd.endpoint}",
                                  ca=str(pki.ca), cert=str(pki.client_cert),
                                  key=str(pki.client_key))
    async with Datastore(cfg) as ds:
        for _ in range(3):
            assert (await ds.get("/l3fabric/v1/test/tls")) is not None
    # An explicit server name the certificates carry; a wrong one is refused.
    async with Datastore(replace(cfg, server_name="etcd.l3fabric.test")) as ds:
        assert (await ds.get("/l3fabric/v1/test/tls")) is not None
    async with Datastore(replace(cfg, server_name="wrong.example", timeout=1.0)) as ds:
        with pytest.raises(UnavailableError):
            await ds.get("/l3fabric/v1/test/tls")


@pytest.mark.parametrize("who", ["no-client-cert", "untrusted-client-cert", "plaintext"])
async def test_rejected_clients_get_a_typed_error(tls_etcd: EmbeddedEtcd, pki: Pki,
                                                  who: str) -> None:
    if who == "no-client-cert":
        cfg = EtcdConfig.from_strings(tls_etcd.endpoint, ca=str(pki.ca), timeout=1.0)
    elif who == "untrusted-client-cert":
        cfg = EtcdConfig.from_strings(tls_etcd.endpoint, ca=str(pki.ca),
                                      cert=str(pki.other_cert), key=str(pki.other_key),
                                      timeout=1.0)
    else:
        cfg = EtcdConfig.from_strings(f"http://127.0.0.1:{tls_etcd.client_port}",
                                      timeout=1.0)
    async with Datastore(cfg) as ds:
        t0 = time.monotonic()
        with pytest.raises(DatastoreError) as ei:
            await ds.get("/l3fabric/v1/test/tls")
        assert time.monotonic() - t0 < 2.0
        assert isinstance(ei.value, UnavailableError), repr(ei.value)


def test_fabricctl_takes_tls_from_etcdctl_variables_and_agent_conf(
        tls_etcd: EmbeddedEtcd, pki: Pki, tmp_path: Path) -> None:
    """A shell set up for etcdctl works unchanged, and so does a node's agent.conf."""
    import os
    import sys

    fabricctl = str(Path(sys.executable).with_name("fabricctl"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("L3FABRIC_", "ETCDCTL_"))}
    base["L3FABRIC_CONFIG"] = str(tmp_path / "none.conf")
    (tmp_path / "none.conf").write_text("")
    etcdctl_env = {**base, "ETCDCTL_ENDPOINTS": tls_etcd.endpoint,
                   "ETCDCTL_CACERT": str(pki.ca), "ETCDCTL_CERT": str(pki.client_cert),
                   "ETCDCTL_KEY": str(pki.client_key)}
    conf = tmp_path / "agent.conf"
    conf.write_text(f"L3FABRIC_NODE=n1\nL3FABRIC_ETCD_ENDPOINTS={tls_etcd.endpoint}\n"
                    f"L3FABRIC_ETCD_CA={pki.ca}\nL3FABRIC_ETCD_CERT={pki.client_cert}\n"
                    f"L3FABRIC_ETCD_KEY={pki.client_key}\n")
    for env in (etcdctl_env, {**base, "L3FABRIC_CONFIG": str(conf)}):
        r = subprocess.run([fabricctl, "version"], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "Datastore schema" in r.stdout, r.stderr
    # Without the client certificate etcd refuses, and fabricctl says so in one line.
    no_cert = {k: v for k, v in etcdctl_env.items() if k not in ("ETCDCTL_CERT", "ETCDCTL_KEY")}
    r = subprocess.run([fabricctl, "get", "node", "--etcd-timeout", "1"], env=no_cert,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
