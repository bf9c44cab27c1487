"""cni.protocol as data: env + stdin in, a CniRequest or the spec's error code out;
results in, the JSON of each CNI version out."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import protocol
from cni.protocol import (
    DNS,
    SPEC_ERROR_CODES,
    SUPPORTED_VERSIONS,
    CniError,
    Interface,
    IpamResult,
    IPConfig,
    Result,
    Route,
    convert_prev_result,
    error_json,
    format_result,
    parse_cni_args,
    parse_request,
    version_response,
)

BASE_ENV = {
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/var/run/netns/pod1",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
}

PREV_100 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/p"}],
    "ips": [{"address": "10.244.1.5/32", "interface": 0}],
}


def conf(version: str = "1.0.0", **extra: Any) -> str:
    obj: dict[str, Any] = {"cniVersion": version, "name": "l3fabric", "type": "l3fabric"}
    obj.update(extra)
    return json.dumps(obj)


def env(command: str, **overrides: str | None) -> dict[str, str]:
    out = dict(BASE_ENV, CNI_COMMAND=command)
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def code_of(e: dict[str, str], stdin: str) -> CniError:
    with pytest.raises(CniError) as info:
        parse_request(e, stdin)
    return info.value


# ------------------------------------------------------------------ environment


@pytest.mark.parametrize(
    ("command", "var"),
    [
        ("ADD", "CNI_CONTAINERID"),
        ("ADD", "CNI_NETNS"),
        ("ADD", "CNI_IFNAME"),
        ("CHECK", "CNI_CONTAINERID"),
        ("CHECK", "CNI_NETNS"),
        ("CHECK", "CNI_IFNAME"),
        ("DEL", "CNI_CONTAINERID"),
        ("DEL", "CNI_IFNAME"),
    ],
)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_variable_is_code_4_naming_it(command: str, var: str, how: str) -> None:
    e = env(command, **{var: None if how == "absent" else ""})
    prev = PREV_100 if command == "CHECK" else None
    err = code_of(e, conf(prevResult=prev) if prev else conf())
    assert err.code == 4
    assert var in err.msg


def test_several_missing_variables_are_all_named() -> None:
    err = code_of({"CNI_COMMAND": "ADD"}, conf())
    assert err.code == 4
    for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
        assert var in err.msg


@pytest.mark.parametrize("netns", [None, ""])
def test_del_without_netns_is_fine(netns: str | None) -> None:
    # containerd's second DEL: CNI_NETNS="" and no prevResult.
    req = parse_request(env("DEL", CNI_NETNS=netns), conf())
    assert req.command == "DEL"
    assert req.netns == ""
    assert req.prev_result is None


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_only_the_config(command: str) -> None:
    req = parse_request({"CNI_COMMAND": command}, conf("1.1.0"))
    assert req.command == command
    assert req.container_id == ""


@pytest.mark.parametrize("command", ["", "add", "FROB", "VERSIONS"])
def test_unknown_or_missing_command_is_code_4(command: str) -> None:
    err = code_of(env(command), conf())
    assert err.code == 4
    assert "CNI_COMMAND" in err.msg


@pytest.mark.parametrize(
    "cid", ["-abc", "_abc", ".abc", "abc def", "abc/def", "abc;rm", "ab:c", "é1", "abc\n"]
)
def test_bad_container_id_is_code_4(cid: str) -> None:
    err = code_of(env("ADD", CNI_CONTAINERID=cid), conf())
    assert err.code == 4
    assert "CNI_CONTAINERID" in err.msg


@pytest.mark.parametrize("cid", ["a", "0", "abc-DEF_1.2", "3f6940ab5ab43bc522569d15b23f8c1b"])
def test_good_container_ids(cid: str) -> None:
    assert parse_request(env("ADD", CNI_CONTAINERID=cid), conf()).container_id == cid


@pytest.mark.parametrize(
    "ifname", [".", "..", "a/b", "a:b", "a b", "a\tb", "x" * 16, "ü" * 8, "eth0\n"]
)
def test_bad_ifname_is_code_4(ifname: str) -> None:
    err = code_of(env("ADD", CNI_IFNAME=ifname), conf())
    assert err.code == 4
    assert "CNI_IFNAME" in err.msg


@pytest.mark.parametrize("ifname", ["eth0", "x" * 15, "net1.100", "a-b_c"])
def test_good_ifnames(ifname: str) -> None:
    assert parse_request(env("ADD", CNI_IFNAME=ifname), conf()).ifname == ifname


# ------------------------------------------------------------------ config and versions


@pytest.mark.parametrize("stdin", ["", "{", "not json", '{"a": 1,}', "[1, 2]", '"str"', "null"])
def test_undecodable_config_is_code_6(stdin: str) -> None:
    assert code_of(env("ADD"), stdin).code == 6


@pytest.mark.parametrize(
    ("drop", "word"), [("cniVersion", "cniVersion"), ("name", "name"), ("type", "type")]
)
def test_missing_required_config_field_is_code_7(drop: str, word: str) -> None:
    obj = json.loads(conf())
    del obj[drop]
    err = code_of(env("ADD"), json.dumps(obj))
    assert err.code == 7
    assert word in err.msg


@pytest.mark.parametrize(
    "obj",
    [
        {"cniVersion": 1, "name": "n", "type": "t"},
        {"cniVersion": "1.0.0", "name": "bad name", "type": "t"},
        {"cniVersion": "1.0.0", "name": "n", "type": 3},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "ipam": []},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "mtu": -1},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "mtu": "1500"},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "mtu": 40},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "args": {"cni": {"labels": {"a": "b"}}}},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "args": {"cni": {"ips": ["nope"]}}},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "runtimeConfig": []},
        {"cniVersion": "1.0.0", "name": "n", "type": "t", "prevResult": {"ips": [{"address": 1}]}},
    ],
)
def test_malformed_config_is_code_7(obj: dict[str, Any]) -> None:
    assert code_of(env("ADD"), json.dumps(obj)).code == 7


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.0", "latest"])
def test_unsupported_version_is_code_1(version: str) -> None:
    err = code_of(env("ADD"), conf(version))
    assert err.code == 1


@pytest.mark.parametrize(
    ("command", "version"),
    [("GC", "0.4.0"), ("GC", "1.0.0"), ("STATUS", "1.0.0"), ("CHECK", "0.3.1"), ("CHECK", "0.3.0")],
)
def test_command_too_new_for_config_version_is_code_1(command: str, version: str) -> None:
    err = code_of(env(command), conf(version, prevResult=PREV_100))
    assert err.code == 1
    assert command in err.msg


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_accepts_every_supported_version(version: str) -> None:
    assert parse_request(env("ADD"), conf(version)).cni_version == version


def test_check_needs_prev_result() -> None:
    assert code_of(env("CHECK"), conf("1.0.0")).code == 7
    req = parse_request(env("CHECK"), conf("1.0.0", prevResult=PREV_100))
    assert req.prev_result is not None
    assert req.prev_result.ips[0].address == ipaddress.ip_interface("10.244.1.5/32")


def test_version_request_needs_nothing() -> None:
    assert parse_request({"CNI_COMMAND": "VERSION"}, "").cni_version == "1.1.0"
    assert parse_request({"CNI_COMMAND": "VERSION"}, "garbage").cni_version == "1.1.0"
    assert parse_request({"CNI_COMMAND": "VERSION"}, conf("0.4.0")).cni_version == "0.4.0"


def test_version_response() -> None:
    assert version_response("1.0.0") == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    assert version_response(None)["cniVersion"] == "1.1.0"
    assert version_response("0.2.0")["cniVersion"] == "1.1.0"


def test_full_request_fields() -> None:
    stdin = conf(
        "1.0.0",
        mtu=1400,
        ipam={"type": "l3fabric-ipam"},
        args={
            "cni": {"labels": [{"key": "app", "value": "web"}], "ips": ["10.244.0.9/24"]},
            "l3fabric": {"ports": [{"name": "http", "port": 8080, "protocol": "tcp"}]},
        },
        runtimeConfig={"ips": ["fd00::9"], "mac": "aa:bb:cc:00:11:22"},
    )
    e = env(
        "ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;IP=10.244.0.7"
    )
    req = parse_request(e, stdin)
    assert req.network_name == "l3fabric"
    assert req.plugin_type == "l3fabric"
    assert req.ipam_type == "l3fabric-ipam"
    assert req.pod_namespace == "prod"
    assert req.pod_name == "web-0"
    assert req.mtu == 1400
    assert req.cni_path == ("/opt/cni/bin",)
    assert req.labels == {"app": "web"}
    assert req.ports == (protocol.NamedPort("http", 8080, "TCP"),)
    assert req.requested_ips == (
        ipaddress.ip_address("10.244.0.7"),
        ipaddress.ip_address("10.244.0.9"),
        ipaddress.ip_address("fd00::9"),
    )
    assert req.requested_mac == "aa:bb:cc:00:11:22"


@pytest.mark.parametrize("mtu", [None, 0])
def test_mtu_zero_or_absent_is_auto(mtu: int | None) -> None:
    stdin = conf() if mtu is None else conf(mtu=mtu)
    assert parse_request(env("ADD"), stdin).mtu is None


# ------------------------------------------------------------------ CNI_ARGS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("K8S_POD_NAME=a", {"K8S_POD_NAME": "a"}),
        (
            "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=a",
            {"IgnoreUnknown": "1", "FOO": "bar", "K8S_POD_NAME": "a"},
        ),
        ("IgnoreUnknown=true;X=", {"IgnoreUnknown": "true", "X": ""}),
        ("IgnoreUnknown=1;K8S_POD_NAME=a;", {"IgnoreUnknown": "1", "K8S_POD_NAME": "a"}),
        ("IgnoreUnknown=1;TOKEN=a=b", {"IgnoreUnknown": "1", "TOKEN": "a=b"}),
    ],
)
def test_cni_args_parse(raw: str, expected: dict[str, str]) -> None:
    assert parse_cni_args(raw) == expected


@pytest.mark.parametrize("raw", ["FOO=bar", "IgnoreUnknown=0;FOO=bar", "K8S_POD_NAME", "=x"])
def test_cni_args_rejects_unknown_or_malformed(raw: str) -> None:
    err = code_of(env("ADD", CNI_ARGS=raw), conf())
    assert err.code == 4
    assert "CNI_ARGS" in err.msg


def test_podman_args_without_namespace_default_to_default() -> None:
    req = parse_request(env("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web"), conf())
    assert (req.pod_namespace, req.pod_name) == ("default", "web")


def test_containerd_args() -> None:
    raw = (
        "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc;"
        "K8S_POD_UID=1234-5678;IgnoreUnknown=1"
    )
    req = parse_request(env("ADD", CNI_ARGS=raw), conf())
    assert req.pod_namespace == "ns1"
    assert req.infra_container_id == "abc"
    assert req.pod_uid == "1234-5678"


def test_bad_ip_in_cni_args_is_code_4() -> None:
    err = code_of(env("ADD", CNI_ARGS="IP=10.0.0.300"), conf())
    assert err.code == 4
    assert "CNI_ARGS" in err.msg


# ------------------------------------------------------------------ requested MAC


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("c2:11:22:33:44:55", "c2:11:22:33:44:55"),
        ("C2:11:22:AA:BB:CC", "c2:11:22:aa:bb:cc"),
        ("c2-11-22-33-44-55", "c2:11:22:33:44:55"),
        ("c211.2233.4455", "c2:11:22:33:44:55"),
        ("00:00:5e:00:53:01", "00:00:5e:00:53:01"),  # universally administered, unicast
    ],
)
def test_normalize_mac(raw: str, normal: str) -> None:
    assert protocol.normalize_mac(raw) == normal


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("01:00:5e:00:00:01", "multicast"),
        ("33:33:00:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("00:00:00:00:00:00", "zeros"),
        ("c2:11:22:33:44", "six hex bytes"),
        ("c2:11:22:33:44:55:66", "six hex bytes"),
        ("c2:11:22:33:44:5g", "six hex bytes"),
        ("c2:11-22:33:44:55", "six hex bytes"),
        ("c2112233 4455", "six hex bytes"),
        ("c2:11:22:33:44:55\n", "six hex bytes"),
        ("00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", "six hex bytes"),
        ("", "six hex bytes"),
    ],
)
def test_normalize_mac_refuses(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        protocol.normalize_mac(raw)


def test_mac_from_cni_args_is_normalised() -> None:
    req = parse_request(env("ADD", CNI_ARGS="IgnoreUnknown=1;MAC=C2-11-22-33-44-55"), conf())
    assert req.requested_mac == "c2:11:22:33:44:55"


def test_mac_capability_wins_over_cni_args() -> None:
    e = env("ADD", CNI_ARGS="MAC=c2:11:22:33:44:55")
    req = parse_request(e, conf(runtimeConfig={"mac": "C2:AA:AA:AA:AA:AA"}))
    assert req.requested_mac == "c2:aa:aa:aa:aa:aa"
    # an empty capability value is no request: CNI_ARGS' applies
    assert parse_request(e, conf(runtimeConfig={"mac": ""})).requested_mac == "c2:11:22:33:44:55"


def test_mac_capability_from_cap_args() -> None:
    req = parse_request(env("ADD", CAP_ARGS=json.dumps({"mac": "c2:bb:bb:bb:bb:bb"})), conf())
    assert req.requested_mac == "c2:bb:bb:bb:bb:bb"


def test_no_mac_requested_is_empty() -> None:
    assert parse_request(env("ADD"), conf()).requested_mac == ""


def test_args_cni_mac_is_not_a_convention_and_ignored() -> None:
    req = parse_request(env("ADD"), conf(args={"cni": {"mac": "c2:11:22:33:44:55"}}))
    assert req.requested_mac == ""


@pytest.mark.parametrize("bad", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "c2:11:22", "zz"])
def test_bad_mac_in_cni_args_is_code_4_naming_it(bad: str) -> None:
    for command, stdin in (("ADD", conf()), ("CHECK", conf("1.0.0", prevResult=PREV_100))):
        err = code_of(env(command, CNI_ARGS=f"MAC={bad}"), stdin)
        assert err.code == 4
        assert "CNI_ARGS" in err.msg and f"MAC={bad!r}" in err.msg


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("00:00:00:00:00:00", "zeros"),
        ("c2:11:22:33:44", "six hex bytes"),
    ],
)
def test_bad_mac_capability_is_code_7_naming_it(bad: str, why: str) -> None:
    err = code_of(env("ADD"), conf(runtimeConfig={"mac": bad}))
    assert err.code == 7
    assert "runtimeConfig.mac" in err.msg and repr(bad) in err.msg and why in err.msg


def test_mac_capability_must_be_a_string() -> None:
    err = code_of(env("ADD"), conf(runtimeConfig={"mac": 42}))
    assert err.code == 7 and "runtimeConfig.mac" in err.msg


def test_bad_mac_overridden_by_the_capability_is_still_an_error() -> None:
    stdin = conf(runtimeConfig={"mac": "c2:11:22:33:44:55"})
    assert code_of(env("ADD", CNI_ARGS="MAC=01:02:03:04:05:06"), stdin).code == 4


@pytest.mark.parametrize("command", ["DEL", "GC", "STATUS"])
def test_mac_is_ignored_where_nothing_is_wired(command: str) -> None:
    # A DEL after an ADD refused for its MAC carries the same MAC: it must still succeed.
    stdin = conf("1.1.0", runtimeConfig={"mac": "ff:ff:ff:ff:ff:ff"})
    req = parse_request(env(command, CNI_ARGS="MAC=nonsense"), stdin)
    assert req.requested_mac == ""


# ------------------------------------------------------------------ runtimeConfig


@pytest.mark.parametrize(
    "mapping",
    [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP"},
        {"hostport": 8080, "CONTAINERPORT": 80},
    ],
)
def test_port_mappings_keys_are_case_insensitive(mapping: dict[str, Any]) -> None:
    req = parse_request(env("ADD"), conf(runtimeConfig={"portMappings": [mapping]}))
    assert req.port_mappings == (protocol.PortMapping(8080, 80, "tcp", ""),)


def test_port_mapping_host_ip_and_bad_port() -> None:
    m = {"HostPort": 53, "ContainerPort": 53, "Protocol": "udp", "HostIP": "127.0.0.1"}
    req = parse_request(env("ADD"), conf(runtimeConfig={"portMappings": [m]}))
    assert req.port_mappings == (protocol.PortMapping(53, 53, "udp", "127.0.0.1"),)
    bad = {"hostPort": 0, "containerPort": 80}
    assert code_of(env("ADD"), conf(runtimeConfig={"portMappings": [bad]})).code == 7


def test_cap_args_fill_missing_runtime_config() -> None:
    cap = json.dumps({"ips": ["10.1.1.1"], "portMappings": [{"hostPort": 1, "containerPort": 2}]})
    stdin = conf(runtimeConfig={"ips": ["10.2.2.2"]})
    req = parse_request(env("ADD", CAP_ARGS=cap), stdin)
    assert req.requested_ips == (ipaddress.ip_address("10.2.2.2"),)  # stdin wins
    assert req.port_mappings == (protocol.PortMapping(1, 2),)
    assert code_of(env("ADD", CAP_ARGS="{"), conf()).code == 4


# ------------------------------------------------------------------ GC


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_attachments(key: str) -> None:
    stdin = conf("1.1.0", **{key: [{"containerID": "c1", "ifname": "eth0"}]})
    req = parse_request({"CNI_COMMAND": "GC"}, stdin)
    assert req.valid_attachments == (protocol.Attachment("c1", "eth0"),)


def test_gc_without_list_deletes_nothing_and_bad_list_is_7() -> None:
    assert parse_request({"CNI_COMMAND": "GC"}, conf("1.1.0")).valid_attachments is None
    bad = conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": 1}]})
    assert code_of({"CNI_COMMAND": "GC"}, bad).code == 7


# ------------------------------------------------------------------ results

RESULT = Result(
    interfaces=(
        Interface(name="fab0123456789a", mac="ee:ee:ee:ee:ee:ee"),
        Interface(name="eth0", mac="aa:bb:cc:dd:ee:ff", sandbox="/var/run/netns/p", mtu=1400),
    ),
    ips=(
        IPConfig(ipaddress.ip_interface("10.244.1.5/32"), ipaddress.ip_address("169.254.1.1"), 1),
        IPConfig(ipaddress.ip_interface("fd00:1::5/128"), None, 1),
    ),
    routes=(
        Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("169.254.1.1"), scope=0),
    ),
    dns=DNS(nameservers=("10.96.0.10",), search=("svc.cluster.local",)),
)


def test_result_1_1_0() -> None:
    assert format_result(RESULT, "1.1.0") == {
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "fab0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
            {
                "name": "eth0",
                "mac": "aa:bb:cc:dd:ee:ff",
                "mtu": 1400,
                "sandbox": "/var/run/netns/p",
            },
        ],
        "ips": [
            {"address": "10.244.1.5/32", "gateway": "169.254.1.1", "interface": 1},
            {"address": "fd00:1::5/128", "interface": 1},
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1", "scope": 0}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    }


def test_result_1_0_0_drops_1_1_fields() -> None:
    out = format_result(RESULT, "1.0.0")
    assert out["interfaces"][1] == {
        "name": "eth0",
        "mac": "aa:bb:cc:dd:ee:ff",
        "sandbox": "/var/run/netns/p",
    }
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    assert all("version" not in ip for ip in out["ips"])


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_0_x_carries_ip_versions(version: str) -> None:
    out = format_result(RESULT, version)
    assert out["cniVersion"] == version
    assert out["ips"] == [
        {"version": "4", "address": "10.244.1.5/32", "gateway": "169.254.1.1", "interface": 1},
        {"version": "6", "address": "fd00:1::5/128", "interface": 1},
    ]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_ipam_result_has_no_interfaces(version: str) -> None:
    ipam = IpamResult(ips=(IPConfig(ipaddress.ip_interface("10.244.1.5/32"), interface=0),))
    out = format_result(ipam, version)
    assert "interfaces" not in out
    assert "interface" not in out["ips"][0]
    assert out["ips"][0]["address"] == "10.244.1.5/32"


@pytest.mark.parametrize("src", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("dst", SUPPORTED_VERSIONS)
def test_convert_prev_result_round_trips(src: str, dst: str) -> None:
    rendered = format_result(RESULT, src)
    converted = convert_prev_result(rendered, dst)
    assert converted["cniVersion"] == dst
    assert converted == format_result(protocol.parse_result(rendered), dst)
    # Addresses, gateways and interface indexes survive every conversion.
    assert [ip["address"] for ip in converted["ips"]] == ["10.244.1.5/32", "fd00:1::5/128"]
    assert converted["ips"][0]["gateway"] == "169.254.1.1"
    if (src, dst) == ("1.1.0", "1.1.0"):
        assert converted == format_result(RESULT, "1.1.0")


def test_convert_rejects_0_2_results() -> None:
    with pytest.raises(CniError) as info:
        convert_prev_result({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/24"}}, "1.0.0")
    assert info.value.code == 1


def test_prev_result_interface_index_must_exist() -> None:
    bad = {
        "cniVersion": "1.0.0",
        "interfaces": [],
        "ips": [{"address": "10.0.0.1/32", "interface": 0}],
    }
    assert code_of(env("ADD"), conf(prevResult=bad)).code == 7


def test_error_json() -> None:
    err = CniError(11, "try again", "agent down")
    assert json.loads(error_json(err, "1.0.0")) == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "try again",
        "details": "agent down",
    }
    assert "details" not in json.loads(error_json(CniError(4, "x"), None))
    assert json.loads(error_json(CniError(4, "x"), None))["cniVersion"] == "1.1.0"


# ------------------------------------------------------------------ property

_env_keys = st.sampled_from(
    [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
        "CAP_ARGS",
    ]
)
_env_values = st.one_of(
    st.sampled_from(
        [
            "ADD",
            "DEL",
            "CHECK",
            "GC",
            "STATUS",
            "VERSION",
            "eth0",
            "abc",
            "IgnoreUnknown=1;IP=10.0.0.1",
            "{}",
            "",
        ]
    ),
    st.text(max_size=20),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_config_keys = st.sampled_from(
    [
        "cniVersion",
        "name",
        "type",
        "mtu",
        "ipam",
        "args",
        "runtimeConfig",
        "prevResult",
        "cni.dev/valid-attachments",
        "agentSocket",
    ]
)
_config = st.dictionaries(
    _config_keys,
    st.one_of(_json, st.sampled_from(["1.0.0", "1.1.0", "0.4.0", "l3fabric"])),
    max_size=8,
).map(lambda d: {"cniVersion": "1.1.0", "name": "n", "type": "t", **d})
_stdin = st.one_of(st.text(max_size=40), _config.map(json.dumps), _json.map(json.dumps))


@settings(max_examples=400, deadline=None)
@given(e=st.dictionaries(_env_keys, _env_values), stdin=_stdin)
def test_parse_request_raises_only_cni_errors_with_spec_codes(
    e: dict[str, str], stdin: str
) -> None:
    try:
        req = parse_request(e, stdin)
    except CniError as err:
        assert err.code in SPEC_ERROR_CODES
        assert err.msg
        json.loads(error_json(err, None))
    else:
        assert req.command in protocol.COMMANDS
        assert req.cni_version in SUPPORTED_VERSIONS
