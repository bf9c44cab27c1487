"""The agent's end of the CNI shim: a unix socket that serves one CNI call per connection.

Owns: the socket file (mode 0600, created atomically: bound under a temporary name and
renamed into place, so a shim never sees a half-made socket) and the connections on it.
Framing is :mod:`cni.shim`'s: one JSON object, ended by the client's half-close; one JSON
answer ``{"exit", "stdout", "stderr"}``, ended by our close.

Failure mode: a handler that raises is answered with CNI error 11 naming the exception,
never with a dropped connection (the shim would say the agent is unreachable, which is
not true) — except when the agent is stopping, when closing is the honest answer.

Stopping: the listener closes first, then the calls in flight get `STOP_GRACE` seconds to
finish, and the ones still running are cancelled and awaited. Only then does the agent
close what they use (the etcd client, the netlink thread), so no call, nor the undo of a
failed ADD, runs on a closed resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cni import shim
from cni.protocol import requested_version

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, str], str], Awaitable[tuple[int, str, str]]]

STOP_GRACE = 5.0  # seconds a call in flight has to finish when the agent stops


class CniServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._calls: set[asyncio.Task[Any]] = set()  # connections being served

    async def start(self) -> None:
        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = p.with_name(f".{p.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(tmp),
                                                           limit=shim.MAX_MESSAGE)
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
        log.info("serving CNI requests on %s", self.path)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """No new calls; the calls in flight finish within ``grace`` seconds or are
        cancelled (the runtime retries them); returns when none runs any more."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()
        calls = {t for t in self._calls if not t.done() and t is not asyncio.current_task()}
        if calls:
            _, late = await asyncio.wait(calls, timeout=grace)
            if late:
                log.info("stopping: %d CNI call(s) still running after %.0f s, cancelled",
                         len(late), grace)
                for t in late:
                    t.cancel()
                await asyncio.wait(late, timeout=grace)
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        answer: dict[str, Any]
        stdin = ""
        try:
            data = await asyncio.wait_for(_read_to_eof(reader), 30)
            try:
                req = shim.decode_message(data)
                plugin = str(req.get("plugin", shim.PLUGIN))
                env = {str(k): str(v) for k, v in dict(req.get("env") or {}).items()}
                stdin = str(req.get("stdin", ""))
            except (ValueError, TypeError, AttributeError) as e:
                answer = {"exit": 1, "stderr": "",
                          "stdout": _error(shim.ERR_DECODE, f"bad request from shim: {e}",
                                           stdin)}
            else:
                code, out, err = await self.handler(plugin, env, stdin)
                answer = {"exit": code, "stdout": out, "stderr": err}
            writer.write(shim.encode_message(answer))
            await writer.drain()
        except asyncio.CancelledError:
            # The agent is stopping: its etcd client, closed under the request, raises
            # this (a task nobody awaits; re-raised, asyncio's stream callback logs it
            # with a traceback). The connection closes unanswered; the runtime retries.
            log.info("CNI request interrupted: the agent is stopping")
        except (ConnectionResetError, BrokenPipeError):
            # The runtime gave up on the call (killed its plugin) before our answer: what
            # the handler did stands, and the runtime's retry or DEL takes it from there.
            log.info("CNI request: the caller hung up before the answer")
        except Exception as e:
            log.exception("CNI request failed")
            with contextlib.suppress(Exception):
                writer.write(shim.encode_message({
                    "exit": 1, "stderr": "",
                    "stdout": _error(shim.ERR_TRY_AGAIN_LATER, f"agent error: {e}",
                                     stdin)}))
                await writer.drain()
        finally:
            writer.close()
            # A second cancel (the loop cancelling every task left at shutdown) may come
            # while the connection closes: the task must still end normally, since
            # Python 3.11's stream callback asks a cancelled task for its exception and
            # logs the CancelledError with a traceback. Nothing follows in this task.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > shim.MAX_MESSAGE:
            break  # decode_message rejects it with a clear reason
        chunks.append(chunk)
    return b"".join(chunks)


def _error(code: int, msg: str, stdin: str) -> str:
    """A CNI error in the version of the request's config (``stdin``; ours when it has
    none we speak)."""
    return json.dumps({"cniVersion": requested_version(stdin), "code": code, "msg": msg})
