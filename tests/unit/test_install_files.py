"""install-agent, install-cni, uninstall in a temporary root: the files, their modes, their
content."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cni import shim as cni_shim
from fabricctl.cli import main
from fabricctl.install_cmd import (
    CAPABILITIES,
    parse_env_file,
    render_agent_conf,
)

AGENT = str(Path(sys.executable).with_name("fabric-agent"))


def install(root: Path, *extra: str) -> int:
    return main(["install-agent", "--root", str(root), "--node", "n1",
                 "--etcd-endpoints", "http://10.0.0.1:2379,http://10.0.0.2:2379",
                 "--agent-bin", AGENT, *extra])


def files_under(root: Path) -> dict[str, int]:
    return {"/" + str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in root.rglob("*") if p.is_file()}


def test_dry_run_prints_every_file_and_writes_nothing(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert install(tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    for path in ("/etc/systemd/system/fabric-agent.service", "/etc/l3fabric/agent.conf",
                 "/opt/cni/bin/l3fabric", "/opt/cni/bin/l3fabric-ipam",
                 "/etc/cni/net.d/10-l3fabric.conflist"):
        assert f"# ---- {tmp_path}{path} (mode " in out
    assert "KillMode=process" in out and "L3FABRIC_NODE=n1" in out


def test_install_writes_the_files_with_their_modes(tmp_path: Path) -> None:
    assert install(tmp_path, "--metrics-addr", "0.0.0.0:9091",
                   "--policy-backend", "iptables", "--node-ip6", "fd99::1/64") == 0
    assert files_under(tmp_path) == {
        "/etc/systemd/system/fabric-agent.service": 0o644,
        "/etc/l3fabric/agent.conf": 0o644,  # no TLS key named
        "/opt/cni/bin/l3fabric": 0o755,
        "/opt/cni/bin/l3fabric-ipam": 0o755,
        "/etc/cni/net.d/10-l3fabric.conflist": 0o644,
    }
    env = parse_env_file((tmp_path / "etc/l3fabric/agent.conf").read_text())
    assert env == {
        "L3FABRIC_NODE": "n1",
        "L3FABRIC_ETCD_ENDPOINTS": "http://10.0.0.1:2379,http://10.0.0.2:2379",
        "L3FABRIC_SOCKET": "/run/l3fabric/agent.sock",
        "L3FABRIC_METRICS_ADDR": "0.0.0.0:9091",
        "L3FABRIC_POLICY_BACKEND": "iptables",
        "L3FABRIC_NODE_IP6": "fd99::1/64",
        "L3FABRIC_CNI_BIN_DIR": "/opt/cni/bin",
        "L3FABRIC_CNI_CONF_DIR": "/etc/cni/net.d",
    }
    conf = json.loads((tmp_path / "etc/cni/net.d/10-l3fabric.conflist").read_text())
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "l3fabric"
    assert conf["plugins"][0] == {"type": "l3fabric", "agentSocket": "/run/l3fabric/agent.sock",
                                  "mtu": 0, "ipam": {"type": "l3fabric-ipam"}}
    assert conf["plugins"][1]["type"] == "portmap"
    assert conf["disableCheck"] is True  # portmap's CHECK bug, as install-cni writes it
    shim = (tmp_path / "opt/cni/bin/l3fabric").read_text()
    assert shim.startswith(f"#!{cni_shim.pick_interpreter()} -IS\n") and "main_plugin" in shim


def test_shim_answers_version_without_an_agent(tmp_path: Path) -> None:
    assert install(tmp_path) == 0
    r = subprocess.run([str(tmp_path / "opt/cni/bin/l3fabric")], input="{}",
                       env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    assert "1.0.0" in json.loads(r.stdout)["supportedVersions"]


def shebangs(bin_dir: Path) -> set[str]:
    return {(bin_dir / exe).read_text().splitlines()[0] for exe in ("l3fabric", "l3fabric-ipam")}


def real_python_link(directory: Path) -> str:
    """An interpreter path that is not this one's: a link to the real binary."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "python3"
    link.symlink_to(os.path.realpath(sys.executable))
    return str(link)


def install_cni(root: Path, *extra: str) -> int:
    return main(["install-cni", "--bin-dir", str(root / "bin"), "--conf-dir",
                 str(root / "net.d"), *extra])


def install_shims(command: str, tmp_path: Path, *extra: str) -> Path:
    """Run ``command`` (install-agent or install-cni); the directory the shims went to."""
    if command == "install-agent":
        assert install(tmp_path / "root", *extra) == 0
        return tmp_path / "root/opt/cni/bin"
    assert install_cni(tmp_path, *extra) == 0
    return tmp_path / "bin"


