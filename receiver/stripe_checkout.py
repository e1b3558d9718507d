"""Stripe, the receiver's side (docs/payments.md): the Checkout Session the portal's Buy makes through
Stripe's API, and the check of ``Stripe-Signature`` on the events Stripe sends back.

Both use the official ``stripe`` package (``pip install 'creditrelay[stripe]'``), imported only when Stripe
is configured, so an install without it runs everything else.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog

from creditrelay.billing.orders import Order
from creditrelay.receiver.errors import ApiError

log = structlog.get_logger()
CHECKOUT_ORIGIN = "https://checkout.stripe.com"
TIMEOUT = 20.0  # seconds Stripe's API has to make a session, the member waiting
TOLERANCE = 300  # seconds a Stripe-Signature's t= may lie in the past


@dataclass(frozen=True)
class StripeSettings:
    webhook_secret: str | None  # whsec_…: checks the events
    api_key: str | None  # sk_… or rk_…: makes Checkout Sessions
    api_base: str | None = None  # another Stripe API (stripe-mock, a test's fake); None: Stripe's own

    @property
    def origins(self) -> list[str]:
        """Where a Buy may send the member: Stripe's Checkout (and the stand-in's, when there is one)."""
        extra = [f"{url.scheme}://{url.netloc}" for url in [urlsplit(self.api_base)]] if self.api_base else []
        return [CHECKOUT_ORIGIN, *extra]


@dataclass(frozen=True, slots=True)
class Checkout:
    session_id: str
    url: str


class CheckoutRefused(ApiError):
    """Stripe did not make the session; ``reason`` is what it said, for the order and the log."""

    def __init__(self, status_code: int, message: str, reason: str) -> None:
        super().__init__(status_code, message)
        self.reason = reason


async def create_checkout(
    settings: StripeSettings, order: Order, product: str, success_url: str, cancel_url: str
) -> Checkout:
    """A Checkout Session (``mode=payment``) for ``order`` at its price, naming its member, package and
    number; ``CheckoutRefused`` (503 when Stripe did not answer, else 502) when Stripe makes none."""
    import stripe  # the optional extra, needed only with Stripe configured

    assert settings.api_key is not None
    http = stripe.HTTPXClient(timeout=TIMEOUT)
    client = stripe.StripeClient(
        settings.api_key,
        base_addresses={"api": settings.api_base} if settings.api_base else None,
        http_client=http,
        max_network_retries=1,
    )
    tags = {"package": order.package, "outTradeNo": order.out_trade_no}
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [{"quantity": 1, "price_data": {
            "currency": order.currency.lower(), "unit_amount": order.amount, "product_data": {"name": product}}}],
        "client_reference_id": str(order.user_id),
        "metadata": tags,
        "payment_intent_data": {"metadata": tags},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }  # fmt: skip
    options: Any = {"idempotency_key": f"creditrelay-order-{order.out_trade_no}"}
    try:
        session = await client.v1.checkout.sessions.create_async(params=params, options=options)  # type: ignore[arg-type]
    except stripe.APIConnectionError as error:
        log.warning("stripe_unreachable", order=order.out_trade_no, error=str(error))
        message = "Stripe did not answer; nothing was charged. Try again in a minute"
        raise CheckoutRefused(503, message, f"Stripe did not answer: {error}"[:255]) from None
    except stripe.StripeError as error:
        log.error("stripe_refused_checkout", order=order.out_trade_no, error=str(error), status=error.http_status)
        message = "Stripe refused to start the payment; nothing was charged. The operator's log says why"
        raise CheckoutRefused(502, message, f"Stripe refused the checkout: {error}"[:255]) from None
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated
    if not session.id or not session.url:
        raise CheckoutRefused(502, "Stripe answered without a checkout page", "Stripe answered no session URL")
    return Checkout(session.id, session.url)


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``Stripe-Signature`` signs ``body`` with ``secret`` (any of its ``v1`` entries), made at most
    ``TOLERANCE`` seconds ago: Stripe's own check (``stripe.WebhookSignature.verify_header``)."""
    import stripe  # the optional extra

    try:
        return bool(stripe.WebhookSignature.verify_header(body, header, secret, TOLERANCE))
    except (stripe.SignatureVerificationError, UnicodeDecodeError):
        return False
