"""billing/grants.py: grants spent in priority → expiry → age order, the pool last; debt first; expiry and
void as ``expiry`` transactions, once, keeping ``balance = Σ transactions``."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import adjust, top_up
from creditrelay.billing.expiry import ExpiryReport, expire_once
from creditrelay.billing.grants import GrantError, GrantTerms, grants_of, void_grant
from creditrelay.billing.ledger import CreditChange, CreditStatus, apply_credit
from creditrelay.billing.rules import LedgerRules
from creditrelay.billing.usage import Usage, apply_usage
from tests.support.database import Database
from tests.support.ledger import NOW, assert_ledger_consistent, in_transaction, make_user

LATER = NOW + timedelta(days=30)


def usage(key: str, cost: int, at: datetime = NOW) -> Usage:
    return Usage(usage_key=key, remote_key_id="k1", model="gpt-4", credit_cost=cost, used_at=at, source="webhook")


def grant(database: Database, user: int, amount: int, ref: str, **terms: object) -> None:
    given = GrantTerms(**terms)  # type: ignore[arg-type]
    in_transaction(database, lambda c: top_up(c, user, amount, ref, NOW, terms=given))


def remaining(database: Database) -> dict[str, tuple[int, str]]:
    rows = database.rows("SELECT reference, remaining, state FROM credit_grants ORDER BY id")
    return {r.reference.removeprefix("topup:"): (r.remaining, r.state) for r in rows}


def balance(database: Database) -> int:
    return int(database.scalar("SELECT balance FROM users"))


def charge(database: Database, *usages: Usage, at: datetime = NOW) -> None:
    in_transaction(database, lambda c: apply_usage(c, list(usages), at))


def test_grants_are_spent_by_priority_then_expiry_then_age_and_the_pool_last(database: Database) -> None:
    """Usage takes the lowest priority number first; within it the soonest expiry, then the oldest; a grant
    without priority after all that have one; the credits without expiry or grant last."""
    alice = make_user(database, "alice@example.com", 100, "k1")  # the pool: 100
    grant(database, alice, 10, "no-priority", expires_at=NOW + timedelta(days=1))
    grant(database, alice, 10, "p5-late", priority=5, expires_at=NOW + timedelta(days=9))
    grant(database, alice, 10, "p5-soon", priority=5, expires_at=NOW + timedelta(days=2))
    grant(database, alice, 10, "p5-never", priority=5)
    grant(database, alice, 10, "p1-promo", priority=1, kind="promo")
    grant(database, alice, 10, "p5-soon-too", priority=5, expires_at=NOW + timedelta(days=2))
    assert database.scalar("SELECT liveGrants FROM users") == 6
    charge(database, usage("u1", 25))  # p1-promo, p5-soon, half of p5-soon-too
    assert remaining(database) == {
        "no-priority": (10, "live"),
        "p5-late": (10, "live"),
        "p5-soon": (0, "spent"),
        "p5-never": (10, "live"),
        "p1-promo": (0, "spent"),
        "p5-soon-too": (5, "live"),
    }
    charge(database, usage("u2", 30))  # the rest of p5-soon-too, p5-late, p5-never, half of no-priority
    assert remaining(database)["no-priority"] == (5, "live")
    assert remaining(database)["p5-never"] == (0, "spent")
    charge(database, usage("u3", 50))  # no-priority's 5, then 45 of the pool
    assert balance(database) == 160 - 105
    assert all(state == "spent" for _, state in remaining(database).values())
    assert database.scalar("SELECT liveGrants FROM users") == 0
    shown = in_transaction(database, lambda c: grants_of(c, alice))
    assert (shown.granted_used, shown.purchased_used, shown.live) == (60, 45, [])
    assert_ledger_consistent(database)


def test_deductions_and_corrections_spend_grants_in_the_same_order(database: Database) -> None:
    """A credit API deduction and an operator's correction take from the grants first, in order."""
    alice = make_user(database, "alice@example.com", 50, "k1")
    grant(database, alice, 20, "promo", priority=1, kind="promo")
    grant(database, alice, 20, "month", expires_at=LATER)
    deduction = CreditChange(alice, -25, "sync:bot:d1", "sync", source="bot")
    assert in_transaction(database, lambda c: apply_credit(c, deduction, NOW)).status is CreditStatus.APPLIED
    assert remaining(database) == {"promo": (0, "spent"), "month": (15, "live")}
    in_transaction(database, lambda c: adjust(c, alice, -20, "fix-1", "charged twice", NOW))
    assert remaining(database) == {"promo": (0, "spent"), "month": (0, "spent")}
    assert balance(database) == 45
    refused = CreditChange(alice, -100, "sync:bot:d2", "sync", source="bot")  # never overdraws: nothing moves
    assert in_transaction(database, lambda c: apply_credit(c, refused, NOW)).status is CreditStatus.INSUFFICIENT
    assert_ledger_consistent(database)


def test_a_grant_given_in_debt_pays_the_debt_first(database: Database) -> None:
    """Only what is left above zero becomes the grant's remaining, so grants never hold more than the
    balance."""
    alice = make_user(database, "alice@example.com", 10, "k1")
    charge(database, usage("u1", 40))  # -30
    grant(database, alice, 20, "small", expires_at=LATER)  # -10: all of it paid debt
    grant(database, alice, 50, "big", expires_at=LATER)  # 40
    assert remaining(database) == {"small": (0, "spent"), "big": (40, "live")}
    assert balance(database) == 40
    assert_ledger_consistent(database)


