"""Secrets stay secret: not in logs, not in error bodies; credentials required; an optional rate limit."""

import dataclasses

import httpx
from structlog.testing import capture_logs

from creditrelay.receiver.app import create_app
from creditrelay.receiver.rate_limit import RateLimiter
from tests.support.credits import add_telegram_user, register_client, signed
from tests.support.database import Database
from tests.support.receiver import Receiver, settings_for
from tests.support.server import serving
from tests.support.signing import OTHER_SECRET, SECRET, encode, seed_headers, standard_headers, usage_event


def test_no_secret_or_token_reaches_a_log_line_or_an_error_body(receiver: Receiver, database: Database) -> None:
    """Accepted, refused and failed requests of both APIs log nothing that could sign or authenticate."""
    add_telegram_user(database.engine, credits=10)
    creds = register_client(database.engine)
    body = encode(usage_event("evt-s"))
    forged = signed(creds, 5) | {"token": "f" * 64}
    good = signed(creds, 5, reference="r-1")
    sent_secrets = [SECRET, OTHER_SECRET, creds.secret, creds.api_key, good["token"], forged["token"]]
    with capture_logs() as logs:
        answers = [
            receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body)),
            receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body, "x" * 40)),
            receiver.client.post("/api/webhooks/events", content=body, headers=standard_headers(body, "evt-s")),
            receiver.client.post("/api/credits/sync", json=good, headers={"X-Api-Key": creds.api_key}),
            receiver.client.post("/api/credits/sync", json=forged, headers={"X-Api-Key": creds.api_key}),
            receiver.client.post("/api/credits/sync", json=good, headers={"X-Api-Key": creds.api_key + "x"}),
        ]
    assert [a.status_code for a in answers] == [200, 401, 200, 200, 401, 401]
    assert logs, "requests were logged"
    text = repr(logs) + "".join(a.text for a in answers)
    for secret in sent_secrets:
        assert secret not in text


def test_credit_endpoints_refuse_without_their_key(receiver: Receiver) -> None:
    """Every credit endpoint answers 401 without X-Api-Key."""
    for method, path in (("POST", "/api/credits/sync"), ("POST", "/api/credits/batch"),
                         ("GET", "/api/credits/balance/1"), ("GET", "/api/credits/records/1")):  # fmt: skip
        assert receiver.client.request(method, path, json={}).status_code == 401


def test_the_optional_rate_limit_answers_429_per_client(database: Database) -> None:
    """With CREDIT_RATE_LIMIT=3, the fourth request of a client within the minute is 429 with Retry-After."""
    add_telegram_user(database.engine, credits=10)
    creds = register_client(database.engine)
    other = register_client(database.engine, "game_bot")
    settings = dataclasses.replace(settings_for(database), credit_rate_limit=3)
    app = create_app(settings, database.engine)
    with serving(app) as url, httpx.Client(base_url=url) as client:
        codes = [client.get("/api/credits/balance/123456789", headers={"X-Api-Key": creds.api_key}).status_code
                 for _ in range(4)]  # fmt: skip
        limited = client.get("/api/credits/balance/123456789", headers={"X-Api-Key": creds.api_key})
        elsewhere = client.get("/api/credits/balance/123456789", headers={"X-Api-Key": other.api_key})
    assert codes == [200, 200, 200, 429]
    assert int(limited.headers["retry-after"]) >= 1
    assert elsewhere.status_code == 200


def test_the_bucket_refills_with_time() -> None:
    """A token per 60/limit seconds comes back."""
    now = [1000.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.wait_needed("a") == 0 for _ in range(60))
    assert limiter.wait_needed("a") > 0
    now[0] += 1.0
    assert limiter.wait_needed("a") == 0
