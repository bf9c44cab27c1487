"""``fabricctl completion bash|zsh``: the shell script that completes fabricctl's commands,
flags and resource kinds, by argcomplete.

How it works: the script calls ``fabricctl`` itself with ``_ARGCOMPLETE`` set; `cli.main`
hands the line to ``argcomplete.autocomplete`` before parsing, which answers from the same
argparse tree the command runs with, so completion never drifts from the real flags.
Nothing here reads etcd: completing must stay instant and work with etcd down.

argcomplete is a dependency (PyPI ``argcomplete``; Debian ``python3-argcomplete``). If it
is missing anyway, fabricctl works and only this command fails with a clear message.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from .common import CliError

SHELLS = ("bash", "zsh")


def complete_with(action: argparse.Action, values: Iterable[str]) -> None:
    """Complete ``action``'s value from ``values`` (argcomplete reads ``.completer``)."""
    choices = sorted(set(values))

    def completer(prefix: str, **_: Any) -> list[str]:
        return [v for v in choices if v.startswith(prefix)]

    action.completer = completer  # type: ignore[attr-defined]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print the shell completion script (bash or zsh)",
                       description="Print a script that makes the shell complete fabricctl. "
                                   "bash: source <(fabricctl completion bash), or save it "
                                   "in /etc/bash_completion.d/fabricctl. zsh: source "
                                   "<(fabricctl completion zsh) in ~/.zshrc.")
    p.add_argument("shell", choices=SHELLS, help="the shell: bash or zsh")
    p.set_defaults(func=cmd_completion)


def script(shell: str, prog: str = "fabricctl") -> str:
    try:
        import argcomplete
    except ImportError as e:
        raise CliError("shell completion needs argcomplete (pip install argcomplete, or "
                       "apt install python3-argcomplete)") from e
    shellcode: Callable[..., str] = getattr(argcomplete, "shellcode")  # noqa: B009 (untyped)
    if shell == "zsh" and _major() < 3:
        # argcomplete 2 (Debian 12) has no native zsh code: zsh runs the bash one.
        return ("autoload -U +X bashcompinit && bashcompinit\n"
                + shellcode([prog], shell="bash"))
    return shellcode([prog], shell=shell)


def _major() -> int:
    from importlib import metadata

    try:
        head = metadata.version("argcomplete").split(".", 1)[0]
    except metadata.PackageNotFoundError:
        return 3
    return int(head) if head.isdigit() else 3


def cmd_completion(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return 0


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request (``_ARGCOMPLETE`` set) and exit; otherwise return at once."""
    import os

    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)
