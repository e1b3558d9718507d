"""What each credit API client may do: its rights, checked before any member is looked up."""

import time
from typing import Any

import httpx
import pytest

from creditrelay.billing.accounts import top_up
from creditrelay.billing.clients import set_rights
from creditrelay.schema.credit_sync import RIGHTS
from creditrelay.schema.database import utc
from creditrelay.schema.transactions import run_transaction
from tests.support.credits import TELEGRAM_ID, Credentials, add_telegram_user, register_client, signed
from tests.support.database import Database
from tests.support.receiver import Receiver

UNKNOWN_ID = 42


def request(receiver: Receiver, creds: Credentials, action: str, telegram_id: int) -> httpx.Response:
    """One request of the kind ``action`` names, about ``telegram_id``, signed by ``creds``."""
    headers = {"X-Api-Key": creds.api_key}
    if action == "balance":
        return receiver.client.get(f"/api/credits/balance/{telegram_id}", headers=headers)
    if action == "records":
        return receiver.client.get(f"/api/credits/records/{telegram_id}", headers=headers)
    amount = 10 if action == "credit" else -10
    body = signed(creds, amount, telegram_id, reference=f"{action}-{telegram_id}", version=2)
    return receiver.client.post("/api/credits/sync", json=body, headers=headers)


@pytest.mark.parametrize(
    ("action", "missing", "doing"),
    [
        ("balance", {"balance"}, "read balances"),
        ("records", {"records", "records:all"}, "read records"),
        ("credit", {"credit"}, "add credits"),
        ("debit", {"debit"}, "deduct credits"),
    ],
    ids=["balance", "records", "credit", "debit"],
)
def test_each_endpoint_is_refused_without_its_right(
    receiver: Receiver, database: Database, action: str, missing: set[str], doing: str
) -> None:
    """Without its right a request is a 403 naming the right, changes nothing, and answers a registered and
    an unknown member alike."""
    add_telegram_user(database.engine, credits=100)
    creds = register_client(database.engine, rights=[r for r in RIGHTS if r not in missing])
    before = database.snapshot()
    known, unknown = (request(receiver, creds, action, t) for t in (TELEGRAM_ID, UNKNOWN_ID))
    assert (known.status_code, unknown.status_code) == (403, 403)
    assert known.json() == unknown.json()
    assert known.json() == {"success": False, "message": f"This API key may not {doing}: it lacks the right '{action}'"}
    assert database.snapshot() == before


def test_a_batch_checks_each_items_right(receiver: Receiver, database: Database) -> None:
    """In a batch each item is checked on its own: a deduction by a client that may only add fails alone."""
    add_telegram_user(database.engine, credits=100)
    creds = register_client(database.engine, rights=["credit"])
    items = [
        signed(creds, 5, reference="a", version=2),
        signed(creds, -3, reference="b", version=2),
        signed(creds, -3, UNKNOWN_ID, reference="c", version=2),
        signed(creds, 2, UNKNOWN_ID, reference="d"),
    ]
    reply = receiver.client.post("/api/credits/batch", json={"items": items}, headers={"X-Api-Key": creds.api_key})
    results = reply.json()["data"]["results"]
    assert [r["status"] for r in results] == [200, 403, 403, 404]
    assert results[1]["message"] == "This API key may not deduct credits: it lacks the right 'debit'"
    assert database.scalar("SELECT balance FROM users WHERE telegramId = :t", t=TELEGRAM_ID) == 105


def test_records_show_a_clients_own_entries_unless_it_may_see_all(receiver: Receiver, database: Database) -> None:
    """A client with `records` sees only its own syncs of a member; with `records:all`, every entry (other
    clients' reasons and sources, top-ups, usage)."""
    user_id = add_telegram_user(database.engine, credits=100)
    media, game = register_client(database.engine, "media_bot"), register_client(database.engine, "game_bot")
    auditor = register_client(database.engine, "auditor", rights=["records:all"])
    for creds, amount, reason in ((media, 10, "video"), (game, 20, "level up"), (media, -5, "sticker")):
        body = signed(creds, amount, reference=reason, reason=reason, version=2)
        assert receiver.client.post("/api/credits/sync", json=body, headers={"X-Api-Key": creds.api_key}).is_success
    run_transaction(database.engine, lambda c: top_up(c, user_id, 7, "order-1", utc(time.time()), "gift"))

    def records(creds: Credentials) -> list[tuple[Any, ...]]:
        reply = receiver.client.get(f"/api/credits/records/{TELEGRAM_ID}", headers={"X-Api-Key": creds.api_key})
        assert reply.status_code == 200, reply.text
        return [(r["change"], r["reason"], r["source"]) for r in reply.json()["data"]["records"]]

    assert records(media) == [(-5, "sticker", "media_bot"), (10, "video", "media_bot")]
    assert records(game) == [(20, "level up", "game_bot")]
    assert [change for change, _, _ in records(auditor)] == [7, -5, 20, 10, 100]


def test_a_request_refused_for_a_right_leaves_its_token_unused(receiver: Receiver, database: Database) -> None:
    """A 403 records nothing: once the operator grants the right, the same signed request applies."""
    add_telegram_user(database.engine, credits=100)
    creds = register_client(database.engine, rights=["credit"])
    body = signed(creds, -30, reference="refund", version=2)
    headers = {"X-Api-Key": creds.api_key}
    assert receiver.client.post("/api/credits/sync", json=body, headers=headers).status_code == 403
    run_transaction(database.engine, lambda c: set_rights(c, "media_bot", ["credit", "debit"], utc(time.time())))
    assert receiver.client.post("/api/credits/sync", json=body, headers=headers).status_code == 200
    assert database.scalar("SELECT balance FROM users WHERE telegramId = :t", t=TELEGRAM_ID) == 70


def test_the_openapi_document_names_each_endpoints_rights(receiver: Receiver) -> None:
    """/openapi.json says which right each credit endpoint needs, and documents its 403."""
    paths = receiver.client.get("/openapi.json").json()["paths"]
    needs = {
        ("/api/credits/sync", "post"): ["`credit`", "`debit`"],
        ("/api/credits/batch", "post"): ["`credit`", "`debit`"],
        ("/api/credits/balance/{telegram_id}", "get"): ["`balance`"],
        ("/api/credits/records/{telegram_id}", "get"): ["`records`", "`records:all`"],
    }
    for (path, method), rights in needs.items():
        operation = paths[path][method]
        assert all(right in operation["description"] for right in rights), path
        assert path.endswith("batch") or "403" in operation["responses"], path
