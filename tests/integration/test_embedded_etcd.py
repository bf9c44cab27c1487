"""The embedded etcd of the tests and the demo starts even when another process takes one
of its picked ports between the pick and etcd's bind (a race any busy machine runs)."""

from __future__ import annotations

import shutil
import socket

import pytest

from datastore.embedded import EmbeddedEtcd

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="needs etcd (etcd-server)")


def test_a_picked_port_taken_before_etcd_binds_is_picked_again() -> None:
    member = EmbeddedEtcd.temporary()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as thief:
        thief.bind(("127.0.0.1", member.client_port))
        thief.listen(1)
        taken = member.client_port
        try:
            member.start()
            assert member.client_port != taken
            assert member.healthy()
        finally:
            member.stop()
