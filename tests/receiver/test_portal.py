"""The portal over HTTP on every database: a member's link shows their balance, usage and transactions and
nothing of anyone else's; what a member's gateway sent is escaped; tampered, expired and revoked links
are one and the same 404; statements download balanced; the JSON API answers the same with the link's
token as a bearer token, and refuses everything else with that 404."""

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import adjust, top_up
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.portal import issue_link, revoke_links
from creditrelay.receiver.admin_site import POLICY
from creditrelay.receiver.app import create_app
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import in_transaction, make_user
from tests.support.receiver import settings_for
from tests.support.server import serving
from tests.support.signing import encode, usage_event

NOW = datetime(2026, 3, 10, 12)
HOSTILE = '<script>alert("x")</script>'


@dataclass
class Site:
    client: httpx.Client
    clock: list[float]
    alice: int
    bob: int
    alice_path: str
    bob_path: str


def _unix(moment: datetime) -> float:
    return (moment - datetime(1970, 1, 1)).total_seconds()


@pytest.fixture
def site(database: Database) -> Iterator[Site]:
    """alice: 2,000 in February, 60 usages since (one model is hostile markup), a correction; bob: his own."""
    alice = make_user(database, "alice@example.com", 0, "ka")
    bob = make_user(database, "bob@example.com", 0, "kb")
    in_transaction(database, lambda c: top_up(c, alice, 2000, "order-a", datetime(2026, 2, 1)))
    in_transaction(database, lambda c: top_up(c, bob, 777, "order-bob-secret", datetime(2026, 2, 1)))
    events = []
    for i in range(60):
        body = usage_event(f"a-{i}", cost=5, key="ka", timestamp=int(_unix(NOW)))
        body["data"]["model"] = HOSTILE if i % 2 else "gpt-4o"
        events.append(parse_event(encode(body)))
    deliver(database.engine, events[:30], datetime(2026, 2, 20))
    deliver(database.engine, events[30:], NOW - timedelta(days=1))
    deliver(database.engine, [parse_event(encode(usage_event("b-1", cost=9, key="kb")))], NOW)
    in_transaction(database, lambda c: adjust(c, alice, -100, "fix-1", "double top-up", NOW))
    settings = settings_for(database)
    key = settings.portal_keys[0]

    def links(connection: Connection) -> tuple[str, str]:
        return issue_link(connection, alice, key, NOW).path, issue_link(connection, bob, key, NOW).path

    alice_path, bob_path = in_transaction(database, links)
    clock = [_unix(NOW)]
    app = create_app(settings, database.engine, clock=lambda: clock[0])
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Site(client, clock, alice, bob, alice_path, bob_path)


def test_the_page_shows_the_member_and_no_one_else(site: Site) -> None:
    answer = site.client.get(site.alice_path)
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == POLICY
    assert answer.headers["cache-control"] == "no-store"
    page = answer.text
    assert "alice@example.com" in page
    assert 'id="balance">1,600<' in page  # 2000 - 60 * 5 - 100
    assert "bob@example.com" not in page
    assert "order-bob-secret" not in page
    assert "<script" not in page.lower()  # no script at all: the hostile model name is text
    assert "&lt;script&gt;" in page
    assert "statement.csv?month=2026-03" in page
    assert "statement.csv?month=2026-02" in page


