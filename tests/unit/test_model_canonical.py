"""The one-pass reading of a workload endpoint (`WorkloadEndpoint.from_canonical`, through
`model.decode_canonical_endpoint`) against the general reading (`from_dict` and the
key's cross-checks): what the one pass accepts, the general reading accepts and gives an
equal endpoint; what it declines goes the general way, so ``decode`` answers exactly as
before, errors included. Checked on the handler's forms and ~3,000 mutations of them."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from datastore import model
from datastore.model import codec
from datastore.model.workload import WorkloadEndpoint

KEY = "/l3fabric/v1/workloads/node-1/web.pod-a.eth0"

V4 = {
    "apiVersion": "l3fabric.io/v1",
    "kind": "WorkloadEndpoint",
    "metadata": {"name": "pod-a.eth0", "namespace": "web"},
    "spec": {
        "node": "node-1", "namespace": "web", "pod": "pod-a", "endpoint": "eth0",
        "containerID": "9550abfcee465d4a8ee1ccb0241ffe38",
        "ipNetworks": ["10.128.0.64/32"], "mac": "ee:ee:ee:ee:ee:ee",
        "hostInterface": "fab9550abfcee4",
        "labels": {"app": "web", "role": "frontend", "pod-template-hash": "01eef"},
    },
}

DUAL = copy.deepcopy(V4)
DUAL["metadata"]["labels"] = {"team": "a"}
DUAL["spec"]["ipNetworks"] = ["10.128.0.64/32", "fd00:10:128::40/128"]
DUAL["spec"]["ports"] = [{"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                         "protocol": "UDP"}]

BARE = copy.deepcopy(V4)  # no labels, no MAC, no host interface, no spec.namespace
for field in ("labels", "mac", "hostInterface", "namespace"):
    del BARE["spec"][field]


def _general(key: str, value: bytes) -> model.Resource | str:
    """``decode`` with the one pass switched off: the endpoint, or the error's text."""
    saved = codec.decode_canonical_endpoint
    codec.decode_canonical_endpoint = lambda k, v: None  # type: ignore[assignment]
    try:
        return model.decode(key, value)
    except model.ValidationError as e:
        return str(e)
    finally:
        codec.decode_canonical_endpoint = saved


def _decoded(key: str, value: bytes) -> model.Resource | str:
    try:
        return model.decode(key, value)
    except model.ValidationError as e:
        return str(e)


def _same(a: model.Resource | str, b: model.Resource | str) -> None:
    assert a == b
    if not isinstance(a, str):
        assert not isinstance(b, str)
        assert a.to_dict() == b.to_dict()
        assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())  # same order too
        assert [type(n) for n in a.spec.ip_networks] == [  # type: ignore[attr-defined]
            type(n) for n in b.spec.ip_networks]  # type: ignore[attr-defined]


@pytest.mark.parametrize("doc", [V4, DUAL, BARE], ids=["v4", "dual-ports", "bare"])
def test_the_handlers_forms_are_read_in_one_pass_as_the_general_reading_reads_them(
        doc: dict[str, Any]) -> None:
    value = json.dumps(doc).encode()
    fast = model.decode_canonical_endpoint(KEY, value)
    assert isinstance(fast, WorkloadEndpoint)
    _same(fast, _general(KEY, value))
    assert model.decode(KEY, value, revision=7).metadata.revision == 7


def test_what_the_cni_handler_writes_takes_the_one_pass() -> None:
    wep = model.decode(KEY, json.dumps(V4).encode())
    assert model.decode_canonical_endpoint(KEY, model.encode(wep)) == wep


# Values a field is set to by the mutations: wrong types, empty, bad names and addresses.
ODD: tuple[Any, ...] = (
    None, 0, 1.5, True, "", "x", "UPPER", "a.b", "a_b", "-a", "a-", "a" * 64, "a" * 254,
    [], {}, ["10.0.0.1/32"], "eth0", "pod-a", "web", "node-1", "pod-a.eth0",
    "10.0.0.1/32", "10.0.0.01/32", "10.0.0.256/32", "10.0.0.0/24", "10.0.0.1/24",
    "10.0.0.1", "10.0.0.1/032", " 10.0.0.1/32", "fd00::1/128", "fd00::1%eth0/128",
    "::ffff:1.2.3.4/128", "fd00::/64", "fd00::1/64", "1.2.3.4/128", "fd00:::1/128",
    "EE:EE:EE:EE:EE:EE", "ee:ee:ee:ee:ee", "ee-ee-ee-ee-ee-ee",
    {"a": "b"}, {"a": 1}, {"A/b": "c"}, {"ok": "-bad"}, {"": "x"}, {"k": "v" * 64},
    [{"name": "http", "port": 80}], [{"name": "http", "port": 0}], [{"port": 80}],
    [{"name": "http", "port": 80, "protocol": "ICMP"}], "l3fabric.io/v1", "v2",
    "WorkloadEndpoint", "NetworkPolicy",
)

