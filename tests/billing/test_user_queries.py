"""billing/user_queries.py on every database: the users list in each order and filter, paged to the end,
holds each matching user once in that order; a user's transactions page back to the first; the
bisection finds the first transaction of a day; and the last weeks' balances and usage add up."""

from datetime import date, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import NewUser, adjust, create_user, link_key, top_up
from creditrelay.billing.deliveries import record_deliveries
from creditrelay.billing.user_queries import (
    UserQuery,
    activity,
    first_transaction_since,
    transactions,
    users_page,
)
from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import NOW, in_transaction
from tests.support.signing import encode, usage_event

# email, name, Telegram id, balance
PEOPLE = [
    ("ann@example.com", "Ann Lee", 101, 50),
    ("bob@example.com", None, None, -20),
    ("cy@example.com", "Cy", 103, 0),
    ("dee@example.com", "Dee Ann", None, 50),
    ("eve@example.com", None, 105, 1_000_000),
    ("fay@example.com", "Fay", None, -20),
    ("gus@example.com", "Gus", 107, 7),
    ("hal@example.com", None, None, 50),
    ("ivy@example.com", "Ivy ANNE", 109, -5),
    ("jo@example.com", None, None, 300),
    ("kim@example.com", "Élodie Kim", None, 12),
]


def _people(database: Database) -> dict[str, int]:
    def work(connection: Connection) -> dict[str, int]:
        ids = {}
        for email, name, telegram, balance in PEOPLE:
            user = create_user(connection, NewUser(email, name, telegram, max(balance, 0)), NOW)
            if balance < 0:
                adjust(connection, user.id, balance, f"owe-{user.id}", "owes", NOW)
            ids[email] = user.id
        link_key(connection, "gk-9", ids["gus@example.com"], NOW)
        return ids

    return in_transaction(database, work)


def _all_pages(database: Database, query: UserQuery, limit: int = 3) -> tuple[list[str], set[int]]:
    emails: list[str] = []
    totals = set()
    after = None
    for _ in range(20):
        page = in_transaction(database, partial(users_page, query=query, limit=limit, after=after))
        emails += [u.email for u in page.users]
        totals.add(page.total)
        if page.next is None:
            return emails, totals
        after = page.next
    raise AssertionError("the pages never ended")


ORDERS = {
    "balance": lambda people, ids: sorted(people, key=lambda p: (p[3], ids[p[0]])),
    "-balance": lambda people, ids: sorted(people, key=lambda p: (-p[3], -ids[p[0]])),
    "email": lambda people, ids: sorted(people, key=lambda p: p[0]),
    "newest": lambda people, ids: sorted(people, key=lambda p: -ids[p[0]]),
    "oldest": lambda people, ids: sorted(people, key=lambda p: ids[p[0]]),
}


@pytest.mark.parametrize("sort", list(ORDERS))
@pytest.mark.parametrize("below", [None, 0, 51])
def test_every_page_of_a_sort_and_filter_holds_its_users_once_in_order(
    database: Database, sort: str, below: int | None
) -> None:
    """Pages of 3 (ties in balance broken by id, so none is skipped or repeated) and the same total on each."""
    ids = _people(database)
    wanted = [p for p in PEOPLE if below is None or p[3] < below]
    emails, totals = _all_pages(database, UserQuery(sort=sort, below=below))
    assert emails == [p[0] for p in ORDERS[sort](wanted, ids)]
    assert totals == {len(wanted)}


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("ann", {"ann@example.com", "dee@example.com", "ivy@example.com"}),  # email or name, any case
        ("ANN", {"ann@example.com", "dee@example.com", "ivy@example.com"}),
        ("élodie", {"kim@example.com"}),  # beyond ASCII too, on SQLite as well
        ("ÉLODIE", {"kim@example.com"}),
        ("105", {"eve@example.com"}),  # a Telegram id
        ("gk-9", {"gus@example.com"}),  # a gateway key, whole
        ("gk-", set()),
        ("%", set()),  # a LIKE wildcard is a character like any other
        ("", {p[0] for p in PEOPLE}),
    ],
)
def test_search_by_email_name_telegram_id_or_key(database: Database, text: str, found: set[str]) -> None:
    _people(database)
    emails, totals = _all_pages(database, UserQuery(text=text))
    assert set(emails) == found
    assert len(emails) == len(found)
    assert totals == {len(found)}


