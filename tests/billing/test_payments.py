"""billing/orders.py and billing/payments.py: a paid order tops up once however often and however
concurrently it is reported; the bonus is a promo grant, a first-purchase bonus once per member; a payment
that cannot be applied is recorded as failed and applied once after the fix; refunds take credits back once."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing.orders import create_order, find_order, list_orders, set_session
from creditrelay.billing.payments import (
    Payment,
    PaymentOutcome,
    PaymentStatus,
    TakeBackStatus,
    apply_payment,
    take_back,
)
from creditrelay.billing.rules import LedgerRules
from creditrelay.schema.packages import CreditPackage, parse_packages
from creditrelay.schema.tables import credit_grants
from tests.support.database import Database
from tests.support.ledger import NOW, assert_ledger_consistent, concurrently, in_transaction, make_user

PACKAGES = parse_packages("starter=1000:10.00:CNY,pro=6000:50.00:CNY:+1000first:30d,big=5000:40.00:CNY:+500")
STARTER, PRO, BIG = PACKAGES


def order(database: Database, user: int, package: CreditPackage, provider: str = "epay") -> str:
    return in_transaction(database, lambda c: create_order(c, user, package, provider, NOW)).out_trade_no


def pay(database: Database, trade_no: str, amount: int, *, packages: tuple[CreditPackage, ...] = PACKAGES,
        **more: str) -> PaymentOutcome:  # fmt: skip
    payment = Payment("epay", trade_no, amount, "CNY", **more)
    return in_transaction(database, lambda c: apply_payment(c, payment, packages, NOW))


def balance(database: Database) -> int:
    return int(database.scalar("SELECT balance FROM users"))


def test_a_paid_order_tops_up_once_however_often_it_is_reported(database: Database) -> None:
    """The first report applies the package's credits and marks the order paid; the repeats change nothing."""
    alice = make_user(database, "alice@example.com", 0)
    trade_no = order(database, alice, STARTER)
    outcomes = [pay(database, trade_no, 1000, provider_trade_no="2026120611") for _ in range(3)]
    assert [o.status for o in outcomes] == [PaymentStatus.APPLIED, PaymentStatus.DUPLICATE, PaymentStatus.DUPLICATE]
    assert (outcomes[0].order.status, outcomes[0].order.paid_at, balance(database)) == ("paid", NOW, 1000)
    assert database.count("credit_transactions", "type = 'topup'") == 1
    assert_ledger_consistent(database)


def test_concurrent_reports_of_one_payment_apply_it_once(database: Database) -> None:
    """Four reports of the same order at once: one applies, the others find it paid."""
    alice = make_user(database, "alice@example.com", 0)
    trade_no = order(database, alice, BIG)
    payment = Payment("epay", trade_no, 4000, "CNY")
    outcomes = concurrently(database, [payment] * 4, lambda c, p: apply_payment(c, p, PACKAGES, NOW))
    assert sorted(o.status for o in outcomes) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert balance(database) == 5500
    assert_ledger_consistent(database)


def test_concurrent_reports_of_a_payment_creditrelay_did_not_start_make_one_order(database: Database) -> None:
    """A Stripe session made elsewhere, reported four times at once, becomes one paid order."""
    alice = make_user(database, "alice@example.com", 0)
    payment = Payment("stripe", "cs_test_1", 1000, "cny", member=str(alice), package="starter", session_id="cs_test_1")
    outcomes = concurrently(database, [payment] * 4, lambda c, p: apply_payment(c, p, PACKAGES, NOW))
    assert sorted(o.status for o in outcomes) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert database.count("orders") == 1
    assert balance(database) == 1000