def test_transactions_page_back_to_the_first(site: Site) -> None:
    seen: list[str] = []
    path = site.alice_path
    for _ in range(5):
        page = site.client.get(path).text
        seen += [row for row in page.split("<tr>")[1:] if 'data-label="type"' in row]
        if 'id="older"' not in page:
            break
        path = page.split('id="older"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
        path = path.split("#")[0]
    assert len(seen) == 62  # the top-up, 60 usages, the correction
    assert "order-a" in seen[-1]


def test_a_chosen_range_shows_that_usage(site: Site) -> None:
    page = site.client.get(site.alice_path, params={"from": "2026-02-01", "to": "2026-02-28"}).text
    assert 'id="range-credits">150<' in page
    assert site.client.get(site.alice_path, params={"from": "2026-03-01", "to": "2026-02-01"}).status_code == 400
    assert site.client.get(site.alice_path, params={"from": "yesterday"}).status_code == 400


def test_links_that_do_not_work_are_one_404(site: Site, database: Database) -> None:
    token = site.alice_path.removeprefix("/portal/")
    user_id, epoch, expires, signature = token.split(".")
    forged = [
        f"/portal/{site.bob}.{epoch}.{expires}.{signature}",
        f"/portal/{user_id}.{epoch}.{int(expires) + 1}.{signature}",
        f"/portal/{token[:-2]}AA",
        "/portal/nothing",
    ]
    answers = [site.client.get(path) for path in forged]
    assert {a.status_code for a in answers} == {404}
    assert len({a.text for a in answers}) == 1
    assert "alice" not in answers[0].text
    assert site.client.get(f"{forged[0]}/statement.csv?month=2026-02").status_code == 404
    site.clock[0] = _unix(NOW + timedelta(days=30))  # expired
    assert site.client.get(site.alice_path).status_code == 404
    site.clock[0] = _unix(NOW)
    assert site.client.get(site.alice_path).status_code == 200
    in_transaction(database, lambda c: revoke_links(c, site.alice))
    assert site.client.get(site.alice_path).status_code == 404
    assert site.client.get(f"{site.alice_path}/statement.csv").status_code == 404
    assert site.client.get(site.bob_path).status_code == 200


def test_a_statement_downloads_balanced(site: Site) -> None:
    answer = site.client.get(f"{site.alice_path}/statement.csv", params={"month": "2026-02"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert 'filename="statement-2026-02.csv"' in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert rows[0]["type"] == "opening balance"
    assert rows[-1]["type"] == "closing balance"
    amounts = [int(r["amount"]) for r in rows[1:-1]]
    assert int(rows[0]["balance"]) + sum(amounts) == int(rows[-1]["balance"]) == 1850
    assert all(r["reference"] != "order-bob-secret" for r in rows)
    assert site.client.get(f"{site.alice_path}/statement.csv", params={"month": "2026-2"}).status_code == 400


def test_the_json_api_answers_with_the_link_as_bearer(site: Site) -> None:
    bearer = {"Authorization": f"Bearer {site.alice_path.removeprefix('/portal/')}"}
    account = site.client.get("/api/portal/account", headers=bearer).json()["data"]
    assert (account["email"], account["balance"], account["suspended"]) == ("alice@example.com", 1600, False)
    days = site.client.get(
        "/api/portal/usage", headers=bearer, params={"from": "2026-02-20", "to": "2026-03-10", "groupBy": "day"}
    ).json()["data"]
    assert days["credits"] == 300
    assert days["rows"][0] == {"day": "2026-02-20", "credits": 150, "byModel": {"gpt-4o": 75, HOSTILE: 75}}
    models = site.client.get(
        "/api/portal/usage", headers=bearer, params={"from": "2026-02-20", "to": "2026-03-10", "groupBy": "model"}
    ).json()["data"]
    assert {r["model"]: r["credits"] for r in models["rows"]} == {"gpt-4o": 150, HOSTILE: 150}
    first = site.client.get("/api/portal/transactions", headers=bearer, params={"limit": 40}).json()["data"]
    second = site.client.get(
        "/api/portal/transactions", headers=bearer, params={"limit": 40, "before": first["older"]}
    ).json()["data"]
    assert len(first["transactions"]) + len(second["transactions"]) == 62
    assert second["older"] is None
    assert site.client.get("/api/portal/usage", headers=bearer, params={"groupBy": "week"}).status_code == 400
    for refused in ({}, {"Authorization": "Bearer nope"}, {"Authorization": site.alice_path}):
        answer = site.client.get("/api/portal/account", headers=refused)
        assert answer.status_code == 404
        assert answer.json() == {"success": False, "message": "Not found"}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # the parameters' edges: no database work
def test_days_at_the_calendars_edges_and_a_padded_month_are_a_400_or_clean(site: Site) -> None:
    """A range counted from a day at the calendar's ends is a 400 naming the day, never an overflow; a
    month sent with spaces around it downloads under the month's own name, nothing of the padding."""
    for params in ({"to": "0001-01-01"}, {"from": "9999-12-30", "to": "9999-12-31"}):
        answer = site.client.get(site.alice_path, params=params)
        assert answer.status_code == 400
        assert "a day from 1970-01-01" in answer.text
    padded = site.client.get(f"{site.alice_path}/statement.csv", params={"month": "2026-02\u2003"})
    assert padded.status_code == 200
    assert padded.headers["content-disposition"] == 'attachment; filename="statement-2026-02.csv"'
    broken = site.client.get(f"{site.alice_path}/statement.csv", params={"month": "2026-02\r\nX-Evil: 1"})
    assert broken.status_code == 400
    assert "x-evil" not in broken.headers
