"""fabric-agent's command line: a bad flag is refused with a clear message and exit 2,
before anything starts."""

from __future__ import annotations

import pytest

from felix_like.main import main


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag that passes by mistake must fail the test, never start an agent here (in
    the root namespace, against etcd on 127.0.0.1:2379)."""
    def refuse(*_: object, **__: object) -> None:
        pytest.fail("the command line was accepted and an agent started")
    monkeypatch.setattr("felix_like.agent.Agent", refuse)


@pytest.mark.parametrize("value", ["10.0.0.1/24", "fd99::1", "fd99::1/129", "node1"])
def test_a_node_ip6_that_is_not_an_ipv6_cidr_is_refused(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--node", "n1", "--node-ip6", value]) == 2
    err = capsys.readouterr().err
    assert f"--node-ip6: {value!r} is not an IPv6 address in CIDR form" in err


def test_the_node_is_required(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L3FABRIC_NODE", raising=False)
    assert main([]) == 2
    assert "--node (or L3FABRIC_NODE) is required" in capsys.readouterr().err
