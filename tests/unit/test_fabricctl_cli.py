"""fabricctl's command line: global flags anywhere, where etcd settings come from, help."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fabricctl import cli
from fabricctl.common import CliError
from fabricctl.config import resolve


def parse(*argv: str, environ: dict[str, str] | None = None) -> argparse.Namespace:
    args = cli.build_parser().parse_args(list(argv))
    cli.resolve_connection(args, environ or {})
    return args


@pytest.mark.parametrize("argv", [
    ["--etcd-endpoints", "http://e1:2379", "get", "node"],
    ["get", "node", "--etcd-endpoints", "http://e1:2379"],
    ["get", "--etcd-endpoints=http://e1:2379", "node"],
    ["ipam", "show", "--etcd-endpoints", "http://e1:2379"],
    ["ipam", "--etcd-endpoints", "http://e1:2379", "show"],
    ["node", "status", "n1", "--etcd-endpoints", "http://e1:2379"],
])
def test_global_flags_anywhere_on_the_line(argv: list[str]) -> None:
    args = parse(*argv)
    assert args.etcd_endpoints == "http://e1:2379"
    assert args.etcd_sources["etcd_endpoints"] == "flag --etcd-endpoints"


def test_a_flag_after_the_command_wins_and_an_absent_one_changes_nothing() -> None:
    args = parse("--etcd-endpoints", "http://a:1", "--etcd-ca", "/ca.pem", "get", "node",
                 "--etcd-endpoints", "http://b:1", "-v")
    assert args.etcd_endpoints == "http://b:1"
    assert args.etcd_ca == "/ca.pem" and args.verbose is True
    assert parse("get", "node").verbose is False


def test_install_agent_keeps_its_own_endpoints_flag() -> None:
    args = parse("install-agent", "--node", "n1", "--etcd-endpoints", "http://x:2379",
                 "--dry-run")
    assert args.etcd_endpoints == "http://x:2379"


def conf_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "fabricctl.conf"
    p.write_text(text)
    return str(p)


def test_precedence_flag_then_l3fabric_env_then_etcdctl_env_then_file(tmp_path: Path) -> None:
    conf = conf_file(tmp_path, "# written by install-agent\nL3FABRIC_NODE=n1\n"
                               'L3FABRIC_ETCD_ENDPOINTS="https://file:2379"\n'
                               "L3FABRIC_ETCD_CA=/file/ca.pem\nL3FABRIC_ETCD_CERT=/file/c.pem\n"
                               "L3FABRIC_ETCD_KEY=/file/k.pem\nL3FABRIC_ETCD_TIMEOUT=7\n")
    env = {"L3FABRIC_CONFIG": conf, "ETCDCTL_ENDPOINTS": "ctl:2379",
           "ETCDCTL_CACERT": "/ctl/ca.pem", "ETCDCTL_CERT": "/ctl/c.pem",
           "L3FABRIC_ETCD_CERT": "/env/c.pem"}
    args = parse("--etcd-cert", "/flag/c.pem", "get", "node", environ=env)
    assert args.etcd_cert == "/flag/c.pem"  # flag over everything
    args = parse("get", "node", environ=env)
    assert args.etcd_cert == "/env/c.pem"  # L3FABRIC_* over ETCDCTL_*
    assert args.etcd_endpoints == "ctl:2379" and args.etcd_ca == "/ctl/ca.pem"
    assert args.etcd_key == "/file/k.pem"  # the file fills what nobody else gave
    assert args.etcd_timeout == 7.0
    assert args.etcd_sources == {"etcd_endpoints": "env ETCDCTL_ENDPOINTS",
                                 "etcd_ca": "env ETCDCTL_CACERT",
                                 "etcd_cert": "env L3FABRIC_ETCD_CERT",
                                 "etcd_key": conf, "etcd_timeout": conf}
    # --config beats the variable; an empty file leaves the defaults.
    args = parse("get", "node", "--config", conf_file(tmp_path / "..", ""), environ={
        "L3FABRIC_CONFIG": conf})
    assert args.etcd_endpoints == "http://127.0.0.1:2379" and args.etcd_ca is None
    assert args.etcd_timeout == 3.0


def test_default_config_paths_fabricctl_conf_then_agent_conf(tmp_path: Path) -> None:
    fab, agent = tmp_path / "fabricctl.conf", tmp_path / "agent.conf"
    agent.write_text("L3FABRIC_ETCD_ENDPOINTS=http://agent:2379\n")
    paths = (str(fab), str(agent))
    got = resolve({}, {}, default_paths=paths)
    assert got.values["etcd_endpoints"] == "http://agent:2379"
    assert got.config_file == str(agent)
    fab.write_text("L3FABRIC_ETCD_ENDPOINTS=http://fab:2379\n")
    assert resolve({}, {}, default_paths=paths).values["etcd_endpoints"] == "http://fab:2379"
    # Nothing needed from a file: none is read.
    given = {"etcd_endpoints": "x", "etcd_ca": "ca", "etcd_cert": "c", "etcd_key": "k"}
    got = resolve(given, {"L3FABRIC_ETCD_TIMEOUT": "1"},
                  default_paths=paths, read=lambda p: pytest.fail(f"read {p}"))
    assert got.values["etcd_endpoints"] == "x" and got.config_file is None


def test_unreadable_default_file_is_skipped_explicit_one_is_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent = tmp_path / "agent.conf"
    agent.write_text("L3FABRIC_ETCD_ENDPOINTS=http://agent:2379\n")

    def denied(path: str) -> str:
        raise PermissionError(13, "Permission denied", path)

    got = resolve({}, {}, default_paths=(str(agent),), read=denied)
    assert got.values["etcd_endpoints"] == "http://127.0.0.1:2379"
    assert "cannot read" in caplog.text and str(agent) in caplog.text
    with pytest.raises(CliError) as e:
        resolve({}, {"L3FABRIC_CONFIG": str(tmp_path / "missing.conf")})
    assert e.value.usage and "missing.conf" in str(e.value)


def test_bad_timeout_is_a_usage_error() -> None:
    with pytest.raises(CliError) as e:
        parse("get", "node", environ={"L3FABRIC_ETCD_TIMEOUT": "soon"})
    assert e.value.usage and "L3FABRIC_ETCD_TIMEOUT" in str(e.value)


def _all_parsers(p: argparse.ArgumentParser, path: str = "fabricctl"
                 ) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, p)]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, child in a.choices.items():
                out += _all_parsers(child, f"{path} {name}")
    return out


def test_every_flag_and_argument_has_help() -> None:
    missing = []
    for path, p in _all_parsers(cli.build_parser()):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                helped = {c.dest for c in a._choices_actions if c.help}
                missing += [f"{path} {n}" for n in a.choices if n not in helped]
            elif not a.help and a.dest != "help":
                missing.append(f"{path} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, "\n".join(missing)


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from datastore.version import l3fabric_version

    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fabricctl {l3fabric_version()}"


def test_examples_are_linked_from_the_docs() -> None:
    root = Path(__file__).resolve().parents[2]
    assert sorted(p.name for p in (root / "examples").glob("*.yaml"))
    assert "](examples/)" in (root / "README.md").read_text()
    assert "](../examples/)" in (root / "docs/index.md").read_text()