def test_the_bonus_is_a_promo_grant_and_a_first_purchase_bonus_comes_once(database: Database) -> None:
    """pro gives 1000 bonus credits on the member's first purchase only, as a promo grant expiring in 30
    days; big's bonus comes with every purchase."""
    alice = make_user(database, "alice@example.com", 0)
    bob = make_user(database, "bob@example.com", 0)
    first, second = order(database, alice, PRO), order(database, alice, PRO)
    assert pay(database, first, 5000).order.bonus_given == 1000
    assert pay(database, second, 5000).order.bonus_given == 0
    bobs = order(database, bob, PRO)
    assert pay(database, bobs, 5000).order.bonus_given == 1000  # another member's first purchase
    extra = order(database, alice, BIG)
    assert pay(database, extra, 4000).order.bonus_given == 500
    query = sa.select(credit_grants).order_by(credit_grants.c.id)
    grants = in_transaction(database, lambda c: c.execute(query).all())
    assert [(g.userId, g.kind, g.amount) for g in grants] == [(alice, "promo", 1000), (bob, "promo", 1000),
                                                               (alice, "promo", 500)]  # fmt: skip
    assert grants[0].expiresAt == NOW + timedelta(days=30)
    assert grants[2].expiresAt is None
    assert database.scalar(f"SELECT balance FROM users WHERE id = {alice}") == 6000 + 1000 + 6000 + 5500
    assert_ledger_consistent(database)


def test_a_first_purchase_bonus_goes_with_the_first_paid_order_only(database: Database) -> None:
    """A member whose first purchase was starter gets no first-purchase bonus on pro; two first orders
    paid at once give one bonus."""
    alice = make_user(database, "alice@example.com", 0)
    pay(database, order(database, alice, STARTER), 1000)
    assert pay(database, order(database, alice, PRO), 5000).order.bonus_given == 0
    bob = make_user(database, "bob@example.com", 0)
    both = [Payment("epay", order(database, bob, PRO), 5000, "CNY") for _ in range(2)]
    outcomes = concurrently(database, both, lambda c, p: apply_payment(c, p, PACKAGES, NOW))
    assert sorted(o.order.bonus_given for o in outcomes) == [0, 1000]
    assert database.count("orders", "firstOfUser IS NOT NULL") == 2
    assert_ledger_consistent(database)


def test_a_wrong_amount_is_recorded_as_failed_and_the_right_one_applies_once(database: Database) -> None:
    """9.00 paid for a 10.00 order: failed with the reason, nothing credited; then 10.00 applies once."""
    alice = make_user(database, "alice@example.com", 0)
    trade_no = order(database, alice, STARTER)
    wrong = pay(database, trade_no, 900)
    assert (wrong.status, wrong.reason) == (PaymentStatus.FAILED, "paid 9.00 CNY, the order is 10.00 CNY")
    assert (find_order_status(database, trade_no), balance(database)) == (("failed", wrong.reason), 0)
    assert [pay(database, trade_no, 1000).status for _ in range(2)] == ["applied", "duplicate"]
    assert find_order_status(database, trade_no) == ("paid", None)
    assert balance(database) == 1000


def find_order_status(database: Database, trade_no: str) -> tuple[str, str | None]:
    found = in_transaction(database, lambda c: find_order(c, reference=f"epay:{trade_no}"))
    return found.status, found.failure


def test_unknown_member_and_package_are_recorded_then_applied_once_after_the_fix(database: Database) -> None:
    """A payment naming a member nobody is and a package not defined is kept as a failed order; once the
    member exists and the package is defined, the provider's retry applies it once."""
    payment = {"member": "carol@example.com", "package": "mega"}  # the names the provider reports
    first = pay(database, "elsewhere-1", 9900, member=payment["member"], package=payment["package"])
    assert (first.status, first.reason) == (PaymentStatus.FAILED, "unknown package 'mega'")
    mega = parse_packages("mega=20000:99.00:CNY")
    second = pay(database, "elsewhere-1", 9900, packages=mega, member=payment["member"], package=payment["package"])
    assert second.reason == "unknown member 'carol@example.com'"
    carol = make_user(database, "carol@example.com", 0)
    outcomes = [
        pay(database, "elsewhere-1", 9900, packages=mega, member=payment["member"], package=payment["package"])
        for _ in range(2)
    ]
    assert [o.status for o in outcomes] == ["applied", "duplicate"]
    assert (outcomes[0].order.user_id, outcomes[0].order.credits, balance(database)) == (carol, 20000, 20000)
    assert database.count("orders") == 1
    assert_ledger_consistent(database)


