"""billing/accounts.py: the one top-up rule every caller (CLI, admin API, admin pages) goes through."""

import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import AccountError, NewUser, ReferenceConflict, create_user, top_up
from creditrelay.billing.ledger import CreditStatus, UnknownUser
from tests.support.database import Database
from tests.support.ledger import NOW, in_transaction


def test_top_up_once_per_reference_and_refusals(database: Database) -> None:
    """Applied once, then a duplicate; bad amount/reference, another amount, or no user are refused."""
    user = in_transaction(database, lambda c: create_user(c, NewUser("a@example.com"), NOW)).id
    first = in_transaction(database, lambda c: top_up(c, user, 40, "order-1", NOW, "paid"))
    again = in_transaction(database, lambda c: top_up(c, user, 40, "order-1", NOW))
    assert (first.status, first.balance, again.status, again.balance) == (
        CreditStatus.APPLIED, 40, CreditStatus.DUPLICATE, 40,
    )  # fmt: skip
    with pytest.raises(ReferenceConflict):
        in_transaction(database, lambda c: top_up(c, user, 41, "order-1", NOW))
    for amount, reference in ((0, "r"), (-5, "r"), (5, ""), (5, "x" * 129)):

        def refused(connection: Connection, amount: int = amount, reference: str = reference) -> None:
            top_up(connection, user, amount, reference, NOW)

        with pytest.raises(AccountError):
            in_transaction(database, refused)
    with pytest.raises(UnknownUser):
        in_transaction(database, lambda c: top_up(c, 999_999, 5, "r", NOW))
    assert database.scalar("SELECT balance FROM users") == 40


def test_a_refused_user_leaves_the_transaction_usable(database: Database) -> None:
    """A duplicate email rolls back to its savepoint; the same transaction goes on to create another user."""

    def work(connection: Connection) -> int:
        create_user(connection, NewUser("b@example.com"), NOW)
        with pytest.raises(AccountError, match="exists"):
            create_user(connection, NewUser("B@example.com"), NOW)
        return int(create_user(connection, NewUser("c@example.com", opening_credits=5), NOW).balance)

    assert in_transaction(database, work) == 5
    assert database.count("users") == 2


def test_a_top_up_of_an_overdrawn_balance_is_applied_even_if_it_stays_below_zero(database: Database) -> None:
    """A user at -260 who tops up 100 is at -160: a top-up is never refused for lack of credits."""
    user = in_transaction(database, lambda c: create_user(c, NewUser("low@example.com"), NOW)).id
    database.execute("UPDATE users SET balance = -260 WHERE id = :id", id=user)
    database.execute(
        "INSERT INTO credit_transactions (userId, type, amount, balance, reference, createdAt)"
        " VALUES (:id, 'usage_import', -260, -260, 'import:1', :now)",
        id=user,
        now=NOW,
    )
    outcome = in_transaction(database, lambda c: top_up(c, user, 100, "order-1", NOW))
    assert outcome.balance == -160
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user) == -160
