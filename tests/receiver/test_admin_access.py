"""The admin pages for prepaid enforcement, in Chromium: balances at a glance, lowest first, suspended and
low users flagged and filtered, a user's gateway state and calls, and "suspend now" recorded."""

import dataclasses
from collections.abc import Iterator

import pytest

from creditrelay.billing.rules import LedgerRules
from creditrelay.receiver.app import create_app
from tests.support.browser import chromium, loaded, screenshot, sign_in
from tests.support.database import Database
from tests.support.receiver import add_user, settings_for
from tests.support.server import serving

TOKEN = "admin-token-admin-token-admin-token-42"


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    database.rule(LedgerRules(enforce=True, low_at=100))
    add_user(database.engine, "rich@example.com", credits=500, key="1")
    add_user(database.engine, "low@example.com", credits=40, key="2")
    add_user(database.engine, "broke@example.com", credits=0, key="3")
    settings = dataclasses.replace(
        settings_for(database), admin_token=TOKEN, gateway_enforcement="tokens", low_balance_at=100
    )
    with serving(create_app(settings, database.engine)) as url:
        yield url


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.browser
def test_balances_flags_filters_and_suspend_now_in_a_browser(site: str, database: Database) -> None:
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, site, TOKEN)
        page.goto(f"{site}/admin/users")
        rows = loaded(page).locator("#users tr").all_inner_texts()[1:]
        assert [row.split("\t")[1] for row in rows] == ["broke@example.com", "low@example.com", "rich@example.com"]
        flags = [" ".join(row.split("\t")[-1].split()) for row in rows]
        # no enforcer runs here: broke@'s suspension, and the others' keys enabled when linked, are not pushed
        assert flags == ["suspension pending low", "resumption pending low", "resumption pending"]
        screenshot(page, "admin", "users-by-balance")
        page.click('a:has-text("below the line")')
        assert page.locator("#users tr").count() == 2  # the header and broke@
        assert "broke@example.com" in page.inner_text("#users")

        page.goto(f"{site}/admin/users")
        page.click('a:has-text("rich@example.com")')
        assert "Resumption pending" in page.inner_text("#access")
        page.click("#suspend-now")
        assert "Suspend sent" in page.inner_text("body")
        assert page.inner_text("#access") == "Suspension pending — waiting for the gateway to confirm it."
        assert "suspend now by admin" in page.inner_text("#gateway-calls")
        screenshot(page, "admin", "user-suspend-now")
    rich = database.scalar("SELECT id FROM users WHERE email = 'rich@example.com'")
    assert database.scalar("SELECT desired FROM gateway_states WHERE userId = :u", u=rich) == "suspend"
