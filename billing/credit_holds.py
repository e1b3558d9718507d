"""The credit API's holds (docs/credit-api.md#holds): a client project sets a member's credits aside before
a long job, then captures what the job cost, or voids the hold. Each request's token is used once
(``billing.credit_tokens``), before anything else in its transaction: a token seen before is a replay,
unless it is the very request again (the same reference: a client's retry), answered as the first was.
The holds themselves are ``billing.holds``', under the source ``credit_api:<client source>``.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection

from creditrelay.billing.credit_sync import user_of
from creditrelay.billing.credit_tokens import TokenUse, use_tokens
from creditrelay.billing.holds import VOIDED, Hold, HoldRequest, capture, end_hold, place_hold
from creditrelay.schema.credit_holds import CaptureBody, HoldBody, VoidBody
from creditrelay.schema.credit_sync import TOKEN_WINDOW_SECONDS
from creditrelay.schema.database import utc


class HoldStatus(StrEnum):
    HELD = "held"
    INSUFFICIENT = "insufficient"
    REPLAYED = "replayed"
    UNKNOWN_USER = "unknown_user"
    DONE = "done"  # captured or voided (or answered as it was)


@dataclass(frozen=True, slots=True)
class CreditHoldOutcome:
    status: HoldStatus
    hold: Hold | None = None
    available: int | None = None


def source_of(client_source: str) -> str:
    return f"credit_api:{client_source}"


def _first_use(connection: Connection, body: HoldBody | CaptureBody | VoidBody, reference: str) -> bool:
    """Record the body's token; whether this request may go on (its first use, or the same request again)."""
    expires = utc(body.timestamp + TOKEN_WINDOW_SECONDS)
    [earlier] = use_tokens(connection, [TokenUse(body.token.lower(), reference, expires)])
    return earlier is None or earlier == reference


def hold_credits(connection: Connection, body: HoldBody, suspend_at: int, now: datetime) -> CreditHoldOutcome:
    source = source_of(body.source)
    if not _first_use(connection, body, f"hold:{source}:{body.reference}"):
        return CreditHoldOutcome(HoldStatus.REPLAYED)
    user_id = user_of(connection, body.member)
    if user_id is None:
        return CreditHoldOutcome(HoldStatus.UNKNOWN_USER)
    asked = HoldRequest(user_id, body.amount, source, body.ttl, body.reference)
    outcome = place_hold(connection, asked, suspend_at, now)
    status = HoldStatus.HELD if outcome.hold is not None else HoldStatus.INSUFFICIENT
    return CreditHoldOutcome(status, outcome.hold, outcome.available)


def capture_hold(connection: Connection, hold_id: int, body: CaptureBody, now: datetime) -> CreditHoldOutcome:
    if not _first_use(connection, body, f"hold:{hold_id}:capture:{body.amount}"):
        return CreditHoldOutcome(HoldStatus.REPLAYED)
    return CreditHoldOutcome(HoldStatus.DONE, capture(connection, hold_id, source_of(body.source), body.amount, now))


def void_hold(connection: Connection, hold_id: int, body: VoidBody, now: datetime) -> CreditHoldOutcome:
    if not _first_use(connection, body, f"hold:{hold_id}:void"):
        return CreditHoldOutcome(HoldStatus.REPLAYED)
    return CreditHoldOutcome(HoldStatus.DONE, end_hold(connection, hold_id, source_of(body.source), VOIDED, now))
