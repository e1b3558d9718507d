"""The API fuzzed from its own OpenAPI document (schemathesis) against the real server: no 500 anywhere."""

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from tests.support.receiver import Receiver


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # fuzzing the HTTP surface; storage is tested on both
def test_no_operation_answers_500(receiver: Receiver) -> None:
    """Every operation of /openapi.json, fed what schemathesis generates: a 2xx-4xx (or 503), never a 500."""
    schema = schemathesis.openapi.from_url(f"{receiver.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: Any) -> None:
            response = case.call(base_url=receiver.url, timeout=30)
            assert response.status_code < 500 or response.status_code == 503, (case.operation.label, response.text)

        call()


def test_docs_render_offline(receiver: Receiver) -> None:
    """/docs loads Swagger UI from the installed package, not a CDN, and points it at /openapi.json."""
    page = receiver.client.get("/docs").text
    assert "/openapi.json" in page
    assert "http" not in page.split("<body>")[1]
    assert receiver.client.get("/docs/static/swagger-ui-bundle.js").status_code == 200
    spec = httpx.get(f"{receiver.url}/openapi.json").json()
    assert {"/api/webhooks/events", "/api/credits/sync", "/api/admin/users"} <= set(spec["paths"])
