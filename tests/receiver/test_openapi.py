"""/openapi.json as /docs shows it: every endpoint under one of five tags; every refusal's example says
``"success": false``; the signature headers are parameters; the examples are real payloads (seed 004's
event, signed credit syncs by each identifier) — no "string", no 2^63 — and the portal is there."""

import json

import httpx

from creditrelay.receiver.openapi import document
from creditrelay.schema.credit_sync import parse_sync_body
from creditrelay.schema.holds import parse_body
from creditrelay.schema.packages import OrderBody
from creditrelay.schema.wire import parse_event
from tests.support.receiver import Receiver

TAGS = {"webhooks", "credit API", "portal", "admin", "gateway"}


def test_every_endpoint_is_grouped_and_every_refusal_says_success_false() -> None:
    found = document()
    assert {tag["name"] for tag in found["tags"]} == TAGS
    for path, operations in found["paths"].items():
        for method, operation in operations.items():
            assert len(operation["tags"]) == 1, (path, method)
            assert operation["tags"][0] in TAGS, (path, method)
            for code, answer in operation["responses"].items():
                example = answer.get("content", {}).get("application/json", {}).get("example")
                if int(code) >= 400:
                    assert example is not None, (path, code)
                    assert example["success"] is False, (path, code)
                    assert example["message"], (path, code)
    assert "/api/portal/account" in found["paths"]
    assert found["paths"]["/api/portal/usage"]["get"]["tags"] == ["portal"]
    ordering = found["paths"]["/api/portal/orders"]["post"]
    assert ordering["tags"] == ["portal"]
    assert parse_body(OrderBody, ordering["requestBody"]["content"]["application/json"]["example"]).package == "pro"


def test_signature_headers_are_parameters_and_examples_are_real() -> None:
    paths = document()["paths"]
    events = paths["/api/webhooks/events"]["post"]
    named = {p["name"] for p in events["parameters"] if p["in"] == "header"}
    assert {"X-Webhook-Signature", "webhook-id", "webhook-timestamp", "webhook-signature"} <= named
    event = events["requestBody"]["content"]["application/json"]["example"]
    assert parse_event(json.dumps(event).encode()).event_id == "test-001"  # seed 004's own
    for example in paths["/api/credits/sync"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ].values():
        assert parse_sync_body(example["value"]).member.field in ("telegram_id", "user_id", "email")
    text = json.dumps(paths)
    for placeholder in ('"string"', str(2**63 - 1)):
        assert f'"example": {placeholder}' not in text


def test_the_document_is_served(receiver: Receiver) -> None:
    served = receiver.client.get("/openapi.json").json()
    assert served["tags"] == document()["tags"]
    assert httpx.get(f"{receiver.url}/docs").status_code == 200
