"""One trace across processes: the node daemon's check-in (``edgerec node run``) and the sync service's handling
of it, exported over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.otlp import OtlpReceiver

from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.service.server import RunningServer

EDGEREC = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()"]


@pytest.mark.slow
def test_a_checkin_is_one_trace_from_node_to_service(sync_env, tmp_path):
    receiver = OtlpReceiver()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    traced = RunningServer(sync_env.service, maintenance=False, env=otel).start()
    try:
        enroll_node(tmp_path / "node", traced.url, sync_env.token(), "traced")
        run = subprocess.run([*EDGEREC, "node", "run", "--state-dir", str(tmp_path / "node"), "--model-dir",
                              str(tmp_path / "models"), "--once"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **otel})
        assert run.returncode == 0, run.stderr

        def joined(spans: list) -> bool:
            return any(s.trace_id == c.trace_id and s.parent_id == c.span_id
                       for c in spans if c.service == "edgerec-node" and c.name == "POST /api/v1/node/checkin"
                       for s in spans if s.service == "edgerec-sync")

        assert receiver.wait(joined), receiver.spans
        checkin = next(s for s in receiver.spans if s.name == "POST /api/v1/node/checkin")
        # The cycle's calls share its trace (its span is their parent): the check-in's own is its child.
        served = next(s for s in receiver.spans if s.service == "edgerec-sync" and s.parent_id == checkin.span_id)
        assert (checkin.kind, served.kind) == (3, 2)  # client, server
        assert served.name == "POST node.checkin"
        assert receiver.wait(lambda spans: any(s.name == "node cycle" for s in spans)), receiver.spans
        cycle = next(s for s in receiver.spans if s.service == "edgerec-node" and s.name == "node cycle")
        assert (checkin.parent_id, checkin.trace_id) == (cycle.span_id, cycle.trace_id)
    finally:
        traced.stop()
        receiver.close()


def test_a_bad_otlp_endpoint_is_a_one_line_error(tmp_path):
    for cmd in (["sync", "serve", "--data-dir", str(tmp_path)], ["serve", "--model-dir", str(tmp_path), "-k",
                                                                 str(tmp_path / "none.pub")]):
        r = subprocess.run([*EDGEREC, *cmd, "--otlp-endpoint", "ftp://collector"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