SPEC_FIELDS = ("node", "namespace", "pod", "endpoint", "containerID", "ipNetworks", "mac",
               "hostInterface", "labels", "ports", "extra")
MD_FIELDS = ("name", "namespace", "labels", "annotations", "uid", "extra")
TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")


def _mutations(rng: random.Random) -> list[Callable[[dict[str, Any]], None]]:
    def set_in(where: Callable[[dict[str, Any]], Any], field: str, v: Any) -> Callable[
            [dict[str, Any]], None]:
        def f(d: dict[str, Any]) -> None:
            obj = where(d)
            if isinstance(obj, dict):
                obj[field] = copy.deepcopy(v)
        return f

    def drop_in(where: Callable[[dict[str, Any]], Any], field: str) -> Callable[
            [dict[str, Any]], None]:
        def f(d: dict[str, Any]) -> None:
            obj = where(d)
            if isinstance(obj, dict):
                obj.pop(field, None)
        return f

    def top(d: dict[str, Any]) -> Any:
        return d

    def md(d: dict[str, Any]) -> Any:
        return d.get("metadata")

    def spec(d: dict[str, Any]) -> Any:
        return d.get("spec")

    def net(d: dict[str, Any]) -> None:
        s = d.get("spec")
        if isinstance(s, dict):
            s["ipNetworks"] = [rng.choice([x for x in ODD if isinstance(x, str)])
                               for _ in range(rng.randint(0, 2))]

    out: list[Callable[[dict[str, Any]], None]] = [net]
    for where, fields in ((top, TOP_FIELDS), (md, MD_FIELDS), (spec, SPEC_FIELDS)):
        field = rng.choice(fields)
        out += [set_in(where, field, rng.choice(ODD)), drop_in(where, field)]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_mutated_endpoints_decode_exactly_as_the_general_reading_decodes_them(
        seed: int) -> None:
    rng = random.Random(seed)
    keys = (KEY, "/l3fabric/v1/workloads/node-2/web.pod-a.eth0",
            "/l3fabric/v1/workloads/node-1/db.pod-a.eth0",
            "/l3fabric/v1/workloads/node-1/web.pod-b.eth0",
            "/l3fabric/v1/workloads/node-1/web.pod-a.eth0/x",
            "/l3fabric/v1/workloads/node-1/web")
    one_pass = 0
    for _ in range(500):
        doc = copy.deepcopy(rng.choice((V4, DUAL, BARE)))
        for _ in range(rng.randint(1, 3)):
            rng.choice(_mutations(rng))(doc)
        key = rng.choice(keys) if rng.random() < 0.2 else KEY
        value = json.dumps(doc).encode()
        general = _general(key, value)
        fast = model.decode_canonical_endpoint(key, value)
        if fast is not None:
            one_pass += 1
            _same(fast, general)
        _same(_decoded(key, value), general)
    assert one_pass > 50  # the mutations leave many values in the handler's form


def test_values_that_are_not_json_objects_go_the_general_way() -> None:
    for value in (b"", b"[1]", b"\xff\xfe", b"{", b'"x"', b"1" * 2_000_000):
        assert model.decode_canonical_endpoint(KEY, value) is None
        _same(_decoded(KEY, value), _general(KEY, value))


@pytest.mark.parametrize("namespace,pod", [("n" * 63, "p"), ("n" * 64, "p"),
                                           ("web", "p" * 248), ("web", "p" * 249)])
def test_length_limits_hold_on_the_one_pass(namespace: str, pod: str) -> None:
    doc = copy.deepcopy(V4)
    doc["metadata"].update(name=f"{pod}.eth0", namespace=namespace)
    doc["spec"].update(pod=pod, namespace=namespace)
    key = f"/l3fabric/v1/workloads/node-1/{namespace}.{pod}.eth0"
    value = json.dumps(doc).encode()
    _same(_decoded(key, value), _general(key, value))
    assert isinstance(_general(key, value), str) == (len(namespace) > 63 or len(pod) > 248)
