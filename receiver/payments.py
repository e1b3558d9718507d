"""Members pay for credit packages (docs/payments.md): ``POST /api/portal/orders`` (the member's portal
token) makes an order and answers where to send the member; ``GET|POST /api/payments/epay`` takes EPay's
notify (``POST /api/payments/stripe``, Stripe's events, is receiver.stripe_webhook); ``GET /payments/return``
is where a provider sends the member back.

Starting a payment is one function per provider in ``STARTERS`` (the order made, the provider's URL
built); a provider creditrelay is not configured for is a 503 saying so.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from creditrelay.billing.orders import Order, create_order, list_orders, set_session
from creditrelay.billing.payments import Payment, PaymentOutcome, PaymentStatus, apply_payment
from creditrelay.billing.stripe_events import fail_order
from creditrelay.receiver.bodies import read_limited, require_json
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.portal_api import bearer_token, service_of
from creditrelay.receiver.stripe_checkout import CheckoutRefused, StripeSettings, create_checkout
from creditrelay.schema.database import utc
from creditrelay.schema.epay import (
    ANSWER_OK,
    ANSWER_RETRY,
    DEFAULT_TYPE,
    TRADE_SUCCESS,
    EpayOrder,
    money_minor,
    submit_url,
    verify_sign,
)
from creditrelay.schema.holds import parse_body
from creditrelay.schema.packages import CreditPackage, OrderBody, format_money
from creditrelay.schema.shapes import to_json
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import EnvelopeError, parse_json_object

log = structlog.get_logger()
BODY_LIMIT = 8 * 1024
NOTIFY_PATH = "/api/payments/epay"
RETURN_PATH = "/payments/return"
HISTORY = 20  # orders the portal shows


@dataclass(frozen=True)
class EpaySettings:
    url: str  # the gateway's submit URL
    pid: str
    key: str


@dataclass(frozen=True)
class PaymentService:
    engine: Engine
    clock: Callable[[], float]
    packages: tuple[CreditPackage, ...]
    public_base_url: str | None
    epay: EpaySettings | None
    stripe: StripeSettings | None = None

    def package(self, name: str) -> CreditPackage:
        if not self.packages:
            raise ApiError(503, "No credit packages are on sale (CREDIT_PACKAGES is not set)")
        found = next((package for package in self.packages if package.name == name), None)
        if found is None:
            raise ApiError(400, f"package: no package {name[:32]!r} (there are {', '.join(self.names)})")
        return found

    @property
    def providers(self) -> list[str]:
        """The providers a member can pay with now."""
        if self.public_base_url is None:
            return []
        stripe = self.stripe is not None and self.stripe.api_key is not None
        return ["stripe"] * stripe + ["epay"] * (self.epay is not None)

    @property
    def form_targets(self) -> list[str]:
        """The origins the portal's Buy form is redirected to (its Content-Security-Policy allows them)."""
        epay = [urlsplit(self.epay.url)] if self.epay is not None else []
        stripe = self.stripe.origins if self.stripe is not None and self.stripe.api_key is not None else []
        return stripe + [f"{url.scheme}://{url.netloc}" for url in epay]

    def page_policy(self, policy: str) -> str:
        """``policy`` with the Buy form's redirect targets added to its ``form-action``."""
        extra = "".join(f" {origin}" for origin in self.form_targets)
        return policy.replace("form-action 'self'", f"form-action 'self'{extra}")

    @property
    def names(self) -> list[str]:
        return [package.name for package in self.packages]

    async def write(self, work: Callable[[Connection], Any]) -> Any:
        return await run_in_threadpool(run_transaction, self.engine, work)


def payments_of(request: Request) -> PaymentService:
    service: PaymentService = request.app.state.payments
    return service


@dataclass(frozen=True)
class Started:
    order: Order
    redirect_url: str

    def as_json(self) -> dict[str, Any]:
        return {"orderId": self.order.id, "redirectUrl": self.redirect_url, "outTradeNo": self.order.out_trade_no}


