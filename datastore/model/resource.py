"""The framing every kind shares: ``apiVersion``, ``kind``, ``metadata`` and one body.

Owned here: :class:`Metadata` (identity, labels, the revision read at), :class:`Resource`
(framing, validation entry point ``from_dict``, ``to_dict``) and :class:`SpecResource`, the
declarative base of the kinds whose body is a single ``spec``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from datastore.labelselector import (
    EMPTY_LABELS,
    FrozenMap,
    ValidationError,
    check_label_key,
    check_labels,
)
from datastore.model.fields import (
    _dns_label,
    _dns_subdomain,
    _Obj,
    _str,
)

log = logging.getLogger(__name__)

API_VERSION = "l3fabric.io/v1"


# --- metadata ----------------------------------------------------------------------------------

# Written by a Kubernetes API server; accepted so its output applies, then dropped.
_K8S_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
)


def _annotations(v: Any, path: str) -> FrozenMap[str]:
    o = _Obj(v, path, (), permissive=True)
    for k, val in o.value.items():
        check_label_key(k, o.at(k))
        _str(val, o.at(k))
    return FrozenMap(o.value)


@dataclass(frozen=True, slots=True)
class Metadata:
    """Identity and labels. ``revision`` is the etcd ``mod_revision`` the resource was read
    at; it is never stored, does not take part in equality, and is None for parsed files."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = EMPTY_LABELS
    annotations: Mapping[str, str] = EMPTY_LABELS
    revision: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Code that builds metadata by hand may pass dicts; keep the object hashable.
        for name in ("labels", "annotations"):
            value = getattr(self, name)
            if not isinstance(value, FrozenMap):
                object.__setattr__(self, name, FrozenMap(value))

    @classmethod
    def from_dict(cls, obj: Any, path: str, *, namespaced: bool) -> Metadata:
        o = _Obj(obj, path, ("name", "namespace", "labels", "annotations"), _K8S_SERVER_METADATA)
        name = o.req("name", _dns_subdomain)
        namespace: str | None = None
        if namespaced:
            namespace = sys.intern(o.get("namespace", _dns_label, "default"))
        elif o.has("namespace"):
            raise ValidationError(None, o.at("namespace"), "this kind is not namespaced")
        return cls(
            name=name,
            namespace=namespace,
            labels=check_labels(o.value.get("labels"), o.at("labels")),
            annotations=o.get("annotations", _annotations, EMPTY_LABELS),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


# --- resource base -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resource:
    """Base of every kind. Subclasses add one ``spec`` field (``status`` for NodeStatus)."""

    kind: ClassVar[str]
    api_versions: ClassVar[tuple[str, ...]] = (API_VERSION,)
    namespaced: ClassVar[bool] = False
    # The top-level field holding the body, and whether a document may leave it out.
    body_field: ClassVar[str] = "spec"
    body_required: ClassVar[bool] = True
    # Top-level fields accepted and dropped (Kubernetes ``status`` of k8s kinds).
    ignored_top: ClassVar[tuple[str, ...]] = ()

    metadata: Metadata

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Self:
        top = _Obj(obj, "", ("apiVersion", "kind", "metadata", cls.body_field), cls.ignored_top)
        api = top.req("apiVersion", _str)
        if api not in cls.api_versions:
            raise ValidationError(
                None,
                "apiVersion",
                f"{api!r} is not valid for {cls.kind} (use {' or '.join(cls.api_versions)})",
            )
        kind = top.req("kind", _str)
        if kind != cls.kind:
            raise ValidationError(None, "kind", f"expected {cls.kind!r}, got {kind!r}")
        md = top.req("metadata", lambda v, p: Metadata.from_dict(v, p, namespaced=cls.namespaced))
        body = obj.get(cls.body_field)
        if body is None:
            if cls.body_required:
                raise ValidationError(None, cls.body_field, "required")
            body = {}
        res = cls._build(md, body, cls.body_field)
        res._check()
        return res

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        raise NotImplementedError

    def _check(self) -> None:
        """Cross-checks between metadata and the body; subclasses override."""

    def _body(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def validated(self) -> Self:
        """This resource run through the same checks as ``from_dict``; for objects built in
        code (the CNI handler's WorkloadEndpoint, the agent's NodeStatus) before writing."""
        return self.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": self.api_versions[0],
            "kind": self.kind,
            "metadata": self.metadata.to_dict(),
        }
        body = self._body()
        if body is not None:
            out[self.body_field] = body
        return out


class _Spec(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=_Spec)


@dataclass(frozen=True)
class SpecResource(Resource, Generic[S]):
    """A kind whose body is one ``spec`` value and nothing else: ``spec_type.from_dict``
    reads it, its ``to_dict`` writes it. Kinds with more to say (a cross-check between
    metadata and spec, another body field) override ``_build``/``_check``/``_body``."""

    spec_type: ClassVar[type[Any]]
    spec: S

    @classmethod
    def _build(cls, metadata: Metadata, body: Any, path: str) -> Self:
        return cls(metadata, cls.spec_type.from_dict(body, path))

    def _body(self) -> dict[str, Any]:
        return self.spec.to_dict()