@pytest.mark.parametrize("command", ["install-agent", "install-cni"])
def test_shims_run_with_the_distro_python_when_it_runs_them(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distro = real_python_link(tmp_path / "usr-bin")
    monkeypatch.setattr(cni_shim, "DISTRO_PYTHON", distro)
    bin_dir = install_shims(command, tmp_path)
    assert shebangs(bin_dir) == {f"#!{distro} -IS"}
    r = subprocess.run([str(bin_dir / "l3fabric-ipam")], input="{}",
                       env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0 and "1.1.0" in json.loads(r.stdout)["supportedVersions"]


@pytest.mark.parametrize("command", ["install-agent", "install-cni"])
def test_shims_fall_back_to_this_python_when_the_distro_one_fails(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    old = tmp_path / "python3"  # say, a Python too old for the shim's syntax
    old.write_text('#!/bin/sh\necho "SyntaxError: invalid syntax" >&2\nexit 1\n')
    old.chmod(0o755)
    monkeypatch.setattr(cni_shim, "DISTRO_PYTHON", str(old))
    with caplog.at_level("WARNING", logger="cni.shim"):
        bin_dir = install_shims(command, tmp_path)
    assert shebangs(bin_dir) == {f"#!{sys.executable} -IS"}
    assert f"{old} cannot run the CNI shims: exit 1: SyntaxError" in caplog.text
    assert f"the CNI shims run with {sys.executable} instead" in caplog.text


@pytest.mark.parametrize("command", ["install-agent", "install-cni"])
def test_python_flag_is_used_as_given(command: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--python names the interpreter outright, unchecked (it may exist only in the image
    that --root builds), and nothing else is tried."""
    monkeypatch.setattr(cni_shim, "check_interpreter", lambda python: pytest.fail(python))
    bin_dir = install_shims(command, tmp_path, "--python", "/opt/image/bin/python3")
    assert shebangs(bin_dir) == {"#!/opt/image/bin/python3 -IS"}


def test_install_cni_rejects_a_relative_python(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert install_cni(tmp_path, "--python", "python3") == 2
    assert "--python must be an absolute path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tls_key_makes_the_conf_private(tmp_path: Path) -> None:
    assert install(tmp_path, "--etcd-ca", "/etc/l3fabric/ca.pem", "--etcd-cert",
                   "/etc/l3fabric/node.pem", "--etcd-key", "/etc/l3fabric/node-key.pem") == 0
    conf = tmp_path / "etc/l3fabric/agent.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    env = parse_env_file(conf.read_text())
    assert env["L3FABRIC_ETCD_KEY"] == "/etc/l3fabric/node-key.pem"
    assert env["L3FABRIC_ETCD_CA"] == "/etc/l3fabric/ca.pem"


def test_global_flags_before_the_subcommand_work_too(tmp_path: Path) -> None:
    rc = main(["--etcd-endpoints", "http://10.9.9.9:2379", "install-agent", "--root",
               str(tmp_path), "--node", "n2", "--agent-bin", AGENT, "--no-cni"])
    assert rc == 0
    env = parse_env_file((tmp_path / "etc/l3fabric/agent.conf").read_text())
    assert env["L3FABRIC_ETCD_ENDPOINTS"] == "http://10.9.9.9:2379"
    assert "L3FABRIC_CNI_BIN_DIR" not in env
    assert not (tmp_path / "opt").exists()


def test_unit_content(tmp_path: Path) -> None:
    assert install(tmp_path) == 0
    unit = (tmp_path / "etc/systemd/system/fabric-agent.service").read_text()
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in unit.splitlines()
             if "=" in ln and not ln.startswith("#")}
    assert lines["ExecStart"] == AGENT
    assert lines["EnvironmentFile"] == "/etc/l3fabric/agent.conf"
    assert lines["Restart"] == "always"
    assert lines["KillMode"] == "process"
    assert lines["Type"] == "notify" and lines["NotifyAccess"] == "main"
    assert int(lines["WatchdogSec"]) > 0
    assert lines["Wants"] == "network-online.target"
    assert set(lines["CapabilityBoundingSet"].split()) == set(CAPABILITIES)
    assert "CAP_NET_ADMIN" in CAPABILITIES and "CAP_SYS_ADMIN" in CAPABILITIES


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert install(tmp_path) == 0
    unit = tmp_path / "etc/systemd/system/fabric-agent.service"
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    # verify exits 0 even for ignored lines; every complaint about our file is a failure.
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "fabric-agent" in ln]
    assert r.returncode == 0 and ours == [], r.stdout + r.stderr


def test_env_file_quoting_round_trips() -> None:
    env = {"L3FABRIC_A": 'x "y" \\z', "L3FABRIC_B": "with space", "L3FABRIC_C": "plain/1:2"}
    text = render_agent_conf(env)
    assert "L3FABRIC_C=plain/1:2\n" in text
    assert parse_env_file(text) == env


def test_bad_arguments_are_usage_errors(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert install(tmp_path, "--python", "python3") == 2
    assert "--python must be an absolute path" in capsys.readouterr().err
    assert install(tmp_path, "--node-ip", "10.0.0.1/24\nX=1") == 2
    assert list(tmp_path.iterdir()) == []


def test_uninstall_removes_everything(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert install(tmp_path, "--socket", str(tmp_path / "nosuch.sock")) == 0
    (tmp_path / "etc/iproute2/rt_protos.d").mkdir(parents=True)
    (tmp_path / "etc/iproute2/rt_protos.d/l3fabric.conf").write_text("# ours\n")
    (tmp_path / "etc/cni/net.d/99-other.conflist").write_text("{}")  # not ours: kept
    capsys.readouterr()
    assert main(["uninstall", "--root", str(tmp_path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert plan.index("CNI network config") < plan.index("agent cleanup") \
        < plan.index("CNI executables") < plan.index("unit, agent.conf")
    assert len(files_under(tmp_path)) == 7  # dry run: nothing removed
    assert main(["uninstall", "--root", str(tmp_path)]) == 0
    assert files_under(tmp_path) == {"/etc/cni/net.d/99-other.conflist": 0o644}
    assert not (tmp_path / "etc/l3fabric").exists()
    assert "agent cleanup: skipped" in capsys.readouterr().out
    assert main(["uninstall", "--root", str(tmp_path)]) == 0  # again: nothing to do


def test_uninstall_refuses_while_the_agent_answers(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sock_path = str(tmp_path / "agent.sock")
    assert install(tmp_path, "--socket", sock_path) == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(sock_path)
        srv.listen(1)
        assert main(["uninstall", "--root", str(tmp_path)]) == 1
    assert "fabric-agent is still running" in capsys.readouterr().err
    assert (tmp_path / "etc/cni/net.d/10-l3fabric.conflist").exists()  # nothing removed
    os.unlink(sock_path)
