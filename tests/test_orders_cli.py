"""``order list`` as an operator runs it, on every database: everyone's orders newest first, one member's,
the failed ones with their reason; an unknown member is one line on stderr."""

from datetime import datetime

from creditrelay.billing.orders import create_order
from creditrelay.billing.payments import Payment, apply_payment
from creditrelay.schema.packages import parse_packages
from tests.support.cli import ok, run
from tests.support.database import Database
from tests.support.ledger import in_transaction, make_user

NOW = datetime(2026, 3, 10, 12)
PACKAGES = parse_packages("starter=1000:10.00:CNY,pro=6000:50.00:CNY:+1000first")


def test_order_list_shows_orders_newest_first_by_member_and_status(database: Database) -> None:
    """ann paid pro (with its first-purchase bonus), bob's payment was short and failed."""
    ann = make_user(database, "ann@example.com", 0)
    bob = make_user(database, "bob@example.com", 0)
    paid = in_transaction(database, lambda c: create_order(c, ann, PACKAGES[1], "epay", NOW))
    short = in_transaction(database, lambda c: create_order(c, bob, PACKAGES[0], "epay", NOW))
    for order, amount in ((paid, 5000), (short, 100)):
        payment = Payment("epay", order.out_trade_no, amount, "CNY")
        in_transaction(database, lambda c, p=payment: apply_payment(c, p, PACKAGES, NOW))  # type: ignore[misc]

    everyone = ok(database, "order", "list")["orders"]
    assert [(o["userId"], o["package"], o["status"]) for o in everyone] == [(bob, "starter", "failed"),
                                                                            (ann, "pro", "paid")]  # fmt: skip
    assert everyone[1] | {"createdAt": None, "paidAt": None} == {
        "id": paid.id, "provider": "epay", "outTradeNo": paid.out_trade_no, "userId": ann, "member": str(ann),
        "package": "pro", "credits": 6000, "bonus": 1000, "amount": "50.00", "currency": "CNY", "status": "paid",
        "failure": None, "refunded": "0.00", "takenBack": 0, "sessionId": None, "paymentIntentId": None,
        "createdAt": None, "paidAt": None,
    }  # fmt: skip
    assert [o["id"] for o in ok(database, "order", "list", "--user", "ann@example.com")["orders"]] == [paid.id]
    failed = ok(database, "order", "list", "--status", "failed")["orders"]
    assert [o["failure"] for o in failed] == ["paid 1.00 CNY, the order is 10.00 CNY"]
    missing = run(database, "order", "list", "--user", "nobody@example.com")
    assert missing.returncode == 1
    assert "no user" in missing.stderr