def test_a_plain_top_up_makes_no_grant_and_bad_terms_are_refused(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 0, "k1")
    grant(database, alice, 10, "plain")
    assert database.count("credit_grants") == 0
    with pytest.raises(GrantError, match="expires-at"):
        grant(database, alice, 10, "past", expires_at=NOW - timedelta(seconds=1))
    with pytest.raises(GrantError, match="kind"):
        grant(database, alice, 10, "odd", kind="gift")


def test_expiry_takes_the_remainder_as_its_own_transaction_once(database: Database) -> None:
    """The pass ends a grant past its expiry with an ``expiry`` transaction for what is left; balances
    stay the sum of transactions; a second pass does nothing."""
    alice = make_user(database, "alice@example.com", 5, "k1")
    grant(database, alice, 30, "trial", kind="promo", expires_at=NOW + timedelta(days=1))
    charge(database, usage("u1", 12))
    report = expire_once(database.engine, lambda: NOW + timedelta(days=1))
    assert (report.grants, balance(database)) == (1, 5)
    [row] = database.rows("SELECT type, amount, reference FROM credit_transactions WHERE type = 'expiry'")
    assert (row.amount, row.reference) == (-18, f"grant:{database.scalar('SELECT id FROM credit_grants')}:end")
    assert remaining(database) == {"trial": (0, "expired")}
    assert expire_once(database.engine, lambda: NOW + timedelta(days=2)).grants == 0
    assert database.count("credit_transactions", "type = 'expiry'") == 1
    assert_ledger_consistent(database)


def test_a_grant_past_its_expiry_is_not_spent_by_a_later_usage(database: Database) -> None:
    """Whatever locks the user first ends the grants past their expiry: a usage after it is charged to the
    pool (overdrawing it), not to the expired grant."""
    make_user(database, "alice@example.com", 0, "k1")
    alice = int(database.scalar("SELECT id FROM users"))
    grant(database, alice, 30, "trial", expires_at=NOW + timedelta(hours=1))
    charge(database, usage("u1", 10, NOW + timedelta(hours=2)), at=NOW + timedelta(hours=2))
    assert balance(database) == -10
    types = [r.type for r in database.rows("SELECT type FROM credit_transactions ORDER BY id")]
    assert types == ["topup", "expiry", "usage"]
    assert_ledger_consistent(database)


def test_an_expiry_crossing_the_line_suspends_and_alerts(database: Database) -> None:
    """An expiry that takes the balance to the suspension line writes the intent and the alert, as any
    other change does."""
    database.rule(LedgerRules(enforce=True, alerts=True))
    alice = make_user(database, "alice@example.com", 0, "k1")
    grant(database, alice, 30, "trial", expires_at=NOW + timedelta(days=1))
    assert database.scalar("SELECT desired FROM gateway_states") == "resume"
    expire_once(database.engine, lambda: LATER)
    assert database.scalar("SELECT desired FROM gateway_states") == "suspend"
    assert database.count("outbox_events", "body LIKE '%balance.depleted%'") == 1


def test_two_passes_at_once_expire_each_grant_once(database: Database) -> None:
    """Passes racing on two connections (two instances) end every grant once between them."""
    users = [make_user(database, f"u{i}@example.com", 1, f"k{i}") for i in range(6)]
    for user in users:
        for n in range(3):
            grant(database, user, 10, f"g{user}-{n}", expires_at=NOW + timedelta(minutes=n + 1))
    start = threading.Barrier(2)

    def one_pass() -> ExpiryReport:
        start.wait()
        return expire_once(database.engine, lambda: LATER)

    with ThreadPoolExecutor(2) as pool:
        reports = [f.result() for f in [pool.submit(one_pass), pool.submit(one_pass)]]
    assert sum(r.grants for r in reports) == 18
    assert database.count("credit_transactions", "type = 'expiry'") == 18
    assert database.rows("SELECT DISTINCT balance FROM users") == [(1,)]
    assert_ledger_consistent(database)


def test_void_ends_a_grant_early_once(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 0, "k1")
    grant(database, alice, 40, "oops", kind="promo")
    grant_id = int(database.scalar("SELECT id FROM credit_grants"))

    def void(connection: Connection) -> object:
        return void_grant(connection, grant_id, "given by mistake", NOW)

    ended = in_transaction(database, void)
    assert (ended.state, ended.reason, balance(database)) == ("voided", "given by mistake", 0)  # type: ignore[attr-defined]
    in_transaction(database, void)
    assert database.count("credit_transactions", "type = 'expiry'") == 1
    assert_ledger_consistent(database)


def test_a_user_without_grants_reads_none(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path: a charge of a user without live grants or holds never looks grants up."""
    from creditrelay.billing import grants

    make_user(database, "alice@example.com", 100, "k1")
    calls: list[object] = []
    monkeypatch.setattr(grants, "live_grants", partial(_fail, calls))
    charge(database, usage("u1", 10))
    assert calls == []


def _fail(calls: list[object], *args: object) -> object:
    calls.append(args)
    raise AssertionError("grants read for a user without any")


def test_reconcile_notices_grants_and_counts_that_do_not_add_up(database: Database) -> None:
    """A grant holding more than the balance, and a count of live grants that is not the rows'."""
    from creditrelay.billing.reconcile import ledger_findings

    alice = make_user(database, "alice@example.com", 0, "k1")
    grant(database, alice, 30, "trial", expires_at=LATER)
    assert in_transaction(database, ledger_findings) == []
    database.execute("UPDATE credit_grants SET remaining = 31")
    database.execute("UPDATE users SET liveGrants = 2")
    kinds = sorted(f.kind for f in in_transaction(database, ledger_findings))
    assert kinds == ["grant_hold_counts", "grants_past_balance"]
