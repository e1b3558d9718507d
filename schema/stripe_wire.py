"""Stripe's event format, as ``POST /api/payments/stripe`` reads it (docs/payments.md): an event
``{"id": "evt_…", "object": "event", "type": …, "data": {"object": {…}}, …}`` whose ``data.object`` is a
Checkout Session (``checkout.session.*``), a Charge (``charge.refunded``) or a Dispute
(``charge.dispute.created``). Only the fields creditrelay acts on are read; anything else is left alone,
and a field it needs that is missing or of the wrong kind is an ``EnvelopeError`` naming it.
"""

from dataclasses import dataclass
from typing import Any

from creditrelay.schema.money import MAX_BALANCE
from creditrelay.schema.wire import EnvelopeError, parse_json_object

SESSION_COMPLETED = "checkout.session.completed"
SESSION_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
SESSION_ASYNC_FAILED = "checkout.session.async_payment_failed"
CHARGE_REFUNDED = "charge.refunded"
DISPUTE_CREATED = "charge.dispute.created"
SUBSCRIBED = (SESSION_COMPLETED, SESSION_ASYNC_SUCCEEDED, SESSION_ASYNC_FAILED, CHARGE_REFUNDED, DISPUTE_CREATED)
ID_LENGTH = 191  # what the tables keep of a Stripe id


@dataclass(frozen=True, slots=True)
class StripeEvent:
    id: str
    type: str
    object: dict[str, Any]  # data.object


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str  # cs_…
    amount_total: int  # minor units
    currency: str  # as Stripe writes it: lower case
    member: str | None  # client_reference_id: the creditrelay user id
    package: str | None  # metadata.package
    out_trade_no: str | None  # metadata.outTradeNo: the order creditrelay made for the session
    payment_intent: str | None
    payment_status: str  # paid, unpaid (a delayed method still pending), no_payment_required

    @property
    def paid(self) -> bool:
        return self.payment_status == "paid"


@dataclass(frozen=True, slots=True)
class Takeback:
    """A charge refunded (``amount``: refunded so far, in total) or disputed (``amount``: the disputed sum)."""

    id: str  # ch_… or dp_…
    payment_intent: str | None
    amount: int


def parse_event(body: bytes) -> StripeEvent:
    event = parse_json_object(body)
    if event.get("object") != "event":
        raise EnvelopeError('object: must be "event" (a Stripe event)')
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise EnvelopeError("data.object: must be an object")
    return StripeEvent(_id(event, "id"), _text(event, "type", 64), data["object"])


def checkout_session(found: dict[str, Any]) -> CheckoutSession:
    metadata = found.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise EnvelopeError("data.object.metadata: must be an object")
    return CheckoutSession(
        id=_id(found, "id", "data.object."),
        amount_total=_amount(found, "amount_total"),
        currency=_text(found, "currency", 3, "data.object."),
        member=_optional(found, "client_reference_id"),
        package=_optional(metadata, "package", "metadata."),
        out_trade_no=_optional(metadata, "outTradeNo", "metadata."),
        payment_intent=_optional(found, "payment_intent"),
        payment_status=_text(found, "payment_status", 32, "data.object."),
    )


def takeback(found: dict[str, Any], amount_field: str) -> Takeback:
    return Takeback(_id(found, "id", "data.object."), _optional(found, "payment_intent"), _amount(found, amount_field))


def _id(found: dict[str, Any], name: str, where: str = "") -> str:
    return _text(found, name, ID_LENGTH, where)


def _text(found: dict[str, Any], name: str, longest: int, where: str = "") -> str:
    value = found.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= longest:
        raise EnvelopeError(f"{where}{name}: must be a string of 1 to {longest} characters")
    return value


def _optional(found: dict[str, Any], name: str, where: str = "") -> str | None:
    """A string field that may be missing or null; an id of an expanded object (``{"id": …}``) is read too."""
    value = found.get(name)
    if isinstance(value, dict):
        value = value.get("id")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > ID_LENGTH:
        raise EnvelopeError(f"data.object.{where}{name}: must be a string of at most {ID_LENGTH} characters")
    return value


def _amount(found: dict[str, Any], name: str) -> int:
    value = found.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BALANCE:
        raise EnvelopeError(f"data.object.{name}: must be a whole number of minor units, 0 to {MAX_BALANCE}")
    return value
