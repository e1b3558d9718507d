"""EPay over HTTP on every database: the portal's order answers a submit URL signed as EPay checks it; the
notify EPay sends (GET or POST form) is applied once and answered ``success``; a wrong ``money`` is refused
and recorded on the order, then the right one applies; a bad signature changes nothing; other statuses are
acknowledged without effect. The test plays EPay: it signs with its own implementation of the scheme."""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from creditrelay.billing.portal import issue_link
from creditrelay.receiver.app import create_app
from creditrelay.schema.packages import parse_packages
from tests.support.database import Database
from tests.support.fake_epay import epay_signature
from tests.support.ledger import in_transaction, make_user
from tests.support.receiver import settings_for
from tests.support.server import serving

NOW = datetime(2026, 3, 10, 12)
KEY = "epay-merchant-key-0123456789"
PID = "1001"
GATEWAY = "https://pay.example.com/submit.php"


def sign(params: dict[str, str], key: str = KEY) -> str:
    return epay_signature(params, key)


@dataclass
class Shop:
    client: httpx.Client
    token: str
    alice: int
    database: Database


@pytest.fixture
def shop(database: Database) -> Iterator[Shop]:
    alice = make_user(database, "alice@example.com", 0)
    settings = replace(
        settings_for(database),
        credit_packages=parse_packages("starter=1000:10.00:CNY,pro=6000:50.00:CNY:+1000first,us=100:1.00:USD"),
        public_base_url="https://billing.example.com",
        epay_url=GATEWAY, epay_pid=PID, epay_key=KEY,
    )  # fmt: skip
    link = in_transaction(database, lambda c: issue_link(c, alice, settings.portal_keys[0], NOW))
    token = link.path.rsplit("/", 1)[1]
    app = create_app(settings, database.engine, clock=lambda: (NOW - datetime(1970, 1, 1)).total_seconds())
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Shop(client, token, alice, database)