def test_a_stripe_session_finds_the_order_it_was_made_for(database: Database) -> None:
    """The session id recorded at creation leads the payment to its order, whatever number it carries."""
    alice = make_user(database, "alice@example.com", 0)
    made = in_transaction(database, lambda c: create_order(c, alice, STARTER, "stripe", NOW))
    in_transaction(database, lambda c: set_session(c, made.id, "cs_live_9", NOW))
    payment = Payment("stripe", "cs_live_9", 1000, "cny", session_id="cs_live_9", payment_intent_id="pi_9")
    outcome = in_transaction(database, lambda c: apply_payment(c, payment, PACKAGES, NOW))
    assert (outcome.status, outcome.order.id, outcome.order.payment_intent_id) == ("applied", made.id, "pi_9")
    assert database.count("orders") == 1


def test_refunds_take_credits_back_once_per_total_and_may_overdraw(database: Database) -> None:
    """Half refunded takes half the credits and bonus back; the same total again nothing; a dispute of the
    rest the rest — below zero once spent, the user then owing."""
    alice = make_user(database, "alice@example.com", 0)
    trade_no = order(database, alice, BIG)
    paid = pay(database, trade_no, 4000).order  # 5000 + 500 bonus

    def back(refunded: int | None, status: str = "refunded") -> object:
        return in_transaction(database, lambda c: take_back(c, paid, refunded, status, "refund", NOW))

    assert back(2000).credits == 2750  # type: ignore[attr-defined]
    assert back(2000).status == TakeBackStatus.DUPLICATE  # type: ignore[attr-defined]
    in_transaction(database, lambda c: _spend(c, alice, 2000))
    disputed = back(None, "disputed")
    assert (disputed.credits, disputed.order.status) == (2750, "disputed")  # type: ignore[attr-defined]
    assert balance(database) == 5500 - 2750 - 2000 - 2750
    assert back(None, "disputed").status == TakeBackStatus.DUPLICATE  # type: ignore[attr-defined]
    assert_ledger_consistent(database)


def _spend(connection: Connection, user: int, amount: int) -> None:
    from creditrelay.billing.accounts import adjust

    adjust(connection, user, -amount, "spent", "spent meanwhile", NOW)


def test_a_payment_resumes_a_suspended_member_and_its_refund_suspends_again(database: Database) -> None:
    """With enforcement on, a member at zero is suspended; the paid order resumes them, like any top-up,
    and the refund that takes the balance back to zero suspends them, like any correction."""
    database.rule(LedgerRules(enforce=True))
    alice = make_user(database, "alice@example.com", 0, "17")
    assert database.scalar("SELECT desired FROM gateway_states") == "suspend"
    paid = pay(database, order(database, alice, STARTER), 1000).order
    assert database.scalar("SELECT desired FROM gateway_states") == "resume"
    in_transaction(database, lambda c: take_back(c, paid, None, "refunded", "refund", NOW))
    assert (balance(database), database.scalar("SELECT desired FROM gateway_states")) == (0, "suspend")


def test_an_unpaid_order_has_nothing_to_take_back_and_orders_list_newest_first(database: Database) -> None:
    """A refund of an order never paid changes nothing; a member's orders list newest first."""
    alice = make_user(database, "alice@example.com", 0)
    made = in_transaction(database, lambda c: create_order(c, alice, STARTER, "epay", NOW))
    result = in_transaction(database, lambda c: take_back(c, made, None, "refunded", "refund", NOW))
    assert result.status == TakeBackStatus.NOT_PAID
    later = in_transaction(database, lambda c: create_order(c, alice, PRO, "epay", NOW))
    listed = in_transaction(database, lambda c: list_orders(c, user_id=alice))
    assert [o.id for o in listed] == [later.id, made.id]


@pytest.mark.parametrize("amount", [-1, 10**16])
def test_an_amount_out_of_bounds_is_refused(database: Database, amount: int) -> None:
    """An amount paid below zero or past the bound is refused before anything is written."""
    with pytest.raises(ValueError, match="amount paid"):
        pay(database, "x1", amount)
    assert database.count("orders") == 0


def test_a_payment_naming_no_package_is_recorded_as_such(database: Database) -> None:
    """A payment for an order creditrelay never made, naming no package: failed, saying so."""
    outcome = pay(database, "made-elsewhere-2", 1000)
    assert (outcome.status, outcome.reason) == (PaymentStatus.FAILED, "the payment names no package")
    assert database.count("orders", "status = 'failed'") == 1
