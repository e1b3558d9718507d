"""A member's portal in headless Chromium, as the member sees it: balance, a paused account's notice,
the usage charts for a chosen range, transactions paged back to the first, a statement downloaded; at
desktop and phone width (nothing sticks out sideways), kept in test-artifacts/portal/."""

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from playwright.sync_api import Page

from creditrelay.billing.accounts import adjust, top_up
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.portal import issue_link
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import utc
from creditrelay.schema.wire import parse_event
from tests.support.browser import DESKTOP, chromium, loaded, shoot_both
from tests.support.database import Database
from tests.support.ledger import in_transaction, make_user
from tests.support.receiver import settings_for
from tests.support.server import serving
from tests.support.signing import encode, usage_event

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database", ["sqlite"], indirect=True)]

MODELS = ["gpt-4o-mini", "claude-3-5-sonnet-20241022", "deepseek-chat", "gemini-1.5-pro-002"]


def _shoot(page: Page, name: str) -> None:
    shoot_both(page, "portal", name)


@pytest.fixture
def links(database: Database) -> Iterator[tuple[str, str, str]]:
    """ana has used credits over three weeks (80 usages); owen owes 25 (paused)."""
    now = utc(time.time())
    ana = make_user(database, "ana@example.com", 0, "k-ana")
    owen = make_user(database, "owen@example.com", 0, "k-owen")
    in_transaction(database, lambda c: top_up(c, ana, 5000, "order-1001", now - timedelta(days=25)))
    for day in range(20):
        events = []
        for i in range(4):
            body = usage_event(f"u-{day}-{i}", cost=3 + (day * i) % 17, key="k-ana", timestamp=int(time.time()))
            body["data"]["model"] = MODELS[(day + i) % len(MODELS)]
            events.append(parse_event(encode(body)))
        deliver(database.engine, events, now - timedelta(days=20 - day))
    in_transaction(database, lambda c: adjust(c, owen, -25, "chargeback-7", "card charged back", now))
    settings = settings_for(database)
    key = settings.portal_keys[0]
    moment = datetime.now().replace(microsecond=0) - timedelta(hours=1)
    ana_path = in_transaction(database, lambda c: issue_link(c, ana, key, moment)).path
    owen_path = in_transaction(database, lambda c: issue_link(c, owen, key, moment)).path
    with serving(create_app(settings, database.engine)) as url:
        yield url, ana_path, owen_path


def test_a_member_reads_their_account(links: tuple[str, str, str]) -> None:
    site, ana, owen = links
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        page.goto(site + ana)
        loaded(page)
        assert page.inner_text("#balance") != ""
        assert page.locator("#usage-by-day svg").count() == 1
        assert page.locator("#usage-by-model svg").count() == 1
        assert page.locator("#transactions tbody tr").count() == 50
        assert page.locator("#standing").count() == 0
        _shoot(page, "account")

        page.click("#older")
        loaded(page)
        rows = page.locator("#transactions tbody tr").all_inner_texts()
        assert "order-1001" in rows[-1]  # the first transaction
        page.click("#newest")
        loaded(page)

        today = datetime.now().date()
        page.fill("input[name=from]", (today - timedelta(days=6)).isoformat())
        page.click('#range button:has-text("Show")')
        loaded(page)
        assert (today - timedelta(days=6)).isoformat() in page.inner_text(".figures")
        _shoot(page, "range")

        with page.expect_download() as download:
            page.click(f"#statements >> text={today:%Y-%m} (CSV)")
        text = download.value.path().read_text(encoding="utf-8")
        assert text.startswith("time,type,amount,balance")

        page.goto(site + owen)
        loaded(page)
        assert "paused" in page.inner_text("#standing")
        assert page.inner_text("#balance") == "-25"
        _shoot(page, "paused")

        page.goto(site + "/portal/1.0.1.nothing")
        assert "does not work" in page.inner_text("#message")
        _shoot(page, "not-found")
