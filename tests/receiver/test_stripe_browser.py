"""A member buys credits through Stripe from their portal in headless Chromium: Buy sends them to the
Checkout page of the fake Stripe (the session made through the stripe package's client); once Stripe's
signed checkout.session.completed arrives, the portal shows the credits and the paid order; kept in
test-artifacts/portal/."""

from dataclasses import replace
from datetime import datetime, timedelta

import httpx
import pytest

from creditrelay.billing.portal import issue_link
from creditrelay.receiver.app import create_app
from creditrelay.schema.packages import parse_packages
from tests.support.browser import DESKTOP, chromium, loaded, shoot_both
from tests.support.database import Database
from tests.support.fake_stripe import fake_stripe, signed
from tests.support.ledger import in_transaction, make_user
from tests.support.receiver import settings_for
from tests.support.server import free_port, serving

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database", ["sqlite"], indirect=True)]
PACKAGES = "starter=1000:10.00:USD,pro=6000:50.00:USD:+1000first:30d"
SECRET = "whsec_browser_test_secret_0123456789"
API_KEY = "sk_test_browser_0123456789"


def test_a_member_buys_a_package_through_stripe_and_sees_the_credits(database: Database) -> None:
    """pro through Stripe Checkout: 6,000 credits and the 1,000 first-purchase bonus, the order paid."""
    ana = make_user(database, "ana@example.com", 0)
    port = free_port()
    with fake_stripe(API_KEY) as stripe:
        settings = replace(
            settings_for(database), credit_packages=parse_packages(PACKAGES),
            public_base_url=f"http://127.0.0.1:{port}", stripe_webhook_secret=SECRET, stripe_api_key=API_KEY,
        )  # fmt: skip
        moment = datetime.now().replace(microsecond=0) - timedelta(hours=1)
        path = in_transaction(database, lambda c: issue_link(c, ana, settings.portal_keys[0], moment)).path
        app = create_app(settings, database.engine, stripe_api_base=stripe.url)
        with serving(app, port=port) as site, chromium() as browser:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(site + path)
            loaded(page)
            page.locator("#packages li", has_text="pro").locator("button").click()
            page.wait_for_url(f"{stripe.url}/c/pay/cs_test_*")
            assert page.inner_text("#checkout") == "Pay 50.00 USD"
            (session,) = stripe.sessions.values()
            assert session["success_url"] == site + path

            body, headers = signed(stripe.completed(session["id"]), SECRET)
            answer = httpx.post(f"{site}/api/payments/stripe", content=body, headers=headers, timeout=30)
            assert answer.status_code == 200, answer.text

            page.goto(session["success_url"])
            loaded(page)
            assert page.inner_text("#balance") == "7,000"
            assert "paid" in page.inner_text("#orders")
            assert "50.00 USD" in page.inner_text("#orders")
            shoot_both(page, "portal", "stripe-paid")
    assert database.scalar("SELECT status FROM orders") == "paid"
