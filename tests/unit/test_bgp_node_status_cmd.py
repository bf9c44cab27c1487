"""fabricctl node status: table rows (with the max-prefix limit) and uptime from a NodeStatus
(no etcd)."""

from __future__ import annotations

from datetime import UTC, datetime

from datastore import model
from fabricctl.node_cmd import rows


def test_rows_from_node_status() -> None:
    st = model.parse_document({
        "apiVersion": model.API_VERSION, "kind": "NodeStatus", "metadata": {"name": "n1"},
        "status": {"bgp": {"peers": [
            {"peerIP": "10.99.1.2", "state": "Established", "type": "node", "asNumber": 65000,
             "since": "2024-01-01T00:00:00+00:00", "prefixesIn": 3, "prefixesOut": 2},
            {"peerIP": "10.99.1.6", "state": "Established", "type": "node", "asNumber": 65000,
             "since": "2024-01-01T01:00:00+00:00", "prefixesIn": 50, "maxPrefixes": 50,
             "prefixesOut": 2, "info": "max-prefix 50 reached: 70 announcements dropped"}]}}})
    assert isinstance(st, model.NodeStatus)
    now = datetime(2024, 1, 1, 1, 2, 3, tzinfo=UTC)
    # MAX PFX after PFX IN; empty for a status written by an agent that did not report it.
    assert rows([st], now) == [
        ["n1", "10.99.1.2", "node", 65000, "Established", "1h02m03s", 3, None, 2, ""],
        ["n1", "10.99.1.6", "node", 65000, "Established", "2m03s", 50, 50, 2,
         "max-prefix 50 reached: 70 announcements dropped"]]
