"""What the CNI spec fixes for every call: versions, commands, error codes, the error object.

Owned here: the versions we speak, the spec's well-known error codes, :class:`CniError`
and its JSON (:func:`error_json`), the version an answer is given in, and the readers of
JSON fields that both requests and results use (anything malformed is a
``CniError`` 7, invalid network config; their names keep the underscore: they are the
``cni`` package's own tools, not part of `cni.protocol`). Standard library only, no I/O.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any, Final

SUPPORTED_VERSIONS: Final[tuple[str, ...]] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION: Final = "1.1.0"
COMMANDS: Final[frozenset[str]] = frozenset({"ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"})

# Well-known error codes (CNI spec 1.1.0). 100+ would be ours; we use none yet.
ERR_INCOMPATIBLE_VERSION: Final = 1
ERR_UNSUPPORTED_FIELD: Final = 2
ERR_UNKNOWN_CONTAINER: Final = 3
ERR_INVALID_ENV: Final = 4
ERR_IO: Final = 5
ERR_DECODE: Final = 6
ERR_INVALID_CONFIG: Final = 7
ERR_TRY_AGAIN_LATER: Final = 11
ERR_PLUGIN_NOT_AVAILABLE: Final = 50
ERR_PLUGIN_NOT_AVAILABLE_LIMITED: Final = 51
SPEC_ERROR_CODES: Final[frozenset[int]] = frozenset({1, 2, 3, 4, 5, 6, 7, 11, 50, 51})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CniError(Exception):
    """A CNI failure the runtime sees: ``code`` is one of the spec's well-known codes
    (or 100+ for plugin-specific ones), ``msg`` a short message, ``details`` more."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"CNI error {code}: {msg}" + (f" ({details})" if details else ""))
        self.code = code
        self.msg = msg
        self.details = details


def error_json(err: CniError, cni_version: str | None = None) -> str:
    """The error object the spec wants on stdout (exit status non-zero)."""
    obj: dict[str, Any] = {
        "cniVersion": cni_version or CURRENT_VERSION,
        "code": err.code,
        "msg": err.msg,
    }
    if err.details:
        obj["details"] = err.details
    return json.dumps(obj)


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; ValueError when it is not ``X.Y.Z``."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"not a semantic version: {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def is_supported(version: str) -> bool:
    return version in SUPPORTED_VERSIONS


def version_response(requested: str | None = None) -> dict[str, Any]:
    """The VERSION answer: echoes the requested version when we speak it."""
    return {
        "cniVersion": requested if requested in SUPPORTED_VERSIONS else CURRENT_VERSION,
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def requested_version(stdin: str) -> str:
    """The cniVersion of a request's config when we speak it, else ours (an error must be
    answered in the request's version, also when the rest of the request is unusable)."""
    try:
        obj = json.loads(stdin) if stdin.strip() else {}
    except (ValueError, RecursionError):
        return CURRENT_VERSION
    version = obj.get("cniVersion") if isinstance(obj, dict) else None
    return version if isinstance(version, str) and is_supported(version) else CURRENT_VERSION


# JSON field readers: a malformed field is a CniError 7 (invalid network config).


def _cfg_err(msg: str) -> CniError:
    return CniError(ERR_INVALID_CONFIG, msg)


def _str(obj: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = obj.get(key)
    if value is None or (required and value == ""):
        if required:
            raise _cfg_err(f"{where} has no {key!r}")
        return ""
    if not isinstance(value, str):
        raise _cfg_err(f"{where} {key!r} must be a string")
    return value


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _cfg_err(f"{where} {key!r} must be a list of strings")
    return tuple(value)


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _cfg_err(f"{where} {key!r} must be a list")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _cfg_err(f"{where} {key!r} must be an integer in [{lo}, {hi}]")
    return value


def _parse_addr(value: Any, where: str) -> IPAddress:
    if not isinstance(value, str):
        raise _cfg_err(f"{where} must be an IP address string")
    try:
        return ipaddress.ip_address(value)
    except ValueError as e:
        raise _cfg_err(f"{where} {value[:64]!r} is not an IP address") from e


def _parse_interface_addr(value: Any, where: str) -> IPInterface:
    if not isinstance(value, str) or "/" not in value:
        raise _cfg_err(f"{where} must be an address in CIDR form")
    try:
        return ipaddress.ip_interface(value)
    except ValueError as e:
        raise _cfg_err(f"{where} {value[:64]!r} is not an address in CIDR form") from e
