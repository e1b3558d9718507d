"""Stripe over HTTP on every database, with events in Stripe's real format signed by the official package:
a Checkout Session paid tops up once across duplicated and reordered events; refunds and disputes take the
credits back once, also when they arrive before the payment; a bad or stale signature is a 400 that records
nothing; the portal's order makes a Checkout Session at the fake Stripe API."""

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import httpx
import pytest

from creditrelay.billing.portal import issue_link
from creditrelay.receiver.app import create_app
from creditrelay.schema.packages import parse_packages
from creditrelay.settings import Settings, SettingsError, load_settings
from tests.support.database import Database
from tests.support.fake_stripe import FakeStripe, charge, dispute, event, fake_stripe, session, signed
from tests.support.ledger import in_transaction, make_user
from tests.support.receiver import settings_for
from tests.support.server import free_port, serving

NOW = datetime(2026, 3, 10, 12)
SECRET = "whsec_test_0123456789abcdef0123456789abcdef"
API_KEY = "sk_test_51Fake0123456789"
PACKAGES = "starter=1000:10.00:USD,pro=6000:50.00:USD:+1000first"
BASE = "https://billing.example.com"


@dataclass
class Shop:
    client: httpx.Client
    token: str
    alice: int
    database: Database
    stripe: FakeStripe

    def send(self, payload: dict[str, Any], *, secret: str = SECRET, timestamp: int | None = None) -> httpx.Response:
        body, headers = signed(payload, secret, timestamp=timestamp)
        return self.client.post("/api/payments/stripe", content=body, headers=headers)

    def buy(self, package: str = "starter") -> dict[str, Any]:
        """The member's order of ``package``: the Checkout Session the fake Stripe made for it."""
        answer = self.client.post(
            "/api/portal/orders", json={"package": package, "provider": "stripe"},
            headers={"Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        session_id = answer.json()["data"]["redirectUrl"].rsplit("/", 1)[1]
        return self.stripe.sessions[session_id]

    def paid(self, package: str = "starter") -> dict[str, Any]:
        """A bought package's ``checkout.session.completed`` event."""
        return self.stripe.completed(self.buy(package)["id"])

    def balance(self) -> int:
        return int(self.database.scalar("SELECT balance FROM users WHERE id = :id", id=self.alice))

    def order(self) -> tuple[Any, ...]:
        return tuple(self.database.rows("SELECT status, refunded, takenBack FROM orders ORDER BY id DESC")[0])

    def events(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.database.rows("SELECT type, status FROM stripe_events ORDER BY id")]


def shop_settings(database: Database) -> Settings:
    return replace(
        settings_for(database), credit_packages=parse_packages(PACKAGES), public_base_url=BASE,
        stripe_webhook_secret=SECRET, stripe_api_key=API_KEY,
    )  # fmt: skip


def clock() -> float:
    return (NOW - datetime(1970, 1, 1)).total_seconds()


@pytest.fixture
def shop(database: Database) -> Iterator[Shop]:
    alice = make_user(database, "alice@example.com", 0)
    settings = shop_settings(database)
    link = in_transaction(database, lambda c: issue_link(c, alice, settings.portal_keys[0], NOW))
    token = link.path.rsplit("/", 1)[1]
    with fake_stripe(API_KEY) as stripe:
        app = create_app(settings, database.engine, clock=clock, stripe_api_base=stripe.url)
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Shop(client, token, alice, database, stripe)


def intent(completed: dict[str, Any]) -> str:
    return str(completed["data"]["object"]["payment_intent"])


def test_buy_makes_a_checkout_session_for_the_order(shop: Shop) -> None:
    """mode=payment, the package's price, the member, the package and the order's number; the session is
    recorded on the order, and the member is sent to its page."""
    made = shop.buy("pro")
    sent = shop.stripe.requests[0]
    assert sent["mode"] == "payment"
    assert sent["line_items"]["0"]["price_data"] == {
        "currency": "usd", "unit_amount": "5000", "product_data": {"name": "6,000 credits (pro)"}
    }  # fmt: skip
    assert sent["client_reference_id"] == str(shop.alice)
    trade_no = shop.database.scalar("SELECT outTradeNo FROM orders")
    assert sent["metadata"] == {"package": "pro", "outTradeNo": trade_no}
    assert sent["success_url"] == sent["cancel_url"] == f"{BASE}/portal/{shop.token}"
    assert sent["idempotency_key"] == f"creditrelay-order-{trade_no}"
    assert shop.database.scalar("SELECT sessionId FROM orders") == made["id"]
    assert made["url"].startswith(shop.stripe.url + "/c/pay/cs_test_")
    page = shop.client.get(f"/portal/{shop.token}")
    assert "form-action 'self' https://checkout.stripe.com" in page.headers["Content-Security-Policy"]
    assert '<button name="provider" value="stripe">Buy</button>' in page.text


def test_a_paid_session_tops_up_once_however_often_stripe_says_so(shop: Shop) -> None:
    """completed twice (one redelivery, one new event id), then async_payment_succeeded: credits once."""
    completed = shop.paid()
    again = event("checkout.session.completed", completed["data"]["object"])
    late = event("checkout.session.async_payment_succeeded", completed["data"]["object"])
    answers = [shop.send(e) for e in (completed, completed, again, late)]
    assert [a.status_code for a in answers] == [200] * 4, answers[0].text
    assert shop.balance() == 1000
    assert shop.order() == ("paid", 0, 0)
    assert shop.database.scalar("SELECT paymentIntentId FROM orders") == intent(completed)
    assert shop.events() == [("checkout.session.completed", "processed")] * 2 + [
        ("checkout.session.async_payment_succeeded", "processed")
    ]


def test_a_delayed_payment_pays_when_it_succeeds_and_not_before(shop: Shop) -> None:
    """completed with payment_status unpaid records nothing paid; async_payment_succeeded pays, once."""
    made = shop.buy()
    unpaid = event("checkout.session.completed", made | {"status": "complete", "payment_intent": "pi_test_late"})
    assert shop.send(unpaid).status_code == 200
    assert (shop.balance(), shop.order()[0]) == (0, "created")
    succeeded = made | {"status": "complete", "payment_status": "paid", "payment_intent": "pi_test_late"}
    for _ in range(2):
        assert shop.send(event("checkout.session.async_payment_succeeded", succeeded)).status_code == 200
    assert (shop.balance(), shop.order()[0]) == (1000, "paid")


def test_a_delayed_payment_that_fails_fails_the_order(shop: Shop) -> None:
    """async_payment_failed: the order failed with the reason, nothing credited."""
    made = shop.buy()
    assert shop.send(event("checkout.session.async_payment_failed", made | {"status": "complete"})).status_code == 200
    row = shop.database.rows("SELECT status, failure FROM orders")[0]
    assert tuple(row) == ("failed", "the delayed payment failed (checkout.session.async_payment_failed)")
    assert shop.balance() == 0


def test_refunds_take_back_once_per_refunded_total(shop: Shop) -> None:
    """A 4.00 refund of 10.00 takes 400 credits, repeated nothing; the rest (10.00 in all) the other 600;
    an older total arriving late nothing."""
    completed = shop.paid()
    shop.send(completed)
    partial = event("charge.refunded", charge(1000, "usd", intent(completed), 400))
    full = event("charge.refunded", charge(1000, "usd", intent(completed), 1000))
    assert shop.send(partial).status_code == 200
    assert shop.send(partial).status_code == 200
    assert (shop.balance(), shop.order()) == (600, ("refunded", 400, 400))
    shop.send(full)
    shop.send(event("charge.refunded", charge(1000, "usd", intent(completed), 400)))
    assert (shop.balance(), shop.order()) == (0, ("refunded", 1000, 1000))
    assert shop.database.count("credit_transactions", "type = 'adjustment'") == 2


def test_a_dispute_takes_everything_back_once(shop: Shop) -> None:
    """charge.dispute.created twice (two events): the order's credits and bonus taken back once."""
    completed = shop.paid("pro")
    shop.send(completed)
    assert shop.balance() == 7000
    for _ in range(2):
        assert shop.send(event("charge.dispute.created", dispute(5000, "usd", intent(completed)))).status_code == 200
    assert (shop.balance(), shop.order()) == (0, ("disputed", 5000, 7000))


def test_a_dispute_after_a_partial_refund_takes_the_rest(shop: Shop) -> None:
    """3.00 of 10.00 refunded (300 credits back), then the rest disputed: the other 700, once."""
    completed = shop.paid()
    shop.send(completed)
    shop.send(event("charge.refunded", charge(1000, "usd", intent(completed), 300)))
    assert shop.balance() == 700
    for _ in range(2):
        shop.send(event("charge.dispute.created", dispute(700, "usd", intent(completed))))
    assert (shop.balance(), shop.order()) == (0, ("disputed", 1000, 1000))


@pytest.mark.parametrize("kind", ["refund", "dispute"])
def test_a_refund_or_dispute_before_its_payment_is_taken_back_after_it(shop: Shop, kind: str) -> None:
    """Reordered: the refund (or dispute) first waits as pending; the payment then credits and takes back
    at once; the payment's and the refund's redeliveries change nothing."""
    completed = shop.paid()
    back = (
        event("charge.refunded", charge(1000, "usd", intent(completed), 1000))
        if kind == "refund"
        else event("charge.dispute.created", dispute(1000, "usd", intent(completed)))
    )
    assert shop.send(back).json()["status"] == "pending"
    assert (shop.balance(), shop.order()[0]) == (0, "created")
    assert "took back 1000 credits" in shop.send(completed).json()["message"]
    for repeated in (completed, back, completed):
        assert shop.send(repeated).status_code == 200
    assert shop.balance() == 0
    assert shop.order() == ("refunded" if kind == "refund" else "disputed", 1000, 1000)
    assert {status for _, status in shop.events()} == {"processed"}


def test_the_first_purchase_bonus_comes_once_per_member(shop: Shop) -> None:
    """pro twice: 6,000 + the 1,000 first-purchase bonus, then 6,000 alone."""
    for _ in range(2):
        completed = shop.paid("pro")
        shop.send(completed)
        shop.send(completed)
    assert shop.balance() == 13000
    assert shop.database.rows("SELECT bonusGiven FROM orders ORDER BY id") == [(1000,), (0,)]


def test_a_wrong_amount_is_recorded_as_failed_and_answered_422(shop: Shop) -> None:
    """amount_total 1.00 for a 10.00 order: 422 (Stripe retries), the order failed with the reason."""
    completed = shop.paid()
    completed["data"]["object"] |= {"amount_total": 100}
    answer = shop.send(completed)
    assert (answer.status_code, answer.json()["message"]) == (422, "paid 1.00 USD, the order is 10.00 USD")
    assert (shop.order()[0], shop.balance()) == ("failed", 0)
    assert shop.events() == [("checkout.session.completed", "failed")]


def test_an_unknown_package_is_failed_then_applied_by_the_retry_after_the_fix(database: Database) -> None:
    """A session naming the member and a package not (yet) on sale: 422 and a failed order; the same
    event again once the operator has defined the package: the credits, once."""
    alice = make_user(database, "alice@example.com", 0)
    completed = event("checkout.session.completed", session(2000, "usd", user=alice, package="plus"))
    body, headers = signed(completed, SECRET)
    before, after = shop_settings(database), shop_settings(database)
    after = replace(after, credit_packages=parse_packages(PACKAGES + ",plus=2500:20.00:USD"))
    answers = []
    for settings in (before, after, after):
        with serving(create_app(settings, database.engine, clock=clock)) as url:
            answers.append(httpx.post(f"{url}/api/payments/stripe", content=body, headers=headers, timeout=30))
    assert [a.status_code for a in answers] == [422, 200, 200]
    assert answers[0].json()["message"] == "unknown package 'plus'"
    assert database.scalar("SELECT balance FROM users") == 2500
    assert database.scalar("SELECT status FROM orders") == "paid"


def test_a_session_naming_another_member_or_package_than_its_order_pays_nothing(shop: Shop) -> None:
    """A session that names a Buy order by its number but another member, or another package, fails with
    the reason (422), nothing credited; the order's own session then pays it."""
    bob = make_user(shop.database, "bob@example.com", 0)
    made = shop.buy("starter")
    trade_no = made["metadata"]["outTradeNo"]
    for user, package in ((bob, "starter"), (shop.alice, "pro")):
        forged = session(1000, "usd", user=user, package=package, out_trade_no=trade_no)
        answer = shop.send(event("checkout.session.completed", forged))
        assert answer.status_code == 422
        assert answer.json()["message"].startswith("the payment names ")
    assert shop.database.scalar("SELECT SUM(balance) FROM users") == 0
    assert shop.send(shop.stripe.completed(made["id"])).status_code == 200
    assert (shop.balance(), shop.database.scalar("SELECT balance FROM users WHERE id = :id", id=bob)) == (1000, 0)


def test_long_session_ids_and_package_names_are_never_cut(database: Database) -> None:
    """Stripe's 66-character session ids that share their first 64 are two orders, each paid; a package
    name that a known one of 32 characters begins is no package (failed, nothing credited)."""
    alice = make_user(database, "alice@example.com", 0)
    longest = "team-annual-plan-for-big-orgs-32"
    settings = replace(shop_settings(database), credit_packages=parse_packages(f"{longest}=1000:10.00:USD"))
    first, second = "cs_test_a1" + "B" * 54 + "AA", "cs_test_a1" + "B" * 54 + "ZZ"
    sessions = [session(1000, "usd", user=alice, package=longest, session_id=s) for s in (first, second)]
    sessions.append(session(1000, "usd", user=alice, package=longest + "-and-more"))
    with serving(create_app(settings, database.engine, clock=clock)) as url:
        answers = [
            httpx.post(f"{url}/api/payments/stripe", content=body, headers=headers, timeout=30)
            for body, headers in (signed(event("checkout.session.completed", s), SECRET) for s in sessions)
        ]
    assert [a.status_code for a in answers] == [200, 200, 422]
    assert answers[2].json()["message"] == f"unknown package '{longest}-and-more'"
    assert database.scalar("SELECT balance FROM users") == 2000
    assert database.scalar("SELECT COUNT(DISTINCT outTradeNo) FROM orders") == 3


def test_a_triggered_session_without_member_or_package_is_kept_as_failed(shop: Shop) -> None:
    """What ``stripe trigger checkout.session.completed`` sends: no client_reference_id, no metadata —
    an order recorded failed for the operator, nothing credited, answered 200: no fix could apply it."""
    answer = shop.send(event("checkout.session.completed", session(3000, "usd", user=None, package=None)))
    assert (answer.status_code, answer.json()["status"]) == (200, "failed")
    failed = tuple(shop.database.rows("SELECT status, failure FROM orders")[0])
    assert failed == ("failed", "the payment names no package")


def test_bad_or_stale_signatures_are_refused_and_record_nothing(shop: Shop) -> None:
    """Another secret, a timestamp 301 s old, a body changed after signing, no header: 400, nothing kept."""
    completed = shop.paid()
    stale = int(datetime.now().timestamp()) - 301
    body, headers = signed(completed, SECRET)
    answers = [
        shop.send(completed, secret="whsec_not_the_endpoint_secret"),
        shop.send(completed, timestamp=stale),
        shop.client.post("/api/payments/stripe", content=body.replace(b"1000", b"1001"), headers=headers),
        shop.client.post("/api/payments/stripe", content=body, headers={"Content-Type": "application/json"}),
    ]
    assert [a.status_code for a in answers] == [400] * 4
    assert answers[0].json()["message"].startswith("Invalid Stripe-Signature")
    assert (shop.events(), shop.balance(), shop.order()[0]) == ([], 0, "created")


def test_every_v1_signature_is_tried(shop: Shop) -> None:
    """During a secret's roll Stripe signs with both: a header whose second v1 is the right one is taken."""
    body, headers = signed(shop.paid(), SECRET)
    t, v1 = headers["Stripe-Signature"].split(",")
    headers["Stripe-Signature"] = f"{t},v1={'0' * 64},{v1}"
    assert shop.client.post("/api/payments/stripe", content=body, headers=headers).status_code == 200
    assert shop.balance() == 1000


def test_other_events_are_recorded_and_ignored(shop: Shop) -> None:
    """payment_intent.succeeded: 200, kept as ignored, nothing credited."""
    other = event("payment_intent.succeeded", {"id": "pi_test_1", "object": "payment_intent", "amount": 1000})
    assert shop.send(other).json()["status"] == "ignored"
    assert shop.events() == [("payment_intent.succeeded", "ignored")]


def test_what_is_not_a_stripe_event_is_a_400_or_413(shop: Shop) -> None:
    """Signed but not an event, a session without amount_total, a body over 256 KiB: refused, nothing kept."""
    assert shop.send({"hello": "world"}).status_code == 400
    broken = shop.paid()
    del broken["data"]["object"]["amount_total"]
    answer = shop.send(broken)
    assert (answer.status_code, answer.json()["message"]) == (
        400, "data.object.amount_total: must be a whole number of minor units, 0 to 1000000000000000"
    )  # fmt: skip
    huge = event("customer.updated", {"id": "cus_1", "object": "customer", "note": "x" * 300_000})
    assert shop.send(huge).status_code == 413
    assert shop.events() == []


def test_stripe_refusing_the_session_fails_the_order(shop: Shop) -> None:
    """Stripe's API answering an error: 502 to the member, the order failed with Stripe's reason."""
    shop.stripe.fail = 500
    answer = shop.client.post(
        "/api/portal/orders", json={"package": "starter", "provider": "stripe"},
        headers={"Authorization": f"Bearer {shop.token}"},
    )  # fmt: skip
    assert answer.status_code == 502
    assert "nothing was charged" in answer.json()["message"]
    status, failure = shop.database.rows("SELECT status, failure FROM orders")[0]
    assert status == "failed"
    assert failure.startswith("Stripe refused the checkout")


def test_stripe_not_answering_is_a_503_and_fails_the_order(database: Database) -> None:
    """Stripe's API out of reach (nothing listening): 503 to the member, the order failed, nothing charged."""
    alice = make_user(database, "alice@example.com", 0)
    settings = shop_settings(database)
    token = in_transaction(database, lambda c: issue_link(c, alice, settings.portal_keys[0], NOW)).path[8:]
    app = create_app(settings, database.engine, clock=clock, stripe_api_base=f"http://127.0.0.1:{free_port()}")
    with serving(app) as url:
        answer = httpx.post(
            f"{url}/api/portal/orders", json={"package": "starter", "provider": "stripe"},
            headers={"Authorization": f"Bearer {token}"}, timeout=30,
        )  # fmt: skip
    assert (answer.status_code, answer.json()["message"]) == (
        503, "Stripe did not answer; nothing was charged. Try again in a minute"
    )  # fmt: skip
    assert database.scalar("SELECT status FROM orders") == "failed"


def test_a_database_outage_is_a_503_then_the_retry_pays(database: Database) -> None:
    """The database away: 503 (Stripe retries), nothing written; Stripe's retry afterwards credits once."""
    alice = make_user(database, "alice@example.com", 0)
    completed = event("checkout.session.completed", session(1000, "usd", user=alice, package="starter"))
    body, headers = signed(completed, SECRET)
    with database.fragile_engine() as (engine, outage), serving(create_app(shop_settings(database), engine)) as url:
        with outage():
            answer = httpx.post(f"{url}/api/payments/stripe", content=body, headers=headers, timeout=30)
        assert answer.status_code == 503
        assert database.count("stripe_events") == database.count("orders") == 0
        retried = httpx.post(f"{url}/api/payments/stripe", content=body, headers=headers, timeout=30)
    assert retried.status_code == 200, retried.text
    assert database.scalar("SELECT balance FROM users") == 1000


def test_stripe_settings_are_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """STRIPE_API_KEY without PUBLIC_BASE_URL, a secret that is not whsec_, the stripe package missing:
    each refused with a message naming the setting."""
    base = {"WEBHOOK_SECRET": "w" * 40}

    def refused(environ: dict[str, str]) -> str:
        with pytest.raises(SettingsError) as error:
            load_settings(base | environ, env_file=None, dev_secret_file=None)
        return str(error.value)

    assert refused({"STRIPE_API_KEY": API_KEY}).startswith("STRIPE_API_KEY needs PUBLIC_BASE_URL")
    assert refused({"STRIPE_WEBHOOK_SECRET": "secret"}).startswith("STRIPE_WEBHOOK_SECRET must be")
    loaded = load_settings(base | {"STRIPE_WEBHOOK_SECRET": SECRET}, env_file=None, dev_secret_file=None)
    assert loaded.stripe_webhook_secret == SECRET
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "stripe" else ...)
    assert "pip install 'creditrelay[stripe]'" in refused({"STRIPE_WEBHOOK_SECRET": SECRET})
