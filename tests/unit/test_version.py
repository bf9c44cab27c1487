"""One version for every executable and for what each agent reports."""

from __future__ import annotations

import pytest

from datastore import keys, model
from datastore.version import l3fabric_version
from felix_like.main import build_parser


def test_version_is_the_installed_distributions() -> None:
    from importlib import metadata

    assert l3fabric_version() == metadata.version("l3fabric")


def test_fabric_agent_answers_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"fabric-agent {l3fabric_version()}"


def test_node_status_carries_the_agent_version() -> None:
    raw = (b'{"apiVersion":"l3fabric.io/v1","kind":"NodeStatus","metadata":{"name":"n1"},'
           b'"status":{"version":"9.9.9","inSync":true}}')
    st = model.decode(keys.node_status("n1"), raw)
    assert isinstance(st, model.NodeStatus)
    assert st.status.version == "9.9.9"
    assert st.to_dict()["status"]["version"] == "9.9.9"
    # An agent too old to report one: no version, and no invented one on the way out.
    old = model.decode(keys.node_status("n1"), raw.replace(b'"version":"9.9.9",', b""))
    assert isinstance(old, model.NodeStatus) and old.status.version is None
    assert "version" not in old.to_dict()["status"]
