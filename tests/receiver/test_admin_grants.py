"""The admin user page's grants and holds, in headless Chromium: a top-up with an expiry, a priority and
kind promo becomes a grant listed with its remaining; an open hold is listed; voiding ends the grant; and
``serve``'s expiry worker ends a grant past its expiry by itself."""

import dataclasses
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from creditrelay import app as assembly
from creditrelay.billing.accounts import top_up
from creditrelay.billing.grants import GrantTerms
from creditrelay.billing.holds import GATEWAY, HoldRequest, place_hold
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import utc
from creditrelay.schema.transactions import run_transaction
from tests.support.browser import chromium, screenshot, sign_in
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving

TOKEN = "admin-token-admin-token-admin-token-42"
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    add_user(database.engine)
    app = create_app(dataclasses.replace(settings_for(database), admin_token=TOKEN), database.engine)
    with serving(app) as url:
        yield url


@pytest.mark.browser
def test_an_operator_gives_a_grant_sees_it_and_a_hold_and_voids_it(site: str, database: Database) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, site, TOKEN)
        page.goto(f"{site}/admin/users/1")
        assert "No live grants" in page.inner_text("main")
        page.fill("#topup input[name=amount]", "300")
        page.fill("#topup input[name=reference]", "welcome-bonus")
        page.fill("#topup input[name=expires_at]", "2999-01-31T12:00")
        page.fill("#topup input[name=priority]", "1")
        page.select_option("#topup select[name=kind]", "promo")
        page.click('#topup button:has-text("Top up")')
        assert "Topped up 300 credits" in page.inner_text("#notice")
        row = page.inner_text("#grants tbody tr").split("\t")
        assert row[1:6] == ["promo", "1", "2999-01-31 12:00:00", "300", "300"]
        hold = HoldRequest(1, 120, GATEWAY, request_id="req-page")
        run_transaction(database.engine, lambda c: place_hold(c, hold, 0, utc(time.time())))
        page.reload()
        assert page.inner_text("#holds tbody tr").split("\t")[1:4] == ["gateway", "req-page", "120"]
        screenshot(page, "admin", "8-user-grants-and-holds")
        page.click('#grants button:has-text("Void")')
        assert "ended (voided)" in page.inner_text("#notice")
        assert page.inner_text("#balance") == str(OPENING)
        assert "expired or voided: 300" in page.inner_text("#consumption")
        screenshot(page, "admin", "9-user-grant-voided")


def test_a_bad_grant_term_on_the_form_is_a_notice(site: str) -> None:
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, site, TOKEN)
        page.goto(f"{site}/admin/users/1")
        page.fill("#topup input[name=amount]", "5")
        page.fill("#topup input[name=reference]", "r1")
        page.fill("#topup input[name=expires_at]", "2001-01-01T00:00")
        page.click('#topup button:has-text("Top up")')
        assert "Not topped up: expires-at must be in the future" in page.inner_text("#notice")


def test_serve_expires_grants_in_the_background(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app as serve builds it runs the expiry pass: a grant past its expiry ends without a request."""
    monkeypatch.setattr(assembly, "EXPIRE_INTERVAL", 0.2)
    user = add_user(database.engine)
    soon = GrantTerms(expires_at=utc(time.time()) + timedelta(seconds=1))
    run_transaction(database.engine, lambda c: top_up(c, user, 50, "trial", utc(time.time()), terms=soon))
    settings = settings_for(database)
    app = create_app(settings, database.engine, workers=assembly.workers(settings, database.engine))
    with serving(app, lifespan="on"):
        deadline = time.monotonic() + 20
        while database.count("credit_transactions", "type = 'expiry'") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert database.count("credit_transactions", "type = 'expiry'") == 1
    assert database.scalar("SELECT balance FROM users") == OPENING