async def _start_epay(
    service: PaymentService, user_id: int, package: CreditPackage, pay_type: str | None, _token: str
) -> Started:
    epay = service.epay
    if epay is None or service.public_base_url is None:
        raise ApiError(503, "EPay is not configured (EPAY_URL, EPAY_PID, EPAY_KEY)")
    if package.currency != "CNY":
        raise ApiError(400, f"package: EPay takes prices in CNY, {package.name} is priced in {package.currency}")
    now = utc(service.clock())
    order = await service.write(lambda c: create_order(c, user_id, package, "epay", now))
    wire = EpayOrder(
        pid=epay.pid, pay_type=pay_type or DEFAULT_TYPE, out_trade_no=order.out_trade_no,
        notify_url=service.public_base_url + NOTIFY_PATH, return_url=service.public_base_url + RETURN_PATH,
        name=package.name, money=format_money(package.amount, package.currency),
    )  # fmt: skip
    return Started(order, submit_url(epay.url, wire, epay.key))


async def _start_stripe(
    service: PaymentService, user_id: int, package: CreditPackage, _type: str | None, token: str
) -> Started:
    """A Checkout Session for a new order, recorded on it; a session Stripe refuses leaves the order
    ``failed`` with Stripe's reason (the member presses Buy again for a new one)."""
    stripe = service.stripe
    if stripe is None or stripe.api_key is None or service.public_base_url is None:
        raise ApiError(503, "Stripe is not configured (STRIPE_API_KEY, PUBLIC_BASE_URL)")
    now = utc(service.clock())
    order = await service.write(lambda c: create_order(c, user_id, package, "stripe", now))
    portal = f"{service.public_base_url}/portal/{token}"
    product = f"{package.credits:,} credits ({package.name})"
    try:
        checkout = await create_checkout(stripe, order, product, portal, portal)
    except CheckoutRefused as refused:
        reason = refused.reason
        await service.write(lambda c: fail_order(c, order, reason, utc(service.clock())))
        raise
    await service.write(lambda c: set_session(c, order.id, checkout.session_id, utc(service.clock())))
    return Started(order, checkout.url)


Starter = Callable[[PaymentService, int, CreditPackage, str | None, str], Awaitable[Started]]
STARTERS: dict[str, Starter] = {"epay": _start_epay, "stripe": _start_stripe}


async def start(request: Request, token: str, body: OrderBody) -> Started:
    """The order of the member ``token`` names for ``body``'s package, and where to send them to pay."""
    user_id = await service_of(request).member(token)
    service = payments_of(request)
    package = service.package(body.package)
    return await STARTERS[body.provider](service, user_id, package, body.type, token)


async def create(request: Request) -> Response:
    """``POST /api/portal/orders``: 201 ``{"orderId", "redirectUrl", "outTradeNo"}``."""
    token = bearer_token(request)
    raw = await read_limited(request, BODY_LIMIT)
    require_json(request.headers)
    try:
        body = parse_body(OrderBody, parse_json_object(raw))
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    started = await start(request, token, body)
    headers = {"Cache-Control": "no-store"}
    return JSONResponse({"success": True, "message": "", "data": started.as_json()}, status_code=201, headers=headers)


async def buy_form(request: Request) -> Response:
    """``POST /portal/<token>/buy``, the portal page's Buy button (a form: the page runs no script):
    the order made, the member sent to the provider (303)."""
    raw = await read_limited(request, BODY_LIMIT)
    form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    fields = {name: form[name] for name in ("package", "provider", "type") if form.get(name)}
    try:
        body = parse_body(OrderBody, fields)
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    started = await start(request, str(request.path_params["token"]), body)
    return RedirectResponse(started.redirect_url, status_code=303, headers={"Cache-Control": "no-store"})


