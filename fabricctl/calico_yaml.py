"""Calico's YAML (``apiVersion: projectcalico.org/v3``) for ``fabricctl apply -f`` and
``delete -f``: the kinds l3fabric models the same way are mapped to ``l3fabric.io/v1``;
every field that would mean something l3fabric does not do is refused by name, never
dropped silently.

Mapped: IPPool, GlobalNetworkPolicy, HostEndpoint, FelixConfiguration, BGPPeer,
BGPConfiguration. Fields Calico writes that say "nothing special" (``ipipMode: Never``,
``vxlanMode: Never``, ``allowedUses`` with ``Workload``, empty ``profiles``, the
``default`` tier, ``preDNAT: false``...) are accepted and dropped. A FelixConfiguration
carries many Felix tunables: the ones l3fabric has no use for are dropped with one line
each on stderr (they tune Calico's own dataplane), the failsafe ports are kept. Any other
Calico kind is refused with a message that says to write it as ``l3fabric.io/v1``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from datastore.model import API_VERSION, ValidationError

log = logging.getLogger(__name__)

CALICO_API = "projectcalico.org/v3"

# Fields whose value says "nothing l3fabric would do differently": dropped when equal.
_NEUTRAL: dict[str, dict[str, tuple[Any, ...] | None]] = {
    "IPPool": {"ipipMode": ("Never", None), "vxlanMode": ("Never", None),
               "disableBGPExport": (False, None), "assignmentMode": ("Automatic", None)},
    "GlobalNetworkPolicy": {"tier": ("default", None), "preDNAT": (False, None),
                            "doNotTrack": (False, None), "serviceAccountSelector": ("", None),
                            "performanceHints": (None,)},
    "HostEndpoint": {"profiles": (None,), "ports": (None,)},
    "BGPPeer": {"keepOriginalNextHop": (False, None)},
    "BGPConfiguration": {"logSeverityScreen": None},  # any value: a log level
}

# FelixConfiguration fields l3fabric keeps; the rest tune Calico's dataplane.
_FELIX_KEPT = ("failsafeInboundHostPorts", "failsafeOutboundHostPorts")

_RULE_UNSUPPORTED = ("notProtocol", "notICMP", "ipVersion", "http", "metadata")
_ENTITY_UNSUPPORTED = ("serviceAccounts", "services")

Warn = Callable[[str], None]


def _refuse(path: str, message: str) -> ValidationError:
    return ValidationError(None, path, f"{message} (Calico {CALICO_API} mapped to {API_VERSION})")


def _neutral(kind: str, spec: dict[str, Any], path: str) -> dict[str, Any]:
    out = dict(spec)
    for name, harmless in _NEUTRAL.get(kind, {}).items():
        if name not in out:
            continue
        value = out.pop(name)
        if harmless is None or value in harmless or value in ([], {}):
            continue
        raise _refuse(f"{path}.{name}", f"{value!r} is not supported by l3fabric")
    return out


def _ippool(spec: dict[str, Any]) -> dict[str, Any]:
    uses = spec.pop("allowedUses", None)
    if uses is not None and "Workload" not in uses:
        raise _refuse("spec.allowedUses", f"{uses!r}: l3fabric pools are for workloads")
    return spec


def _rule(rule: Any, path: str) -> Any:
    if not isinstance(rule, dict):
        return rule
    out = dict(rule)
    for name in _RULE_UNSUPPORTED:
        if out.get(name) not in (None, [], {}):
            raise _refuse(f"{path}.{name}", "is not supported by l3fabric")
        out.pop(name, None)
    for side in ("source", "destination"):
        ent = out.get(side)
        if isinstance(ent, dict):
            ent = dict(ent)
            for name in _ENTITY_UNSUPPORTED:
                if ent.get(name) not in (None, [], {}):
                    raise _refuse(f"{path}.{side}.{name}", "is not supported by l3fabric")
                ent.pop(name, None)
            out[side] = ent
    return out


def _gnp(spec: dict[str, Any]) -> dict[str, Any]:
    for direction in ("ingress", "egress"):
        rules = spec.get(direction)
        if isinstance(rules, list):
            spec[direction] = [_rule(r, f"spec.{direction}[{i}]") for i, r in enumerate(rules)]
    return spec


def _felix(spec: dict[str, Any], warn: Warn) -> dict[str, Any]:
    out = {}
    for name, value in spec.items():
        if name in _FELIX_KEPT:
            ports = []
            for i, p in enumerate(value or []):
                if isinstance(p, dict) and p.get("net"):
                    raise _refuse(f"spec.{name}[{i}].net", "failsafe ports per network are "
                                  "not supported by l3fabric")
                ports.append({k: v for k, v in p.items() if k != "net"}
                             if isinstance(p, dict) else p)
            out[name] = ports
        else:
            warn(f"FelixConfiguration: spec.{name} tunes Calico's own dataplane; ignored")
    return out


def translate(doc: Any, warn: Warn) -> Any:
    """``doc`` with a Calico ``apiVersion`` mapped to l3fabric's; other documents as they
    are. Raises ValidationError naming the field l3fabric cannot honour."""
    if not isinstance(doc, dict) or doc.get("apiVersion") != CALICO_API:
        return doc
    kind = doc.get("kind")
    known = ("IPPool", "GlobalNetworkPolicy", "HostEndpoint", "FelixConfiguration", "BGPPeer",
             "BGPConfiguration")
    if kind not in known:
        raise ValidationError(
            None, "apiVersion", f"{CALICO_API} {kind} is not mapped by l3fabric: write it "
            f"with apiVersion: {API_VERSION} (docs/index.md; mapped kinds: {', '.join(known)})")
    spec = doc.get("spec")
    spec = dict(spec) if isinstance(spec, dict) else spec
    if isinstance(spec, dict):
        if kind == "FelixConfiguration":
            spec = _felix(spec, warn)
        else:
            spec = _neutral(str(kind), spec, "spec")
            if kind == "IPPool":
                spec = _ippool(spec)
            elif kind == "GlobalNetworkPolicy":
                spec = _gnp(spec)
            elif kind == "BGPConfiguration" and "nodeToNodeMeshEnabled" in spec:
                spec["nodeToNodeMesh"] = spec.pop("nodeToNodeMeshEnabled")
    out = {**doc, "apiVersion": API_VERSION}
    if spec is not None:
        out["spec"] = spec
    return out