@pytest.mark.parametrize("cursor", ["x", "1", "1:x", ":5", "99999999999999999999:1", "1:--5"])
def test_a_cursor_that_is_none_is_refused_by_name(database: Database, cursor: str) -> None:
    _people(database)
    with pytest.raises(InvalidInput, match="after:"):
        in_transaction(database, lambda c: users_page(c, UserQuery(sort="balance"), 3, cursor))


def _history(database: Database, days: int = 40) -> int:
    """A user topped up on each of ``days`` days before NOW's day (two top-ups a day, 1 and 2 credits)."""

    def work(connection: Connection) -> int:
        user = create_user(connection, NewUser("h@example.com"), NOW - timedelta(days=days + 1))
        for back in range(days, 0, -1):
            moment = NOW - timedelta(days=back)
            top_up(connection, user.id, 1, f"a-{back}", moment.replace(hour=1))
            top_up(connection, user.id, 2, f"b-{back}", moment.replace(hour=20))
        return user.id

    return in_transaction(database, work)


def test_a_users_transactions_page_back_to_the_first(database: Database) -> None:
    user_id = _history(database, 10)
    seen: list[int] = []
    before = None
    while True:
        page = in_transaction(database, partial(transactions, user_id=user_id, limit=3, before=before))
        seen += [t.id for t in page.transactions]
        if page.older is None:
            break
        before = page.older
    everything = [int(i) for (i,) in database.rows("SELECT id FROM credit_transactions ORDER BY id DESC")]
    assert seen == everything
    assert len(seen) == 20


def test_the_bisection_finds_the_first_transaction_at_or_after_a_moment(database: Database) -> None:
    """For every moment between the history's ends, the same answer as reading every row."""
    user_id = _history(database, 12)
    rows = database.rows("SELECT id, createdAt FROM credit_transactions ORDER BY id")
    stamps = [(int(i), c if isinstance(c, datetime) else datetime.fromisoformat(str(c))) for i, c in rows]
    for hours in range(-20, 14 * 24, 7):
        moment = NOW - timedelta(days=13) + timedelta(hours=hours)
        expected = next((i for i, at in stamps if at >= moment), None)
        assert in_transaction(database, partial(first_transaction_since, user_id=user_id, since=moment)) == expected


def test_the_last_days_balances_carry_over_and_usage_adds_up_by_model(database: Database) -> None:
    """30 days to NOW's: the balance at each day's end (a day without transactions keeps the day before's),
    starting from the balance before the window; usage per model and day of its charge: usages stamped
    yesterday or 35 days ago but charged today are today's."""
    user_id = _history(database, 40)
    in_transaction(database, lambda c: link_key(c, "k", user_id, NOW))
    stamp = int((NOW - datetime(1970, 1, 1)).total_seconds())
    events = [
        usage_event("u1", cost=5, key="k", timestamp=stamp),
        usage_event("u2", cost=4, key="k", timestamp=stamp)
        | {"data": usage_event("x", cost=4, key="k")["data"] | {"model": "o1"}},
        usage_event("u3", cost=9, key="k", timestamp=stamp - 86400),
        usage_event("old", cost=100, key="k", timestamp=stamp - 35 * 86400),
    ]
    in_transaction(database, lambda c: record_deliveries(c, [parse_event(encode(e)) for e in events], NOW))
    found = in_transaction(database, lambda c: activity(c, user_id, NOW, 30))
    assert found.days[0] == NOW.date() - timedelta(days=29)
    assert found.days[-1] == NOW.date()
    # 40 days of 3 credits a day, then today's usage (the old usage is charged today too: -118 in all)
    before_window = 3 * 11
    assert found.balances[0] == before_window + 3
    assert found.balances[-2] == 3 * 40
    assert found.balances[-1] == 3 * 40 - 118
    assert found.by_model == {"gpt-4": [0] * 29 + [114], "o1": [0] * 29 + [4]}


def test_a_user_without_transactions_has_flat_days(database: Database) -> None:
    user = in_transaction(database, lambda c: create_user(c, NewUser("n@example.com"), NOW))
    found = in_transaction(database, lambda c: activity(c, user.id, NOW, 7))
    assert (found.balances, found.by_model) == ([0] * 7, {})
    assert found.days == [NOW.date() - timedelta(days=6 - i) for i in range(7)]
    assert isinstance(found.days[0], date)
