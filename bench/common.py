"""Shared by every benchmark: a table on stdout, the JSON results file, small timing helpers,
and a progress line on stderr during long waits.

Each benchmark measures its baseline in the same run and reports ratios
(docs/architecture.md §12); the JSON goes to ``bench/results/<name>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "host": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count()},
           **data}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


PROGRESS_EVERY = 5.0  # seconds between two progress lines


class Progress:
    """What a long wait is at, said on stderr every `PROGRESS_EVERY` seconds by a thread of
    its own (``bench: waiting for the agent's /readyz: 10 s, …``), so that the loop that
    waits needs no change and a wait shorter than that prints nothing. ``note`` (set by the
    waiter, e.g. keys written so far) is added to the line. The thread only sleeps and
    prints: nothing measured runs on it."""

    def __init__(self, what: str, every: float = PROGRESS_EVERY, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.every, self.note = what, every, ""
        self._out, self._clock = out, clock
        self._t0 = clock()
        self._stop = threading.Event()
        self._said = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-progress")

    def line(self) -> str:
        text = f"bench: {self.what}: {self._clock() - self._t0:.0f} s"
        return f"{text}, {self.note}" if self.note else text

    def _say(self, text: str) -> None:
        print(text, file=self._out or sys.stderr, flush=True)
        self._said = True

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._say(self.line())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the lines; one last line with the total if any was printed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._said:
            self._say(f"{self.line()} (done)")


@contextlib.contextmanager
def progress(what: str, every: float = PROGRESS_EVERY,
             out: TextIO | None = None) -> Iterator[Progress]:
    """``with progress("waiting for …") as p:`` around a wait that may be long (also in a
    coroutine: the lines come from a thread, the event loop is not involved)."""
    p = Progress(what, every, out)
    p.start()
    try:
        yield p
    finally:
        p.stop()
