"""Validating one CNI call: the runtime's environment and stdin into a :class:`CniRequest`.

Owner: the agent-side CNI handler (through `cni.protocol`). The stdlib shims
(:mod:`cni.shim`) forward the runtime's environment and stdin untouched; this module
turns them into a typed :class:`CniRequest` or a :class:`CniError`. It does no I/O and
imports only the standard library, so every rule here is a unit test away.

What is checked, and with which of the spec's well-known codes (CNI spec 1.1.0,
"Well-known Error Codes", and libcni's ``pkg/skel`` for the cases the spec leaves
to plugins):

* unknown ``CNI_COMMAND``, a missing required variable, a malformed container ID,
  interface name, ``CNI_ARGS`` (an ``IP=`` or ``MAC=`` that is no usable address
  included) or ``CAP_ARGS``: 4 (invalid necessary environment variables), the message
  names the variable(s);
* stdin that is not a JSON object: 6 (failed to decode content);
* missing or malformed ``cniVersion``/``name``/``type``, malformed ``args``,
  ``runtimeConfig`` (a ``mac`` that is no usable unicast address included), ``mtu``,
  ``prevResult`` or GC attachments: 7 (invalid network config);
* a ``cniVersion`` we do not speak, or one too old for the command (CHECK needs
  0.4.0, GC and STATUS need 1.1.0): 1 (incompatible CNI version).

Failure mode: :func:`parse_request` raises nothing but :class:`CniError` for any
input (a property test holds it to that), so the handler can always answer with
:func:`error_json`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cni.result import (
    Result,
    parse_result,
)
from cni.spec import (
    COMMANDS,
    ERR_DECODE,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INVALID_ENV,
    SUPPORTED_VERSIONS,
    CniError,
    IPAddress,
    _cfg_err,
    _opt_int,
    _str,
    is_supported,
    requested_version,
    version_tuple,
)

log = logging.getLogger(__name__)

# Variables each command needs non-empty (spec 1.1.0 §2; CNI_PATH is only needed by
# plugins that delegate, and ours do not, so it is never required).
REQUIRED_ENV: Final[Mapping[str, tuple[str, ...]]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
# Oldest cniVersion a config may carry for each command.
MIN_VERSION: Final[Mapping[str, str]] = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# Container IDs and network names: spec 1.1.0 §2 "Parameters"; libcni's utils.cniReg.
_ID_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_MAX_IFNAME_BYTES: Final = 15
# CNI_ARGS keys we understand; anything else needs IgnoreUnknown (libcni LoadArgs).
KNOWN_CNI_ARGS: Final[frozenset[str]] = frozenset(
    {
        "IgnoreUnknown",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
        "IP",
        "MAC",
    }
)
_PROTOCOLS: Final[frozenset[str]] = frozenset({"tcp", "udp", "sctp"})
# The 6-byte spellings Go's net.ParseMAC accepts (runtimes and the reference plugins
# parse the ``mac`` capability with it): aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff.
_MAC_GROUPED: Final = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_MAC_DOTTED: Final = re.compile(r"[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){2}")

# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class PortMapping:
    """A ``portMappings`` runtime capability entry; protocol is lower case."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class NamedPort:
    """An ``args.l3fabric.ports`` entry (for NetworkPolicy named ports)."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Attachment:
    """A still-valid attachment named by GC (``cni.dev/valid-attachments``)."""

    container_id: str
    ifname: str


@dataclass(frozen=True)
class CniRequest:
    """One validated CNI call.

    ``cni_version`` is the config's version (for VERSION: the requested one, or
    1.1.0). ``netns`` is empty when a DEL had none. ``mtu`` is None for "auto".
    ``requested_ips`` merges, in order and without duplicates, ``IP=`` from
    CNI_ARGS, ``args.cni.ips`` and the ``ips`` runtime capability.
    ``requested_mac`` (ADD and CHECK only; empty: the kernel picks one) is the ``mac``
    runtime capability, else ``MAC=`` from CNI_ARGS, in lower-case colon form.
    ``valid_attachments`` is None unless the command is GC and the runtime sent a
    list; a GC without a list must delete nothing. ``config`` is the decoded stdin.
    """

    command: str
    cni_version: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    cni_path: tuple[str, ...] = ()
    network_name: str = ""
    plugin_type: str = ""
    ipam_type: str = ""
    cni_args: Mapping[str, str] = field(default_factory=dict, hash=False)
    pod_namespace: str = "default"
    pod_name: str = ""
    pod_uid: str = ""
    infra_container_id: str = ""
    requested_ips: tuple[IPAddress, ...] = ()
    requested_mac: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[NamedPort, ...] = ()
    port_mappings: tuple[PortMapping, ...] = ()
    mtu: int | None = None
    prev_result: Result | None = None
    valid_attachments: tuple[Attachment, ...] | None = None
    runtime_config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)


def parse_request(env: Mapping[str, str], stdin: str) -> CniRequest:
    """Validate a CNI call (environment + stdin) into a :class:`CniRequest`.

    Raises only :class:`CniError`, with the spec's codes (see the module docstring).
    """
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(ERR_INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {command!r}")
    if command == "VERSION":
        return CniRequest(command="VERSION", cni_version=requested_version(stdin))

    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        validate_container_id(container_id)
        validate_ifname(ifname)

    config = _decode_config(stdin)
    cni_version = _config_version(config, command)
    network_name = _str(config, "name", "network config", required=True)
    if not _ID_RE.fullmatch(network_name):
        raise _cfg_err(f"invalid characters in network name {network_name!r}")
    plugin_type = _str(config, "type", "network config", required=True)
    ipam = config.get("ipam")
    if ipam is not None and not isinstance(ipam, Mapping):
        raise _cfg_err("ipam must be an object")
    ipam_type = _str(ipam, "type", "ipam") if ipam is not None else ""

    cni_args = parse_cni_args(env.get("CNI_ARGS", ""))
    runtime_config = _runtime_config(config, env.get("CAP_ARGS", ""))
    args_cni = _args_section(config, "cni")
    args_ours = _args_section(config, "l3fabric")

    requested: list[IPAddress] = []
    if cni_args.get("IP"):
        for raw in cni_args["IP"].split(","):
            try:
                requested.append(ipaddress.ip_address(raw.strip()))
            except ValueError as e:
                raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: IP={raw!r} is not an IP address") from e
    requested += _ip_list(args_cni.get("ips"), "args.cni.ips")
    requested += _ip_list(runtime_config.get("ips"), "runtimeConfig.ips")

    prev_raw = config.get("prevResult")
    prev_result = parse_result(prev_raw) if prev_raw is not None else None
    if command == "CHECK" and prev_result is None:
        raise _cfg_err("CHECK needs a prevResult in the network config")

    valid_attachments = None
    if command == "GC":
        valid_attachments = _attachments(config)

    mac = ""
    if command in ("ADD", "CHECK"):  # a DEL must not fail on what ADD already refused
        mac = _requested_mac(cni_args.get("MAC", ""), runtime_config.get("mac"))

    return CniRequest(
        command=command,
        cni_version=cni_version,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        cni_path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
        network_name=network_name,
        plugin_type=plugin_type,
        ipam_type=ipam_type,
        cni_args=cni_args,
        pod_namespace=cni_args.get("K8S_POD_NAMESPACE") or "default",
        pod_name=cni_args.get("K8S_POD_NAME", ""),
        pod_uid=cni_args.get("K8S_POD_UID", ""),
        infra_container_id=cni_args.get("K8S_POD_INFRA_CONTAINER_ID", ""),
        requested_ips=tuple(dict.fromkeys(requested)),
        requested_mac=mac,
        labels=_labels(args_cni.get("labels")),
        ports=_named_ports(args_ours.get("ports")),
        port_mappings=_port_mappings(runtime_config.get("portMappings")),
        mtu=_mtu(config),
        prev_result=prev_result,
        valid_attachments=valid_attachments,
        runtime_config=runtime_config,
        config=config,
    )


def validate_container_id(container_id: str) -> None:
    """Spec: non-empty, starts alphanumeric, then alphanumerics, ``_``, ``.``, ``-``."""
    if not container_id:
        raise CniError(ERR_INVALID_ENV, "required env variables [CNI_CONTAINERID] missing")
    if not _ID_RE.fullmatch(container_id) or not container_id.isascii():
        raise CniError(ERR_INVALID_ENV, "invalid characters in CNI_CONTAINERID", container_id[:256])


def validate_ifname(ifname: str) -> None:
    """Spec: non-empty, under 16 bytes, not ``.``/``..``, no ``/``, ``:`` or whitespace."""
    if not ifname:
        raise CniError(ERR_INVALID_ENV, "required env variables [CNI_IFNAME] missing")
    if len(ifname.encode("utf-8", "surrogatepass")) > _MAX_IFNAME_BYTES:
        raise CniError(
            ERR_INVALID_ENV,
            "CNI_IFNAME is too long",
            f"{ifname[:64]!r}: interface names are at most {_MAX_IFNAME_BYTES} bytes",
        )
    if ifname in (".", ".."):
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME must not be '.' or '..'")
    if any(c in "/:" or c.isspace() for c in ifname):
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME contains '/', ':' or whitespace", repr(ifname))


def normalize_mac(value: str) -> str:
    """``value`` as a 6-byte unicast Ethernet address in lower-case colon form.

    Raises ValueError saying why not. Refused, as the kernel refuses them for an
    Ethernet interface (``is_valid_ether_addr``): group addresses (the low bit of the
    first byte set; broadcast is one) and all zeros.
    """
    if _MAC_GROUPED.fullmatch(value):
        raw = bytes.fromhex(value.replace(value[2], ""))
    elif _MAC_DOTTED.fullmatch(value):
        raw = bytes.fromhex(value.replace(".", ""))
    else:
        raise ValueError("not six hex bytes like c2:11:22:33:44:55")
    if raw == b"\xff" * 6:
        raise ValueError("the broadcast address")
    if raw[0] & 1:
        raise ValueError("a multicast address (the first byte is odd)")
    if not any(raw):
        raise ValueError("all zeros")
    return ":".join(f"{b:02x}" for b in raw)


def _requested_mac(from_cni_args: str, from_capability: Any) -> str:
    """The MAC to give the pod's interface: the ``mac`` runtime capability, else
    ``MAC=`` from CNI_ARGS (CNI conventions' capability over the deprecated CNI_ARGS, as
    the reference plugins rank them); empty for "the kernel picks". Each one given is
    validated: a malformed value is an error even where the other overrides it."""
    mac = ""
    if from_cni_args:
        try:
            mac = normalize_mac(from_cni_args)
        except ValueError as e:
            raise CniError(
                ERR_INVALID_ENV, f"CNI_ARGS: MAC={from_cni_args[:64]!r} is not usable: {e}"
            ) from e
    if from_capability is None or from_capability == "":
        return mac
    if not isinstance(from_capability, str):
        raise _cfg_err("runtimeConfig.mac must be a string")
    try:
        return normalize_mac(from_capability)
    except ValueError as e:
        raise _cfg_err(f"runtimeConfig.mac {from_capability[:64]!r} is not usable: {e}") from e


def parse_cni_args(raw: str) -> dict[str, str]:
    """``K=V;K2=V2`` -> dict. Unknown keys are an error unless ``IgnoreUnknown`` is
    ``1``/``true`` (libcni's LoadArgs). Values may contain ``=``."""
    args: dict[str, str] = {}
    if not raw:
        return args
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: invalid pair {pair[:128]!r}")
        args[key] = value
    ignore = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(k for k in args if k not in KNOWN_CNI_ARGS)
    if unknown and not ignore:
        raise CniError(
            ERR_INVALID_ENV,
            f"CNI_ARGS: unknown args {unknown[:10]} (set IgnoreUnknown=1 to ignore them)",
        )
    return args


def _decode_config(stdin: str) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except (ValueError, RecursionError) as e:
        raise CniError(ERR_DECODE, "failed to decode the network config", str(e)[:256]) from e
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, "the network config must be a JSON object")
    return config


