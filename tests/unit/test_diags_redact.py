"""What `fabricctl diags` removes from every file: secrets it learned from etcd's values and
agent.conf, and secret-looking syntax in configurations and logs it knows nothing of."""

from __future__ import annotations

from fabricctl.diags_cmd import REDACTED, Redactor


def test_learned_secrets_are_replaced_everywhere_and_in_values() -> None:
    r = Redactor()
    config = {"config/bgppeers/tor": {"spec": {"peerIP": "10.0.0.1", "password": "pw-1"}},
              "config/other": {"spec": {"auth": {"secretToken": "tok-2"}, "key": "k"}}}
    r.learn(config)
    assert r.secrets == {"pw-1", "tok-2"}
    assert r.value(config)["config/bgppeers/tor"]["spec"] == {"peerIP": "10.0.0.1",
                                                              "password": REDACTED}
    assert r.value(config)["config/other"]["spec"]["key"] == "k"  # a name, not a secret
    assert r.text("log: peer 10.0.0.1 password was pw-1 (tok-2)") == \
        f"log: peer 10.0.0.1 password was {REDACTED} ({REDACTED})"


def test_secret_syntax_is_replaced_without_knowing_the_value() -> None:
    r = Redactor()
    text = r.text('  md5-password "a b";\n  password "x\\"";\n neighbor 10.0.0.1 password abc\n'
                  "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n")
    assert "a b" not in text and "abc" not in text and "MHcC" not in text
    assert f'md5-password "{REDACTED}";' in text
    assert f"neighbor 10.0.0.1 password {REDACTED}" in text
    assert f"-----BEGIN EC PRIVATE KEY-----\n{REDACTED}\n-----END EC PRIVATE KEY-----" in text


def test_a_quoted_password_with_escaped_quotes_is_replaced_whole() -> None:
    r = Redactor()
    assert r.text('protocol bgp tor { password "ab\\"cd"; }') == \
        f'protocol bgp tor {{ password "{REDACTED}"; }}'
    assert r.text('md5-password "p\\\\\\"q\\"";\n') == f'md5-password "{REDACTED}";\n'
    # two on a line stay two; one a backslash leaves open is replaced to the end of its line
    assert r.text('password "a"; password "b";') == \
        f'password "{REDACTED}"; password "{REDACTED}";'
    assert r.text('password "ab\\";\nnext "line"') == f'password "{REDACTED}"\nnext "line"'


def test_agent_conf_names_tls_files_which_stay() -> None:
    r = Redactor()
    r.learn({"L3FABRIC_ETCD_KEY": "/etc/l3fabric/client-key.pem"})
    assert r.text("L3FABRIC_ETCD_KEY=/etc/l3fabric/client-key.pem") == \
        "L3FABRIC_ETCD_KEY=/etc/l3fabric/client-key.pem"
