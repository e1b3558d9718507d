"""The API fuzzed from its own OpenAPI document (schemathesis) against the real server: no 500 anywhere."""

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok

from creditrelay.receiver.app import create_app
from tests.support.browser import chromium, screenshot
from tests.support.credits import add_telegram_user, register_client
from tests.support.database import Database
from tests.support.receiver import Receiver, add_user, settings_for
from tests.support.server import serving

ADMIN_TOKEN = "admin-token-admin-token-admin-token-42"


@pytest.fixture
def authorized(database: Database) -> Iterator[tuple[str, dict[str, str]]]:
    """The receiver with the admin API on, and headers that pass both its and the credit API's checks, so
    the fuzzing reaches the parameters behind them."""
    add_user(database.engine)
    add_telegram_user(database.engine, credits=50)
    creds = register_client(database.engine)
    app = create_app(dataclasses.replace(settings_for(database), admin_token=ADMIN_TOKEN), database.engine)
    with serving(app) as url:
        yield url, {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Api-Key": creds.api_key}


@pytest.mark.parametrize("database", ["sqlite", "mysql"], indirect=True)
@pytest.mark.slow
def test_no_operation_answers_500(authorized: tuple[str, dict[str, str]]) -> None:
    """Every operation of /openapi.json — admin and credit query and path parameters included, signed in —
    fed what schemathesis generates (past-BIGINT numbers, odd times, Unicode): a 2xx-4xx (or 503), never a
    500."""
    url, headers = authorized
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) >= 13
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: Any) -> None:
            response = case.call(base_url=url, headers=headers, timeout=30)
            assert response.status_code < 500 or response.status_code == 503, (case.operation.label, response.text)

        call()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    name=st.sampled_from(["since", "until", "limit", "before", "after", "status", "key", "userId", "eventId"]),
    value=st.one_of(
        st.text(max_size=40),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
        st.sampled_from(["²", "¹", "١٢", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00", "1e9", " 1", "-0"]),
    ),
)
@pytest.mark.slow
def test_admin_query_parameters_are_a_200_or_a_400_naming_them(
    authorized: tuple[str, dict[str, str]], name: str, value: str
) -> None:
    """Any text in any admin list parameter: an answer, or a 400 whose message names the parameter."""
    url, headers = authorized
    reply = httpx.get(f"{url}/api/admin/webhook-logs", params={name: value}, headers=headers, timeout=30)
    assert reply.status_code in (200, 400), reply.text
    if reply.status_code == 400:
        assert reply.json()["message"].startswith(f"{name}:")


def test_docs_render_offline(receiver: Receiver) -> None:
    """/docs loads Swagger UI from the installed package, not a CDN, and points it at /openapi.json."""
    page = receiver.client.get("/docs").text
    assert "/docs/static/start.js" in page
    assert "/openapi.json" in receiver.client.get("/docs/static/start.js").text
    assert "http" not in page.split("<body>")[1]
    assert receiver.client.get("/docs/static/swagger-ui-bundle.js").status_code == 200
    spec = httpx.get(f"{receiver.url}/openapi.json").json()
    assert {"/api/webhooks/events", "/api/credits/sync", "/api/admin/users"} <= set(spec["paths"])


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.browser
def test_docs_page_lists_the_operations_and_one_opens_in_a_browser(receiver: Receiver) -> None:
    """In Chromium, /docs renders the document (no "Unable to render this definition"): every path is
    listed, and an operation expands to show its parameters and answers."""
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{receiver.url}/docs")
        page.wait_for_selector(".opblock", timeout=20_000)
        assert "Unable to render" not in page.inner_text("body")
        summaries = page.locator(".opblock-summary-path").all_inner_texts()
        assert {"/api/webhooks/events", "/api/credits/sync", "/api/admin/webhook-logs"} <= {
            s.replace("\u200b", "") for s in summaries
        }
        page.locator(".opblock-summary", has_text="/api/credits/sync").first.click()
        page.wait_for_selector(".opblock-body .responses-table", timeout=10_000)
        assert "402" in page.inner_text(".opblock-body")
        screenshot(page, "docs", "swagger-ui")
