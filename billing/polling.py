"""The polling fallback: bill new-api's consume logs through the same path as webhooks.

A pass covers [watermark - overlap, now] (first run: ``--since`` or the look-back), in time slices
oldest first. Each slice is fetched whole (every page, with tenacity backing off on upstream errors),
then billed in one transaction that also moves the watermark to the slice's end — so the watermark never
passes what is committed, and an outage mid-backfill resumes at the first slice not yet billed. The
overlap re-reads recent rows, catching rows that became visible out of id order; re-reading is harmless
because each row's usage key (``req:<request_id>``, or ``req:newapi-log-<id>`` without one) is the one a
webhook for the same request would carry.
"""

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import Connection, Engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from creditrelay.billing import autolink
from creditrelay.billing.gateways.newapi import PAGE_SIZE, ConsumeLog, NewApiClient
from creditrelay.billing.log_queries import LogFilter, replay_failed
from creditrelay.billing.usage import Usage, UsageStatus, apply_usage
from creditrelay.schema.database import utc
from creditrelay.schema.errors import GatewaySetupError, UpstreamError
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.money import MAX_AMOUNT, MAX_BALANCE
from creditrelay.schema.shapes import to_json
from creditrelay.schema.tables import poll_state, unbilled_usage
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import BIGINT_MAX, MAX_MODEL, MAX_REQUEST_ID, usage_key_for_request

log = structlog.get_logger()
STATE_NAME = "new-api"


@dataclass(frozen=True)
class PollConfig:
    quota_per_credit: int = 1
    overlap_seconds: int = 300
    lookback_hours: int = 24
    slice_seconds: int = 3600
    attempts: int = 6
    backoff_max: float = 60.0


@dataclass
class PollReport:
    window_start: int
    window_end: int
    watermark: int | None = None
    rows: int = 0
    charged: int = 0
    credits_charged: int = 0  # the credits of the rows charged
    duplicates: int = 0
    matched: int = 0  # rows that were a webhook usage without a request id, charged when it came
    unbilled: int = 0
    unknown_tokens: dict[str, int] = field(default_factory=dict)  # rows of tokens linked to nobody, by token
    linked: list[str] = field(default_factory=list)  # keys linked automatically: their gateway user is mapped
    replayed: int = 0  # failed webhook deliveries of those keys run through billing again
    refused: list[dict[str, Any]] = field(default_factory=list)  # the first rows kept unbilled for another reason


REFUSED_LISTED = 20  # rows kept unbilled for a reason other than an unlinked token, named in a report


