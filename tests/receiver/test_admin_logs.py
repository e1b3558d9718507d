"""The admin webhook logs as a daily console: each row's key, user, model and cost, paged to the first
delivery, and the failed events of a key run again together — when it is linked, or by a button."""

import dataclasses
import time
from collections.abc import Iterator

import pytest

from creditrelay.billing import admin
from creditrelay.billing.deliveries import deliver
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import utc
from creditrelay.schema.wire import parse_event
from tests.support.browser import chromium, screenshot, sign_in
from tests.support.database import Database
from tests.support.ledger import NOW, in_transaction
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, usage_event

TOKEN = "admin-token-admin-token-admin-token-42"


def events(database: Database, prefix: str, count: int, key: str, cost: int = 1) -> None:
    now = int(time.time())
    batch = [parse_event(encode(usage_event(f"{prefix}-{i}", cost=cost, key=key, timestamp=now))) for i in range(count)]
    deliver(database.engine, batch, utc(now))


def test_the_failed_events_of_a_key_run_again_together(database: Database) -> None:
    alice = add_user(database.engine, key="1")
    events(database, "lost", 3, "k-new", cost=5)
    events(database, "other", 2, "k-other", cost=7)
    assert [e.event_id for e in in_transaction(database, lambda c: admin.failed_of_key(c, "k-new"))] == [
        "lost-0", "lost-1", "lost-2",
    ]  # fmt: skip
    database.execute(
        "INSERT INTO api_keys (remoteKeyId, userId, createdAt, updatedAt) VALUES ('k-new', :u, :t, :t)", u=alice, t=NOW
    )
    assert in_transaction(database, lambda c: admin.replay_key(c, "k-new", NOW)) == {"charged": 3}
    assert in_transaction(database, lambda c: admin.replay_key(c, "k-new", NOW)) == {}
    assert int(database.scalar("SELECT balance FROM users")) == OPENING - 15
    assert database.count("webhook_logs", "status = 'failed'") == 2  # the other key's wait


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    add_user(database.engine, key="1")
    app = create_app(dataclasses.replace(settings_for(database), admin_token=TOKEN), database.engine)
    with serving(app) as url:
        yield url


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.browser
def test_logs_page_to_the_first_delivery_and_link_a_key_to_charge_its_failed_events(
    site: str, database: Database
) -> None:
    events(database, "ok", 250, "1", cost=2)
    events(database, "lost", 3, "k-new", cost=5)
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, site, TOKEN)
        page.goto(f"{site}/admin/logs")
        first = page.locator("#logs tr").all_inner_texts()[1:]
        assert len(first) == 200
        assert first[0].split("\t")[:6] == ["lost-2", "failed", "k-new", "", "gpt-4", "5"]  # failed first
        assert any(row.split("\t")[2:4] == ["1", "alice@example.com"] for row in first)
        screenshot(page, "admin", "logs")
        page.click("#older")
        older = page.locator("#logs tr").all_inner_texts()[1:]
        assert len(older) == 53
        assert page.locator("#older").count() == 0  # the first delivery is on this page
        page.fill("input[name=remote_key_id]", "k-none")
        page.click("#replay-key")
        assert "No failed events of gateway key k-none" in page.inner_text("#notice")
        assert "error" in (page.get_attribute("#notice", "class") or "")
        page.goto(f"{site}/admin/users/1")
        page.fill("input[name=remote_key_id]", "k-new")
        page.click("#link-key")
        notice = page.inner_text("#notice")
        assert "its failed events run again: 3 charged" in notice
        assert "error" not in (page.get_attribute("#notice", "class") or "")
        assert page.inner_text("#balance") == str(OPENING - 250 * 2 - 15)
        screenshot(page, "admin", "user-key-linked")
