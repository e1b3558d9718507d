"""Send creditrelay an event as Stripe sends it, signed with the endpoint secret: to try a Stripe set-up
without the Stripe CLI or a payment (docs/payments.md).

    python scripts/stripe_event.py http://localhost:4000/api/payments/stripe --user 7 --package pro --amount 50.00
    python scripts/stripe_event.py URL --type charge.refunded --payment-intent pi_… --amount 50.00

``checkout.session.completed`` (the default), ``checkout.session.async_payment_succeeded`` and
``…async_payment_failed`` carry a Checkout Session paid for ``--amount`` in ``--currency`` naming the
member (``client_reference_id``) and the package (``metadata.package``); ``charge.refunded`` a Charge of
the payment intent with ``--amount`` refunded so far; ``charge.dispute.created`` a Dispute of
``--amount``. The body is signed with ``--secret`` (default: ``STRIPE_WEBHOOK_SECRET``) by the ``stripe``
package, as Stripe signs it. Prints the HTTP status and creditrelay's answer; exits 1 unless it is 2xx.
"""

import argparse
import json
import os
import secrets
import sys
import time
from typing import Any

import httpx
import stripe


def minor(text: str) -> int:
    whole, _, cents = text.partition(".")
    return int(whole) * 100 + int(cents.ljust(2, "0")[:2])


def payload(args: argparse.Namespace) -> dict[str, Any]:
    amount = minor(args.amount)
    if args.type.startswith("checkout.session."):
        found: dict[str, Any] = {
            "id": args.session, "object": "checkout.session", "amount_subtotal": amount, "amount_total": amount,
            "currency": args.currency, "client_reference_id": args.user, "metadata": {"package": args.package},
            "mode": "payment", "payment_intent": args.payment_intent, "status": "complete",
            "payment_status": "unpaid" if args.unpaid or args.type.endswith("failed") else "paid",
        }  # fmt: skip
    elif args.type == "charge.refunded":
        found = {
            "id": f"ch_{secrets.token_hex(12)}", "object": "charge", "amount": amount, "amount_refunded": amount,
            "currency": args.currency, "payment_intent": args.payment_intent, "refunded": True,
        }  # fmt: skip
    else:
        found = {
            "id": f"dp_{secrets.token_hex(12)}", "object": "dispute", "amount": amount, "currency": args.currency,
            "payment_intent": args.payment_intent, "reason": "fraudulent", "status": "needs_response",
        }  # fmt: skip
    return {
        "id": args.event_id, "object": "event", "api_version": "2025-03-31.basil", "created": int(time.time()),
        "data": {"object": found}, "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None}, "type": args.type,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description="Send creditrelay a signed Stripe event.")
    parser.add_argument("url", help="creditrelay's endpoint: PUBLIC_BASE_URL + /api/payments/stripe")
    parser.add_argument("--type", default="checkout.session.completed",
                        choices=["checkout.session.completed", "checkout.session.async_payment_succeeded",
                                 "checkout.session.async_payment_failed", "charge.refunded",
                                 "charge.dispute.created"])  # fmt: skip
    parser.add_argument("--amount", required=True, help="paid, refunded so far, or disputed (50.00)")
    parser.add_argument("--currency", default="usd", help="the currency, as Stripe writes it (default: usd)")
    parser.add_argument("--user", help="the creditrelay user id the session names (client_reference_id)")
    parser.add_argument("--package", help="the package the session names (metadata.package)")
    parser.add_argument("--unpaid", action="store_true", help="a session not paid yet (a delayed method)")
    parser.add_argument("--session", default=f"cs_test_{secrets.token_hex(12)}", help="the Checkout Session id")
    parser.add_argument("--payment-intent", default=f"pi_test_{secrets.token_hex(12)}", help="the payment intent")
    parser.add_argument("--event-id", default=f"evt_test_{secrets.token_hex(12)}", help="the event's id")
    parser.add_argument("--secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET", ""),
                        help="the endpoint secret (default: STRIPE_WEBHOOK_SECRET)")  # fmt: skip
    args = parser.parse_args()
    if not args.secret:
        parser.error("--secret (or STRIPE_WEBHOOK_SECRET) is needed to sign the event")
    body = json.dumps(payload(args), indent=2)
    header = stripe.WebhookSignature.generate_signature_header(body, args.secret)
    headers = {"Stripe-Signature": header, "Content-Type": "application/json; charset=utf-8"}
    answer = httpx.post(args.url, content=body.encode(), headers=headers, timeout=30)
    print(answer.status_code, answer.text)
    return 0 if answer.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