def credits_for(quota: int, quota_per_credit: int) -> int:
    """Credits for a quota, rounded up (a usage is never free because of rounding)."""
    return -(-quota // quota_per_credit) if quota > 0 else 0


def usage_from_log(row: ConsumeLog, config: PollConfig) -> Usage:
    """The usage of a row ``refusal`` has nothing against."""
    return Usage(
        usage_key=usage_key_for_request(row.request_key),
        remote_key_id=str(row.token_id),
        model=row.model_name or "unknown",
        credit_cost=credits_for(row.quota, config.quota_per_credit),
        used_at=utc(row.created_at),
        source="poll",
        request_id=row.request_key,
        prompt_tokens=max(row.prompt_tokens, 0),
        completion_tokens=max(row.completion_tokens, 0),
        total_tokens=max(row.prompt_tokens, 0) + max(row.completion_tokens, 0),
        gateway_user_id=str(row.user_id) if row.user_id > 0 else None,
    )


def refusal(row: ConsumeLog, config: PollConfig) -> str | None:
    """Why a row cannot be charged as it is, or None. A value is stored whole or the row is not charged:
    nothing is cut to fit."""
    if row.problem is not None:
        return f"log row not as new-api writes it: {row.problem}"
    if row.quota < 0:
        return f"negative quota {row.quota} (a refund entry): not a usage charge"
    if row.token_id == 0:
        return "no token id on the log row"
    if len(row.request_key) > MAX_REQUEST_ID:
        return f"request_id is {len(row.request_key)} characters, more than the {MAX_REQUEST_ID} a usage keeps"
    if len(row.model_name) > MAX_MODEL:
        return f"model_name is {len(row.model_name)} characters, more than the {MAX_MODEL} a usage keeps"
    if (credits := credits_for(row.quota, config.quota_per_credit)) > MAX_AMOUNT:
        return f"quota {row.quota} is {credits} credits, more than the {MAX_AMOUNT} one usage may cost"
    if max(row.prompt_tokens, 0) + max(row.completion_tokens, 0) > BIGINT_MAX:
        return "prompt_tokens + completion_tokens is out of range"
    return None


def _unlinked(row: ConsumeLog) -> str:
    return f"token {row.token_id} is not linked to a user (creditrelay key link {row.token_id} --user …)"


def _unbilled_key(row: ConsumeLog) -> str:
    """The usage key the row would have; for a row that cannot be keyed so (a request id too long, fields
    new-api does not write), one made of the row itself, which can meet no usage key (those start with
    ``req:`` or ``evt:``) and is the same when the row is read again."""
    if row.problem is None and len(row.request_key) <= MAX_REQUEST_ID:
        return usage_key_for_request(row.request_key)
    return "bad:" + hashlib.sha256(_stored(row.raw).encode()).hexdigest()


def _stored(raw: dict[str, Any]) -> str:
    """A row as stored: JSON with anything not ASCII escaped, so even text that is not Unicode is kept."""
    return json.dumps(raw, sort_keys=True)


def bill_logs(connection: Connection, rows: Sequence[ConsumeLog], config: PollConfig, now: datetime) -> PollReport:
    """Charge upstream rows once each and keep the unbillable ones; counts only (window left to the caller)."""
    report = PollReport(0, 0, rows=len(rows))
    unbillable = [(row, reason) for row in rows if (reason := refusal(row, config)) is not None]
    billable = [row for row in rows if refusal(row, config) is None]
    usages = [usage_from_log(r, config) for r in billable]
    autolink.learn_keys(connection, {u.remote_key_id: u.gateway_user_id for u in usages if u.gateway_user_id}, now)
    linked: set[str] = set()
    outcomes = apply_usage(connection, usages, now, linked)
    report.linked = sorted(linked)
    charged_keys = []
    for row, usage, outcome in zip(billable, usages, outcomes, strict=True):
        if outcome.status is UsageStatus.CHARGED:
            report.charged += 1
            report.credits_charged += usage.credit_cost
            charged_keys.append(usage_key_for_request(row.request_key))
        elif outcome.status is UsageStatus.DUPLICATE:
            report.duplicates += 1
        elif outcome.status is UsageStatus.MATCHED:
            report.matched += 1
            charged_keys.append(usage_key_for_request(row.request_key))  # charged, by its webhook
        elif outcome.status is UsageStatus.OUT_OF_RANGE:
            unbillable.append((row, f"the balance of user {outcome.user_id} would pass -{MAX_BALANCE} credits"))
        else:
            unbillable.append((row, _unlinked(row)))
            report.unknown_tokens[str(row.token_id)] = report.unknown_tokens.get(str(row.token_id), 0) + 1
    report.refused = [
        {"upstreamId": row.id, "token": str(row.token_id), "reason": reason}
        for row, reason in unbillable
        if reason != _unlinked(row)
    ][:REFUSED_LISTED]
    report.unbilled = len(unbillable)
    insert_new(
        connection,
        unbilled_usage,
        [
            {
                "usageKey": _unbilled_key(row),
                "remoteKeyId": str(row.token_id),
                "upstreamId": row.id,
                "quota": row.quota,
                "credits": credits_for(row.quota, config.quota_per_credit),
                "model": row.model_name if len(row.model_name) <= MAX_MODEL else "",
                "reason": reason,
                "payload": _stored(row.raw),
                "usedAt": utc(row.created_at),
                "createdAt": now,
            }
            for row, reason in unbillable
        ],
        "usageKey",
    )
    if charged_keys:
        connection.execute(
            unbilled_usage.update()
            .where(unbilled_usage.c.usageKey.in_(charged_keys), unbilled_usage.c.chargedAt.is_(None))
            .values(chargedAt=now)
        )
    return report


def passing(error: BaseException) -> bool:
    """Whether a gateway's failure may pass by retrying: not a wrong set-up (refused connection, unknown
    host, 401/403, 404: ``GatewaySetupError``), which is reported at once."""
    return isinstance(error, UpstreamError) and not isinstance(error, GatewaySetupError)


def read_watermark(connection: Connection) -> int | None:
    query = sa.select(poll_state.c.watermark).where(poll_state.c.name == STATE_NAME)
    value = connection.execute(query).scalar_one_or_none()
    return None if value is None else int(value)


def advance_watermark(connection: Connection, watermark: int, now: datetime) -> None:
    """Move the watermark forward to ``watermark`` (never back)."""
    row = {"name": STATE_NAME, "watermark": watermark, "updatedAt": now}
    if not insert_new(connection, poll_state, [row], "name"):
        connection.execute(
            poll_state.update()
            .where(poll_state.c.name == STATE_NAME, poll_state.c.watermark < watermark)
            .values(watermark=watermark, updatedAt=now)
        )


class Poller:
    def __init__(
        self,
        engine: Engine,
        client: NewApiClient,
        config: PollConfig,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[int, int, PollReport], None] | None = None,
        committed: Callable[[PollReport], None] | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.progress = progress
        self.committed = committed  # told each slice's own report once its transaction has committed

    def _page(self, start: int, end: int, page: int) -> Any:
        retrying = Retrying(
            retry=retry_if_exception(passing),
            stop=stop_after_attempt(self.config.attempts),
            wait=wait_random_exponential(multiplier=1, max=self.config.backoff_max),
            sleep=self.sleep,
            reraise=True,
            before_sleep=lambda state: log.warning(
                "upstream_retry", attempt=state.attempt_number, error=str(state.outcome and state.outcome.exception())
            ),
        )
        return retrying(self.client.consume_logs, start, end, page, PAGE_SIZE)

    def fetch(self, start: int, end: int) -> list[ConsumeLog]:
        """Every consume log created in [start, end], each once (rows shifting between pages are merged)."""
        seen: dict[int, ConsumeLog] = {}
        page = 1
        while True:
            result = self._page(start, end, page)
            for row in result.items:
                seen[row.id] = row
            if len(result.items) < PAGE_SIZE or page * PAGE_SIZE >= result.total:
                return sorted(seen.values(), key=lambda r: r.id)
            page += 1

    def run_once(self, since: int | None = None) -> PollReport:
        """One pass; raises ``UpstreamError`` when new-api stays away (what was committed stays committed)."""
        now = int(self.clock())
        watermark = run_transaction(self.engine, read_watermark)
        if since is not None:
            start = since
        elif watermark is not None:
            start = watermark - self.config.overlap_seconds
        else:
            start = now - self.config.lookback_hours * 3600
        report = PollReport(start, now, watermark)
        slices = list(range(start, now + 1, self.config.slice_seconds))
        for done, slice_start in enumerate(slices, start=1):
            slice_end = min(slice_start + self.config.slice_seconds - 1, now)
            rows = self.fetch(slice_start, slice_end)

            def bill(connection: Connection, rows: list[ConsumeLog] = rows, end: int = slice_end) -> PollReport:
                part = bill_logs(connection, rows, self.config, utc(self.clock()))
                advance_watermark(connection, end, utc(self.clock()))
                return part

            part = run_transaction(self.engine, bill)
            for key in part.linked:  # its webhooks that came before the key was known are charged now
                part.replayed += replay_failed(self.engine, LogFilter(key=key), utc(self.clock())).replayed
            if self.committed is not None:
                self.committed(part)
            report.rows += part.rows
            report.charged += part.charged
            report.credits_charged += part.credits_charged
            report.matched += part.matched
            report.duplicates += part.duplicates
            report.unbilled += part.unbilled
            report.linked += part.linked
            report.replayed += part.replayed
            for token, count in part.unknown_tokens.items():
                report.unknown_tokens[token] = report.unknown_tokens.get(token, 0) + count
            report.refused = (report.refused + part.refused)[:REFUSED_LISTED]
            report.watermark = max(report.watermark or slice_end, slice_end)
            if self.progress is not None:
                self.progress(done, len(slices), report)
        log.info("poll_pass", **to_json(report))
        return report
