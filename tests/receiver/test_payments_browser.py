"""A member buys credits from their portal in headless Chromium: the package list with a Buy button per
package, the Buy button through a fake EPay gateway (which notifies creditrelay as EPay does) back to
the return page, and the portal then showing the credits and the paid order; kept in
test-artifacts/portal/."""

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from creditrelay.billing.portal import issue_link
from creditrelay.receiver.app import create_app
from creditrelay.schema.packages import parse_packages
from tests.support.browser import DESKTOP, chromium, loaded, shoot_both
from tests.support.database import Database
from tests.support.fake_epay import fake_epay
from tests.support.ledger import in_transaction, make_user
from tests.support.receiver import settings_for
from tests.support.server import free_port, serving

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database", ["sqlite"], indirect=True)]
PACKAGES = "starter=1000:10.00:CNY,pro=6000:50.00:CNY:+1000first:30d,team=30000:200.00:CNY:+3000"


def test_a_member_buys_a_package_and_sees_the_credits(database: Database) -> None:
    """pro through EPay: 6,000 credits and the 1,000 first-purchase bonus on the balance, the order paid."""
    ana = make_user(database, "ana@example.com", 0)
    port = free_port()
    with fake_epay("1001", "merchant-key-for-tests") as gateway:
        settings = replace(
            settings_for(database), credit_packages=parse_packages(PACKAGES),
            public_base_url=f"http://127.0.0.1:{port}", epay_url=gateway.submit, epay_pid="1001",
            epay_key="merchant-key-for-tests",
        )  # fmt: skip
        moment = datetime.now().replace(microsecond=0) - timedelta(hours=1)
        path = in_transaction(database, lambda c: issue_link(c, ana, settings.portal_keys[0], moment)).path
        with serving(create_app(settings, database.engine), port=port) as site, chromium() as browser:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(site + path)
            loaded(page)
            assert page.locator("#packages li").count() == 3
            assert "+1,000 bonus on your first purchase, valid 30 days" in page.inner_text("#packages")
            assert page.locator("#orders").count() == 0
            shoot_both(page, "portal", "packages")

            page.locator("#packages li", has_text="pro").locator("button").click()
            page.wait_for_url("**/payments/return")
            assert "being confirmed" in page.inner_text("body")
            assert gateway.answers == ["success"]

            page.goto(site + path)
            loaded(page)
            assert page.inner_text("#balance") == "7,000"
            assert "paid" in page.inner_text("#orders")
            assert "+1,000" in page.inner_text("#orders")
            shoot_both(page, "portal", "order-paid")
    assert database.scalar("SELECT status FROM orders") == "paid"
