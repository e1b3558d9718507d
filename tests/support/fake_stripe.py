"""A stand-in for Stripe, following its wire format: the API's ``POST /v1/checkout/sessions`` (form-encoded,
``Authorization: Bearer sk_…``, nested fields as ``line_items[0][price_data][currency]``) answering a
``checkout.session`` object in JSON — ``id`` ``cs_test_…``, ``url`` of its hosted page, ``payment_status``
``unpaid`` — or Stripe's error object; the hosted page ``GET /c/pay/<id>``; and the events Stripe would
send about a session, in the format of real events (``evt_…``, ``object: event``, ``data.object``), signed
with ``stripe.WebhookSignature.generate_signature_header`` — the official package's own signer."""

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tests.support.server import serving

API_VERSION = "2025-03-31.basil"
CREATED = 1765000000


def stripe_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def event(kind: str, found: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """A Stripe event of ``kind`` about ``found``, as Stripe sends it to a webhook endpoint."""
    return {
        "id": event_id or stripe_id("evt"), "object": "event", "api_version": API_VERSION, "created": CREATED,
        "data": {"object": found}, "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None}, "type": kind,
    }  # fmt: skip


def session(
    amount: int, currency: str, *, user: int | None, package: str | None, out_trade_no: str | None = None,
    session_id: str | None = None, payment_intent: str | None = None, paid: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """A completed Checkout Session object (``payment_status`` ``paid``, or ``unpaid`` for a delayed method)."""
    metadata = {k: v for k, v in (("package", package), ("outTradeNo", out_trade_no)) if v is not None}
    return {
        "id": session_id or stripe_id("cs"), "object": "checkout.session", "after_expiration": None,
        "allow_promotion_codes": None, "amount_subtotal": amount, "amount_total": amount,
        "automatic_tax": {"enabled": False, "liability": None, "status": None}, "billing_address_collection": None,
        "cancel_url": "https://billing.example.com/portal/x",
        "client_reference_id": None if user is None else str(user),
        "created": CREATED, "currency": currency, "customer": None, "customer_creation": "if_required",
        "customer_details": {"email": "member@example.com", "name": "A Member", "phone": None, "tax_exempt": "none"},
        "expires_at": CREATED + 86400, "livemode": False, "locale": None, "metadata": metadata, "mode": "payment",
        "payment_intent": payment_intent or stripe_id("pi"), "payment_method_types": ["card"],
        "payment_status": "paid" if paid else "unpaid", "status": "complete",
        "success_url": "https://billing.example.com/portal/x",
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}, "url": None,
    }  # fmt: skip


def charge(amount: int, currency: str, payment_intent: str | None, refunded: int) -> dict[str, Any]:
    """A Charge after a refund: ``amount_refunded`` is everything refunded so far."""
    return {
        "id": stripe_id("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": refunded, "captured": True, "created": CREATED, "currency": currency,
        "livemode": False, "metadata": {}, "paid": True, "payment_intent": payment_intent,
        "refunded": refunded >= amount, "status": "succeeded",
    }  # fmt: skip


def dispute(amount: int, currency: str, payment_intent: str | None) -> dict[str, Any]:
    return {
        "id": stripe_id("dp"), "object": "dispute", "amount": amount, "balance_transactions": [],
        "charge": stripe_id("ch"), "created": CREATED, "currency": currency, "evidence": {},
        "is_charge_refundable": False, "livemode": False, "metadata": {}, "payment_intent": payment_intent,
        "reason": "fraudulent", "status": "needs_response",
    }  # fmt: skip


def signed(payload: dict[str, Any], secret: str, *, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of Stripe's delivery of ``payload``, signed as Stripe signs it."""
    body = json.dumps(payload, indent=2)  # Stripe sends events pretty-printed
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp or int(time.time()))
    return body.encode(), {"Stripe-Signature": header, "Content-Type": "application/json; charset=utf-8"}


def nested(form: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) back into objects and lists."""
    root: dict[str, Any] = {}
    for name, value in form:
        keys = name.replace("]", "").split("[")
        here: Any = root
        for key in keys[:-1]:
            here = here.setdefault(key, {})
        here[keys[-1]] = value
    return root


@dataclass
class FakeStripe:
    api_key: str
    url: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)  # what each create was sent, decoded
    fail: int | None = None  # answer every create with this status and Stripe's error object

    async def create_session(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            error = {"message": "Invalid API Key provided: sk_****", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=401)
        params = nested(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.requests.append(params | {"idempotency_key": request.headers.get("idempotency-key")})
        if self.fail is not None:
            error = {"message": "Your account cannot currently make live charges.", "type": "api_error"}
            return JSONResponse({"error": error}, status_code=self.fail)
        item = params["line_items"]["0"]
        amount = int(item["price_data"]["unit_amount"]) * int(item["quantity"])
        session_id = stripe_id("cs")
        found = session(
            amount, item["price_data"]["currency"], user=int(params["client_reference_id"]),
            package=params["metadata"]["package"], out_trade_no=params["metadata"]["outTradeNo"],
            session_id=session_id, paid=False,
        ) | {"status": "open", "payment_intent": None, "url": f"{self.url}/c/pay/{session_id}",
             "success_url": params["success_url"], "cancel_url": params["cancel_url"]}  # fmt: skip
        self.sessions[session_id] = found
        return JSONResponse(found)

    async def page(self, request: Request) -> Response:
        found = self.sessions.get(request.path_params["session_id"])
        if found is None:
            return HTMLResponse("<h1>Something went wrong</h1>", status_code=404)
        price = f"{found['amount_total'] / 100:.2f} {found['currency'].upper()}"
        return HTMLResponse(f"<!doctype html><title>Checkout</title><h1 id='checkout'>Pay {price}</h1>")

    def completed(self, session_id: str) -> dict[str, Any]:
        """The ``checkout.session.completed`` event once the member has paid the session."""
        paid = self.sessions[session_id] | {"status": "complete", "payment_status": "paid", "url": None,
                                            "payment_intent": stripe_id("pi")}  # fmt: skip
        self.sessions[session_id] = paid
        return event("checkout.session.completed", paid)


@contextmanager
def fake_stripe(api_key: str) -> Iterator[FakeStripe]:
    fake = FakeStripe(api_key)
    routes = [
        Route("/v1/checkout/sessions", fake.create_session, methods=["POST"]),
        Route("/c/pay/{session_id}", fake.page, methods=["GET"]),
    ]
    with serving(Starlette(routes=routes)) as url:
        fake.url = url
        yield fake