def buy(shop: Shop, package: str, **more: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {shop.token}"}
    return shop.client.post(
        "/api/portal/orders", json={"package": package, "provider": "epay", **more}, headers=headers
    )


def submitted(shop: Shop, package: str = "starter") -> dict[str, str]:
    """What the member's browser takes to EPay: the submit URL's parameters, its signature checked."""
    answer = buy(shop, package, type="wxpay")
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    url = urlsplit(data["redirectUrl"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == GATEWAY
    params = dict(parse_qsl(url.query))
    assert params["sign"] == sign(params)
    assert params["out_trade_no"] == data["outTradeNo"]
    return params


def notify(shop: Shop, order: dict[str, str], *, money: str | None = None, status: str = "TRADE_SUCCESS",
           key: str = KEY, method: str = "GET") -> httpx.Response:  # fmt: skip
    """EPay's notify for the order, to the notify_url it was given."""
    params = {
        "pid": PID, "trade_no": "2026031012000001", "out_trade_no": order["out_trade_no"], "type": order["type"],
        "name": order["name"], "money": money or order["money"], "trade_status": status,
    }  # fmt: skip
    params |= {"sign": sign(params, key), "sign_type": "MD5"}
    path = urlsplit(order["notify_url"]).path
    if method == "GET":
        return shop.client.get(path, params=params)
    return shop.client.post(path, data=params)


def balance(shop: Shop) -> int:
    return int(shop.database.scalar("SELECT balance FROM users"))


def test_the_submit_url_carries_the_order_as_epay_expects(shop: Shop) -> None:
    """pid, type, out_trade_no, notify_url, return_url, name, money with two decimals, sign, sign_type=MD5."""
    params = submitted(shop)
    assert params["pid"] == PID
    assert params["type"] == "wxpay"
    assert params["money"] == "10.00"
    assert params["name"] == "starter"
    assert params["sign_type"] == "MD5"
    assert params["notify_url"] == "https://billing.example.com/api/payments/epay"
    assert params["return_url"] == "https://billing.example.com/payments/return"
    assert shop.database.scalar("SELECT status FROM orders") == "created"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_notify_is_applied_once_and_answered_success(shop: Shop, method: str) -> None:
    """The same notify three times: credits once, ``success`` every time."""
    order = submitted(shop)
    answers = [notify(shop, order, method=method) for _ in range(3)]
    assert [(a.status_code, a.text) for a in answers] == [(200, "success")] * 3
    assert balance(shop) == 1000
    assert shop.database.scalar("SELECT status FROM orders") == "paid"
    assert shop.database.scalar("SELECT providerTradeNo FROM orders") == "2026031012000001"


def test_wrong_money_is_refused_and_recorded_then_the_right_money_applies(shop: Shop) -> None:
    """money 1.00 for a 10.00 order: not ``success``, the order failed with the reason, nothing credited."""
    order = submitted(shop)
    wrong = notify(shop, order, money="1.00")
    assert (wrong.status_code, wrong.text) == (400, "fail")
    assert shop.database.scalar("SELECT failure FROM orders") == "paid 1.00 CNY, the order is 10.00 CNY"
    assert balance(shop) == 0
    assert notify(shop, order).text == "success"
    assert balance(shop) == 1000


def test_a_paid_orders_notify_with_other_money_is_refused_and_changes_nothing(shop: Shop) -> None:
    """Once paid, a notify naming other money is ``fail`` (400), the order still paid, nothing credited."""
    order = submitted(shop)
    assert notify(shop, order).text == "success"
    other = notify(shop, order, money="99.00")
    assert (other.status_code, other.text) == (400, "fail")
    assert (shop.database.scalar("SELECT status FROM orders"), balance(shop)) == ("paid", 1000)


def test_a_notify_without_our_pid_or_with_other_digits_is_refused(shop: Shop) -> None:
    """A signed notify that leaves out ``pid``, or writes its money in non-ASCII digits: 400, nothing paid."""
    order = submitted(shop)
    base = {"trade_no": "1", "out_trade_no": order["out_trade_no"], "type": order["type"], "name": order["name"],
            "trade_status": "TRADE_SUCCESS"}  # fmt: skip
    for params in (base | {"money": "10.00"}, base | {"pid": PID, "money": "\uff11\uff10.00"}):
        params |= {"sign": sign(params), "sign_type": "MD5"}
        assert shop.client.get("/api/payments/epay", params=params).status_code == 400
    assert (shop.database.scalar("SELECT status FROM orders"), balance(shop)) == ("created", 0)


def test_a_bad_signature_changes_nothing(shop: Shop) -> None:
    """Signed with another key, or tampered after signing: 400, not ``success``, nothing recorded."""
    order = submitted(shop)
    forged = notify(shop, order, key="not-the-merchant-key")
    assert (forged.status_code, forged.text) == (400, "fail")
    params = {"pid": PID, "out_trade_no": order["out_trade_no"], "money": "10.00", "trade_status": "TRADE_SUCCESS"}
    params["sign"] = sign(params)
    params["money"] = "0.01"
    assert shop.client.get("/api/payments/epay", params=params).status_code == 400
    assert shop.client.get("/api/payments/epay").status_code == 400
    assert shop.database.scalar("SELECT status FROM orders") == "created"
    assert shop.database.scalar("SELECT failure FROM orders") is None
    assert balance(shop) == 0


def test_other_statuses_are_acknowledged_without_effect(shop: Shop) -> None:
    """A signed notify of a trade not (yet) successful: ``success``, so EPay stops; nothing changes."""
    order = submitted(shop)
    assert notify(shop, order, status="WAIT_BUYER_PAY").text == "success"
    assert (shop.database.scalar("SELECT status FROM orders"), balance(shop)) == ("created", 0)


def test_an_unknown_order_is_recorded_as_failed(shop: Shop) -> None:
    """A signed notify naming no order creditrelay made: kept as a failed order, not ``success``."""
    order = submitted(shop) | {"out_trade_no": "made-elsewhere-1"}
    assert notify(shop, order).status_code == 400
    row = shop.database.rows("SELECT status, failure FROM orders WHERE outTradeNo = 'made-elsewhere-1'")
    assert [tuple(r) for r in row] == [("failed", "the payment names no member")]


def test_ordering_refuses_what_cannot_be_bought(shop: Shop) -> None:
    """An unknown package, a non-CNY price, an unknown provider field, a bad token, Stripe unconfigured."""
    assert "no package 'mega'" in buy(shop, "mega").json()["message"]
    assert "CNY" in buy(shop, "us").json()["message"]
    assert buy(shop, "starter", colour="red").status_code == 400
    assert buy(shop, "starter", type="Not a type").status_code == 400
    stripe = shop.client.post(
        "/api/portal/orders", json={"package": "starter", "provider": "stripe"},
        headers={"Authorization": f"Bearer {shop.token}"},
    )  # fmt: skip
    assert (stripe.status_code, stripe.json()["message"]) == (
        503, "Stripe is not configured (STRIPE_API_KEY, PUBLIC_BASE_URL)"
    )  # fmt: skip
    wrong = shop.client.post("/api/portal/orders", json={"package": "starter", "provider": "epay"},
                             headers={"Authorization": "Bearer nope"})  # fmt: skip
    assert wrong.status_code == 404
    assert shop.database.count("orders") == 0
