"""The admin user page's orders, in headless Chromium: a paid order with its bonus, a refunded one with
what was taken back, a failed one with its reason; a member without orders says so."""

import dataclasses
from collections.abc import Iterator
from datetime import datetime

import pytest

from creditrelay.billing.orders import create_order
from creditrelay.billing.payments import Payment, apply_payment, take_back
from creditrelay.receiver.app import create_app
from creditrelay.schema.packages import parse_packages
from tests.support.browser import chromium, screenshot, sign_in
from tests.support.database import Database
from tests.support.ledger import in_transaction
from tests.support.receiver import add_user, settings_for
from tests.support.server import serving

TOKEN = "admin-token-admin-token-admin-token-42"
NOW = datetime(2026, 3, 10, 12)
PACKAGES = parse_packages("starter=1000:10.00:CNY,pro=6000:50.00:CNY:+1000first")
pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database", ["sqlite"], indirect=True)]


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    add_user(database.engine)
    add_user(database.engine, "bob@example.com", key="2")
    app = create_app(dataclasses.replace(settings_for(database), admin_token=TOKEN), database.engine)
    with serving(app) as url:
        yield url


def test_the_user_page_lists_the_members_orders(site: str, database: Database) -> None:
    """pro paid with its bonus, starter paid then refunded, starter paid short (failed, with the reason)."""
    for package, amount in ((1, 5000), (0, 1000), (0, 900)):
        made = in_transaction(database, lambda c, p=package: create_order(c, 1, PACKAGES[p], "epay", NOW))  # type: ignore[misc]
        payment = Payment("epay", made.out_trade_no, amount, "CNY")
        in_transaction(database, lambda c, p=payment: apply_payment(c, p, PACKAGES, NOW))  # type: ignore[misc]
    refunded = in_transaction(database, lambda c: create_order(c, 1, PACKAGES[0], "epay", NOW))
    paid = in_transaction(database, lambda c: apply_payment(c, Payment("epay", refunded.out_trade_no, 1000, "CNY"),
                                                             PACKAGES, NOW)).order  # fmt: skip
    in_transaction(database, lambda c: take_back(c, paid, None, "refunded", "refund", NOW))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, site, TOKEN)
        page.goto(f"{site}/admin/users/1")
        rows = page.locator("#orders tbody tr").all_inner_texts()
        assert len(rows) == 4
        assert "refunded" in rows[0]
        assert "1,000 (-1,000 taken back)" in rows[0]
        assert "failed: paid 9.00 CNY, the order is 10.00 CNY" in rows[1]
        assert "6,000 +1,000" in rows[3]
        page.locator("#orders").scroll_into_view_if_needed()
        screenshot(page, "admin", "9-user-orders")
        page.goto(f"{site}/admin/users/2")
        assert "No orders" in page.inner_text("main")
