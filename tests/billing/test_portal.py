"""billing/portal.py and billing/statements.py on every database: a portal link names its member until it
expires or is revoked, and nothing tampered names anyone; a month's statement balances (opening + Σ =
closing = the ledger) through top-ups, usages, corrections, a backdated usage and a batch charged across
the month's end; the summary agrees with every member's statement; usage is dated by its charge."""

import csv
import io
import json
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import Connection

from creditrelay.billing import portal
from creditrelay.billing.accounts import AccountError, adjust, top_up
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.sessions import open_session
from creditrelay.billing.statement_files import summary_csv, summary_json, user_csv, user_json
from creditrelay.billing.statements import lines, month_of, opening, parse_month, summary
from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.portal_tokens import portal_key
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import in_transaction, make_user
from tests.support.signing import encode, usage_event

KEY = portal_key(b"a-server-secret-a-server-secret-0")
OTHER = portal_key(b"another-secret-another-secret-000")
DEC = datetime(2025, 12, 20, 9)


def _unix(moment: datetime) -> float:
    return (moment - datetime(1970, 1, 1)).total_seconds()


def _usage(database: Database, prefix: str, key: str, at: datetime, costs: list[int], stamps: list[datetime]) -> None:
    events = []
    for i, (cost, stamp) in enumerate(zip(costs, stamps, strict=True)):
        body = usage_event(f"{prefix}-{i}", cost=cost, key=key, timestamp=int(_unix(stamp)))
        body["data"]["model"] = ["gpt-4o", "claude-3-5", "=HYPERLINK(1)"][i % 3]
        events.append(parse_event(encode(body)))
    deliver(database.engine, events, at)


@pytest.fixture
def ledger(database: Database) -> dict[str, int]:
    """alice and bob from December; in January top-ups, usages (one backdated to December), a correction
    and a batch charged at 23:59:59.9 on the 31st with events stamped in February; February more."""
    alice = make_user(database, "alice@example.com", 0, "ka")
    bob = make_user(database, "bob@example.com", 0, "kb")
    jan_end = datetime(2026, 1, 31, 23, 59, 59, 900_000)

    def topups(connection: Connection, when: datetime, ref: str, amount: int) -> None:
        top_up(connection, alice, amount, f"{ref}-a", when)
        top_up(connection, bob, amount // 2, f"{ref}-b", when)

    in_transaction(database, lambda c: topups(c, DEC, "dec", 1000))
    _usage(database, "dec", "ka", DEC + timedelta(days=1), [7, 8], [DEC, DEC])
    in_transaction(database, lambda c: topups(c, datetime(2026, 1, 3), "jan", 500))
    _usage(database, "jan", "ka", datetime(2026, 1, 5, 10), [11, 12, 13], [DEC, DEC, datetime(2026, 1, 5)])
    _usage(database, "bob", "kb", datetime(2026, 1, 6), [40], [datetime(2026, 1, 6)])
    in_transaction(database, lambda c: adjust(c, alice, -30, "refund-1", "charged back", datetime(2026, 1, 20)))
    feb = datetime(2026, 2, 1, 0, 0, 1)
    _usage(database, "edge", "ka", jan_end, [5, 6, 7], [jan_end, feb, feb])
    in_transaction(database, lambda c: topups(c, datetime(2026, 2, 1), "feb", 200))
    _usage(database, "feb", "ka", datetime(2026, 2, 3), [9], [datetime(2026, 2, 3)])
    return {"alice": alice, "bob": bob}


def _statement(connection: Connection, user_id: int, name: str) -> tuple[int, list[int], int]:
    month = month_of(connection, name)
    amounts = [line.amount for line in lines(connection, user_id, month, chunk=2)]  # chunks of 2: keyset paging
    start = opening(connection, user_id, month)
    balances = [line.balance for line in lines(connection, user_id, month)]
    return start, amounts, balances[-1] if balances else start


def test_statements_balance_to_the_ledger_month_after_month(database: Database, ledger: dict[str, int]) -> None:
    """opening + Σ amounts = closing; each month opens where the last closed; the last closes at the balance."""
    alice = ledger["alice"]
    months = ("2025-12", "2026-01", "2026-02", "2026-03")
    found = {m: in_transaction(database, lambda c, m=m: _statement(c, alice, m)) for m in months}  # type: ignore[misc]
    for start, amounts, closing in found.values():
        assert start + sum(amounts) == closing
    assert found["2025-12"] == (0, [1000, -7, -8], 985)
    # the backdated usages are January's (charged then); the batch of the 31st is too, events of February or not
    assert found["2026-01"] == (985, [500, -11, -12, -13, -30, -5, -6, -7], 1401)
    assert found["2026-02"] == (1401, [200, -9], 1592)
    assert found["2026-03"] == (1592, [], 1592)
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=alice) == 1592


def test_the_summary_agrees_with_each_members_statement(database: Database, ledger: dict[str, int]) -> None:
    rows = in_transaction(database, lambda c: list(summary(c, month_of(c, "2026-01"), chunk=1)))
    assert [(r.email, r.opening, r.credits_in, r.usage, r.corrections, r.closing) for r in rows] == [
        ("alice@example.com", 985, 500, -54, -30, 1401),
        ("bob@example.com", 500, 250, -40, 0, 710),
    ]
    text = "".join(in_transaction(database, lambda c: list(summary_csv(c, month_of(c, "2026-01")))))
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["userId", "email", "opening", "creditsIn", "usage", "corrections", "closing"]
    assert table[-1] == ["totals", "", "1485", "750", "-94", "-30", "2111"]
    answer = json.loads("".join(in_transaction(database, lambda c: list(summary_json(c, month_of(c, "2026-01"))))))
    assert answer["totals"] == {"opening": 1485, "creditsIn": 750, "usage": -94, "corrections": -30, "closing": 2111}
    assert [u["email"] for u in answer["users"]] == ["alice@example.com", "bob@example.com"]


