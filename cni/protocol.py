"""The CNI protocol, pure: validate a call, render results and errors per spec version.

Owner: the agent-side CNI handler. The stdlib shims (:mod:`cni.shim`) forward the
runtime's environment and stdin untouched; the protocol turns them into a typed
:class:`CniRequest` or a :class:`CniError`, and turns the handler's :class:`Result`
back into the JSON shape of the caller's ``cniVersion``. It does no I/O and imports
only the standard library, so every rule is a unit test away.

Its rooms, each importable on its own: `cni.spec` (versions, commands, error codes, the
error object, JSON field readers), `cni.result` (results: render and parse) and
`cni.request` (validating a call: environment, network config, CNI_ARGS, runtime
capabilities). Import from here: ``from cni import protocol``.
"""

from cni.request import (
    KNOWN_CNI_ARGS,
    MIN_VERSION,
    REQUIRED_ENV,
    Attachment,
    CniRequest,
    NamedPort,
    PortMapping,
    normalize_mac,
    parse_cni_args,
    parse_request,
    validate_container_id,
    validate_ifname,
)
from cni.result import (
    DNS,
    Interface,
    IpamResult,
    IPConfig,
    Result,
    Route,
    convert_prev_result,
    format_result,
    parse_result,
)
from cni.spec import (
    COMMANDS,
    CURRENT_VERSION,
    ERR_DECODE,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_IO,
    ERR_PLUGIN_NOT_AVAILABLE,
    ERR_PLUGIN_NOT_AVAILABLE_LIMITED,
    ERR_TRY_AGAIN_LATER,
    ERR_UNKNOWN_CONTAINER,
    ERR_UNSUPPORTED_FIELD,
    SPEC_ERROR_CODES,
    SUPPORTED_VERSIONS,
    CniError,
    IPAddress,
    IPInterface,
    IPNetwork,
    error_json,
    is_supported,
    requested_version,
    version_response,
    version_tuple,
)

__all__ = [
    "COMMANDS",
    "CURRENT_VERSION",
    "DNS",
    "ERR_DECODE",
    "ERR_INCOMPATIBLE_VERSION",
    "ERR_INVALID_CONFIG",
    "ERR_INVALID_ENV",
    "ERR_IO",
    "ERR_PLUGIN_NOT_AVAILABLE",
    "ERR_PLUGIN_NOT_AVAILABLE_LIMITED",
    "ERR_TRY_AGAIN_LATER",
    "ERR_UNKNOWN_CONTAINER",
    "ERR_UNSUPPORTED_FIELD",
    "KNOWN_CNI_ARGS",
    "MIN_VERSION",
    "REQUIRED_ENV",
    "SPEC_ERROR_CODES",
    "SUPPORTED_VERSIONS",
    "Attachment",
    "CniError",
    "CniRequest",
    "IPAddress",
    "IPConfig",
    "IPInterface",
    "IPNetwork",
    "Interface",
    "IpamResult",
    "NamedPort",
    "PortMapping",
    "Result",
    "Route",
    "convert_prev_result",
    "error_json",
    "format_result",
    "is_supported",
    "normalize_mac",
    "parse_cni_args",
    "parse_request",
    "parse_result",
    "requested_version",
    "validate_container_id",
    "validate_ifname",
    "version_response",
    "version_tuple",
]
