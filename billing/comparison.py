"""Upstream against local: the gateway's consume log for a window, compared with what was charged here.

Every upstream usage must be charged here once — by its key (``req:<request_id>``), or paired with a
webhook usage that had no request id (``billing.matching``); a row that is neither is *missing*. A usage
charged here that new-api does not have is *extra*: under a request id it does not know, or a webhook
usage without a request id that no log row pairs with. A pair whose two paths priced the usage
differently is a *price mismatch* (charged once, at the first path's price). Rows the poller cannot
charge as they are (``polling.refusal``) are *unbillable*. The same pairing the poller runs (``billing.pairing``)
tells a row whose webhook usage is charged but not yet paired (the next poll pairs it) from a missing one.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing import matching
from creditrelay.billing.gateways.newapi import ConsumeLog
from creditrelay.billing.pairing import Partner, Slot, place
from creditrelay.billing.polling import PollConfig, credits_for, refusal
from creditrelay.billing.rules import rules_of
from creditrelay.schema.database import utc
from creditrelay.schema.tables import api_keys, usage_matches, usage_records, users
from creditrelay.schema.wire import usage_key_for_request

LOOKUP_CHUNK = 500  # keys per IN list


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str
    user: str | None
    detail: str


@dataclass
class TokenSummary:
    token: str
    upstream_rows: int = 0
    upstream_credits: int = 0
    local_rows: int = 0
    local_credits: int = 0


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), LOOKUP_CHUNK):
        yield values[start : start + LOOKUP_CHUNK]


def _present_keys(connection: Connection, keys: Sequence[str]) -> set[str]:
    """Which upstream usage keys are charged here: as a usage record's key, or paired with a webhook usage
    that had no request id (``billing.matching``)."""
    found: set[str] = set()
    for chunk in _chunks(keys):
        found |= matching.recorded_keys(connection, chunk) | matching.paired_keys(connection, chunk)
    return found


def _token_owners(connection: Connection) -> dict[str, tuple[int, str]]:
    rows = connection.execute(sa.select(api_keys.c.remoteKeyId, users.c.id, users.c.email).join(users))
    return {key: (user_id, email) for key, user_id, email in rows}


def _webhook_slots(
    connection: Connection, window: tuple[datetime, datetime], reach: timedelta
) -> tuple[list[Slot], dict[int, tuple[str, str]]]:
    """Webhook usages without a request id charged in the window (give or take ``reach``), paired or not, as
    ``pairing`` sees them; and each one's usage key and its user's email."""
    matches = usage_matches.c
    rows = connection.execute(
        sa.select(
            matches.id,
            matches.userId,
            matches.matchKey,
            matches.usedAt,
            matches.creditCost,
            matches.pairedKey,
            matches.pairedUsedAt,
            matches.pairedCost,
            matches.pairedAt,
            usage_records.c.usageKey,
            users.c.email,
        )
        .join(usage_records, usage_records.c.id == matches.usageRecordId)
        .join(users, users.c.id == matches.userId)
        .where(matches.source == matching.WEBHOOK, matches.usedAt.between(window[0] - reach, window[1] + reach))
    )
    slots, named = [], {}
    for r in rows:
        partner = None if r.pairedKey is None else Partner(r.pairedKey, r.pairedUsedAt, r.pairedCost, r.pairedAt)
        slots.append(Slot(r.id, r.userId, r.matchKey, r.usedAt, r.creditCost, partner))
        named[r.id] = (r.usageKey, r.email)
    return slots, named


def _price_mismatches(connection: Connection, window: tuple[datetime, datetime]) -> list[Finding]:
    """Pairs whose two paths priced the usage differently (charged once, at the first path's price)."""
    matches = usage_matches.c
    rows = connection.execute(
        sa.select(
            usage_records.c.usageKey,
            matches.source,
            matches.creditCost,
            matches.pairedKey,
            matches.pairedCost,
            users.c.email,
        )
        .join(usage_records, usage_records.c.id == matches.usageRecordId)
        .join(users, users.c.id == matches.userId)
        .where(matches.pairedCost != matches.creditCost, matches.usedAt.between(*window))
    )
    return [
        Finding(
            "price_mismatch",
            key,
            email,
            f"charged {cost} when it came by {source}; {paired} ({matching.other(source)}) priced it {paired_cost}",
        )
        for key, source, cost, paired, paired_cost, email in rows
    ]


def compare_upstream(
    connection: Connection, logs: Sequence[ConsumeLog], window: tuple[datetime, datetime], config: PollConfig
) -> tuple[list[Finding], list[TokenSummary], list[ConsumeLog]]:
    """Findings, the per-token table, and the upstream rows not charged here (``--fix`` bills them: those
    whose webhook usage is charged already only pair with it, as the next poll would)."""
    usage = [row for row in logs if row.quota >= 0]
    upstream_keys = {usage_key_for_request(row.request_key): row for row in usage}
    present = _present_keys(connection, list(upstream_keys))
    owners = _token_owners(connection)
    tokens: dict[str, TokenSummary] = {}
    findings: list[Finding] = []
    missing: list[ConsumeLog] = []
    for key, row in upstream_keys.items():
        summary = tokens.setdefault(str(row.token_id), TokenSummary(str(row.token_id)))
        summary.upstream_rows += 1
        summary.upstream_credits += credits_for(row.quota, config.quota_per_credit)
        if key in present:
            continue
        reason = refusal(row, config)
        if reason is not None:
            findings.append(Finding("unbillable", key, None, f"new-api log {row.id}: {reason}"))
            continue
        missing.append(row)
    # the rows not charged by key may be webhook usages without a request id, charged but not yet paired:
    # placed as the next poll would place them (a maximum matching, whoever owns the key now)
    tolerance = rules_of(connection).match_seconds
    reach = timedelta(seconds=3 * tolerance)
    slots, named = _webhook_slots(connection, window, reach)
    arrivals = [
        matching.Arrival(
            usage_key_for_request(row.request_key),
            0,
            str(row.token_id),
            matching.POLL,
            matching.fingerprint(
                str(row.token_id), row.model_name or "unknown", row.prompt_tokens, row.completion_tokens
            ),
            utc(row.created_at),
            credits_for(row.quota, config.quota_per_credit),
        )
        for row in missing
        if str(row.token_id) in owners
    ]
    placement = place(arrivals, slots, tolerance, (window[0] - reach, window[1] + reach), window[1])
    for row in missing:
        key = usage_key_for_request(row.request_key)
        if key in placement.placed:
            continue
        owner = owners.get(str(row.token_id))
        hint = "" if owner else f"; token {row.token_id} is not linked to a user"
        detail = f"new-api log {row.id} ({row.quota} quota, {row.model_name}) is not charged{hint}"
        findings.append(Finding("missing", key, owner[1] if owner else None, detail))
    for slot in slots:
        if slot.partner is None and window[0] <= slot.used_at <= window[1]:
            key, email = named[slot.id]
            detail = "charged by a webhook without a request id; no row of new-api's log is this usage"
            findings.append(Finding("extra", key, email, detail))
    local = connection.execute(
        sa.select(usage_records.c.usageKey, usage_records.c.remoteKeyId, usage_records.c.creditCost, users.c.email)
        .join(users, users.c.id == usage_records.c.userId)
        .where(usage_records.c.usedAt.between(*window))
    )
    for record in local:
        summary = tokens.setdefault(record.remoteKeyId, TokenSummary(record.remoteKeyId))
        summary.local_rows += 1
        summary.local_credits += record.creditCost
        if record.usageKey.startswith("req:") and record.usageKey not in upstream_keys:
            detail = "charged here, not in new-api's consume logs"
            findings.append(Finding("extra", record.usageKey, record.email, detail))
    findings += _price_mismatches(connection, window)
    return findings, sorted(tokens.values(), key=lambda t: t.token), missing