def _config_version(config: Mapping[str, Any], command: str) -> str:
    version = config.get("cniVersion")
    if version is None or version == "":
        raise _cfg_err("network config has no cniVersion")
    if not isinstance(version, str):
        raise _cfg_err("cniVersion must be a string")
    if not is_supported(version):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version[:32]!r}",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    minimum = MIN_VERSION.get(command)
    if minimum is not None and version_tuple(version) < version_tuple(minimum):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"config version {version} does not allow {command} (needs {minimum} or later)",
        )
    return version


def _ip_list(value: Any, where: str) -> list[IPAddress]:
    """A list of requested addresses; a ``/prefix`` suffix is accepted and dropped."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _cfg_err(f"{where} must be a list of IP addresses")
    out: list[IPAddress] = []
    for item in value:
        if not isinstance(item, str):
            raise _cfg_err(f"{where} must be a list of IP addresses")
        try:
            out.append(ipaddress.ip_interface(item).ip)
        except ValueError as e:
            raise _cfg_err(f"{where}: {item[:64]!r} is not an IP address") from e
    return out


def _args_section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    args = config.get("args")
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise _cfg_err("args must be an object")
    section = args.get(name)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise _cfg_err(f"args.{name} must be an object")
    return section


def _runtime_config(config: Mapping[str, Any], cap_args: str) -> dict[str, Any]:
    """``runtimeConfig`` from stdin; ``CAP_ARGS`` (cnitool's env) fills keys it lacks.

    cnitool puts capability args in CAP_ARGS and libcni injects only those the
    plugin declares in ``capabilities``; reading the env too lets `cnitool` users
    pass ``ips`` or ``portMappings`` to a plugin entry without the declaration.
    """
    rc = config.get("runtimeConfig")
    if rc is None:
        rc = {}
    if not isinstance(rc, Mapping):
        raise _cfg_err("runtimeConfig must be an object")
    merged = dict(rc)
    if cap_args:
        try:
            extra = json.loads(cap_args)
        except (ValueError, RecursionError) as e:
            raise CniError(ERR_INVALID_ENV, "CAP_ARGS is not valid JSON", str(e)[:256]) from e
        if not isinstance(extra, dict):
            raise CniError(ERR_INVALID_ENV, "CAP_ARGS must be a JSON object")
        for key, value in extra.items():
            merged.setdefault(key, value)
    return merged


def _ci(obj: Mapping[str, Any], key: str) -> Any:
    """Case-insensitive lookup: containerd writes ``HostPort``, the convention ``hostPort``."""
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def _port_mappings(value: Any) -> tuple[PortMapping, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _cfg_err("runtimeConfig.portMappings must be a list")
    out = []
    for item in value:
        if not isinstance(item, Mapping):
            raise _cfg_err("runtimeConfig.portMappings entries must be objects")
        host_port = _ci(item, "hostPort")
        container_port = _ci(item, "containerPort")
        for name, port in (("hostPort", host_port), ("containerPort", container_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise _cfg_err(f"runtimeConfig.portMappings {name} must be a port number")
        protocol = _ci(item, "protocol") or "tcp"
        host_ip = _ci(item, "hostIP") or ""
        if not isinstance(protocol, str) or protocol.lower() not in _PROTOCOLS:
            raise _cfg_err("runtimeConfig.portMappings protocol must be tcp, udp or sctp")
        if not isinstance(host_ip, str):
            raise _cfg_err("runtimeConfig.portMappings hostIP must be a string")
        out.append(PortMapping(host_port, container_port, protocol.lower(), host_ip))
    return tuple(out)


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    bad = _cfg_err('args.cni.labels must be a list of {"key": ..., "value": ...} strings')
    if not isinstance(value, list):
        raise bad
    labels: dict[str, str] = {}
    for item in value:
        if not isinstance(item, Mapping):
            raise bad
        key, val = item.get("key"), item.get("value")
        if not isinstance(key, str) or not key or not isinstance(val, str):
            raise bad
        labels[key] = val
    return labels


def _named_ports(value: Any) -> tuple[NamedPort, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _cfg_err("args.l3fabric.ports must be a list")
    out = []
    for item in value:
        if not isinstance(item, Mapping):
            raise _cfg_err("args.l3fabric.ports entries must be objects")
        name, port = item.get("name"), item.get("port")
        protocol = item.get("protocol", "TCP")
        if not isinstance(name, str) or not name:
            raise _cfg_err("args.l3fabric.ports[].name must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise _cfg_err(f"args.l3fabric.ports[{name!r}].port must be a port number")
        if not isinstance(protocol, str) or protocol.lower() not in _PROTOCOLS:
            raise _cfg_err(f"args.l3fabric.ports[{name!r}].protocol must be TCP, UDP or SCTP")
        out.append(NamedPort(name, port, protocol.upper()))
    return tuple(out)


def _mtu(config: Mapping[str, Any]) -> int | None:
    mtu = _opt_int(config, "mtu", "network config", 0, 65535)
    if mtu is not None and 0 < mtu < 68:
        raise _cfg_err("network config 'mtu' must be 0 (auto) or at least 68")
    return mtu or None


def _attachments(config: Mapping[str, Any]) -> tuple[Attachment, ...] | None:
    """GC's list; libcni writes it under both keys (the spec renamed it, cni#1101)."""
    key = "cni.dev/valid-attachments"
    value = config.get(key)
    if value is None:
        key = "cni.dev/attachments"
        value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise _cfg_err(f"{key} must be a list")
    out = []
    for item in value:
        if not isinstance(item, Mapping):
            raise _cfg_err(f"{key} entries must be objects")
        cid, ifname = item.get("containerID"), item.get("ifname")
        if not isinstance(cid, str) or not cid or not isinstance(ifname, str):
            raise _cfg_err(f"{key} entries need string containerID and ifname")
        out.append(Attachment(cid, ifname))
    return tuple(out)
