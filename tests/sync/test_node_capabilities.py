"""A node's check-in (its status report) says what the node can run, from the SDK."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

from edgerec.sdk.capabilities import DeviceCapabilities, device_capabilities
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.service.reports import check_report, status_digest


def test_status_report_carries_the_device_capabilities():
    # A node with nothing installed and no edge server: _status reads only these parts of the daemon.
    node = SimpleNamespace(db=SimpleNamespace(accepted=dict, installed=dict, failures=dict),
                           models=SimpleNamespace(pointers=dict), edge=None, config=SimpleNamespace(interval_s=30.0))
    doc = NodeDaemon._status(cast(Any, node), None)
    assert doc["capabilities"] == device_capabilities().to_dict()
    assert DeviceCapabilities.from_dict(json.loads(json.dumps(doc))["capabilities"]) == device_capabilities()
    assert check_report(doc) == (doc["report_id"], "status")  # the service takes it as it is
    # A heartbeat is recognised by what it says of the models, not by the capabilities it repeats.
    again = {**doc, "capabilities": {**doc["capabilities"], "machine": "other"}}
    assert status_digest(again) == status_digest(doc)
