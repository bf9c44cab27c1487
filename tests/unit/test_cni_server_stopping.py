"""The CNI server while the agent stops: a request interrupted by the shutdown ends its
connection with one log line, never a traceback (the runtime retries the call)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cni import shim
from felix_like.cni_server import CniServer


async def _send(path: str, command: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One shim request, written and half-closed, as the shim sends it."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(shim.encode_message({"plugin": "l3fabric", "env": {"CNI_COMMAND": command},
                                      "stdin": "{}"}))
    writer.write_eof()
    return reader, writer


def _tracebacks_and_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_request_cancelled_by_the_shutdown_logs_no_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The etcd client raises CancelledError in a request it is closed under (the agent
    stopping while a DEL waits on etcd): the shim sees the connection end, and nothing is
    logged with a traceback, by the server or by asyncio's stream callback."""

    async def interrupted(plugin: str, env: dict[str, str], stdin: str
                          ) -> tuple[int, str, str]:
        raise asyncio.CancelledError()

    caplog.set_level(logging.INFO)
    server = CniServer(str(tmp_path / "s.sock"), interrupted)
    await server.start()
    try:
        reader, writer = await _send(server.path, "DEL")
        assert await reader.read() == b""
        writer.close()
        await asyncio.sleep(0.05)  # asyncio's done-callback of the connection task runs
    finally:
        await server.stop()
    assert _tracebacks_and_errors(caplog) == []


async def test_an_answer_to_a_caller_that_hung_up_logs_no_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A runtime that kills its plugin mid-call (the shim gone before the answer) is not an
    agent error: one line, no traceback; what the handler did stands for the retry."""
    answered = asyncio.Event()

    async def slow(plugin: str, env: dict[str, str], stdin: str) -> tuple[int, str, str]:
        await asyncio.sleep(0.2)
        answered.set()
        return 0, "{}", ""

    caplog.set_level(logging.INFO)
    server = CniServer(str(tmp_path / "s.sock"), slow)
    await server.start()
    try:
        _, writer = await _send(server.path, "ADD")
        writer.close()  # the shim is killed: nobody reads the answer
        await asyncio.wait_for(answered.wait(), 5)
        await asyncio.sleep(0.1)
    finally:
        await server.stop()
    assert _tracebacks_and_errors(caplog) == []


async def test_a_request_cancelled_twice_by_the_shutdown_logs_no_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shutdown cancels a waiting request's task, and cancels it again (the event
    loop's own cancel of every task left) while it closes its connection: the task still
    ends normally, so Python 3.11's stream callback, which asks a cancelled task for its
    exception, logs no traceback."""
    entered = asyncio.Event()

    async def waits(plugin: str, env: dict[str, str], stdin: str) -> tuple[int, str, str]:
        entered.set()
        await asyncio.Event().wait()  # a DEL waiting on an etcd that is away
        return 0, "{}", ""

    caplog.set_level(logging.INFO)
    server = CniServer(str(tmp_path / "s.sock"), waits)
    await server.start()
    try:
        reader, writer = await _send(server.path, "DEL")
        await asyncio.wait_for(entered.wait(), 5)
        (task,) = [t for t in asyncio.all_tasks()
                   if getattr(t.get_coro(), "__name__", "") == "_serve"]
        task.cancel()
        for _ in range(3):
            await asyncio.sleep(0)  # caught; the task now waits for its connection to close
            task.cancel()
        assert await reader.read() == b""
        writer.close()
        await asyncio.sleep(0.05)
        assert task.done() and not task.cancelled()
    finally:
        await server.stop()
    assert _tracebacks_and_errors(caplog) == []


async def test_a_call_in_flight_finishes_before_stop_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The agent closes its etcd client and its netlink thread after the CNI server's
    stop: a call in flight (an ADD and, if it fails, its undo) must be over by then. Seen
    in the soak: an ADD cancelled by the closing etcd client undid its endpoint through the
    netlink thread already shut down ("cannot schedule new futures after shutdown")."""
    resource_open = True
    used_closed: list[str] = []

    async def slow(plugin: str, env: dict[str, str], stdin: str) -> tuple[int, str, str]:
        await asyncio.sleep(0.3)
        if not resource_open:
            used_closed.append(env.get("CNI_COMMAND", ""))
        return 0, "{}", ""

    caplog.set_level(logging.INFO)
    server = CniServer(str(tmp_path / "s.sock"), slow)
    await server.start()
    reader, writer = await _send(server.path, "ADD")
    await asyncio.sleep(0.05)  # the call is being served
    await server.stop()
    resource_open = False  # what the agent closes next
    answer = shim.decode_message(await reader.read())
    writer.close()
    assert answer["exit"] == 0
    await asyncio.sleep(0.4)
    assert used_closed == []
    assert not Path(server.path).exists()
    assert _tracebacks_and_errors(caplog) == []


async def test_a_call_that_outlives_the_grace_is_cancelled_and_over_when_stop_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A call still running after the grace is cancelled; its cleanup has run when stop
    returns, and the runtime sees the connection close (it retries)."""
    cleaned = asyncio.Event()

    async def stuck(plugin: str, env: dict[str, str], stdin: str) -> tuple[int, str, str]:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()
        return 0, "{}", ""

    caplog.set_level(logging.INFO)
    server = CniServer(str(tmp_path / "s.sock"), stuck)
    await server.start()
    reader, writer = await _send(server.path, "DEL")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.stop(grace=0.2), 5)
    assert cleaned.is_set()
    assert await reader.read() == b""
    writer.close()
    assert _tracebacks_and_errors(caplog) == []
