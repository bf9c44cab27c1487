"""fabricctl node status: table rows and uptime from a NodeStatus (no etcd)."""

from __future__ import annotations

from datetime import UTC, datetime

from datastore import model
from fabricctl.node_cmd import rows


def test_rows_from_node_status() -> None:
    st = model.parse_document({
        "apiVersion": model.API_VERSION, "kind": "NodeStatus", "metadata": {"name": "n1"},
        "status": {"bgp": {"peers": [
            {"peerIP": "10.99.1.2", "state": "Established", "type": "node", "asNumber": 65000,
             "since": "2024-01-01T00:00:00+00:00", "prefixesIn": 3, "prefixesOut": 2}]}}})
    assert isinstance(st, model.NodeStatus)
    now = datetime(2024, 1, 1, 1, 2, 3, tzinfo=UTC)
    assert rows([st], now) == [["n1", "10.99.1.2", "node", 65000, "Established", "1h02m03s",
                                3, 2, ""]]
