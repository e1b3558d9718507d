"""The admin console as an operator uses it, in headless Chromium: users sorted by balance, a thousand
deliveries paged to the first, a key's failed events found and replayed together, the balance and the
charts moving; every page at desktop and phone width kept in test-artifacts/console/; and the charts'
axes, labels and legends as the browser lays them out."""

import dataclasses
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Locator, Page

from creditrelay.billing.accounts import NewUser, adjust, create_user, link_key
from creditrelay.billing.deliveries import deliver
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import utc
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import parse_event
from tests.support.browser import DESKTOP, PHONE, chromium, loaded, shoot_both, sign_in
from tests.support.database import Database
from tests.support.receiver import add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, usage_event

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database", ["sqlite"], indirect=True)]

TOKEN = "admin-token-admin-token-admin-token-42"
MODELS = ["gpt-4o-mini", "gemini-1.5-pro-002", "claude-3-5-sonnet-20241022", "deepseek-chat", "o1-preview-2024-09-12"]
ALICE = 100_000


def _deliveries(database: Database, count: int, key: str, prefix: str, spread_days: int = 0) -> None:
    """``count`` usages of ``key`` over the models, charged (and stamped) over the last ``spread_days`` days."""
    now = int(time.time())
    by_day: dict[int, list[Any]] = {}
    for i in range(count):
        back = i // 5 % (spread_days or 1)
        body = usage_event(f"{prefix}-{i:04d}", cost=1 + i % 9, key=key, timestamp=now - back * 86400)
        body["data"]["model"] = MODELS[i % len(MODELS)]
        by_day.setdefault(back, []).append(parse_event(encode(body)))
    for back in sorted(by_day, reverse=True):  # oldest first, as they would have come
        events = by_day[back]
        for start in range(0, len(events), 100):
            deliver(database.engine, events[start : start + 100], utc(now - back * 86400))


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    """alice (key 1) and bob (key 2) have used credits; carol owes 40; dan has none; 10 events came for
    k-new, which nobody had linked (failed); the last reconcile found 12 discrepancies."""
    alice = add_user(database.engine, "alice@example.com", credits=ALICE, key="1")
    add_user(database.engine, "bob@example.com", credits=5000, key="2")

    def more(connection: Any) -> None:
        carol = create_user(connection, NewUser("carol@example.com", "Carol", 4242), utc(time.time()))
        adjust(connection, carol.id, -40, "chargeback-1", "a card charged back", utc(time.time()))
        create_user(connection, NewUser("dan@example.com"), utc(time.time()))

    run_transaction(database.engine, more)
    moment = utc(time.time())
    database.execute(
        "INSERT INTO reconcile_runs (startedAt, windowStart, windowEnd, fixed, discrepancies, report)"
        " VALUES (:at, :at, :at, :fixed, 12, '{}')",
        at=moment,
        fixed=False,
    )
    _deliveries(database, 600, "1", "a", spread_days=20)
    _deliveries(database, 390, "2", "b", spread_days=5)
    _deliveries(database, 10, "k-new", "lost")
    assert alice == 1
    app = create_app(
        dataclasses.replace(settings_for(database), admin_token=TOKEN, low_balance_at=100), database.engine
    )
    with serving(app) as url:
        yield url


def _rows(page: Page, table: str) -> list[list[str]]:
    return [row.split("\t") for row in loaded(page).locator(f"#{table} tbody tr").all_inner_texts()]


def _shoot(page: Page, name: str) -> None:
    shoot_both(page, "console", name)


def _model_credits(page: Page) -> dict[str, int]:
    """The credits the usage page's by-model table says, by model."""
    return {row[0]: int(row[1].replace(",", "")) for row in _rows(page, "models")}


