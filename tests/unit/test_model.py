"""The resource model: validation of every kind, framing, round-trips, keys and the etcd codec."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from datastore import keys
from datastore.calico_selector import All, Eq, parse_selector
from datastore.labelselector import LabelSelector
from datastore.model import (
    ALIASES,
    DEFAULT_MAX_PREFIXES,
    KINDS,
    MAX_VALUE_BYTES,
    BGPConfiguration,
    BGPPeer,
    GlobalNetworkPolicy,
    IPAMConfig,
    IPPool,
    IPReservation,
    Metadata,
    Namespace,
    NetworkPolicy,
    Node,
    NodeStatus,
    PortMatch,
    Resource,
    ValidationError,
    WorkloadEndpoint,
    WorkloadEndpointSpec,
    decode,
    encode,
    key_for,
    key_prefix_for_kind,
    parse_document,
    resolve_kind,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def doc(kind: str, name: str, spec: Any = None, **extra: Any) -> dict[str, Any]:
    cls = KINDS[kind]
    out: dict[str, Any] = {"apiVersion": cls.api_versions[0], "kind": kind,
                           "metadata": {"name": name, **extra}}
    if spec is not None:
        out[cls.body_field] = spec
    return out


def reject(obj: dict[str, Any], path: str, fragment: str) -> ValidationError:
    with pytest.raises(ValidationError) as exc:
        parse_document(obj)
    assert exc.value.path == path, str(exc.value)
    assert fragment in exc.value.message, str(exc.value)
    return exc.value


# One valid sample per kind, used for round-trip, codec and key tests.
SAMPLES: list[dict[str, Any]] = [
    doc("IPPool", "default", {"cidr": "10.244.0.0/16", "blockSize": 26}),
    doc("IPPool", "v6", {"cidr": "fd00:244::/56", "nodeSelector": "rack in {'r1', 'r2'}"}),
    doc("IPAMConfig", "default", {"strictAffinity": True, "maxBlocksPerHost": 4}),
    doc("BGPConfiguration", "default", {"communities": ["64512:100"], "holdTime": 0,
                                        "maxPrefixes": 20_000}),
    doc("BGPPeer", "tor", {"peerIP": "10.99.1.2", "asNumber": 65000, "node": "node1",
                           "password": "s3cret", "localASNumber": 64999, "maxPrefixes": 50}),
    doc("BGPPeer", "rr", {"peerIP": "fd00::1", "asNumber": 64512, "nodeSelector": "has(rr)",
                          "routeReflectorClient": True, "ttlSecurity": 255}),
    doc("Node", "node1", {"bgp": {"ipv4Address": "10.77.1.1/30", "ipv6Address": "fd00:77::1/64",
                                  "asNumber": 65001, "routeReflectorClusterID": "224.0.0.1"}},
        labels={"rack": "r1", "topology.kubernetes.io/zone": "z1"}),
    doc("Node", "bare"),
    {"apiVersion": "v1", "kind": "Namespace",
     "metadata": {"name": "prod", "labels": {"env": "prod"}, "annotations": {"a/b": "any text"}}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "deny", "namespace": "prod"}, "spec": {"podSelector": {}}},
    doc("GlobalNetworkPolicy", "gnp", {
        "order": 10.5, "selector": "app == 'web'", "namespaceSelector": "env == 'prod'",
        "types": ["Ingress", "Egress"],
        "ingress": [{"action": "Allow", "protocol": "TCP",
                     "source": {"nets": ["10.0.0.0/8"], "notNets": ["10.1.0.0/16"],
                                "notSelector": "bad == 'true'"},
                     "destination": {"ports": [80, "8000:8080", "http"], "notPorts": [8081]}},
                    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                    {"action": "Log"}, {"action": "Deny", "protocol": 47}],
        "egress": [{"action": "Pass"}]}),
    {"apiVersion": "l3fabric.io/v1", "kind": "WorkloadEndpoint",
     "metadata": {"name": "web-1.eth0", "namespace": "prod"},
     "spec": {"node": "node1", "namespace": "prod", "pod": "web-1", "endpoint": "eth0",
              "containerID": "abc123", "ipNetworks": ["10.244.1.5/32", "fd00:244::5/128"],
              "mac": "EE:EE:EE:EE:EE:EE", "hostInterface": "fab0123456789a",
              "labels": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]}},
    doc("IPPool", "nat", {"cidr": "10.245.0.0/16", "natOutgoing": True}),
    doc("FelixConfiguration", "default", {"nonMasqueradeCIDRs": ["10.0.0.0/8"],
                                          "failsafeInboundHostPorts": [{"protocol": "TCP",
                                                                        "port": 22}]}),
    doc("HostEndpoint", "node1-eth0", {"node": "node1", "interfaceName": "eth0",
                                       "expectedIPs": ["10.77.1.1"]}, labels={"role": "host"}),
    doc("HostEndpoint", "node1-all", {"node": "node1", "interfaceName": "*"}),
    doc("StagedNetworkPolicy", "lockdown", {"podSelector": {}, "policyTypes": ["Ingress"]},
        namespace="prod"),
    doc("StagedGlobalNetworkPolicy", "no-telnet", {
        "selector": "all()", "ingress": [{"action": "Deny", "protocol": "TCP",
                                          "destination": {"ports": [23]}}]}),
    doc("IPReservation", "gw", {"reservedCIDRs": ["10.244.0.1", "10.244.0.128/25"]}),
    doc("NodeStatus", "node1", {"updated": "2024-01-01T00:00:00Z", "inSync": True,
                                "bgp": {"peers": [{"peerIP": "10.99.1.2", "state": "Established",
                                                   "prefixesIn": 3, "maxPrefixes": 50,
                                                   "future": "x"}]},
                                "blocks": ["10.244.1.0/26"], "programmed": {"routes": 4},
                                "errors": ["policies/x/y: spec: bad"], "newField": 1}),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_round_trip(obj: dict[str, Any]) -> None:
    res = parse_document(obj)
    assert type(res).from_dict(res.to_dict()) == res
    assert parse_document(json.loads(encode(res))) == res
    assert hash(res) == hash(type(res).from_dict(res.to_dict()))
    assert decode(key_for(res), encode(res)) == res


def test_every_kind_has_a_sample_and_an_alias() -> None:
    assert {o["kind"] for o in SAMPLES} == set(KINDS)
    for cli in ("ippool", "ippools", "bgpconfig", "bgpconfiguration", "bgppeer", "node",
                "namespace", "ns", "networkpolicy", "netpol", "globalnetworkpolicy", "gnp",
                "workloadendpoint", "wep", "ipreservation", "ipamconfig", "nodestatus",
                "hostendpoint", "hep", "felixconfiguration", "snp", "sgnp",
                "stagednetworkpolicy", "stagedglobalnetworkpolicies"):
        assert ALIASES[cli] in KINDS
    assert resolve_kind("GNP") is GlobalNetworkPolicy
    with pytest.raises(KeyError):
        resolve_kind("pods")


def test_class_attributes() -> None:
    assert NetworkPolicy.namespaced and WorkloadEndpoint.namespaced
    assert not IPPool.namespaced and not Namespace.namespaced
    assert NetworkPolicy.api_versions == ("networking.k8s.io/v1",)
    assert "v1" in Namespace.api_versions and "l3fabric.io/v1" in Namespace.api_versions
    for cls in KINDS.values():
        if cls not in (NetworkPolicy, Namespace):
            assert cls.api_versions == ("l3fabric.io/v1",)


def test_encode_is_compact_json() -> None:
    res = parse_document(SAMPLES[0])
    raw = encode(res)
    assert b" " not in raw and b"\n" not in raw
    assert json.loads(raw)["spec"] == {"cidr": "10.244.0.0/16", "blockSize": 26,
                                       "nodeSelector": "all()", "disabled": False}


# --- IPPool ----------------------------------------------------------------------------------


def test_ippool_defaults() -> None:
    v4 = parse_document(doc("IPPool", "p", {"cidr": "10.244.0.0/16"}))
    v6 = parse_document(doc("IPPool", "p", {"cidr": "fd00::/48"}))
    assert isinstance(v4, IPPool) and isinstance(v6, IPPool)
    assert v4.spec.block_size == 26 and v6.spec.block_size == 122
    assert v4.spec.node_selector == All() and v4.spec.disabled is False
    assert v4.spec.cidr == ipaddress.ip_network("10.244.0.0/16")


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"cidr": "10.244.0.0/16", "blockSize": 33}, "spec.blockSize",
         "33 is not between 20 and 32"),
        ({"cidr": "10.244.0.0/16", "blockSize": 19}, "spec.blockSize", "not between 20 and 32"),
        ({"cidr": "10.244.0.0/24", "blockSize": 22}, "spec.blockSize", "prefix length"),
        ({"cidr": "fd00::/48", "blockSize": 115}, "spec.blockSize", "between 116 and 128"),
        ({"cidr": "fd00::/120", "blockSize": 118}, "spec.blockSize", "prefix length"),
        ({"cidr": "10.244.0.1/16"}, "spec.cidr", "host bits set (the network is 10.244.0.0/16)"),
        ({"cidr": "10.244.0.0"}, "spec.cidr", "not a CIDR"),
        ({"cidr": "10.244.0.0/255.255.0.0"}, "spec.cidr", "not a valid CIDR"),
        ({"cidr": "10.300.0.0/16"}, "spec.cidr", "not a valid CIDR"),
        ({"cidr": 10}, "spec.cidr", "expected a string, got int"),
        ({}, "spec.cidr", "required"),
        ({"cidr": "10.0.0.0/8", "blockSize": "26"}, "spec.blockSize",
         "expected an int, got string"),
        ({"cidr": "10.0.0.0/8", "blockSize": True}, "spec.blockSize", "expected an int, got bool"),
        ({"cidr": "10.0.0.0/8", "disabled": "no"}, "spec.disabled", "expected a bool"),
        ({"cidr": "10.0.0.0/8", "nodeSelector": "rack =="}, "spec.nodeSelector", "at column 8"),
        ({"cidr": "10.0.0.0/8", "natOutgoing": "yes"}, "spec.natOutgoing", "expected a bool"),
        ({"cidr": "10.0.0.0/8", "ipipMode": "Always"}, "spec.ipipMode", "unknown field"),
    ],
)
def test_ippool_rejects(spec: dict[str, Any], path: str, fragment: str) -> None:
    reject(doc("IPPool", "default", spec), path, fragment)


def test_error_text_names_relative_key() -> None:
    value = json.dumps(doc("IPPool", "default", {"cidr": "10.244.0.0/16", "blockSize": 33}))
    with pytest.raises(ValidationError) as exc:
        decode(keys.ippool("default"), value.encode())
    assert str(exc.value) == "config/ippools/default: spec.blockSize: 33 is not between 20 and 32"
    assert exc.value.key == "config/ippools/default"


# --- framing and metadata --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d.pop("apiVersion"), "apiVersion", "required"),
        (lambda d: d.update(apiVersion="v2"), "apiVersion", "not valid for IPPool"),
        (lambda d: d.update(kind="IPPools"), "kind", "unknown kind"),
        (lambda d: d.pop("kind"), "kind", "required"),
        (lambda d: d.pop("metadata"), "metadata", "required"),
        (lambda d: d.pop("spec"), "spec", "required"),
        (lambda d: d.update(status={}), "status", "unknown field"),
        (lambda d: d.update(metadata=[]), "metadata", "expected an object, got list"),
        (lambda d: d["metadata"].pop("name"), "metadata.name", "required"),
        (lambda d: d["metadata"].update(name="Default"), "metadata.name", "DNS-1123"),
        (lambda d: d["metadata"].update(name="a_b"), "metadata.name", "DNS-1123"),
        (lambda d: d["metadata"].update(name="-a"), "metadata.name", "DNS-1123"),
        (lambda d: d["metadata"].update(name="a" * 254), "metadata.name", "253"),
        (lambda d: d["metadata"].update(namespace="x"), "metadata.namespace", "not namespaced"),
        (lambda d: d["metadata"].update(labels={"a": 1}), "metadata.labels.a", "expected a string"),
        (lambda d: d["metadata"].update(labels={"a/b/c": "x"}), "metadata.labels.a/b/c", "prefix"),
        (lambda d: d["metadata"].update(labels={"k": "v v"}), "metadata.labels.k", "label value"),
        (lambda d: d["metadata"].update(labels=["a"]), "metadata.labels", "expected an object"),
        (lambda d: d["metadata"].update(annotations={"x": 1}), "metadata.annotations.x", "string"),
        (lambda d: d["metadata"].update(generateName="x"), "metadata.generateName", "unknown"),
    ],
)
def test_framing_rejects(mutate: Any, path: str, fragment: str) -> None:
    obj = copy.deepcopy(SAMPLES[0])
    mutate(obj)
    reject(obj, path, fragment)


def test_parse_document_of_non_object() -> None:
    with pytest.raises(ValidationError, match="expected an object, got list"):
        parse_document([1])


def test_metadata_revision_is_not_compared_or_stored() -> None:
    res = parse_document(SAMPLES[0])
    got = decode(key_for(res), encode(res), revision=42)
    assert got.metadata.revision == 42
    assert got == res
    assert "revision" not in json.loads(encode(got))["metadata"]


# --- IPAMConfig, IPReservation ---------------------------------------------------------------


def test_ipam_config_defaults_and_name() -> None:
    res = parse_document(doc("IPAMConfig", "default"))
    assert isinstance(res, IPAMConfig)
    assert (res.spec.strict_affinity, res.spec.max_blocks_per_host,
            res.spec.release_cooldown_seconds) == (False, 0, 0)
    assert key_for(res) == keys.full("ipam/config")
    reject(doc("IPAMConfig", "other"), "metadata.name", "must be named 'default'")
    reject(doc("IPAMConfig", "default", {"maxBlocksPerHost": -1}), "spec.maxBlocksPerHost",
           "not between")


def test_ipreservation_normalises_bare_addresses() -> None:
    res = parse_document(SAMPLES[-2])
    assert isinstance(res, IPReservation)
    assert [str(n) for n in res.spec.reserved_cidrs] == ["10.244.0.1/32", "10.244.0.128/25"]
    reject(doc("IPReservation", "r", {}), "spec.reservedCIDRs", "required")
    reject(doc("IPReservation", "r", {"reservedCIDRs": ["10.0.0.1/8"]}),
           "spec.reservedCIDRs[0]", "host bits")


# --- BGP -------------------------------------------------------------------------------------


def test_bgp_configuration_defaults() -> None:
    res = parse_document(doc("BGPConfiguration", "default"))
    assert isinstance(res, BGPConfiguration)
    s = res.spec
    assert (s.as_number, s.node_to_node_mesh, s.hold_time) == (64512, True, 90)
    assert s.graceful_restart.enabled is False and s.communities == ()
    assert s.max_prefixes == DEFAULT_MAX_PREFIXES == 10_000
    assert res.to_dict()["spec"]["maxPrefixes"] == 10_000
    conf = parse_document(SAMPLES[3])
    assert isinstance(conf, BGPConfiguration) and conf.spec.max_prefixes == 20_000


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"asNumber": 0}, "spec.asNumber", "between 1 and 4294967295"),
        ({"asNumber": 4294967296}, "spec.asNumber", "between 1 and 4294967295"),
        ({"holdTime": 2}, "spec.holdTime", "0 or between 3 and 65535"),
        ({"holdTime": 65536}, "spec.holdTime", "0 or between 3 and 65535"),
        ({"nodeToNodeMesh": "false"}, "spec.nodeToNodeMesh", "expected a bool, got string"),
        ({"gracefulRestart": {"enabled": True, "restartTime": 0}},
         "spec.gracefulRestart.restartTime", "between 1 and 4095"),
        ({"gracefulRestart": {"enable": True}}, "spec.gracefulRestart.enable", "unknown field"),
        ({"communities": ["65536:1"]}, "spec.communities[0]", "community"),
        ({"communities": ["100"]}, "spec.communities[0]", "community"),
        ({"communities": "1:2"}, "spec.communities", "expected a list"),
        ({"maxPrefixes": 0}, "spec.maxPrefixes", "0 is not between 1 and 1000000"),
        ({"maxPrefixes": 1_000_001}, "spec.maxPrefixes", "between 1 and 1000000"),
        ({"maxPrefixes": "10000"}, "spec.maxPrefixes", "expected an int, got string"),
    ],
)
def test_bgp_configuration_rejects(spec: dict[str, Any], path: str, fragment: str) -> None:
    reject(doc("BGPConfiguration", "default", spec), path, fragment)


def test_bgp_peer_fields() -> None:
    res = parse_document(SAMPLES[4])
    assert isinstance(res, BGPPeer)
    assert res.spec.peer_ip == ipaddress.ip_address("10.99.1.2")
    assert res.spec.node == "node1" and res.spec.node_selector is None
    assert res.spec.ttl_security == 0 and res.spec.route_reflector_client is False
    assert res.spec.max_prefixes == 50 and res.to_dict()["spec"]["maxPrefixes"] == 50
    rr = parse_document(SAMPLES[5])
    assert isinstance(rr, BGPPeer) and rr.spec.node_selector is not None
    assert rr.spec.node_selector.matches({"rr": ""})
    # No maxPrefixes: the BGPConfiguration's applies; to_dict does not invent one.
    assert rr.spec.max_prefixes is None and "maxPrefixes" not in rr.to_dict()["spec"]


@pytest.mark.parametrize("value", [1, 50, 10_000, 1_000_000, 50.0])
def test_bgp_peer_max_prefixes_round_trips(value: Any) -> None:
    res = parse_document(doc("BGPPeer", "p", {"peerIP": "10.0.0.1", "asNumber": 1,
                                              "maxPrefixes": value}))
    assert isinstance(res, BGPPeer) and res.spec.max_prefixes == int(value)
    assert type(res.spec.max_prefixes) is int
    assert res.to_dict()["spec"]["maxPrefixes"] == int(value)
    assert BGPPeer.from_dict(res.to_dict()) == res
    assert decode(key_for(res), encode(res)) == res


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"asNumber": 65000}, "spec.peerIP", "required"),
        ({"peerIP": "10.99.1.2"}, "spec.asNumber", "required"),
        ({"peerIP": "10.99.1.300", "asNumber": 1}, "spec.peerIP", "not a valid IP address"),
        ({"peerIP": "10.99.1.0/24", "asNumber": 1}, "spec.peerIP", "not a valid IP address"),
        ({"peerIP": "fe80::1%eth0", "asNumber": 1}, "spec.peerIP", "zone"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "node": "n1", "nodeSelector": "all()"},
         "spec.nodeSelector", "together with node"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "ttlSecurity": 256},
         "spec.ttlSecurity", "0 and 255"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "localASNumber": 0},
         "spec.localASNumber", "between"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "password": {"secretRef": "x"}},
         "spec.password", "expected a string, got object"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "node": "Node_1"}, "spec.node", "DNS-1123"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "nodeSelector": "a = 'b'"},
         "spec.nodeSelector", "invalid selector"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "maxPrefixes": 0},
         "spec.maxPrefixes", "0 is not between 1 and 1000000"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "maxPrefixes": -5},
         "spec.maxPrefixes", "-5 is not between 1 and 1000000"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "maxPrefixes": 1_000_001},
         "spec.maxPrefixes", "1000001 is not between 1 and 1000000"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "maxPrefixes": "50"},
         "spec.maxPrefixes", "expected an int, got string"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "maxPrefixes": True},
         "spec.maxPrefixes", "expected an int, got bool"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "maxPrefixes": 50.5},
         "spec.maxPrefixes", "expected an int"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "maxPrefix": 50},
         "spec.maxPrefix", "unknown field"),
    ],
)
def test_bgp_peer_rejects(spec: dict[str, Any], path: str, fragment: str) -> None:
    reject(doc("BGPPeer", "p", spec), path, fragment)


# --- Node, Namespace -------------------------------------------------------------------------


def test_node_fields() -> None:
    res = parse_document(SAMPLES[6])
    assert isinstance(res, Node) and res.spec.bgp is not None
    assert res.spec.bgp.ipv4_address.ip == ipaddress.ip_address("10.77.1.1")
    assert res.spec.bgp.ipv4_address.network == ipaddress.ip_network("10.77.1.0/30")
    assert res.spec.bgp.route_reflector_cluster_id == ipaddress.ip_address("224.0.0.1")
    assert res.metadata.labels["rack"] == "r1"
    bare = parse_document(doc("Node", "bare"))
    assert isinstance(bare, Node) and bare.spec.bgp is None


@pytest.mark.parametrize(
    ("bgp", "path", "fragment"),
    [
        ({"ipv4Address": "10.77.1.1"}, "spec.bgp.ipv4Address", "CIDR form like 10.77.1.1/30"),
        ({"ipv4Address": "10.77.1.1/33"}, "spec.bgp.ipv4Address", "not a valid address"),
        ({"ipv4Address": "fd00::1/64"}, "spec.bgp.ipv4Address", "not an IPv4 address"),
        ({"ipv4Address": "10.77.1.1/30", "ipv6Address": "10.0.0.1/8"},
         "spec.bgp.ipv6Address", "not an IPv6 address"),
        ({"ipv6Address": "fd00::1/64"}, "spec.bgp.ipv4Address", "required"),
        ({"ipv4Address": "10.77.1.1/30", "asNumber": -1}, "spec.bgp.asNumber", "between"),
        ({"ipv4Address": "10.77.1.1/30", "routeReflectorClusterID": "1.2.3"},
         "spec.bgp.routeReflectorClusterID", "dotted-quad"),
        ({"ipv4Address": "10.77.1.1/30", "ipv4address": "x"}, "spec.bgp.ipv4address", "unknown"),
    ],
)
def test_node_rejects(bgp: dict[str, Any], path: str, fragment: str) -> None:
    reject(doc("Node", "n1", {"bgp": bgp}), path, fragment)


def test_namespace_effective_labels() -> None:
    res = parse_document(SAMPLES[8])
    assert isinstance(res, Namespace)
    assert dict(res.effective_labels) == {"env": "prod", "kubernetes.io/metadata.name": "prod"}
    assert "kubernetes.io/metadata.name" not in res.metadata.labels
    # The implied label wins over a stored one, as the API server enforces.
    lying = doc("Namespace", "prod", labels={"kubernetes.io/metadata.name": "other"})
    ns = parse_document(lying)
    assert isinstance(ns, Namespace)
    assert ns.effective_labels["kubernetes.io/metadata.name"] == "prod"


def test_namespace_accepts_kubernetes_manifest() -> None:
    res = parse_document({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": "prod", "uid": "u", "resourceVersion": "1"},
                          "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    assert res == parse_document(doc("Namespace", "prod"))
    reject(doc("Namespace", "a.b"), "metadata.name", "DNS-1123 label")
    reject({**doc("Namespace", "x"), "spec": {"finalizer": []}}, "spec.finalizer", "unknown")


# --- GlobalNetworkPolicy ---------------------------------------------------------------------


def test_gnp_fields() -> None:
    res = parse_document(SAMPLES[10])
    assert isinstance(res, GlobalNetworkPolicy)
    s = res.spec
    assert s.order == 10.5
    assert s.selector == Eq("app", "web")
    assert s.namespace_selector == parse_selector("env == 'prod'")
    rule = s.ingress[0]
    assert rule.action == "Allow" and rule.protocol == "TCP"
    assert rule.destination.ports == (PortMatch(80, 80), PortMatch(8000, 8080),
                                      PortMatch(name="http"))
    assert rule.destination.not_ports == (PortMatch(8081, 8081),)
    assert rule.source.nets == (ipaddress.ip_network("10.0.0.0/8"),)
    assert rule.source.selector is None
    assert rule.source.not_selector == Eq("bad", "true")
    assert s.ingress[1].icmp is not None and s.ingress[1].icmp.type == 8
    assert s.ingress[3].protocol == 47


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, ("Ingress",)),
        ({"ingress": [{"action": "Allow"}]}, ("Ingress",)),
        ({"egress": [{"action": "Allow"}]}, ("Egress",)),
        ({"ingress": [{"action": "Allow"}], "egress": [{"action": "Deny"}]}, ("Ingress", "Egress")),
        ({"types": ["Egress", "Ingress"]}, ("Ingress", "Egress")),
    ],
)
def test_gnp_effective_types(spec: dict[str, Any], types: tuple[str, ...]) -> None:
    res = parse_document(doc("GlobalNetworkPolicy", "g", spec))
    assert isinstance(res, GlobalNetworkPolicy)
    assert res.spec.effective_types == types


def test_gnp_order_none_and_empty_selectors() -> None:
    res = parse_document(doc("GlobalNetworkPolicy", "g", {
        "selector": "", "ingress": [{"action": "Allow", "source": {"selector": ""}}]}))
    assert isinstance(res, GlobalNetworkPolicy)
    assert res.spec.order is None and res.spec.selector == All()
    assert res.spec.ingress[0].source.selector is None


def _rule(**kw: Any) -> dict[str, Any]:
    return doc("GlobalNetworkPolicy", "g", {"ingress": [{"action": "Allow", **kw}]})


@pytest.mark.parametrize(
    ("obj", "path", "fragment"),
    [
        (_rule(action="Reject"), "spec.ingress[0].action", "not one of Allow, Deny, Log, Pass"),
        (doc("GlobalNetworkPolicy", "g", {"ingress": [{}]}), "spec.ingress[0].action", "required"),
        (_rule(protocol="tcp"), "spec.ingress[0].protocol", "not one of"),
        (_rule(protocol=256), "spec.ingress[0].protocol", "between 1 and 255"),
        (_rule(protocol="ICMP", destination={"ports": [80]}),
         "spec.ingress[0].destination.ports", "requires protocol TCP, UDP or SCTP"),
        (_rule(destination={"notPorts": [80]}),
         "spec.ingress[0].destination.notPorts", "requires protocol"),
        (_rule(protocol="TCP", icmp={"type": 8}), "spec.ingress[0].icmp", "requires protocol ICMP"),
        (_rule(protocol="ICMP", icmp={"code": 0}), "spec.ingress[0].icmp.code", "without type"),
        (_rule(protocol="ICMP", icmp={"type": 255}), "spec.ingress[0].icmp.type", "0 and 254"),
        (_rule(protocol="TCP", destination={"ports": ["90:80"]}),
         "spec.ingress[0].destination.ports[0]", "greater than last"),
        (_rule(protocol="TCP", destination={"ports": ["1:70000"]}),
         "spec.ingress[0].destination.ports[0]", "between 1 and 65535"),
        (_rule(protocol="TCP", destination={"ports": ["80:"]}),
         "spec.ingress[0].destination.ports[0]", "port range"),
        (_rule(protocol="TCP", destination={"ports": ["HTTP"]}),
         "spec.ingress[0].destination.ports[0]", "port name"),
        (_rule(source={"nets": ["10.0.0.1/8"]}), "spec.ingress[0].source.nets[0]", "host bits"),
        (_rule(source={"notNets": ["bogus"]}), "spec.ingress[0].source.notNets[0]", "not a valid"),
        (_rule(source={"selector": "a == "}), "spec.ingress[0].source.selector", "column"),
        (_rule(source={"serviceAccounts": {}}),
         "spec.ingress[0].source.serviceAccounts", "unknown"),
        (doc("GlobalNetworkPolicy", "g", {"order": "1"}), "spec.order", "expected a number"),
        (doc("GlobalNetworkPolicy", "g", {"types": ["ingress"]}), "spec.types[0]", "not one of"),
        (doc("GlobalNetworkPolicy", "g", {"types": ["Ingress"], "egress": [{"action": "Deny"}]}),
         "spec.egress", "Egress is not in types"),
    ],
)
def test_gnp_rejects(obj: dict[str, Any], path: str, fragment: str) -> None:
    reject(obj, path, fragment)


# --- WorkloadEndpoint, NodeStatus ------------------------------------------------------------


def test_workload_endpoint_fields_and_key() -> None:
    res = parse_document(SAMPLES[11])
    assert isinstance(res, WorkloadEndpoint)
    assert res.spec.mac == "ee:ee:ee:ee:ee:ee"
    assert res.spec.labels["app"] == "web"
    assert res.spec.ports[0].protocol == "TCP"
    assert key_for(res) == keys.workload("node1", "prod", "web-1", "eth0")
    parsed = keys.parse(key_for(res))
    assert parsed is not None and parsed.name == res.metadata.name


def _wep(**spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(SAMPLES[11])
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize(
    ("obj", "path", "fragment"),
    [
        (_wep(namespace="other"), "spec.namespace", "does not match metadata.namespace"),
        (_wep(pod="web-2"), "metadata.name", "must be <pod>.<endpoint>"),
        (_wep(endpoint="eth0.100"), "spec.endpoint", "interface name"),
        (_wep(hostInterface="x" * 16), "spec.hostInterface", "interface name"),
        (_wep(mac="ee:ee"), "spec.mac", "MAC address"),
        (_wep(ipNetworks=["10.244.1.5"]), "spec.ipNetworks[0]", "not a CIDR"),
        (_wep(ports=[{"name": "http", "port": 0}]), "spec.ports[0].port", "between"),
        (_wep(labels={"app": "a b"}), "spec.labels.app", "label value"),
        (_wep(containerID=""), "spec.containerID", "must not be empty"),
    ],
)
def test_workload_endpoint_rejects(obj: dict[str, Any], path: str, fragment: str) -> None:
    reject(obj, path, fragment)


def test_node_status_is_permissive_but_typed() -> None:
    res = parse_document(SAMPLES[-1])
    assert isinstance(res, NodeStatus)
    assert res.status.bgp_peers[0].state == "Established"
    assert res.status.bgp_peers[0].prefixes_in == 3
    assert res.status.bgp_peers[0].max_prefixes == 50
    assert res.status.programmed["routes"] == 4
    assert res.status.in_sync is True
    reject(doc("NodeStatus", "n", {"programmed": {"routes": "4"}}), "status.programmed.routes",
           "expected an int")
    reject(doc("NodeStatus", "n", {"bgp": {"peers": [{"state": "up"}]}}),
           "status.bgp.peers[0].peerIP", "required")


# --- keys ------------------------------------------------------------------------------------


def test_key_for_and_prefixes() -> None:
    keyed = {o["kind"] + "/" + o["metadata"]["name"]: key_for(parse_document(o)) for o in SAMPLES}
    assert keyed["IPPool/default"] == "/l3fabric/v1/config/ippools/default"
    assert keyed["NetworkPolicy/deny"] == "/l3fabric/v1/policies/prod/deny"
    assert keyed["BGPConfiguration/default"] == "/l3fabric/v1/config/bgp/default"
    assert keyed["NodeStatus/node1"] == "/l3fabric/v1/status/nodes/node1"
    for obj in SAMPLES:
        res = parse_document(obj)
        assert key_for(res).startswith(key_prefix_for_kind(res.kind, res.metadata.namespace))
        assert key_for(res).startswith(key_prefix_for_kind(res.kind))
    assert key_prefix_for_kind("netpol", "prod") == "/l3fabric/v1/policies/prod/"
    assert key_prefix_for_kind("NetworkPolicy") == "/l3fabric/v1/policies/"


# --- decode ----------------------------------------------------------------------------------

POOL_KEY = keys.ippool("default")


def decode_error(key: str, value: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as exc:
        decode(key, value)
    return exc.value


def test_decode_truncated_json() -> None:
    full = encode(parse_document(SAMPLES[0]))
    err = decode_error(POOL_KEY, full[:40])
    assert err.key == "config/ippools/default"
    assert str(err).startswith("config/ippools/default: invalid JSON: ")
    assert "line 1 column" in err.message


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        (b"", "", "invalid JSON"),
        (b"[1, 2]", "", "expected a JSON object, got list"),
        (b'"IPPool"', "", "expected a JSON object, got string"),
        (b"\xff\xfe{}", "", "not UTF-8"),
        (b"{" * 100000, "", "invalid JSON"),
        (json.dumps(doc("IPPool", "default", {"cidr": 10})).encode(), "spec.cidr",
         "expected a string, got int"),
        (json.dumps(doc("IPPool", "default", {"cidr": "10.0.0.0/8", "bs": 1})).encode(),
         "spec.bs", "unknown field"),
        (json.dumps(doc("IPPool", "default", {"cidr": "10.0.0.0/33"})).encode(), "spec.cidr",
         "not a valid CIDR"),
        (json.dumps(doc("Node", "default")).encode(), "kind",
         "'Node' does not match the key, which holds IPPool"),
        (json.dumps(doc("IPPool", "other", {"cidr": "10.0.0.0/8"})).encode(), "metadata.name",
         "does not match the key's name 'default'"),
    ],
)
def test_decode_rejects(value: bytes, path: str, fragment: str) -> None:
    err = decode_error(POOL_KEY, value)
    assert err.key == "config/ippools/default"
    assert err.path == path, str(err)
    assert fragment in err.message, str(err)


def test_decode_rejects_huge_values_without_parsing() -> None:
    err = decode_error(POOL_KEY, b" " * (MAX_VALUE_BYTES + 1))
    assert "byte limit" in err.message


def test_decode_fills_name_and_namespace_from_key() -> None:
    value = json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {}, "spec": {"podSelector": {}}}).encode()
    res = decode(keys.policy("prod", "deny"), value)
    assert (res.metadata.namespace, res.metadata.name) == ("prod", "deny")


def test_decode_namespace_and_node_mismatch() -> None:
    pol = parse_document(SAMPLES[9])
    err = decode_error(keys.policy("other", "deny"), encode(pol))
    assert (err.key, err.path) == ("policies/other/deny", "metadata.namespace")
    wep = parse_document(SAMPLES[11])
    err = decode_error(keys.workload("node2", "prod", "web-1", "eth0"), encode(wep))
    assert err.path == "spec.node"


def test_decode_non_resource_keys() -> None:
    assert decode_error("/other/x", b"{}").message == "not an l3fabric key"
    err = decode_error(keys.ipam_block("10.244.0.0/26"), b"{}")
    assert err.key == "ipam/blocks/10.244.0.0-26" and "not a key that holds" in err.message


def test_label_selector_api() -> None:
    sel = LabelSelector.from_dict({"matchLabels": {"a": "1"},
                                   "matchExpressions": [{"key": "b", "operator": "Exists"}]}, "x")
    assert sel.matches({"a": "1", "b": ""}) and not sel.matches({"a": "1"})
    assert not sel.is_empty and LabelSelector.from_dict({}, "x").is_empty
    assert LabelSelector.from_dict(sel.to_dict(), "x") == sel


# --- examples --------------------------------------------------------------------------------


def test_examples_all_parse() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert {f.name for f in files} >= {"ippool.yaml", "bgp.yaml", "nodes.yaml", "policy.yaml"}
    seen: list[Resource] = []
    for f in files:
        for obj in yaml.safe_load_all(f.read_text()):
            if obj is None:
                continue
            res = parse_document(obj)
            assert decode(key_for(res), encode(res)) == res
            seen.append(res)
    kinds = {r.kind for r in seen}
    assert {"IPPool", "BGPConfiguration", "BGPPeer", "Node", "Namespace", "NetworkPolicy",
            "GlobalNetworkPolicy"} <= kinds
    pool = next(r for r in seen if isinstance(r, IPPool))
    assert str(pool.spec.cidr) == "10.244.0.0/16" and pool.spec.block_size == 26
    assert sum(isinstance(r, Node) for r in seen) == 2


def test_resources_built_in_code_can_be_validated() -> None:
    wep = WorkloadEndpoint(
        Metadata(name="web-1.eth0", namespace="prod", labels={"app": "web"}),
        WorkloadEndpointSpec(node="node1", pod="web-1", endpoint="eth0", container_id="c1",
                             ip_networks=(ipaddress.ip_network("10.244.1.5/32"),),
                             labels={"app": "web"}),
    )
    assert hash(wep) == hash(wep.validated()) and wep.validated() == wep
    bad = WorkloadEndpoint(Metadata(name="wrong", namespace="prod"), wep.spec)
    with pytest.raises(ValidationError, match=r"metadata\.name"):
        bad.validated()
