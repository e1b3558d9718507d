"""billing/usage.py and billing/ledger.py: usage charged once per usage key, credits once per reference,
balances exact."""

from datetime import datetime

import pytest

from creditrelay.billing.ledger import CreditChange, CreditStatus, UnknownUser, apply_credit
from creditrelay.billing.usage import Usage, UsageStatus, apply_usage
from creditrelay.schema.inserts import insert_new, insert_new_ids
from creditrelay.schema.tables import poll_state, webhook_logs
from tests.support.database import Database
from tests.support.ledger import NOW, assert_ledger_consistent, concurrently, in_transaction, make_user

pytestmark = pytest.mark.usefixtures("insert_path")  # every test on both insert paths


def usage(key: str, cost: int, remote_key: str = "k1") -> Usage:
    return Usage(
        usage_key=key,
        remote_key_id=remote_key,
        model="gpt-4",
        credit_cost=cost,
        used_at=NOW,
        source="webhook",
    )


def test_batch_outcomes_follow_the_input_order(database: Database) -> None:
    """Charged, repeated-in-batch and unknown-key usages each get their own outcome, in order."""
    alice = make_user(database, "alice@example.com", 100, "k1")
    batch = [usage("u1", 10), usage("u2", 5), usage("u1", 10), usage("u3", 1, remote_key="nobody")]
    outcomes = in_transaction(database, lambda c: apply_usage(c, batch, NOW))
    assert [o.status for o in outcomes] == [
        UsageStatus.CHARGED,
        UsageStatus.CHARGED,
        UsageStatus.DUPLICATE,
        UsageStatus.UNKNOWN_KEY,
    ]
    assert [o.balance for o in outcomes[:2]] == [90, 85]
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=alice) == 85
    assert_ledger_consistent(database)


def test_usage_already_charged_in_an_earlier_batch_is_a_duplicate(database: Database) -> None:
    """A second batch with a charged usage key charges only what is new (the slow path of insert_new)."""
    make_user(database, "alice@example.com", 100, "k1")
    in_transaction(database, lambda c: apply_usage(c, [usage("u1", 10)], NOW))
    outcomes = in_transaction(
        database, lambda c: apply_usage(c, [usage("u0", 1), usage("u1", 10), usage("u2", 2)], NOW)
    )
    assert [o.status for o in outcomes] == [UsageStatus.CHARGED, UsageStatus.DUPLICATE, UsageStatus.CHARGED]
    assert database.scalar("SELECT balance FROM users") == 87
    assert_ledger_consistent(database)


def test_usage_may_overdraw_and_says_so(database: Database) -> None:
    """Usage already happened at the gateway: the charge goes through and reports the overdraft."""
    make_user(database, "alice@example.com", 5, "k1")
    [outcome] = in_transaction(database, lambda c: apply_usage(c, [usage("u1", 8)], NOW))
    assert outcome.status is UsageStatus.CHARGED
    assert outcome.balance == -3
    assert outcome.overdrawn


def test_credit_is_applied_once_per_reference(database: Database) -> None:
    """A repeated reference is a duplicate, with another amount a conflict; neither changes the balance."""
    alice = make_user(database, "alice@example.com", 0, "k1")
    top_up = CreditChange(alice, 50, "topup:order-1", "topup")
    first = in_transaction(database, lambda c: apply_credit(c, top_up, NOW))
    again = in_transaction(database, lambda c: apply_credit(c, top_up, NOW))
    other = in_transaction(database, lambda c: apply_credit(c, CreditChange(alice, 70, "topup:order-1", "topup"), NOW))
    assert (first.status, first.balance, first.change) == (CreditStatus.APPLIED, 50, 50)
    assert (again.status, again.balance, again.change) == (CreditStatus.DUPLICATE, 50, 0)
    assert again.transaction_id == first.transaction_id
    assert other.status is CreditStatus.CONFLICT
    assert database.scalar("SELECT balance FROM users") == 50
    assert_ledger_consistent(database)


def test_deduction_below_zero_is_refused_unless_allowed(database: Database) -> None:
    """A refused deduction writes nothing, not even its reference; an allowed overdraft goes through."""
    alice = make_user(database, "alice@example.com", 30, "k1")
    refused = in_transaction(database, lambda c: apply_credit(c, CreditChange(alice, -40, "d:1", "deduct"), NOW))
    assert (refused.status, refused.balance) == (CreditStatus.INSUFFICIENT, 30)
    assert database.count("credit_transactions", "reference = 'd:1'") == 0
    allowed = CreditChange(alice, -40, "d:2", "adjustment", allow_overdraft=True)
    assert in_transaction(database, lambda c: apply_credit(c, allowed, NOW)).balance == -10
    assert_ledger_consistent(database)


def test_credit_for_a_missing_user_raises(database: Database) -> None:
    """There is no balance to change for a user that does not exist."""
    with pytest.raises(UnknownUser):
        in_transaction(database, lambda c: apply_credit(c, CreditChange(999, 5, "x", "topup"), NOW))


def test_concurrent_overlapping_batches_charge_each_usage_once(database: Database) -> None:
    """Eight threads apply overlapping batches over three users: no deadlock escapes, each usage once."""
    users = [make_user(database, f"u{i}@example.com", 10_000, f"k{i}") for i in range(3)]
    batches = [
        [usage(f"u{(t * 7 + j) % 60}", 1 + (t * 7 + j) % 60 % 5, f"k{(t * 7 + j) % 60 % 3}") for j in range(25)]
        for t in range(8)
    ]
    concurrently(database, batches, lambda c, batch: apply_usage(c, batch, datetime(2026, 1, 1)))
    distinct = {u.usage_key: u for b in batches for u in b}
    assert database.count("usage_records") == len(distinct)
    spent = {f"k{i}": 0 for i in range(3)}
    for u in distinct.values():
        spent[u.remote_key_id] += u.credit_cost
    for i, user_id in enumerate(users):
        assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == 10_000 - spent[f"k{i}"]
    assert_ledger_consistent(database)


def _log(event_id: str) -> dict[str, object]:
    return {"eventId": event_id, "eventType": "usage", "payload": "{}", "payloadHash": "h", "status": "processed",
            "errorMsg": None, "processedAt": NOW, "createdAt": NOW}  # fmt: skip


def test_insert_new_reports_exactly_the_rows_it_wrote(database: Database, insert_path: str) -> None:
    """Five rows, the second and the last already stored: the three others are written, each once, and
    their ids are the stored ones; an optimistic insert that meets a stored key says so where the database
    only counts (``None``), and still names the rows where it returns them."""
    in_transaction(database, lambda c: insert_new(c, webhook_logs, [_log("b"), _log("e")], "eventId"))
    rows = [_log(event_id) for event_id in "abcde"]
    ids = in_transaction(database, lambda c: insert_new_ids(c, webhook_logs, rows, "eventId"))
    assert sorted(ids) == ["a", "c", "d"]
    stored = dict(database.rows("SELECT eventId, id FROM webhook_logs"))
    assert ids == {key: stored[key] for key in "acd"}
    assert database.count("webhook_logs") == 5
    again = {"name": "p", "watermark": 1, "updatedAt": NOW}
    assert in_transaction(database, lambda c: insert_new(c, poll_state, [again, again | {"name": "q"}], "name")) == {
        "p",
        "q",
    }
    optimistic = in_transaction(database, lambda c: insert_new(c, poll_state, [again], "name", exact=False))
    assert optimistic == (set() if insert_path == "returning" else None)