async def _notify_params(request: Request) -> dict[str, str]:
    """EPay's parameters: the query of a GET, the form body of a POST (else its query)."""
    params = dict(parse_qsl(request.url.query, keep_blank_values=True))
    if request.method == "POST":
        raw = await read_limited(request, BODY_LIMIT)
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        params = form or params
    return params


def _answer(text: str, status_code: int = 200) -> Response:
    return PlainTextResponse(text, status_code=status_code)


async def epay_notify(request: Request) -> Response:
    """EPay's notify: a bad signature changes nothing (400 ``fail``); ``TRADE_SUCCESS`` is applied once
    (``success``); a payment that cannot be applied is recorded on its order and answered 400 ``fail``,
    so EPay sends it again after the operator's fix; any other status is acknowledged (``success``)."""
    service = payments_of(request)
    if service.epay is None:
        return _answer(ANSWER_RETRY, 503)
    params = await _notify_params(request)
    if not verify_sign(params, service.epay.key) or params.get("pid") != service.epay.pid:
        log.warning("epay_bad_signature", out_trade_no=params.get("out_trade_no", "")[:64])
        return _answer(ANSWER_RETRY, 400)
    if params.get("trade_status") != TRADE_SUCCESS:
        return _answer(ANSWER_OK)
    amount = money_minor(params.get("money", ""))
    out_trade_no = params.get("out_trade_no", "")
    if amount is None or not 0 < len(out_trade_no) <= 64:
        return _answer(ANSWER_RETRY, 400)
    payment = Payment(
        "epay", out_trade_no, amount, "CNY", package=params.get("name") or None,
        provider_trade_no=params.get("trade_no", "")[:191] or None,
    )  # fmt: skip
    now = utc(service.clock())
    outcome: PaymentOutcome = await service.write(lambda c: apply_payment(c, payment, service.packages, now))
    log.info("epay_notify", out_trade_no=out_trade_no, status=outcome.status.value, reason=outcome.reason)
    if outcome.status is PaymentStatus.FAILED:
        return _answer(ANSWER_RETRY, 400)
    return _answer(ANSWER_OK)


async def returned(_request: Request) -> Response:
    """Where a provider sends the member back: the notify, not this visit, is what pays the order."""
    return HTMLResponse(RETURN_PAGE, headers={"Cache-Control": "no-store"})


RETURN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Payment</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>
<h1>Thank you</h1><p>Your payment is being confirmed. The credits appear on your account page as soon as
the payment provider confirms it, usually within a minute. You can close this page and open your account
link again.</p></body></html>"""


def history(connection: Connection, user_id: int) -> list[dict[str, Any]]:
    """A member's newest orders, as the portal shows them."""
    return [order_json(order) for order in list_orders(connection, user_id=user_id, limit=HISTORY)]


def order_json(order: Order) -> dict[str, Any]:
    """An order as the portal, the admin page and ``order list`` give it: prices as the provider writes
    them, the bonus given (not the package's), times in ISO 8601."""
    shown = {
        "id": order.id, "provider": order.provider, "outTradeNo": order.out_trade_no, "userId": order.user_id,
        "member": order.member, "package": order.package, "credits": order.credits, "bonus": order.bonus_given,
        "amount": order.price, "currency": order.currency, "status": order.status, "failure": order.failure,
        "refunded": format_money(order.refunded, order.currency), "takenBack": order.taken_back,
        "sessionId": order.session_id, "paymentIntentId": order.payment_intent_id,
        "createdAt": order.created_at, "paidAt": order.paid_at,
    }  # fmt: skip
    return dict(to_json(shown))


def package_rows(packages: tuple[CreditPackage, ...]) -> list[Mapping[str, Any]]:
    return [
        {"name": p.name, "credits": p.credits, "price": p.price, "currency": p.currency, "bonus": p.bonus,
         "firstOnly": p.bonus_first_only, "bonusDays": p.bonus_days}
        for p in packages
    ]  # fmt: skip
