"""/openapi.json covers every route, and a schemathesis fuzz run finds no 5xx and no schema violation."""

from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

TOKEN = "test-control-token-0123456789"


def _template(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{model_name}" if m[1] == "name" else
                  "{model_version}" if m[1] == "version" else "{" + m[1] + "}", rule)


def test_document_covers_every_route(live, base_config):
    from edgerec.edge_server import create_app

    doc = live.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    app = create_app(base_config, start=False)  # the same routes as the served app
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _template(rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], f"{method} {path}"
    names = doc["paths"]["/v2/models/{model_name}/infer"]["post"]["parameters"][0]["schema"]["enum"]
    assert names == ["ctr"]


def _fuzz(op, mode, base_url):
    # The token lets the fuzzer past the control API's auth, except on unload (it would
    # empty the server for the operations after it).
    headers = {} if op.path.endswith("/unload") else {"Authorization": f"Bearer {TOKEN}"}

    strategy = op.as_strategy(generation_mode=mode)
    if mode == GenerationMode.POSITIVE:  # the document's working examples, then generated bodies
        strategy = st.one_of(*op.schema.get_strategies_from_examples(op), strategy)

    @given(case=strategy)
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def fuzz(case):
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

    fuzz()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_finds_no_server_error_nor_schema_violation(live, mode):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for op in operations:
        try:
            _fuzz(op, mode, live.url)
        except Unsatisfiable:
            continue  # no schema-invalid input exists for this operation (e.g. no parameters)
    assert live.get("/v2/health/ready").json() == {"ready": True}
    # The document's examples reached the models, so 200 answers were checked against the schema too.
    for endpoint in ("v2.infer", "tfserving.predict", "rank.rank"):
        assert live.metric_sum("edgerec_requests_total", endpoint=endpoint, code="200") >= 1, endpoint
