"""The validator kit every kind is read with: one JSON object at a time, strict.

Owned here: `_Obj` (one object being read: unknown fields rejected before anything else,
so a typo is reported as the typo), and the field converters ``(value, path) -> value``
that raise :class:`ValidationError` naming the JSON path. The names keep their leading
underscore: they are the model package's own tools, not part of ``datastore.model``'s
API (callers build resources with ``from_dict``/``parse_document``/``decode``)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from datastore.calico_selector import All, Selector, SelectorError, parse_selector
from datastore.labelselector import (
    ValidationError,
    type_name,
)

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

T = TypeVar("T")

SELECT_ALL: Selector = All()


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Obj:
    """One JSON object being read. Unknown fields are rejected up front, before any other
    check, so a typo is reported as the typo and not as the missing field it shadows."""

    def __init__(
        self,
        value: Any,
        path: str,
        allowed: Collection[str],
        ignored: Collection[str] = (),
        *,
        permissive: bool = False,
    ) -> None:
        if not isinstance(value, Mapping):
            raise ValidationError(None, path, f"expected an object, got {type_name(value)}")
        for k in value:
            if not isinstance(k, str):
                raise ValidationError(None, path, f"expected string keys, got {type_name(k)}")
            if k not in allowed and k not in ignored and not permissive:
                raise ValidationError(None, _join(path, k), "unknown field")
        self.value = value
        self.path = path

    def at(self, name: str) -> str:
        return _join(self.path, name)

    def has(self, name: str) -> bool:
        return self.value.get(name) is not None

    def req(self, name: str, conv: Callable[[Any, str], T]) -> T:
        v = self.value.get(name)
        if v is None:
            raise ValidationError(None, self.at(name), "required")
        return conv(v, self.at(name))

    def opt(self, name: str, conv: Callable[[Any, str], T]) -> T | None:
        v = self.value.get(name)
        return None if v is None else conv(v, self.at(name))

    def get(self, name: str, conv: Callable[[Any, str], T], default: T) -> T:
        v = self.value.get(name)
        return default if v is None else conv(v, self.at(name))

    def list(self, name: str, conv: Callable[[Any, str], T]) -> tuple[T, ...]:
        v = self.value.get(name)
        if v is None:
            return ()
        items = _list(v, self.at(name))
        return tuple(conv(item, f"{self.at(name)}[{i}]") for i, item in enumerate(items))


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise ValidationError(None, path, f"expected a string, got {type_name(v)}")
    return v


def _nonempty(v: Any, path: str) -> str:
    s = _str(v, path)
    if not s:
        raise ValidationError(None, path, "must not be empty")
    return s


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ValidationError(None, path, f"expected a bool, got {type_name(v)}")
    return v


def _int(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)  # JSON writers that only have doubles
        raise ValidationError(None, path, f"expected an int, got {type_name(v)}")
    return v


def _ranged(lo: int, hi: int) -> Callable[[Any, str], int]:
    def conv(v: Any, path: str) -> int:
        n = _int(v, path)
        if not lo <= n <= hi:
            raise ValidationError(None, path, f"{n} is not between {lo} and {hi}")
        return n

    return conv


def _float(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValidationError(None, path, f"expected a number, got {type_name(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise ValidationError(None, path, f"{v} is not a finite number")
    return f


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise ValidationError(None, path, f"expected a list, got {type_name(v)}")
    return list(v)


def _one_of(*allowed: str) -> Callable[[Any, str], str]:
    def conv(v: Any, path: str) -> str:
        s = _str(v, path)
        if s not in allowed:
            raise ValidationError(None, path, f"{s!r} is not one of {', '.join(allowed)}")
        return s

    return conv


def _unique(values: tuple[T, ...], path: str) -> tuple[T, ...]:
    seen: set[T] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ValidationError(None, f"{path}[{i}]", f"duplicate value {v!r}")
        seen.add(v)
    return values


def _selector(v: Any, path: str) -> Selector:
    text = _str(v, path)
    try:
        return parse_selector(text)
    except SelectorError as e:
        raise ValidationError(None, path, f"invalid selector {text!r}: {e}") from None


def _opt_selector(v: Any, path: str) -> Selector | None:
    """For fields where an empty string means "no constraint" rather than ``all()``."""
    return None if _str(v, path).strip() == "" else _selector(v, path)


def _reject_oddities(text: str, path: str) -> None:
    # ipaddress accepts netmask prefixes (/255.0.0.0) and IPv6 zone ids; we do not.
    if "%" in text:
        raise ValidationError(None, path, f"{text!r}: zone ids are not allowed")


def _network(v: Any, path: str, *, bare_ip: bool = False) -> IPNetwork:
    """A CIDR with no host bits set. ``bare_ip`` also takes ``10.0.0.1`` as ``10.0.0.1/32``."""
    text = _str(v, path)
    _reject_oddities(text, path)
    addr, slash, plen = text.partition("/")
    if not slash and not bare_ip:
        raise ValidationError(None, path, f"{text!r} is not a CIDR (expected address/prefix)")
    if slash and not plen.isdigit():
        raise ValidationError(None, path, f"{text!r} is not a valid CIDR")
    with contextlib.suppress(ValueError):  # the usual case in one parse (an agent reads
        return ipaddress.ip_network(text)  # every endpoint's); errors are worded below
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValidationError(None, path, f"{text!r} is not a valid CIDR") from None
    if loose.network_address != ipaddress.ip_address(addr):
        raise ValidationError(None, path, f"{text!r} has host bits set (the network is {loose})")
    return loose


def _address(v: Any, path: str) -> IPAddress:
    text = _str(v, path)
    _reject_oddities(text, path)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValidationError(None, path, f"{text!r} is not a valid IP address") from None


def _interface(version: int) -> Callable[[Any, str], IPInterface]:
    """An address in CIDR form, ``10.77.1.1/30`` (Calico's Node address format)."""
    example = "10.77.1.1/30" if version == 4 else "fd00:77::1/64"

    def conv(v: Any, path: str) -> IPInterface:
        text = _str(v, path)
        _reject_oddities(text, path)
        _, slash, plen = text.partition("/")
        if not slash or not plen.isdigit():
            raise ValidationError(
                None, path, f"{text!r}: expected an address in CIDR form like {example}"
            )
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise ValidationError(None, path, f"{text!r} is not a valid address/prefix") from None
        if iface.version != version:
            raise ValidationError(None, path, f"{text!r} is not an IPv{version} address")
        return iface

    return conv


_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _dns_subdomain(v: Any, path: str) -> str:
    s = _nonempty(v, path)
    if len(s) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(s):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not a DNS-1123 subdomain (at most 253 lowercase alphanumerics, '-' "
            "and '.', starting and ending with an alphanumeric)",
        )
    return s


def _dns_label(v: Any, path: str) -> str:
    s = _nonempty(v, path)
    if len(s) > 63 or not _DNS1123_LABEL.fullmatch(s):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not a DNS-1123 label (at most 63 lowercase alphanumerics and '-', "
            "starting and ending with an alphanumeric)",
        )
    return s


_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _port_name(v: Any, path: str) -> str:
    """IANA_SVC_NAME (RFC 6335), as Kubernetes validates named ports."""
    s = _nonempty(v, path)
    if (
        len(s) > 15
        or not _IANA_SVC_NAME.fullmatch(s)
        or "--" in s
        or not any(c.isalpha() for c in s)
    ):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not a valid port name (at most 15 lowercase alphanumerics and '-', "
            "at least one letter, no leading, trailing or double '-')",
        )
    return s


_IFNAME = re.compile(r"[^\s/:.]{1,15}")


def _ifname(v: Any, path: str) -> str:
    """A Linux interface name; '.' is excluded too because it separates key parts."""
    s = _nonempty(v, path)
    if not _IFNAME.fullmatch(s):
        raise ValidationError(
            None,
            path,
            f"{s!r} is not an interface name (1-15 characters, no space, '/', ':' or '.')",
        )
    return s


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _mac(v: Any, path: str) -> str:
    s = _str(v, path).lower()
    if not _MAC.fullmatch(s):
        raise ValidationError(None, path, f"{s!r} is not a MAC address like ee:ee:ee:ee:ee:ee")
    return s


def _int_out(f: float) -> float | int:
    return int(f) if f.is_integer() else f


_asn = _ranged(1, 4294967295)


_L4_PROTOCOLS = ("TCP", "UDP", "SCTP")

