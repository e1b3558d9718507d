"""What the ledger's gauges read at each scrape of ``/metrics``: one read, whoever polls or reconciles."""

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing import access
from creditrelay.billing.user_queries import count_below
from creditrelay.schema.tables import poll_state, reconcile_runs


@dataclass(frozen=True, slots=True)
class LedgerGauges:
    below_zero: int  # users whose balance is below zero
    suspended: int  # users whose latest word to the gateway is a suspension
    pending: int  # suspensions and resumptions the gateway has not confirmed
    alerts_pending: int
    alerts_dead: int
    watermark: int | None  # Unix seconds up to which the gateway's log is billed (never polled: None)
    discrepancies: int | None  # found by the last reconcile (none run: None)


def read_gauges(connection: Connection) -> LedgerGauges:
    watermark = connection.execute(sa.select(sa.func.max(poll_state.c.watermark))).scalar()
    last = connection.execute(
        sa.select(reconcile_runs.c.discrepancies).order_by(reconcile_runs.c.id.desc()).limit(1)
    ).scalar()
    states = access.counts(connection)
    return LedgerGauges(
        below_zero=count_below(connection, 0),
        suspended=states["suspended"],
        pending=states["pending"],
        alerts_pending=states["alerts_pending"],
        alerts_dead=states["alerts_dead"],
        watermark=None if watermark is None else int(watermark),
        discrepancies=None if last is None else int(last),
    )
