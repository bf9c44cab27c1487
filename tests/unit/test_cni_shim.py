"""The CNI shim against a fake agent: a unix socket server in a thread that speaks
the framing of cni.shim and records what it was asked."""

from __future__ import annotations

import ast
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import protocol, shim

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]

CONFIG = {"cniVersion": "1.0.0", "name": "l3fabric", "type": "l3fabric"}
ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/var/run/netns/p1",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
    "CAP_ARGS": '{"ips": ["10.0.0.1"]}',
    "PATH": "/usr/bin",
    "HOME": "/root",
}


class FakeAgent:
    """Serves one JSON answer per connection; ``handler`` returning None closes
    the connection without answering (an agent dying mid-request)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.stopping = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stopping:
                conn.close()
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                request = shim.decode_message(data)
                self.requests.append(request)
                answer = self.handler(request)
                if answer is not None:
                    conn.sendall(shim.encode_message(answer))

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(): connect once.
        self.stopping = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.path))
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="l3f") as d:
        yield Path(d)


@pytest.fixture
def agent(sock_dir: Path) -> Iterator[Callable[[Handler], FakeAgent]]:
    made: list[FakeAgent] = []

    def make(handler: Handler) -> FakeAgent:
        a = FakeAgent(sock_dir / f"agent{len(made)}.sock", handler)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def call(
    plugin: str, env: dict[str, str], stdin: str | bytes, timeout: float = 5.0
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    data = stdin.encode() if isinstance(stdin, str) else stdin
    code = shim.run(plugin, env, data, out, err, timeout=timeout)
    return code, out.getvalue(), err.getvalue()


def with_socket(path: Path | str, **extra: Any) -> str:
    return json.dumps({**CONFIG, "agentSocket": str(path), **extra})


# ------------------------------------------------------------------ forwarding


def test_answer_is_returned_verbatim(agent: Callable[[Handler], FakeAgent]) -> None:
    answer = {"exit": 7, "stdout": '{"weird": "but verbatim"}\n', "stderr": "log line\n"}
    a = agent(lambda req: answer)
    stdin = with_socket(a.path)
    code, out, err = call("l3fabric", ADD_ENV, stdin)
    assert (code, out, err) == (7, answer["stdout"], answer["stderr"])
    [request] = a.requests
    assert request["plugin"] == "l3fabric"
    assert request["stdin"] == stdin  # the raw string, not re-serialised
    # Every CNI_* variable and CAP_ARGS, nothing else from the environment.
    assert request["env"] == {k: v for k, v in ADD_ENV.items() if k not in ("PATH", "HOME")}


def test_success_exit_zero(agent: Callable[[Handler], FakeAgent]) -> None:
    result = json.dumps({"cniVersion": "1.0.0", "interfaces": [], "ips": []})
    a = agent(lambda req: {"exit": 0, "stdout": result, "stderr": ""})
    assert call("l3fabric", ADD_ENV, with_socket(a.path)) == (0, result, "")


def test_ipam_plugin_name_and_socket_order(agent: Callable[[Handler], FakeAgent]) -> None:
    ipam_agent = agent(lambda req: {"exit": 0, "stdout": "ipam", "stderr": ""})
    top_agent = agent(lambda req: {"exit": 0, "stdout": "top", "stderr": ""})
    both = with_socket(
        top_agent.path, ipam={"type": "l3fabric-ipam", "agentSocket": str(ipam_agent.path)}
    )
    assert call("l3fabric-ipam", ADD_ENV, both)[1] == "ipam"
    assert ipam_agent.requests[0]["plugin"] == "l3fabric-ipam"
    # The main plugin ignores ipam.agentSocket.
    assert call("l3fabric", ADD_ENV, both)[1] == "top"
    # IPAM falls back to the top-level agentSocket (serving under ptp/bridge).
    top_only = with_socket(top_agent.path, type="ptp", ipam={"type": "l3fabric-ipam"})
    assert call("l3fabric-ipam", ADD_ENV, top_only)[1] == "top"


def test_socket_path_rules() -> None:
    assert shim.socket_path("l3fabric", {}) == "/run/l3fabric/agent.sock"
    assert shim.socket_path("l3fabric-ipam", {"ipam": {"type": "x"}}) == shim.DEFAULT_SOCKET
    assert shim.socket_path("l3fabric-ipam", {"ipam": {"agentSocket": "/a"}}) == "/a"
    assert shim.socket_path("l3fabric", {"ipam": {"agentSocket": "/a"}}) == shim.DEFAULT_SOCKET
    with pytest.raises(ValueError):
        shim.socket_path("l3fabric", {"agentSocket": 3})


def test_send_request_is_the_framing_the_server_reuses(
    agent: Callable[[Handler], FakeAgent],
) -> None:
    a = agent(lambda req: {"echo": req})
    payload = {"plugin": "l3fabric", "env": {}, "stdin": "x" * 200_000}
    assert shim.send_request(str(a.path), payload, timeout=5) == {"echo": payload}


@pytest.mark.parametrize("text", [
    "{}", ' {"a": [1, 2.5, -3e5, true, false, null, "\\u00e9\\ud83d"]} \n', "[1]", '"s"', "1",
    "NaN", "[Infinity, -Infinity]", '{"a":1}x', "", "   ", "{", "\ufeff{}", '{"a":}', "[" * 100_000,
    '"\\x"', '{"a":1,"a":2}', '{"k": "\x01"}', "1 2", '\t\r\n{"x":1}\t',
])
def test_json_loads_is_json_loads(text: str) -> None:
    """The shim's C-only decoder answers, and fails, exactly like json.loads."""
    def outcome(loads: Callable[[str], Any]) -> tuple[str, str]:
        try:
            return "ok", repr(loads(text))
        except (ValueError, RecursionError) as e:
            return type(e).__name__, str(e)

    assert outcome(shim.json_loads) == outcome(json.loads)


