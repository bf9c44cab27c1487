"""Where fabricctl finds etcd: flags, then environment, then a config file.

Owned here: the order in which each connection setting is looked up, and the reading of
the config file. Each setting (endpoints, CA, certificate, key, timeout) is resolved on
its own, first match wins:

1. the command-line flag (``--etcd-endpoints`` ...);
2. ``L3FABRIC_ETCD_*`` in the environment;
3. etcdctl's own variables (``ETCDCTL_ENDPOINTS``, ``ETCDCTL_CACERT``, ``ETCDCTL_CERT``,
   ``ETCDCTL_KEY``), so a shell already set up for etcdctl works unchanged;
4. the config file: ``--config FILE``, else ``$L3FABRIC_CONFIG``, else the first of
   ``/etc/l3fabric/fabricctl.conf`` and ``/etc/l3fabric/agent.conf`` that exists (on a node,
   the agent's own file, so fabricctl talks to the etcd the agent uses);
5. the default (``http://127.0.0.1:2379``, no TLS, 3 s).

The file has the syntax `fabricctl install-agent` writes for ``agent.conf``: one
``L3FABRIC_ETCD_ENDPOINTS=value`` per line (systemd ``EnvironmentFile``; ``#`` comments,
double quotes allowed). Other keys in it (the agent's ``L3FABRIC_NODE``...) are ignored.

Failure modes: a config file named explicitly (flag or variable) that cannot be read is a
usage error; a default one that cannot be read (``agent.conf`` is 0600 when it names a
TLS key) is skipped with a warning naming it, since the user may not have meant to use it.
The file is only read when some setting is not given earlier.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from datastore.client import DEFAULT_ENDPOINT

from .common import CliError

log = logging.getLogger(__name__)

CONFIG_ENV = "L3FABRIC_CONFIG"
DEFAULT_CONFIG_PATHS = ("/etc/l3fabric/fabricctl.conf", "/etc/l3fabric/agent.conf")
DEFAULT_TIMEOUT = "3"


@dataclass(frozen=True)
class Setting:
    """One connection setting: its ``argparse`` dest, flag, and the variables naming it."""

    dest: str
    flag: str
    env: str  # L3FABRIC_*; also the key in the config file
    etcdctl_env: str | None
    default: str | None
    help: str
    metavar: str


SETTINGS: tuple[Setting, ...] = (
    Setting("etcd_endpoints", "--etcd-endpoints", "L3FABRIC_ETCD_ENDPOINTS",
            "ETCDCTL_ENDPOINTS", DEFAULT_ENDPOINT,
            "comma-separated etcd URLs or HOST:PORT; hosts may be DNS names (env "
            f"L3FABRIC_ETCD_ENDPOINTS, ETCDCTL_ENDPOINTS; default {DEFAULT_ENDPOINT})",
            "URL[,URL...]"),
    Setting("etcd_ca", "--etcd-ca", "L3FABRIC_ETCD_CA", "ETCDCTL_CACERT", None,
            "CA certificate that signed etcd's server certificates (env L3FABRIC_ETCD_CA, "
            "ETCDCTL_CACERT)", "FILE"),
    Setting("etcd_cert", "--etcd-cert", "L3FABRIC_ETCD_CERT", "ETCDCTL_CERT", None,
            "client certificate for etcd (env L3FABRIC_ETCD_CERT, ETCDCTL_CERT)", "FILE"),
    Setting("etcd_key", "--etcd-key", "L3FABRIC_ETCD_KEY", "ETCDCTL_KEY", None,
            "private key of the client certificate (env L3FABRIC_ETCD_KEY, ETCDCTL_KEY)",
            "FILE"),
    Setting("etcd_timeout", "--etcd-timeout", "L3FABRIC_ETCD_TIMEOUT", None, DEFAULT_TIMEOUT,
            "seconds to wait for etcd on each request (env L3FABRIC_ETCD_TIMEOUT; "
            f"default {DEFAULT_TIMEOUT})", "SECONDS"),
)


@dataclass(frozen=True)
class Resolved:
    """The connection settings and, for each, where it came from (for messages)."""

    values: Mapping[str, str | None]
    sources: Mapping[str, str]
    config_file: str | None


def parse_env_file(text: str) -> dict[str, str]:
    """The ``KEY=value`` lines of an ``EnvironmentFile`` as `fabricctl install-agent` writes
    them: ``KEY=value`` or ``KEY="value"`` with ``\\"`` and ``\\\\``; ``#`` and ``;`` lines
    are comments."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            chars, i, inner = [], 0, value[1:-1]
            while i < len(inner):
                if inner[i] == "\\" and i + 1 < len(inner):
                    i += 1
                chars.append(inner[i])
                i += 1
            value = "".join(chars)
        out[key.strip()] = value
    return out


def _read_text(path: str) -> str:
    return Path(path).read_text()


def resolve(flags: Mapping[str, str | None], environ: Mapping[str, str],
            config: str | None = None,
            read: Callable[[str], str] = _read_text,
            default_paths: tuple[str, ...] = DEFAULT_CONFIG_PATHS) -> Resolved:
    """Resolve every `SETTINGS` entry; ``flags`` maps dests to what the command line gave
    (None: not given), ``config`` is ``--config``. Pure but for ``read`` and the existence
    check of the default paths."""
    values: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    file_values: dict[str, str] | None = None
    file_used: str | None = None

    def from_file() -> dict[str, str]:
        nonlocal file_values, file_used
        if file_values is not None:
            return file_values
        file_values = {}
        explicit = config or environ.get(CONFIG_ENV) or None
        if explicit:
            try:
                file_values = parse_env_file(read(explicit))
            except OSError as e:
                origin = "--config" if config else CONFIG_ENV
                raise CliError(f"{origin} {explicit}: {e.strerror or e}", usage=True) from e
            file_used = explicit
            return file_values
        for path in default_paths:
            if not os.path.exists(path):
                continue
            try:
                file_values = parse_env_file(read(path))
                file_used = path
            except OSError as e:
                log.warning("cannot read %s (%s): its etcd settings are not used", path,
                            e.strerror or e)
            break
        return file_values

    for s in SETTINGS:
        candidates: list[tuple[str, str | None]] = [
            ("flag " + s.flag, flags.get(s.dest)),
            ("env " + s.env, environ.get(s.env)),
        ]
        if s.etcdctl_env:
            candidates.append(("env " + s.etcdctl_env, environ.get(s.etcdctl_env)))
        for source, value in candidates:
            if value:
                values[s.dest], sources[s.dest] = value, source
                break
        else:
            value = from_file().get(s.env)
            if value:
                values[s.dest], sources[s.dest] = value, str(file_used)
            else:
                values[s.dest], sources[s.dest] = s.default, "default"
    return Resolved(values, sources, file_used)
