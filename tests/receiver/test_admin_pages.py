"""The /admin pages: refused without sign-in, CSRF-checked, and the operator's loop in a real browser."""

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from receiver.app import create_app
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event

TOKEN = "admin-token-admin-token-admin-token-42"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "admin"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # Debian's, from PATH
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    add_user(database.engine)
    app = create_app(dataclasses.replace(settings_for(database), admin_token=TOKEN), database.engine)
    with serving(app) as url:
        yield url


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_pages_refuse_without_sign_in_and_forms_without_csrf(site: str) -> None:
    """Every page redirects to sign-in; a wrong token is 401; a form without the session's CSRF token is 403."""
    with httpx.Client(base_url=site) as client:
        for path in ("/admin/", "/admin/users", "/admin/logs", "/admin/usage", "/admin/users/1"):
            reply = client.get(path)
            assert (reply.status_code, reply.headers["location"]) == (303, "/admin/login")
        assert client.post("/admin/login", data={"token": "wrong"}).status_code == 401
        assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303
        assert client.get("/admin/").status_code == 200
        forged = client.post("/admin/logs/evt-x/replay", data={"csrf": "not-the-token"})
        assert forged.status_code == 403
        assert client.post("/admin/users/1/topup", data={"amount": "5", "reference": "r"}).status_code == 403


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_sign_in_find_user_see_failed_event_link_key_replay_in_a_browser(site: str, database: Database) -> None:
    """The operator's loop in headless Chromium, one screenshot per page in test-artifacts/admin/."""
    body = encode(usage_event("evt-lost", key="k-new", cost=25, timestamp=int(time.time())))
    assert httpx.post(f"{site}/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 422
    with sync_playwright() as playwright:
        assert CHROMIUM, "no chromium on PATH: install Debian's chromium (make test does)"
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(f"{site}/admin/")
        page.fill("input[name=token]", TOKEN)
        page.click('button:has-text("Sign in")')
        assert page.inner_text("#failed-total") == "1"
        assert page.inner_text("#success-rate").endswith("%")
        _shot(page, "1-overview")

        page.click("nav >> text=Users")
        page.fill("input[name=q]", "alice")
        page.click('button:has-text("Search")')
        _shot(page, "2-users")
        page.click("text=alice@example.com")
        user_url = page.url
        assert page.inner_text("#balance") == str(OPENING)

        page.click("nav >> text=Webhook logs")
        assert "unknown remoteKeyId k-new" in page.inner_text("tr.failed")
        page.fill("input[name=until]", "2000-01-02T00:00")
        page.click('button:has-text("Filter")')
        assert "No deliveries." in page.inner_text("table")
        page.fill("input[name=since]", "2000-01-01T00:00")
        page.fill("input[name=until]", "")
        page.click('button:has-text("Filter")')
        assert "evt-lost" in page.inner_text("table")
        _shot(page, "3-logs-failed")

        page.goto(user_url)
        page.fill("input[name=remote_key_id]", "k-new")
        page.click("#link-key")
        assert "k-new" in page.inner_text("#keys")
        _shot(page, "4-user-key-linked")

        page.click("nav >> text=Webhook logs")
        page.click("tr.failed >> text=Replay")
        assert page.inner_text("#notice") == "evt-lost: charged"
        _shot(page, "5-replayed")

        page.goto(user_url)
        assert page.inner_text("#balance") == str(OPENING - 25)
        assert "event evt-lost" in page.inner_text("table")
        _shot(page, "6-user-charged")
        page.click("nav >> text=Usage")
        assert page.locator("svg.chart rect").count() >= 1
        _shot(page, "7-usage")
        browser.close()
    assert database.scalar("SELECT status FROM webhook_logs WHERE eventId = 'evt-lost'") == "processed"