def test_a_members_statement_files(database: Database, ledger: dict[str, int]) -> None:
    """CSV: opening row, each transaction with its model and tokens, closing row; a formula is not one."""
    alice = ledger["alice"]
    text = "".join(in_transaction(database, lambda c: list(user_csv(c, alice, month_of(c, "2026-01")))))
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:5] == ["time", "type", "amount", "balance", "reference"]
    assert table[1] == ["2026-01-01T00:00:00Z", "opening balance", "", "985", "", "", "", "", "", ""]
    assert table[-1] == ["2026-02-01T00:00:00Z", "closing balance", "", "1401", "", "", "", "", "", ""]
    usages = [row for row in table if row[1] == "usage"]
    assert {row[5] for row in usages} == {"gpt-4o", "claude-3-5", "'=HYPERLINK(1)"}
    assert all(row[6:9] == ["100", "50", "150"] for row in usages)
    assert [row[0] for row in table[2:-1]] == sorted(row[0] for row in table[2:-1])  # oldest first
    answer = json.loads(
        "".join(in_transaction(database, lambda c: list(user_json(c, alice, "a", month_of(c, "2026-01")))))
    )
    assert answer["opening"] + sum(t["amount"] for t in answer["transactions"]) == answer["closing"] == 1401


def test_a_month_is_refused_unless_it_is_one() -> None:
    for text in ("2026-13", "2026-1", "26-01", "2026-01-01", "", "0000-01"):
        with pytest.raises(InvalidInput, match="month"):
            parse_month(text)
    assert parse_month("2026-12") == (datetime(2026, 12, 1), datetime(2027, 1, 1))


def test_usage_is_dated_by_its_charge(database: Database, ledger: dict[str, int]) -> None:
    """The usages stamped in December but charged on January 5 are January 5's; nothing of bob's shows."""
    found = in_transaction(database, lambda c: portal.usage(c, ledger["alice"], date(2026, 1, 1), date(2026, 1, 31)))
    days = dict(found.by_day)
    assert sum(days[date(2026, 1, 5)].values()) == 36
    assert sum(days[date(2026, 1, 31)].values()) == 18
    assert found.credits == 54
    assert found.tokens == 6 * 150
    assert {model for model, _, _ in found.by_model} == {"gpt-4o", "claude-3-5", "=HYPERLINK(1)"}
    with pytest.raises(AccountError):
        in_transaction(database, lambda c: portal.usage(c, 1, date(2026, 1, 2), date(2026, 1, 1)))


def test_a_link_names_its_member_until_it_expires_or_is_revoked(database: Database, ledger: dict[str, int]) -> None:
    alice, bob = ledger["alice"], ledger["bob"]
    now = datetime(2026, 3, 1)
    link = in_transaction(database, lambda c: portal.issue_link(c, alice, KEY, now, days=2))
    token = link.path.removeprefix("/portal/")
    assert link.expires_at == now + timedelta(days=2)

    def member(token: str, at: datetime = now, keys: tuple[bytes, ...] = (KEY,)) -> int | None:
        return in_transaction(database, lambda c: portal.member_of(c, keys, token, _unix(at)))

    assert member(token) == alice
    assert member(token, keys=(OTHER, KEY)) == alice  # a key of a rotation
    assert member(token, keys=(OTHER,)) is None
    assert member(token, now + timedelta(days=2)) is None  # expired
    user_id, epoch, expires, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    tampered = [
        f"{bob}.{epoch}.{expires}.{signature}",  # another member
        f"{user_id}.{epoch}.{int(expires) + 86400}.{signature}",  # a longer life
        f"{user_id}.{int(epoch) + 1}.{expires}.{signature}",
        f"{user_id}.{epoch}.{expires}.{flipped}",
        token + "x", token[:-1], "", "../admin", token.upper(),
    ]  # fmt: skip
    assert [member(t) for t in tampered] == [None] * len(tampered)
    session = in_transaction(database, lambda c: open_session(c, now))  # an admin session is not a link
    assert member(session.token) is None

    bobs = in_transaction(database, lambda c: portal.issue_link(c, bob, KEY, now)).path.removeprefix("/portal/")
    assert in_transaction(database, lambda c: portal.revoke_links(c, alice)) == 1
    assert member(token) is None  # revoked
    assert member(bobs) == bob  # another member's links live on
    fresh = in_transaction(database, lambda c: portal.issue_link(c, alice, KEY, now)).path.removeprefix("/portal/")
    assert member(fresh) == alice
    for days in (0, 366):
        with pytest.raises(AccountError, match="days"):
            in_transaction(database, lambda c, d=days: portal.issue_link(c, alice, KEY, now, d))  # type: ignore[misc]
    with pytest.raises(AccountError):
        in_transaction(database, lambda c: portal.revoke_links(c, 10**9))


def test_the_account_says_where_the_member_stands(database: Database, ledger: dict[str, int]) -> None:
    found = in_transaction(database, lambda c: portal.account(c, ledger["bob"]))
    assert (found.email, found.balance, found.suspended, found.first_month) == (
        "bob@example.com",
        810,
        False,
        "2025-12",
    )
    database.execute("UPDATE users SET balance = -5 WHERE id = :id", id=ledger["bob"])
    assert in_transaction(database, lambda c: portal.account(c, ledger["bob"])).suspended