def test_json_loads_errors_without_json_imported() -> None:
    """In the executable nothing has imported json; errors must still be json's."""
    root = str(Path(shim.__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from cni import shim\n"
        "for text in ('{', '{not json', '[1,', '{\"a\": }'):\n"
        "    try:\n"
        "        shim.json_loads(text)\n"
        "    except ValueError as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    expected = []
    for text in ("{", "{not json", "[1,", '{"a": }'):
        with pytest.raises(ValueError) as e:
            json.loads(text)
        expected.append(f"{type(e.value).__name__} {e.value}")
    assert out == expected


@pytest.mark.parametrize("obj", [
    {}, [], 3, "x\u00e9", {1: 2, None: 3, 2.5: "x"},
    {"a": [1, 2.5, float("nan"), float("inf"), None, True, "\u00e9\u2028\x00"], "b": (1, 2)},
])
def test_json_dumps_is_json_dumps(obj: Any) -> None:
    assert shim.json_dumps(obj) == json.dumps(obj)
    assert shim.json_dumps(obj, compact=True) == json.dumps(obj, separators=(",", ":"))


def test_json_dumps_fails_like_json_dumps() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for bad in ({"a": object()}, {(1, 2): 1}, loop):
        with pytest.raises((TypeError, ValueError)) as ours:
            shim.json_dumps(bad)
        with pytest.raises((TypeError, ValueError)) as theirs:
            json.dumps(bad)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


# ------------------------------------------------------------------ agent unreachable


def assert_try_again(code: int, out: str, path: Path | str) -> dict[str, Any]:
    assert code == 1
    obj: dict[str, Any] = json.loads(out)
    assert obj["code"] == 11
    assert str(path) in obj["msg"]
    assert obj["cniVersion"] == "1.0.0"
    return obj


def test_no_socket_file_is_code_11_naming_it(sock_dir: Path) -> None:
    path = sock_dir / "missing.sock"
    code, out, _ = call("l3fabric", ADD_ENV, with_socket(path))
    assert_try_again(code, out, path)


def test_connection_refused_is_code_11(sock_dir: Path) -> None:
    path = sock_dir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening: ECONNREFUSED
    try:
        code, out, _ = call("l3fabric-ipam", ADD_ENV, with_socket(path))
    finally:
        s.close()
    assert "refused" in assert_try_again(code, out, path)["details"].lower()


def test_agent_closing_without_answer_is_code_11(agent: Callable[[Handler], FakeAgent]) -> None:
    a = agent(lambda req: None)
    code, out, _ = call("l3fabric", ADD_ENV, with_socket(a.path))
    assert_try_again(code, out, a.path)


def test_agent_answer_without_exit_is_code_11(agent: Callable[[Handler], FakeAgent]) -> None:
    a = agent(lambda req: {"stdout": "x"})
    code, out, _ = call("l3fabric", ADD_ENV, with_socket(a.path))
    assert_try_again(code, out, a.path)


def test_agent_timeout_is_code_11(sock_dir: Path) -> None:
    path = sock_dir / "slow.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)  # accepts into the backlog, never answers
    try:
        code, out, _ = call("l3fabric", ADD_ENV, with_socket(path), timeout=0.2)
    finally:
        s.close()
    assert "timed out" in assert_try_again(code, out, path)["details"]


@pytest.mark.parametrize("plugin", ["l3fabric", "l3fabric-ipam"])
def test_status_with_the_agent_unreachable_is_code_50(sock_dir: Path, plugin: str) -> None:
    """STATUS is the runtime's readiness probe: an unreachable agent means no ADD can
    succeed, which the spec spells 50; ADD to the same socket stays 11 (retry)."""
    path = sock_dir / "missing.sock"
    conf = json.dumps({**CONFIG, "cniVersion": "1.1.0", "agentSocket": str(path)})
    code, out, _ = call(plugin, {"CNI_COMMAND": "STATUS", "PATH": "/usr/bin"}, conf)
    assert code == 1
    obj = json.loads(out)
    assert (obj["code"], obj["cniVersion"]) == (protocol.ERR_PLUGIN_NOT_AVAILABLE, "1.1.0")
    assert str(path) in obj["msg"]
    assert json.loads(call(plugin, ADD_ENV, conf)[1])["code"] == 11


def test_default_socket_is_named_when_absent() -> None:
    if os.path.exists(shim.DEFAULT_SOCKET):
        pytest.skip("an agent is listening on the default socket here")
    code, out, _ = call("l3fabric", ADD_ENV, json.dumps(CONFIG))
    assert_try_again(code, out, shim.DEFAULT_SOCKET)


# ------------------------------------------------------------------ local answers


@pytest.mark.parametrize(
    ("stdin", "version"),
    [("", "1.1.0"), ('{"cniVersion": "0.4.0"}', "0.4.0"), ("junk", "1.1.0")],
)
def test_version_needs_no_agent(stdin: str, version: str) -> None:
    code, out, _ = call("l3fabric", {"CNI_COMMAND": "VERSION"}, stdin)
    assert code == 0
    assert json.loads(out) == protocol.version_response(version)


def test_supported_versions_match_protocol() -> None:
    assert shim.SUPPORTED_VERSIONS == protocol.SUPPORTED_VERSIONS
    assert shim.CURRENT_VERSION == protocol.CURRENT_VERSION
    assert shim.ERR_PLUGIN_NOT_AVAILABLE == protocol.ERR_PLUGIN_NOT_AVAILABLE


@pytest.mark.parametrize("stdin", [b"", b"{", b"[1]", b"\xff\xfe"])
def test_undecodable_config_is_code_6_without_agent(stdin: bytes) -> None:
    code, out, _ = call("l3fabric", ADD_ENV, stdin)
    assert code == 1
    assert json.loads(out)["code"] == 6


def test_bad_agent_socket_is_code_7() -> None:
    code, out, _ = call("l3fabric", ADD_ENV, json.dumps({**CONFIG, "agentSocket": ""}))
    assert code == 1
    assert json.loads(out)["code"] == 7


# ------------------------------------------------------------------ executables


def test_shim_imports_only_the_stdlib() -> None:
    root = str(Path(shim.__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {root!r}); before = set(sys.modules); "
        "import cni.shim; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-IS", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    ours = {m for m in out if m.split(".")[0] in ("cni", "datastore", "ipam", "felix_like")}
    assert ours == {"cni", "cni.shim"}
    for heavy in ("pyroute2", "aetcd", "grpc", "typing", "netaddr", "json", "socket", "os"):
        assert heavy not in out


@pytest.mark.parametrize("which", ["plugin", "ipam"])
@pytest.mark.parametrize("spaced", [False, True])
def test_written_executable_runs(
    which: str, spaced: bool, sock_dir: Path, agent: Callable[[Handler], FakeAgent]
) -> None:
    python = os.path.realpath(sys.executable)
    if spaced:  # a path that cannot go in a shebang: the /bin/sh trampoline
        link = sock_dir / "py thon"
        link.symlink_to(python)
        python = str(link)
    exe = sock_dir / f"l3fabric-{which}"
    shim.write_executable(exe, which, python)
    assert os.access(exe, os.X_OK)
    first = exe.read_text().splitlines()[0]
    assert first == ("#!/bin/sh" if spaced else f"#!{python} -IS")

    env = {"CNI_COMMAND": "VERSION", "PATH": "/nonexistent"}  # runtimes pass their own PATH
    proc = subprocess.run([str(exe)], input=b"{}", env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == list(shim.SUPPORTED_VERSIONS)

    a = agent(lambda req: {"exit": 3, "stdout": req["plugin"], "stderr": "e"})
    env = {k: v for k, v in ADD_ENV.items() if k != "PATH"}
    proc = subprocess.run(
        [str(exe)], input=with_socket(a.path).encode(), env=env, capture_output=True
    )
    expected = "l3fabric" if which == "plugin" else "l3fabric-ipam"
    assert (proc.returncode, proc.stdout.decode(), proc.stderr.decode()) == (3, expected, "e")


def test_write_executable_rejects_bad_arguments(sock_dir: Path) -> None:
    with pytest.raises(ValueError):
        shim.write_executable(sock_dir / "x", "bogus", sys.executable)
    with pytest.raises(ValueError):
        shim.write_executable(sock_dir / "x", "plugin", "python3")


# ------------------------------------------------------------------ the shims' interpreter


def test_shim_source_runs_on_python_3_9() -> None:
    """The shims may run with the distribution's python3, whatever its minor version: no
    syntax past 3.9, and no runtime ``X | Y`` (a TypeError on classes before 3.10)."""
    source = Path(shim.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    annotations: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    annotations.update(map(id, ast.walk(a.annotation)))
            if node.returns is not None:
                annotations.update(map(id, ast.walk(node.returns)))
        elif isinstance(node, ast.AnnAssign):
            annotations.update(map(id, ast.walk(node.annotation)))
    runtime_or = [node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                  and id(node) not in annotations]
    assert runtime_or == []
    assert "from __future__ import annotations" in source  # annotations stay strings


def fake_interpreter(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def real_python_link(directory: Path) -> str:
    """An interpreter path that is not this one's: a link to the real binary."""
    link = directory / "python3"
    link.symlink_to(os.path.realpath(sys.executable))
    return str(link)


def test_pick_interpreter_takes_a_candidate_that_runs_the_shim(tmp_path: Path) -> None:
    python = real_python_link(tmp_path)
    assert shim.check_interpreter(python) is None
    assert shim.pick_interpreter([python], fallback="/fallback/python") == python
    shim.write_executable(tmp_path / "l3fabric", "plugin", python)
    assert (tmp_path / "l3fabric").read_text().startswith(f"#!{python} -IS\n")


def test_pick_interpreter_defaults_to_the_distro_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = real_python_link(tmp_path)
    monkeypatch.setattr(shim, "DISTRO_PYTHON", python)
    assert shim.pick_interpreter() == python
    monkeypatch.setattr(shim, "DISTRO_PYTHON", str(tmp_path / "missing"))
    assert shim.pick_interpreter() == sys.executable


def test_pick_interpreter_falls_back_when_the_candidate_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = fake_interpreter(tmp_path, "python-old",
                           'echo "SyntaxError: invalid syntax" >&2; exit 1')
    assert shim.check_interpreter(old) == "exit 1: SyntaxError: invalid syntax"
    with caplog.at_level("WARNING", logger="cni.shim"):
        assert shim.pick_interpreter([old], fallback="/fallback/python") == "/fallback/python"
    assert [r.getMessage() for r in caplog.records] == [
        f"{old} cannot run the CNI shims: exit 1: SyntaxError: invalid syntax",
        "the CNI shims run with /fallback/python instead"]


def test_pick_interpreter_wants_the_shims_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An interpreter that exits 0 without running the shim is no good either; a missing
    one is passed over quietly; the next candidate that works wins."""
    liar = fake_interpreter(tmp_path, "python-liar", 'echo "{}"')
    assert shim.check_interpreter(liar) == "unexpected VERSION answer b'{}\\n'"
    python = real_python_link(tmp_path)
    with caplog.at_level("WARNING", logger="cni.shim"):
        got = shim.pick_interpreter([str(tmp_path / "missing"), liar, python], fallback="/x")
    assert got == python
    assert [r.getMessage() for r in caplog.records] == [
        f"{liar} cannot run the CNI shims: unexpected VERSION answer b'{{}}\\n'"]