def test_an_operator_finds_pages_replays_and_sees_it_charged(site: str, database: Database) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        page.goto(f"{site}/admin/")
        _shoot(page, "sign-in")
        sign_in(page, site, TOKEN)
        assert page.inner_text("#failed-total") == "10"
        _shoot(page, "overview")
        page.set_viewport_size(PHONE)  # a tile's word ("discrepancies") is written whole, on one line
        assert page.locator(".figures dd .unit").count() >= 1
        for unit in page.locator(".figures dd .unit").all():
            assert unit.evaluate("e => e.getClientRects().length") == 1, unit.inner_text()
        page.set_viewport_size(DESKTOP)

        # users, lowest balance first: carol owes, dan has nothing; then highest first
        page.click("nav >> text=Users")
        users = _rows(page, "users")
        assert [u[1] for u in users[:2]] == ["carol@example.com", "dan@example.com"]
        assert "below-zero" in users[0][5]
        assert "below the line" in users[0][5]  # enforcement is off: nobody was suspended at the gateway
        assert page.inner_text("#total") == "4"
        _shoot(page, "users")
        page.select_option("select[name=sort]", "-balance")
        page.click('button:has-text("Show")')
        assert [u[1] for u in _rows(page, "users")] == [
            "alice@example.com", "bob@example.com", "dan@example.com", "carol@example.com",
        ]  # fmt: skip
        page.click(".tabs >> text=below-zero")
        assert [u[1] for u in _rows(page, "users")] == ["carol@example.com"]
        page.fill("input[name=q]", "4242")  # a Telegram id
        page.click('button:has-text("Show")')
        assert [u[1] for u in _rows(page, "users")] == ["carol@example.com"]
        page.fill("input[name=q]", "nobody-like-this")
        page.click('button:has-text("Show")')
        assert "Nobody matches" in page.inner_text("#no-users")
        _shoot(page, "users-none-match")

        # a thousand deliveries, 200 a page, older and older to the first one
        page.click("nav >> text=Webhook logs")
        assert "10 failed deliveries wait" in page.inner_text("#failed-waiting")
        _shoot(page, "logs")
        seen: list[str] = []
        for _ in range(10):
            rows = _rows(page, "logs")
            assert len(rows) == 200
            seen += [row[0] for row in rows]
            if page.locator("#older").count() == 0:
                break
            page.click("#older")
        assert len(seen) == len(set(seen)) == 1000
        assert seen[-1] == database.scalar("SELECT eventId FROM webhook_logs ORDER BY id LIMIT 1")
        _shoot(page, "logs-first-delivery")
        page.click("#newer")
        assert _rows(page, "logs")[0][0] == seen[600]

        # the failed events of k-new, found by key and status; linked; replayed together
        page.goto(f"{site}/admin/logs")
        page.select_option("select[name=status]", "failed")
        page.fill("#filter input[name=key]", "k-new")
        page.click('button:has-text("Filter")')
        failed = _rows(page, "logs")
        assert len(failed) == 10
        assert all(row[1:3] == ["failed", "k-new"] for row in failed)
        _shoot(page, "logs-failed-of-a-key")
        page.goto(f"{site}/admin/usage")
        before = _model_credits(page)
        _shoot(page, "usage")

        carol = database.scalar("SELECT id FROM users WHERE email = 'carol@example.com'")
        run_transaction(database.engine, lambda c: link_key(c, "k-new", carol, utc(time.time())))  # no replay
        page.go_back()
        page.click("#replay-filtered")
        notice = page.inner_text("#notice")
        assert "10 failed events of this filter ran again: 10 charged" in notice
        assert "ok" in (page.get_attribute("#notice", "class") or "")
        assert loaded(page).locator("#logs").count() == 0  # the filter shows failed ones: none are left
        _shoot(page, "logs-replayed")

        charged = sum(1 + i % 9 for i in range(10))
        page.goto(f"{site}/admin/users/{carol}")
        assert page.inner_text("#balance") == str(-40 - charged)
        assert "k-new" in page.inner_text("#keys")
        chart = page.inner_text("#usage-by-model")
        assert all(model in chart for model in MODELS)
        _shoot(page, "user")
        page.goto(f"{site}/admin/usage")
        after = _model_credits(page)
        assert sum(after.values()) - sum(before.values()) == charged
        assert after["gpt-4o-mini"] > before["gpt-4o-mini"]


def test_a_users_page_pages_its_transactions_to_the_first_and_takes_corrections(site: str, database: Database) -> None:
    """alice's 600 usages and her opening balance, 50 a page back to the opening; a correction and a key
    unlinked from her page, each saying what it did."""
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        sign_in(page, site, TOKEN)
        page.goto(f"{site}/admin/users/1")
        ids: list[str] = []
        for _ in range(20):
            ids += [row[0] for row in _rows(page, "transactions")]
            if page.locator("#older").count() == 0:
                break
            page.click("#older")
        assert len(ids) == len(set(ids)) == 601
        assert _rows(page, "transactions")[-1][1] == "opening"
        _shoot(page, "user-first-transactions")
        page.click("#newest")
        page.fill("#correct input[name=amount]", "25")
        page.fill("#correct input[name=reference]", "ticket-9")
        page.fill("#correct input[name=reason]", "refund charged back")
        page.click('#correct button:has-text("Correct")')
        assert "Took back 25 credits" in page.inner_text("#notice")
        page.fill("#correct input[name=amount]", "30")  # the same reference for another amount
        page.fill("#correct input[name=reference]", "ticket-9")
        page.fill("#correct input[name=reason]", "typo")
        page.click('#correct button:has-text("Correct")')
        assert "was used for another adjustment" in page.inner_text("#notice")
        assert "error" in (page.get_attribute("#notice", "class") or "")
        page.fill("#topup input[name=amount]", "abc")
        page.fill("#topup input[name=reference]", "order-1")
        page.click('#topup button:has-text("Top up")')
        assert "positive whole number" in page.inner_text("#notice")
        page.click('#key-list button:has-text("Unlink")')
        assert "unlinked" in page.inner_text("#notice")
        assert "warning" in (page.get_attribute("#notice", "class") or "")
        assert page.inner_text("#keys") == "none"
        _shoot(page, "user-corrected")
    spent = int(database.scalar("SELECT SUM(creditCost) FROM usage_records WHERE remoteKeyId = '1'"))
    assert int(database.scalar("SELECT balance FROM users WHERE id = 1")) == ALICE - spent - 25


