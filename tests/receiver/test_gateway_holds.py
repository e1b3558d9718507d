"""``POST /api/gateway/holds`` and ``DELETE /api/gateway/holds/{holdId}`` over HTTP, on every database: a
hold placed or refused by the available credits, 4xx naming what is wrong, a webhook's ``data.holdId``
settling it once, void and timeout releasing it, and ``available`` in the allowance answer."""

import dataclasses
import time
from collections.abc import Iterator

import httpx
import pytest

from creditrelay.receiver.app import create_app
from tests.support.database import Database
from tests.support.receiver import add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event

TOKEN = "gateway-token-for-the-allowance-api-000"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gateway(database: Database, clock: Clock) -> Iterator[httpx.Client]:
    add_user(database.engine, "alice@example.com", credits=100, key="17")
    settings = dataclasses.replace(settings_for(database), gateway_token=TOKEN)
    with serving(create_app(settings, database.engine, clock=clock)) as url, httpx.Client(base_url=url) as client:
        yield client


def place(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/api/gateway/holds", json={"remoteKeyId": 17} | body, headers=BEARER)


def available(client: httpx.Client) -> int:
    return int(client.get("/api/gateway/allowance/17", headers=BEARER).json()["data"]["available"])


def test_holds_are_placed_while_available_and_refused_after(gateway: httpx.Client) -> None:
    first = place(gateway, amount=60, requestId="r1")
    assert first.status_code == 201
    assert first.json()["data"] | {"holdId": 0, "expiresAt": ""} == {
        "holdId": 0, "allowed": True, "available": 40, "expiresAt": "",
    }  # fmt: skip
    assert place(gateway, amount=60, requestId="r1").json()["data"]["holdId"] == first.json()["data"]["holdId"]
    refused = place(gateway, amount=41)
    assert (refused.status_code, refused.json()["data"]) == (200, {"allowed": False, "available": 40})
    assert available(gateway) == 40


def test_bad_requests_name_what_is_wrong(gateway: httpx.Client) -> None:
    assert gateway.post("/api/gateway/holds", json={"remoteKeyId": 17, "amount": 1}).status_code == 401
    for body, field in (
        ({"amount": 0}, "amount"),
        ({"amount": "5"}, "amount"),
        ({"amount": 5, "ttlSeconds": 86_401}, "ttlSeconds"),
        ({"amount": 5, "requestId": ""}, "requestId"),
        ({"amount": 5, "extra": 1}, "extra"),
    ):
        reply = place(gateway, **body)
        assert (reply.status_code, field in reply.json()["message"]) == (400, True), reply.text
    unknown = gateway.post("/api/gateway/holds", json={"remoteKeyId": "nobody", "amount": 1}, headers=BEARER)
    assert (unknown.status_code, unknown.json()["remoteKeyId"]) == (404, "nobody")
    assert gateway.delete("/api/gateway/holds/999999", headers=BEARER).status_code == 404
    assert gateway.delete("/api/gateway/holds/x", headers=BEARER).status_code == 400


def test_a_webhook_settles_its_hold_once_and_void_and_timeout_release(
    gateway: httpx.Client, database: Database, clock: Clock
) -> None:
    hold_id = place(gateway, amount=50).json()["data"]["holdId"]
    event = usage_event("evt-h1", cost=35, key=17, request_id="req-h1")
    event["data"]["holdId"] = hold_id
    body = encode(event)
    for _ in range(2):  # a delivery and its redelivery
        assert gateway.post("/api/webhooks/events", content=body, headers=seed_headers(body)).status_code == 200
    assert database.rows("SELECT state, settled FROM credit_holds")[0] == ("settled", 35)
    assert (database.scalar("SELECT balance FROM users"), available(gateway)) == (65, 65)
    assert gateway.delete(f"/api/gateway/holds/{hold_id}", headers=BEARER).json()["data"]["state"] == "settled"

    second = place(gateway, amount=65).json()["data"]["holdId"]
    assert available(gateway) == 0
    voided = gateway.delete(f"/api/gateway/holds/{second}", headers=BEARER)
    assert (voided.status_code, voided.json()["data"]["state"]) == (200, "voided")
    assert available(gateway) == 65
    place(gateway, amount=65, ttlSeconds=30)
    assert available(gateway) == 0
    clock.now += 31
    assert available(gateway) == 65  # released by its expiry at once, closed by the next pass
