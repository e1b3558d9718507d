"""The expiry pass: end the grants past their expiry and close the holds past theirs, in short
transactions of at most ``CHUNK`` users each. ``creditrelay expire`` runs one pass, ``serve`` one every
``EXPIRE_INTERVAL`` seconds on every instance: each grant is ended under its user's row lock and by a
unique transaction reference, so passes running at once end each grant once (the second finds it ended).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import Engine

from creditrelay.billing.grants import due_users, expire_users
from creditrelay.billing.holds import expire_holds
from creditrelay.schema.transactions import run_transaction

CHUNK = 200


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    grants: int  # ended by this pass
    holds: int  # closed by this pass


def expire_once(engine: Engine, clock: Callable[[], datetime]) -> ExpiryReport:
    """One pass, as of ``clock()`` when it starts."""
    now = clock()
    grants = 0
    while users := run_transaction(engine, partial(due_users, now=now, limit=CHUNK), read_only=True):
        ended = run_transaction(engine, partial(expire_users, user_ids=users, now=now))
        grants += ended
        if not ended:  # another pass ended them meanwhile: what is due now is its to end
            break
    holds = 0
    while closed := run_transaction(engine, partial(expire_holds, now=now, limit=CHUNK)):
        holds += closed
    return ExpiryReport(grants, holds)
