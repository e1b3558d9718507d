"""`creditrelay topup --expires-at --priority --kind`, `user show`'s grants, `grant void` and `expire`,
run as an operator runs them."""

import pytest

from tests.support.cli import ok, run
from tests.support.database import Database

pytestmark = pytest.mark.slow  # each test starts the command line as processes


def test_grants_from_the_command_line(database: Database) -> None:
    """A top-up with terms is a grant that user show lists; spending, voiding and expiring show there."""
    ok(database, "user", "create", "--email", "ops@example.com", "--credits", "100")
    promo = ok(database, "topup", "ops@example.com", "50", "--reference", "welcome", "--kind", "promo",
               "--priority", "1", "--expires-at", "2999-01-01T00:00:00+02:00")  # fmt: skip
    assert promo["balance"] == 150
    ok(database, "topup", "ops@example.com", "30", "--reference", "month", "--expires-at", "2999-02-01")
    shown = ok(database, "user", "show", "ops@example.com")
    assert [(g["kind"], g["priority"], g["remaining"], g["expiresAt"]) for g in shown["grants"]] == [
        ("promo", 1, 50, "2998-12-31T22:00:00Z"),
        ("paid", None, 30, "2999-02-01T00:00:00Z"),
    ]
    assert shown["consumption"] == {"granted": 0, "purchased": 0}
    ok(database, "adjust", "ops@example.com", "-60", "--reference", "fix", "--reason", "refund")
    shown = ok(database, "user", "show", "ops@example.com")
    assert [g["remaining"] for g in shown["grants"]] == [20]
    assert shown["consumption"] == {"granted": 60, "purchased": 0}
    voided = ok(database, "grant", "void", str(shown["grants"][0]["id"]), "--reason", "ended the offer")
    assert (voided["state"], voided["remaining"]) == ("voided", 0)
    assert ok(database, "user", "show", "ops@example.com")["balance"] == 100
    assert ok(database, "expire") == {"grants": 0, "holds": 0}


def test_bad_grant_terms_are_refused_by_name(database: Database) -> None:
    ok(database, "user", "create", "--email", "ops@example.com")
    result = run(database, "topup", "ops@example.com", "5", "--reference", "r", "--expires-at", "soon")
    assert (result.returncode, "ISO-8601" in result.stderr) == (2, True)
    result = run(database, "topup", "ops@example.com", "5", "--reference", "r", "--expires-at", "2001-01-01")
    assert (result.returncode, "expires-at must be in the future" in result.stderr) == (1, True)
    result = run(database, "grant", "void", "999", "--reason", "r")
    assert (result.returncode, "no grant 999" in result.stderr) == (1, True)