# Every text of a chart, laid out by the browser: its box, its classes and its words
TEXTS = """svg => [...svg.querySelectorAll('text')].filter(t => t.textContent.trim()).map(t => {
  const b = t.getBoundingClientRect();
  const parents = []; for (let e = t; e && e !== svg; e = e.parentElement) parents.push(e.getAttribute('class') || '');
  return {text: t.textContent, x: b.left, y: b.top, right: b.right, bottom: b.bottom, classes: parents.join(' ')};
})"""
BOX = (
    "svg => { const b = svg.getBoundingClientRect(); return {x: b.left, y: b.top, right: b.right, bottom: b.bottom}; }"
)


def _totals() -> dict[str, int]:
    """The credits the fixture charged each model (alice's 600 and bob's 390 usages)."""
    totals: dict[str, int] = {}
    for count in (600, 390):
        for i in range(count):
            totals[MODELS[i % len(MODELS)]] = totals.get(MODELS[i % len(MODELS)], 0) + 1 + i % 9
    return totals


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["right"] - 0.5
        and b["x"] < a["right"] - 0.5
        and a["y"] < b["bottom"] - 0.5
        and b["y"] < a["bottom"] - 0.5
    )


def _check_chart(where: str, svg: Locator) -> None:
    """A title, x and y tick labels, whole numbers on the values' axis, legends apart, every text inside the
    chart and no two ticks of an axis on each other."""
    box = svg.evaluate(BOX)
    texts = svg.evaluate(TEXTS)
    words = [t["text"] for t in texts]
    x_ticks = [t for t in texts if "axis x" in t["classes"] and "title" not in t["classes"]]
    y_ticks = [t for t in texts if "axis y" in t["classes"] and "title" not in t["classes"]]
    assert x_ticks, (where, words)
    assert y_ticks, (where, words)
    numeric = [ts for ts in (x_ticks, y_ticks) if all(re.fullmatch(r"-?[\d.,]+", t["text"]) for t in ts)]
    assert len(numeric) == 1, (where, words)  # the values' axis; the other one names days, minutes or models
    assert all(re.fullmatch(r"-?\d{1,3}(,\d{3})*", t["text"]) for t in numeric[0]), (where, words)
    legend = [t for t in texts if "legend" in t["classes"]]
    for group in (legend, x_ticks, y_ticks):
        for i, a in enumerate(group):
            assert not any(_overlap(a, b) for b in group[i + 1 :]), (where, a, group)
    for t in texts:
        assert box["x"] - 1 <= t["x"], (where, t)
        assert t["right"] <= box["right"] + 1, (where, t)
        assert box["y"] - 1 <= t["y"], (where, t)
        assert t["bottom"] <= box["bottom"] + 1, (where, t)


@pytest.mark.parametrize("width", [DESKTOP["width"], PHONE["width"]])
def test_charts_have_axes_legends_and_every_label_whole_and_apart(site: str, width: int) -> None:
    """On the overview, usage and user pages at desktop and phone width: each chart has a title, axis titles,
    x and y tick labels (whole numbers), a legend where it has several series; no text of it sticks out
    of the chart; no two tick labels overlap; every model's name is written whole, with its credits."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": 900})
        sign_in(page, site, TOKEN)
        charts = 0
        for path in ("/admin/", "/admin/usage", "/admin/users/1"):
            page.goto(f"{site}{path}")
            for chart in page.locator(".chart").all():
                charts += 1
                assert chart.locator(".chart-title").inner_text().strip(), path
                _check_chart(path, chart.locator("svg"))
                _check_opens_at_its_newest_end(path, chart, width)
        assert charts == 7
        page.goto(f"{site}/admin/usage")
        texts = page.locator("#by-model svg").evaluate(TEXTS)
        assert all(any(t["text"] == f"{m} · {c:,}" for t in texts) for m, c in _totals().items())
        assert set(MODELS) <= set(page.locator("#by-day .legend li").all_inner_texts())


def _check_opens_at_its_newest_end(where: str, chart: Locator, width: int) -> None:
    """The title and legend are within the screen; a plot wider than its box (a phone) shows its right,
    newest, end first (bars by model: their left end, where the models' names are)."""
    for part in (chart.locator(".chart-title"), *chart.locator(".legend li").all()):
        box = part.bounding_box()
        assert box is not None
        assert box["x"] >= 0, (where, part.inner_text())
        assert box["x"] + box["width"] <= width + 1, (where, part.inner_text())
    plot, svg = chart.locator(".plot-box").bounding_box(), chart.locator(".plot-box > svg").bounding_box()
    assert plot is not None
    assert svg is not None
    if "from-start" in (chart.locator(".plot-box").get_attribute("class") or ""):
        assert abs(svg["x"] - plot["x"]) <= 2, (where, plot, svg)
    else:
        assert abs((svg["x"] + svg["width"]) - (plot["x"] + plot["width"])) <= 2, (where, plot, svg)
