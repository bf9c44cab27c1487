"""The ``l3fabric`` and ``l3fabric-ipam`` CNI executables: thin forwarders to the agent.

Why a shim: the runtime execs a plugin for every ADD/DEL/CHECK, and importing
pyroute2 or aetcd costs 200-300 ms per exec. So this module imports only ``json``,
``os``, ``socket`` and ``sys`` (and nothing from our packages) and forwards the call
to ``fabric-agent``, which owns all validation and dataplane work
(:mod:`cni.protocol` on the agent side). VERSION is answered here, without the agent.

Which socket: ``l3fabric`` reads the top-level ``agentSocket``; ``l3fabric-ipam``
reads ``ipam.agentSocket``, then the top-level ``agentSocket``; both default to
``/run/l3fabric/agent.sock``.

Wire format (the agent's server reuses :func:`encode_message`/:func:`decode_message`):

* One connection per call over a unix stream socket.
* The client sends ONE UTF-8 JSON object, then half-closes (``shutdown(SHUT_WR)``);
  the end of the request is EOF, there is no length prefix and no newline rule::

      {"plugin": "l3fabric" | "l3fabric-ipam",
       "env": {"CNI_COMMAND": ..., <every CNI_* variable>, "CAP_ARGS": ...},
       "stdin": "<the raw network config, as received>"}

* The server answers with ONE UTF-8 JSON object and closes the connection::

      {"exit": <int>, "stdout": "<string>", "stderr": "<string>"}

  which the shim prints verbatim (stdout, then stderr) before exiting with ``exit``.
* Either side rejects a message over :data:`MAX_MESSAGE` bytes.

Failure mode: agent unreachable (no socket file, connection refused, timeout, a
connection closed without an answer) is CNI error 11 "try again later", naming the
socket path, exit 1; the runtime retries, and a pod never half-exists because the
agent was restarting. STATUS answers 50 "plugin not available" instead: the spec's
STATUS fails with 50 when the plugin knows an ADD would fail, and runtimes read it as
"this node's network is not ready" (11 there would mean nothing to them). Stdin that
is not JSON is error 6 and a non-string ``agentSocket`` error 7, both decided here
because the socket cannot be found.
"""

from __future__ import annotations

# Start-up cost is the shim's whole budget (the target: ADD within 2.5x of the reference
# plugins). `python -IS` alone takes ~10 ms; `import json, socket` adds ~10 ms more (json
# pulls in `re`, `enum`, `functools`, `collections`; socket builds IntEnums). So the hot
# path uses their C halves directly -- `_json`'s scanner and encoder are exactly what
# `json.loads`/`json.dumps` run -- and `posix` (already loaded at start-up) instead of
# `os`. Error paths import `json` to raise its very exceptions.
import _json
import _socket
import posix
import sys

# `typing` costs a few ms per exec; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from typing import Any, BinaryIO, TextIO

PLUGIN = "l3fabric"
IPAM_PLUGIN = "l3fabric-ipam"
# Must equal cni.protocol.SUPPORTED_VERSIONS (a unit test holds them together).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
DEFAULT_SOCKET = "/run/l3fabric/agent.sock"
CONNECT_TIMEOUT = 5.0
# ADD may wait on etcd (IPAM CAS retries) and netlink; kubelet allows minutes.
REPLY_TIMEOUT = 120.0
MAX_MESSAGE = 16 * 1024 * 1024

ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_PLUGIN_NOT_AVAILABLE = 50


class AgentUnreachable(Exception):
    """The agent could not be asked, or did not answer; CNI code 11."""


# ---------------------------------------------------------------- JSON, C parts only
# Equivalent to json.loads / json.dumps with default arguments (a unit test compares
# them): the same C scanner and encoder, configured as json.JSONDecoder() and
# json.JSONEncoder() configure them.


