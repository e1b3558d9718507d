"""The /admin pages: refused without sign-in, CSRF-checked, and the operator's loop in a real browser."""

import dataclasses
import time
from collections.abc import Iterator
from contextlib import closing
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Page

from creditrelay.receiver.app import create_app
from tests.support.browser import chromium, loaded, screenshot, sign_in
from tests.support.database import Database
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event

TOKEN = "admin-token-admin-token-admin-token-42"


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    add_user(database.engine)
    app = create_app(dataclasses.replace(settings_for(database), admin_token=TOKEN), database.engine)
    with serving(app) as url:
        yield url


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_pages_refuse_without_sign_in_and_forms_without_csrf(site: str) -> None:
    """Every page redirects to sign-in; a wrong token is 401; a form without the session's CSRF token is 403."""
    with httpx.Client(base_url=site) as client:
        for path in ("/admin/", "/admin/users", "/admin/logs", "/admin/usage", "/admin/users/1"):
            reply = client.get(path)
            assert (reply.status_code, reply.headers["location"]) == (303, "/admin/login")
        assert client.post("/admin/login", data={"token": "wrong"}).status_code == 401
        assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303
        assert client.get("/admin/").status_code == 200
        forged = client.post("/admin/logs/replay", data={"csrf": "not-the-token", "event_id": "evt-x"})
        assert forged.status_code == 403
        assert client.post("/admin/users/1/topup", data={"amount": "5", "reference": "r"}).status_code == 403


def _shot(page: Page, name: str) -> None:
    screenshot(page, "admin", name)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.browser
