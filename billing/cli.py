"""The cron side of billing as commands: ``poll``, ``reconcile``, ``cleanup`` (registered into ``creditrelay``)."""

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection
from tqdm import tqdm

from creditrelay.billing.cleanup import delete_old_logs
from creditrelay.billing.clients import ClientError, add_client, list_clients, revoke_client, rotate_client
from creditrelay.billing.newapi import NewApiClient
from creditrelay.billing.polling import PollConfig, Poller, PollReport
from creditrelay.billing.reconcile import Reconciler, render_table
from creditrelay.schema.database import DatabaseUnavailable, make_engine, run_transaction, utc
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.settings import Settings, SettingsError

Handler = Callable[[argparse.Namespace, Settings], int]
Register = Callable[[Any, str, Handler, str], argparse.ArgumentParser]
log = structlog.get_logger()


def _moment(text: str) -> int:
    """Unix seconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("Unix seconds or an ISO-8601 time, e.g. 2026-01-31T00:00:00Z") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def poll_config(settings: Settings, attempts: int = PollConfig.attempts) -> PollConfig:
    return PollConfig(
        quota_per_credit=settings.poll_quota_per_credit,
        overlap_seconds=settings.poll_overlap_seconds,
        lookback_hours=settings.poll_lookback_hours,
        attempts=attempts,
        match_seconds=settings.usage_match_seconds,
    )


def make_poller(
    settings: Settings,
    progress: Callable[[int, int, PollReport], None] | None = None,
    attempts: int = PollConfig.attempts,
) -> Poller:
    if not (settings.new_api_base_url and settings.new_api_admin_token and settings.new_api_user_id):
        raise SettingsError("NEW_API_BASE_URL, NEW_API_ADMIN_TOKEN and NEW_API_USER_ID are needed to poll new-api")
    client = NewApiClient(settings.new_api_base_url, settings.new_api_admin_token, settings.new_api_user_id)
    return Poller(make_engine(settings.database_url), client, poll_config(settings, attempts), progress=progress)


class _ProgressBar:
    """A bar on a terminal for long backfills; silent when stderr is not a terminal (cron, pipes)."""

    def __init__(self) -> None:
        self.bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int, report: PollReport) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, unit="h", desc="polling new-api", disable=not sys.stderr.isatty())
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(rows=report.rows, charged=report.charged)
        if done == total:
            self.bar.close()


def cmd_poll(args: argparse.Namespace, settings: Settings) -> int:
    poller = make_poller(settings, _ProgressBar(), args.attempts)
    while True:
        try:
            print(json.dumps(poller.run_once(args.since).as_json()), flush=True)
        except (UpstreamError, DatabaseUnavailable) as error:
            if args.every is None:
                print(
                    f"creditrelay: poll stopped: {error} (what was committed stays; the next run resumes)",
                    file=sys.stderr,
                )
                return 1
            log.error("poll_failed", error=str(error))
        if args.every is None:
            return 0
        args.since = None
        time.sleep(args.every)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    now = time.time()
    until = args.until if args.until is not None else int(now)
    since = args.since if args.since is not None else until - 24 * 3600
    poller = make_poller(settings) if settings.polling_enabled else None
    bars: dict[str, tqdm[Any]] = {}

    def progress(what: str, count: int) -> None:
        if what not in bars:
            bars[what] = tqdm(unit=" rows", desc=f"fixing {what}", disable=not sys.stderr.isatty())
        _counting(bars[what])(count)

    reconciler = Reconciler(make_engine(settings.database_url), poller, poll_config(settings), progress)
    try:
        report = reconciler.run(since, until, fix=args.fix, now=utc(now))
    except UpstreamError as error:
        print(f"creditrelay: reconcile could not read new-api: {error}", file=sys.stderr)
        return 2
    for bar in bars.values():
        bar.close()
    print(json.dumps(report.as_json()) if args.json else render_table(report))
    return 0 if report.ok else 1


def _counting(bar: "tqdm[Any]") -> Callable[[int], None]:
    def told(count: int) -> None:
        bar.update(count)

    return told


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    cutoff = utc(time.time()) - timedelta(days=args.older_than_days)
    with tqdm(unit=" logs", desc="deleting old logs", disable=not sys.stderr.isatty()) as bar:
        deleted = delete_old_logs(make_engine(settings.database_url), cutoff, progress=_counting(bar))
    print(json.dumps({"deleted": deleted, "olderThan": cutoff.isoformat() + "Z"}))
    return 0


def cmd_client(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    now = utc(time.time())
    own_secret = not getattr(args, "default_secret", False)
    if args.action in ("add", "rotate") and not own_secret and settings.credit_sync_secret is None:
        raise SettingsError("CREDIT_SYNC_SECRET: --default-secret needs it set")
    actions: dict[str, Callable[[Connection], Any]] = {
        "add": lambda c: add_client(c, args.source, now, own_secret=own_secret),
        "rotate": lambda c: rotate_client(c, args.source, now, own_secret=own_secret),
        "revoke": lambda c: revoke_client(c, args.source, now),
        "list": lambda c: {"clients": list_clients(c)},
    }
    try:
        result = run_transaction(engine, actions[args.action])
    except ClientError as error:
        print(f"creditrelay: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _days(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def register(commands: Any, command: Register) -> None:
    poll = command(commands, "poll", cmd_poll, "bill new-api's consume logs (one pass, or --every SECONDS)")
    poll.add_argument("--since", type=_moment, help="start of the first window (default: watermark - overlap)")
    poll.add_argument("--every", type=float, metavar="SECONDS", help="keep polling at this interval")
    poll.add_argument(
        "--attempts", type=int, default=PollConfig.attempts, help="tries per upstream request before giving up"
    )

    reconcile = command(commands, "reconcile", cmd_reconcile, "check the ledger and new-api agree")
    reconcile.add_argument("--since", type=_moment, help="window start (default: 24 h before --until)")
    reconcile.add_argument("--until", type=_moment, help="window end (default: now)")
    reconcile.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    reconcile.add_argument("--fix", action="store_true", help="charge missing usage, re-run failed webhooks")

    client = command(commands, "client", cmd_client, "client projects of the credit API")
    actions = client.add_subparsers(dest="action", required=True)
    for name, text in (
        ("add", "register a source: prints its API key and secret, once"),
        ("rotate", "new API key (and secret)"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("source", metavar="SOURCE")
        sub.add_argument(
            "--default-secret", action="store_true", help="sign with CREDIT_SYNC_SECRET instead of an own secret"
        )
    actions.add_parser("revoke", help="the API key stops working").add_argument("source", metavar="SOURCE")
    actions.add_parser("list", help="every client, without keys or secrets")

    cleanup = command(commands, "cleanup", cmd_cleanup, "delete old processed/ignored webhook logs")
    cleanup.add_argument("--older-than-days", type=_days, default=7)