class _DecoderContext:
    """The attributes `_json.make_scanner` reads, as `json.JSONDecoder()` sets them."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")
    }.__getitem__


# typeshed types the context as a scanner; the C code only reads the attributes above.
_scan_once = _json.make_scanner(_DecoderContext)  # type: ignore[arg-type]
_WHITESPACE = " \t\n\r"


def _not_serializable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def _make_encoder(item_separator: str, key_separator: str) -> Any:
    # json.JSONEncoder.iterencode(o, _one_shot=True) with check_circular, allow_nan,
    # ensure_ascii, no indent, no sort_keys, no skipkeys.
    return _json.make_encoder({}, _not_serializable, _json.encode_basestring_ascii, None,
                              key_separator, item_separator, False, False, True)


_ENCODERS = {True: (", ", ": "), False: (",", ":")}


def json_loads(text: str) -> Any:
    """``json.loads(text)`` for a str, without importing :mod:`json` unless it fails."""
    start = len(text) - len(text.lstrip(_WHITESPACE))
    if not text.startswith("\ufeff"):
        try:
            obj, end = _scan_once(text, start)
        except Exception:
            # json.loads below raises the proper error. (The C scanner builds its errors
            # from json.decoder, and only if that is imported already; here it is not,
            # and the scanner raises SystemError instead.)
            pass
        else:
            if not text[end:].strip(_WHITESPACE):
                return obj
    import json  # only to raise exactly what json.loads raises

    return json.loads(text)


def json_dumps(obj: Any, compact: bool = False) -> str:
    """``json.dumps(obj)`` (or with ``separators=(",", ":")`` when ``compact``)."""
    if isinstance(obj, str):
        return str(_json.encode_basestring_ascii(obj))
    # A fresh encoder per call: it carries the circular-reference markers.
    item, key = _ENCODERS[not compact]
    return "".join(_make_encoder(item, key)(obj, 0))


def encode_message(obj: dict[str, Any]) -> bytes:
    """One framed message: UTF-8 JSON; the frame ends where the sender half-closes."""
    return json_dumps(obj, compact=True).encode("utf-8")


def decode_message(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_message`; ValueError unless it is one JSON object."""
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    obj = json_loads(data.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("message is not a JSON object")
    return obj


def send_request(
    path: str,
    payload: dict[str, Any],
    timeout: float = REPLY_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> dict[str, Any]:
    """Send ``payload`` to the unix socket ``path``, return the decoded answer.

    Raises AgentUnreachable for every transport failure (including an answer that
    is empty or not JSON: the agent died mid-request).
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(connect_timeout)
        try:
            sock.connect(path)
        except OSError as e:
            raise AgentUnreachable(_reason(e)) from e
        sock.settimeout(timeout)
        chunks = []
        size = 0
        try:
            sock.sendall(encode_message(payload))
            sock.shutdown(_socket.SHUT_WR)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_MESSAGE:
                    raise AgentUnreachable(f"answer exceeds {MAX_MESSAGE} bytes")
                chunks.append(chunk)
        except OSError as e:
            raise AgentUnreachable(_reason(e)) from e
    finally:
        sock.close()
    if not chunks:
        raise AgentUnreachable("the agent closed the connection without answering")
    try:
        return decode_message(b"".join(chunks))
    except ValueError as e:
        raise AgentUnreachable(f"the agent's answer is not valid: {e}") from e


def _reason(e: OSError) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return e.strerror or str(e) or type(e).__name__


def _error(code: int, msg: str, version: str, details: str = "") -> str:
    obj: dict[str, Any] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        obj["details"] = details
    return json_dumps(obj)


def socket_path(plugin: str, config: dict[str, Any]) -> str:
    """Where the agent listens, per the plugin's rules (module docstring).

    ValueError when an ``agentSocket`` is present but not a non-empty string.
    """
    candidates = []
    if plugin == IPAM_PLUGIN:
        ipam = config.get("ipam")
        if isinstance(ipam, dict):
            candidates.append(("ipam.agentSocket", ipam.get("agentSocket")))
    candidates.append(("agentSocket", config.get("agentSocket")))
    for name, value in candidates:
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
        return value
    return DEFAULT_SOCKET


def run(
    plugin: str,
    environ: dict[str, str],
    stdin: bytes,
    stdout: TextIO,
    stderr: TextIO,
    timeout: float = REPLY_TIMEOUT,
) -> int:
    """One plugin invocation with its effects injected; returns the exit status."""
    command = environ.get("CNI_COMMAND", "")
    env = {k: v for k, v in environ.items() if k.startswith("CNI_") or k == "CAP_ARGS"}
    try:
        text = stdin.decode("utf-8")
    except UnicodeDecodeError as e:
        stdout.write(_error(ERR_DECODE, "network config is not UTF-8", CURRENT_VERSION, str(e)))
        return 1
    config: Any
    try:
        config = json_loads(text) if (text.strip() or command != "VERSION") else {}
    except (ValueError, RecursionError) as e:
        config = e
    version = CURRENT_VERSION
    if isinstance(config, dict) and config.get("cniVersion") in SUPPORTED_VERSIONS:
        version = config["cniVersion"]

    if command == "VERSION":
        # Answered locally: podman asks before every ADD and DEL, agent or not.
        stdout.write(json_dumps({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}))
        return 0
    if not isinstance(config, dict):
        detail = str(config) if isinstance(config, Exception) else "not a JSON object"
        stdout.write(_error(ERR_DECODE, "failed to decode the network config", version, detail))
        return 1
    try:
        path = socket_path(plugin, config)
    except ValueError as e:
        stdout.write(_error(ERR_INVALID_CONFIG, str(e), version))
        return 1

    request = {"plugin": plugin, "env": env, "stdin": text}
    try:
        answer = send_request(path, request, timeout=timeout)
        code = answer["exit"]
        out = answer.get("stdout", "")
        err = answer.get("stderr", "")
        if not isinstance(code, int) or not isinstance(out, str) or not isinstance(err, str):
            raise AgentUnreachable("the agent's answer has the wrong shape")
    except (AgentUnreachable, KeyError) as e:
        reason = str(e) if isinstance(e, AgentUnreachable) else "the agent's answer has no exit"
        stdout.write(
            _error(
                ERR_PLUGIN_NOT_AVAILABLE if command == "STATUS" else ERR_TRY_AGAIN_LATER,
                f"l3fabric agent unreachable at {path}",
                version,
                f"{reason}; is fabric-agent running on this node?",
            )
        )
        return 1
    stdout.write(out)
    stderr.write(err)
    return code


def _main(plugin: str) -> int:
    stdin: BinaryIO = sys.stdin.buffer
    try:
        data = stdin.read()
    except OSError:
        data = b""
    code = run(plugin, _environ(), data, sys.stdout, sys.stderr)
    sys.stdout.flush()
    return code


def _environ() -> dict[str, str]:
    """``dict(os.environ)`` without importing :mod:`os` (decoded the same way)."""
    enc = sys.getfilesystemencoding()
    return {k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape")
            for k, v in posix.environ.items()}


def main_plugin() -> int:
    """Entry point of the ``l3fabric`` executable."""
    return _main(PLUGIN)


def main_ipam() -> int:
    """Entry point of the ``l3fabric-ipam`` executable."""
    return _main(IPAM_PLUGIN)


_SCRIPT = """\
#!{python} -IS
# l3fabric CNI plugin shim, written by `fabricctl install-cni`. Stdlib only.
import sys
sys.path.insert(0, {location!r})
from cni.shim import {func}
sys.exit({func}())
"""

_SH_SCRIPT = """\
#!/bin/sh
# l3fabric CNI plugin shim, written by `fabricctl install-cni`.
exec {python} -IS -c {code} "$@"
"""


def write_executable(dest: os.PathLike[str] | str, which: str, python: str) -> None:
    """Write the ``l3fabric`` (``which="plugin"``) or ``l3fabric-ipam``
    (``which="ipam"``) executable to ``dest``, run by the absolute ``python``.

    The script runs ``python -IS`` (isolated, no site: ~25 ms) with ``sys.path``
    pointing at the directory this package is installed in. Runtimes pass their own
    PATH, hence the absolute interpreter. When the path cannot go in a shebang
    (spaces, or over the kernel's 255 bytes) a ``/bin/sh`` trampoline execs it.
    The file is replaced atomically (write, chmod 0755, rename).
    """
    import os

    funcs = {
        "plugin": "main_plugin",
        "ipam": "main_ipam",
        PLUGIN: "main_plugin",
        IPAM_PLUGIN: "main_ipam",
    }
    if which not in funcs:
        raise ValueError(f"which must be 'plugin' or 'ipam', not {which!r}")
    if not os.path.isabs(python):
        raise ValueError(f"the interpreter must be an absolute path, not {python!r}")
    func = funcs[which]
    location = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shebang = f"#!{python} -IS"
    if len(shebang.encode()) < 256 and not any(c.isspace() for c in python):
        text = _SCRIPT.format(python=python, location=location, func=func)
    else:
        code = (
            f"import sys; sys.path.insert(0, {location!r}); "
            f"from cni.shim import {func}; sys.exit({func}())"
        )
        text = _SH_SCRIPT.format(python=_sh_quote(python), code=_sh_quote(code))
    target = os.fspath(dest)
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------- the shims' interpreter

# Named, not resolved: see pick_interpreter.
DISTRO_PYTHON = "/usr/bin/python3"
CHECK_TIMEOUT = 10.0


def pick_interpreter(candidates: Sequence[str] | None = None, fallback: str | None = None) -> str:
    """The interpreter the shims run with when the operator names none (``--python``):
    the first of ``candidates`` (default: :data:`DISTRO_PYTHON`) that exists and passes
    :func:`check_interpreter`, else ``fallback`` (default: ``sys.executable``, the
    interpreter l3fabric is installed in), unchecked.

    Why the distribution's Python first: the runtime execs a shim for every ADD and DEL,
    and its cost is mostly interpreter start-up. Debian's ``/usr/bin/python3`` has
    libpython linked in and starts (``-IS``) in ~9.5 ms of CPU; a pyenv or venv build
    with a shared libpython takes ~12.5 ms.

    Why ``/usr/bin/python3`` and not what it points to (``python3.11``): a distribution
    upgrade replaces the versioned binary (Debian 12 to 13: 3.11 to 3.13) and keeps the
    name, so a resolved path would fail every pod ADD with ENOENT once the old binary is
    removed, until ``install-cni`` ran again. The price is that this module must run on
    whatever Python 3 the distribution ships next: it imports only the stdlib and keeps
    to Python 3.9 syntax (a unit test parses it with ``feature_version=(3, 9)``), and an
    interpreter that cannot run it here (too old for its syntax, a broken install) is
    logged as a warning and passed over. Re-running ``install-cni`` after an upgrade
    checks again.
    """
    import logging
    import os

    log = logging.getLogger(__name__)
    passed_over = False
    for python in (DISTRO_PYTHON,) if candidates is None else candidates:
        if not os.path.exists(python):
            log.debug("%s does not exist", python)
            continue
        problem = check_interpreter(python)
        if problem is None:
            return python
        log.warning("%s cannot run the CNI shims: %s", python, problem)
        passed_over = True
    python = fallback or sys.executable
    if passed_over:
        log.warning("the CNI shims run with %s instead", python)
    return python


def check_interpreter(python: str, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Write the ``l3fabric`` shim for ``python`` in a scratch directory and run it as
    the kernel would (the interpreter and argument of its ``#!`` line, then the file, so
    that a ``noexec`` /tmp does not matter) with ``CNI_COMMAND=VERSION``, which the shim
    answers without the agent. None if it answers with our supported versions, else
    what went wrong. Running it also leaves this interpreter's bytecode of this module
    in ``__pycache__`` (when writable), so the first pod does not compile it.
    """
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="l3fabric-shim-check-") as d:
        exe = os.path.join(d, PLUGIN)
        write_executable(exe, "plugin", python)
        with open(exe, encoding="utf-8") as f:
            argv = f.readline()[2:].split(None, 1)
        argv = [argv[0], *(a.strip() for a in argv[1:]), exe]
        try:
            proc = subprocess.run(argv, input=b'{"cniVersion": "1.0.0"}',
                                  env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        return f"exit {proc.returncode}" + (f": {err[-1]}" if err else "")
    try:
        answer = json_loads(proc.stdout.decode(errors="replace"))
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("supportedVersions") != list(SUPPORTED_VERSIONS):
        return f"unexpected VERSION answer {proc.stdout[:200]!r}"
    return None
