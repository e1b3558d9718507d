"""The admin pages tell the truth about enforcement, in Chromium: "below the line" while it is off (no red
"suspended"), "suspended" only once the gateway confirmed it, a push not yet confirmed as pending with
what the gateway refused; and the user page maps a gateway user, whose keys then link automatically."""

import dataclasses
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page

from creditrelay.billing.access import Standing
from creditrelay.billing.enforcement import EnforceConfig, Enforcer
from creditrelay.billing.gateways.newapi import NewApiClient
from creditrelay.billing.rules import LedgerRules
from creditrelay.receiver.access_words import access_flag, access_sentence
from creditrelay.receiver.app import create_app
from tests.support.browser import chromium, loaded, screenshot, sign_in
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi
from tests.support.ledger import make_user
from tests.support.receiver import settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event

TOKEN = "admin-token-admin-token-admin-token-42"


def test_the_words_in_each_state() -> None:
    """One flag and one sentence per standing; "suspended" only when confirmed."""
    refused = Standing("suspend", True, "token 40: new-api refused: record not found")
    assert access_flag("off", True, Standing("suspend", False, None)) == "below-line"
    assert access_flag("tokens", True, None) == "below-line"
    assert access_flag("tokens", True, Standing("suspend", True, None)) == "suspension-pending"
    assert access_flag("tokens", True, refused) == "suspension-failing"
    assert access_flag("tokens", True, Standing("suspend", False, None)) == "suspended"
    assert access_flag("tokens", False, Standing("resume", True, None)) == "resumption-pending"
    assert access_flag("tokens", False, Standing("resume", False, None)) is None
    said = access_sentence("tokens", True, 0, refused, has_targets=True)
    assert said == "Suspension pending — the gateway refused: token 40: new-api refused: record not found"
    assert "nothing at the gateway" in access_sentence(
        "users", True, 0, Standing("suspend", False, None), has_targets=False
    )


def _site(database: Database, api: FakeNewApi | None) -> Iterator[str]:
    settings = dataclasses.replace(settings_for(database), admin_token=TOKEN)
    if api is not None:
        settings = dataclasses.replace(
            settings,
            gateway_enforcement="tokens",
            new_api_base_url=api.url,
            new_api_admin_token=ADMIN_TOKEN,
            new_api_user_id=ADMIN_USER,
        )
        database.rule(LedgerRules(enforce=True, admin_gateway_user=ADMIN_USER))
    with serving(create_app(settings, database.engine)) as url:
        yield url


def _spend(site: str, event_id: str, key: int, cost: int, gateway_user: int | None = None) -> None:
    event = usage_event(event_id, cost=cost, key=key)
    if gateway_user is not None:
        event["data"]["userId"] = gateway_user
    body = encode(event)
    assert httpx.post(f"{site}/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 200


def _user_page(page: Page, site: str, email: str) -> None:
    page.goto(f"{site}/admin/users?q={email}")
    page.click(f"text={email}")
    loaded(page)


def _flags(page: Page) -> str:
    return page.inner_text("#users")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.browser
def test_with_enforcement_off_a_user_below_zero_is_below_the_line_not_suspended(database: Database) -> None:
    make_user(database, "carol@example.com", 5, "17")
    for site in _site(database, None):
        _spend(site, "evt-1", 17, 10)
        with chromium() as browser:
            page = browser.new_page()
            sign_in(page, site, TOKEN)
            page.goto(f"{site}/admin/users")
            assert "below the line" in _flags(page)
            assert "suspended" not in _flags(page)
            assert page.locator(".flag.suspended").count() == 0
            screenshot(page, "enforcement", "off-users")
            _user_page(page, site, "carol@example.com")
            said = page.inner_text("#access")
            assert said.startswith("Below the line")
            assert "gateway enforcement is off" in said
            screenshot(page, "enforcement", "off-user")


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.browser
def test_suspended_only_once_confirmed_and_a_refusal_reads_as_pending(database: Database, api: FakeNewApi) -> None:
    api.token(17)  # the creditrelay account's own token: tokens mode can disable it
    api.token(40, owner=5)  # a member's token: new-api refuses to change it for another account
    make_user(database, "dave@example.com", 5, "17")
    make_user(database, "erin@example.com", 5, "40")
    enforcer = Enforcer(
        database.engine, NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER), EnforceConfig("tokens", 1, attempts=1)
    )
    for site in _site(database, api):
        _spend(site, "evt-1", 17, 10)
        _spend(site, "evt-2", 40, 10)
        with chromium() as browser:
            page = browser.new_page()
            sign_in(page, site, TOKEN)
            _user_page(page, site, "dave@example.com")
            assert page.inner_text("#access") == "Suspension pending — waiting for the gateway to confirm it."
            assert page.locator("h1 .flag.suspension-pending").count() == 1
            screenshot(page, "enforcement", "tokens-pending")
            enforcer.run_once()
            page.reload()
            assert page.inner_text("#access") == "Suspended at the gateway: the gateway confirmed it."
            assert page.locator("h1 .flag.suspended").inner_text() == "suspended"
            screenshot(page, "enforcement", "tokens-confirmed")
            _user_page(page, site, "erin@example.com")
            said = page.inner_text("#access")
            assert said.startswith("Suspension pending — the gateway refused: token 40:")
            assert "record not found" in said
            assert page.locator("h1 .flag.suspension-failing").inner_text() == "suspension failing"
            screenshot(page, "enforcement", "tokens-refused")
            page.goto(f"{site}/admin/users")
            listed = _flags(page)
            assert "suspension failing" in listed
            assert "suspended" in listed  # dave's, confirmed
            screenshot(page, "enforcement", "tokens-users")

            # erin is gateway user 42 at new-api: her keys bill her without a key link
            _user_page(page, site, "erin@example.com")
            page.fill("input[name=gateway_user_id]", "42")
            page.click("#set-gateway-user")
            loaded(page)
            assert page.inner_text("#gateway-user") == "42"
            _spend(site, "evt-3", 99, 1, gateway_user=42)
            page.reload()
            assert "99" in page.inner_text("#key-list")
            assert page.locator("#key-list .flag.automatic").inner_text() == "linked automatically"
            screenshot(page, "enforcement", "gateway-user-mapped")
            page.fill("input[name=gateway_user_id]", ADMIN_USER)
            page.click("#set-gateway-user")
            loaded(page)
            assert "NEW_API_USER_ID" in page.inner_text(".notice")
