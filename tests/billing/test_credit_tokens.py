"""billing/credit_tokens.py: which uses of a token are its first, decided by the insert."""

from datetime import timedelta

import pytest
from sqlalchemy import Connection

from creditrelay.billing.credit_tokens import TokenUse, use_tokens
from tests.support.database import Database
from tests.support.ledger import NOW, force_row_counts, in_transaction


def use(token: str, reference: str) -> TokenUse:
    return TokenUse(token * 64, reference, NOW + timedelta(minutes=5))


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "row-counts"])
def test_a_token_is_new_once_and_then_names_its_first_reference(
    database: Database, monkeypatch: pytest.MonkeyPatch, returning: bool
) -> None:
    """Only a token's first use is new — in a later transaction or later in the same batch — and every
    later use learns the reference the first one asked for; the row-count path (MySQL) agrees."""
    if not returning:
        force_row_counts(monkeypatch)
    assert in_transaction(database, lambda c: use_tokens(c, [use("b", "ref-b"), use("a", "ref-a")])) == [None, None]
    later = [use("c", "ref-c1"), use("a", "other"), use("c", "ref-c2"), use("b", "ref-b"), use("d", "ref-d")]
    assert in_transaction(database, lambda c: use_tokens(c, later)) == [None, "ref-a", "ref-c1", "ref-b", None]
    assert database.count("credit_tokens") == 4


def test_a_rolled_back_use_is_not_recorded(database: Database) -> None:
    """A token used by a transaction that rolls back (an outage, a refused statement) is new again."""

    def fail(connection: Connection) -> None:
        use_tokens(connection, [use("e", "ref-e")])
        raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        in_transaction(database, fail)
    assert in_transaction(database, lambda c: use_tokens(c, [use("e", "ref-e")])) == [None]