def test_sign_in_find_user_see_failed_event_link_key_replay_in_a_browser(site: str, database: Database) -> None:
    """The operator's loop in headless Chromium, one screenshot per page in test-artifacts/admin/."""
    body = encode(usage_event("evt-lost", key="k-new", cost=25, timestamp=int(time.time())))
    assert httpx.post(f"{site}/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 422
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, site, TOKEN)
        assert page.inner_text("#failed-total") == "1"
        assert page.inner_text("#success-rate").endswith("%")
        _shot(page, "1-overview")

        page.click("nav >> text=Users")
        page.fill("input[name=q]", "alice")
        page.click('button:has-text("Show")')
        _shot(page, "2-users")
        page.click("text=alice@example.com")
        user_url = page.url
        assert page.inner_text("#balance") == str(OPENING)

        page.click("nav >> text=Webhook logs")
        assert "unknown remoteKeyId k-new" in page.inner_text("tr.failed")
        page.fill("input[name=until]", "2000-01-02T00:00")
        page.click('button:has-text("Filter")')
        assert "No deliveries match these filters." in page.inner_text("#no-logs")
        page.fill("input[name=since]", "2000-01-01T00:00")
        page.fill("input[name=until]", "")
        page.click('button:has-text("Filter")')
        assert "evt-lost" in page.inner_text("table")
        _shot(page, "3-logs-failed")

        page.goto(user_url)
        page.fill("#link-key-form input[name=remote_key_id]", "k-new")
        page.click("#link-key")
        assert "k-new" in page.inner_text("#keys")
        assert "its failed events ran again: 1 charged" in page.inner_text("#notice")  # no Replay click needed
        _shot(page, "4-user-key-linked")

        page.click("nav >> text=Webhook logs")
        assert loaded(page).locator("tr.failed").count() == 0
        _shot(page, "5-replayed")

        page.goto(user_url)
        assert page.inner_text("#balance") == str(OPENING - 25)
        assert "event evt-lost" in page.inner_text("#transactions")
        _shot(page, "6-user-charged")
        page.click("nav >> text=Usage")
        assert loaded(page).locator(".chart svg rect").count() >= 1
        _shot(page, "7-usage")
    assert database.scalar("SELECT status FROM webhook_logs WHERE eventId = 'evt-lost'") == "processed"


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(site: str) -> None:
    """A cookie copied before sign-out no longer opens a page after it; the cookie is HttpOnly, SameSite
    Strict, and Secure when the request came through a proxy that says it was HTTPS."""
    with httpx.Client(base_url=site) as client:
        signed_in = client.post("/admin/login", data={"token": TOKEN})
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Secure" not in cookie
        copied = dict(client.cookies)
        page = client.get("/admin/")
        assert page.status_code == 200
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        assert client.post("/admin/logout", data={"csrf": csrf}).status_code == 303
    with httpx.Client(base_url=site, cookies=copied) as thief:
        reply = thief.get("/admin/")
        assert (reply.status_code, reply.headers["location"]) == (303, "/admin/login")
    behind_tls = httpx.post(f"{site}/admin/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in behind_tls.headers["set-cookie"]


def test_failed_events_with_any_id_can_be_replayed(site: str, database: Database) -> None:
    """Event ids may hold "/", "?", "#" or "%", or be "." or "..": the Replay button (the id in the form)
    and the admin API (in the path, URL-encoded, or in the body) reach every one."""
    from creditrelay.billing.accounts import link_key
    from creditrelay.schema.database import utc
    from creditrelay.schema.transactions import run_transaction

    ids = ("gw/2026/evt-1", "odd?#%-id", ".", "..")
    for event_id in ids:
        body = encode(usage_event(event_id, key="k-slash", cost=3, timestamp=int(time.time())))
        assert httpx.post(f"{site}/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 422
    alice = database.scalar("SELECT id FROM users WHERE email = 'alice@example.com'")
    run_transaction(database.engine, lambda c: link_key(c, "k-slash", alice, utc(time.time())))
    with httpx.Client(base_url=site) as client:
        client.post("/admin/login", data={"token": TOKEN})
        page = client.get("/admin/logs", params={"status": "failed"})
        assert page.text.count('action="/admin/logs/replay"') == 4
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        for event_id in ("gw/2026/evt-1", ".."):
            replayed = client.post("/admin/logs/replay", data={"csrf": csrf, "event_id": event_id})
            notice = parse_qs(urlsplit(replayed.headers["location"]).query)["notice"]
            assert notice == [f"{event_id}: charged"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    by_path = httpx.post(f"{site}/api/admin/webhook-logs/odd%3F%23%25-id/replay", headers=auth)
    assert by_path.status_code == 200, by_path.text
    assert by_path.json()["data"] == {"eventId": "odd?#%-id", "status": "charged", "error": None}
    by_body = httpx.post(f"{site}/api/admin/webhook-logs/replay", json={"eventId": "."}, headers=auth)
    assert by_body.json()["data"]["status"] == "charged"
    assert database.count("webhook_logs", "status = 'processed'") == 4


def test_a_bad_parameter_on_a_page_is_a_page_naming_it(site: str) -> None:
    """A time, status or user id a page cannot use is refused with a 400 page naming it, not ignored."""
    with httpx.Client(base_url=site) as client:
        client.post("/admin/login", data={"token": TOKEN})
        for path, name in (
            ("/admin/logs?since=99999999999999", "since"),
            ("/admin/logs?until=%D9%A3", "until"),
            ("/admin/logs?status=lost", "status"),
            ("/admin/users/99999999999999999999", "user_id"),
            ("/admin/users/%D9%A3", "user_id"),
            ("/admin/users?sort=richest", "sort"),
            ("/admin/users?show=rich", "show"),
            ("/admin/users?after=nonsense", "after"),
            ("/admin/users/1?before=-3", "before"),
            ("/admin/logs?user=nobody@example.com", "user"),
            ("/admin/logs?before=x", "before"),
            ("/admin/logs?after=%D9%A3", "after"),
        ):
            reply = client.get(path)
            assert reply.status_code == 400, (path, reply.text[:200])
            assert reply.headers["content-type"].startswith("text/html")
            assert f'<p class="notice error" id="error">{name}:' in reply.text
        assert client.get("/admin/logs?since=&until=").status_code == 200  # empty fields: no filter
        csrf = client.get("/admin/").text.split('name="csrf" value="')[1].split('"')[0]
        refused = client.post("/admin/users/1/topup", data={"csrf": csrf, "amount": "5", "reference": "a\x00b"})
        assert refused.status_code == 400
        assert '<p class="notice error" id="error">reference: a NUL character' in refused.text


def _signed_in(site: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=site)
    client.post("/admin/login", data={"token": TOKEN})
    csrf = client.get("/admin/").text.split('name="csrf" value="')[1].split('"')[0]
    return client, csrf


def _notice(client: httpx.Client, reply: httpx.Response) -> tuple[str, str]:
    """The notice the page a form redirected to shows, and its kind ("" when it shows none)."""
    page = client.get(reply.headers["location"]).text
    if 'id="notice"' not in page:
        return "", ""
    found = page.split('<p class="notice ')[1]
    return found.split('"')[0], found.split(">", 1)[1].split("</p>")[0]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_replay_of_a_filter_takes_failed_events_of_a_real_filter_only(site: str, database: Database) -> None:
    """The filter's own event id is replayed; a status other than failed, or no filter at all, is refused
    (a crafted form cannot replay everything); a page cursor goes one way only."""
    from creditrelay.billing.accounts import link_key
    from creditrelay.schema.database import utc
    from creditrelay.schema.transactions import run_transaction

    for event_id in ("f1", "f2"):
        body = encode(usage_event(event_id, key="k-late", cost=4, timestamp=int(time.time())))
        assert httpx.post(f"{site}/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 422
    alice = database.scalar("SELECT id FROM users WHERE email = 'alice@example.com'")
    run_transaction(database.engine, lambda c: link_key(c, "k-late", alice, utc(time.time())))
    client, csrf = _signed_in(site)
    with closing(client):
        for form in ({"status": "processed", "key": "k-late"}, {}, {"status": "failed"}):
            refused = client.post("/admin/logs/replay-filtered", data={"csrf": csrf, **form})
            assert refused.status_code == 400, form
        assert database.count("webhook_logs", "status = 'failed'") == 2
        one = client.post("/admin/logs/replay-filtered", data={"csrf": csrf, "event": "f2"})
        assert _notice(client, one) == ("ok", "1 failed events of this filter ran again: 1 charged")
        assert database.scalar("SELECT status FROM webhook_logs WHERE eventId = 'f1'") == "failed"
        both = client.get("/admin/logs", params={"before": 5, "after": 1})
        assert both.status_code == 400
        assert "before, after:" in both.text
        api = httpx.get(f"{site}/api/admin/webhook-logs", params={"eventId": "f1", "after": 0},
                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert [row["eventId"] for row in api.json()["data"]] == ["f1"]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_notices_are_what_a_form_said_and_refusals_are_pages(site: str) -> None:
    """A notice made up in a link is not shown; a repeated top-up is amber (nothing changed); linking a key
    to nobody is a 404 page, not a database error; a page that is not there is an HTML 404 with the CSP."""
    client, csrf = _signed_in(site)
    with closing(client):
        forged = client.get("/admin/users/1", params={"notice": "Topped up 1,000,000", "kind": "ok"})
        assert 'id="notice"' not in forged.text
        first = client.post("/admin/users/1/topup", data={"csrf": csrf, "amount": "5", "reference": "t-1"})
        assert _notice(client, first)[0] == "ok"
        again = client.post("/admin/users/1/topup", data={"csrf": csrf, "amount": "5", "reference": "t-1"})
        kind, text = _notice(client, again)
        assert (kind, text.split(":")[0]) == ("warning", "Already applied (same reference)")
        nobody = client.post("/admin/users/99999/keys", data={"csrf": csrf, "remote_key_id": "zz"})
        assert nobody.status_code == 404
        assert "No user 99999" in nobody.text
        assert "SQL" not in nobody.text
        for path in ("/admin/nope", "/admin/logs/replay"):
            missing = client.get(path)
            assert missing.status_code in (404, 405)
            assert missing.headers["content-type"].startswith("text/html")
            assert "script-src 'none'" in missing.headers["content-security-policy"]


def test_the_user_page_makes_and_ends_portal_links(site: str, database: Database) -> None:
    """The "Make a portal link" form (with its CSRF token) says a link that opens the member's portal; "End
    every portal link" ends it; a form without the CSRF token changes nothing; days out of range are refused."""
    alice = database.scalar("SELECT id FROM users WHERE email = 'alice@example.com'")
    here = f"/admin/users/{alice}/portal-link"
    client, csrf = _signed_in(site)
    with closing(client):
        assert client.post(here, data={"days": "7"}).status_code == 403
        made = client.post(here, data={"csrf": csrf, "days": "7"})
        assert "portal" not in made.headers["location"]  # the link is in no URL (history, proxy logs)
        kind, text = _notice(client, made)
        assert kind == "ok"
        path = "/portal/" + text.split("/portal/")[1]
        assert "alice@example.com" in httpx.get(f"{site}{path}").text
        assert _notice(client, made) == ("", "")  # said once
        assert _notice(client, client.post(here, data={"csrf": csrf, "days": "400"}))[0] == "error"
        ended = client.post(here, data={"csrf": csrf, "action": "revoke"})
        assert _notice(client, ended)[0] == "warning"
        assert httpx.get(f"{site}{path}").status_code == 404
        assert client.post("/admin/users/99999/portal-link", data={"csrf": csrf}).status_code == 404


def test_the_usage_page_takes_a_range(site: str) -> None:
    client, _ = _signed_in(site)
    with closing(client):
        page = client.get("/admin/usage", params={"from": "2026-01-01", "to": "2026-01-31"})
        assert page.status_code == 200
        assert "Usage, 2026-01-01 to 2026-01-31" in page.text
        assert 'id="total-credits">0<' in page.text
        for wrong in ({"from": "2026-02-01", "to": "2026-01-01"}, {"to": "soon"}):
            assert client.get("/admin/usage", params=wrong).status_code == 400
