"""The cron side: ``poll``, ``reconcile``, ``cleanup``, and the credit API's ``client`` registry."""

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from creditrelay.app import ATTEMPTS, gateway_access, make_enforcer, make_poller, poll_config, require_enforcement
from creditrelay.cli.base import (
    command,
    counting,
    emit,
    integer,
    ledger,
    moment,
    now,
    number,
    progress_bar,
    transaction,
)
from creditrelay.schema.errors import DatabaseUnavailable, SettingsError, UpstreamError
from creditrelay.schema.shapes import to_json
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from tqdm import tqdm

    from creditrelay.billing.polling import PollReport
    from creditrelay.billing.reconcile import ReconcileReport

RIGHTS_HELP = (
    "comma-separated rights: balance, records (the client's own entries), records:all (every entry), "
    "credit, debit (a new client's default: every right but records:all)"
)


def cmd_enforce(_args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.cli.gateway import enforcement_gateway

    require_enforcement(settings)  # said before the database is opened
    engine = ledger(settings)
    checked = enforcement_gateway(settings)
    if not checked.ok:  # a gateway nobody can reach is not "nothing to do"
        failed = next(c for c in checked.checks if c.ok is False)
        print(f"creditrelay: enforce: the gateway cannot be told anything: {failed.detail}", file=sys.stderr)
        return 1
    report = make_enforcer(settings, engine).run_once()
    print(json.dumps(to_json(report)))
    return 0 if not (report.failed or report.pending) else 1  # 1: the gateway does not do what balances say yet


class _PollProgress:
    def __init__(self) -> None:
        self.bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int, report: "PollReport") -> None:
        if self.bar is None:
            self.bar = progress_bar(total=total, unit="h", desc="polling new-api")
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(rows=report.rows, charged=report.charged)
        if done == total:
            self.bar.close()


def cmd_poll(args: argparse.Namespace, settings: Settings) -> int:
    import structlog

    ledger(settings)
    poller = make_poller(settings, _PollProgress(), args.attempts)
    while True:
        try:
            print(json.dumps(to_json(poller.run_once(args.since))), flush=True)
        except (UpstreamError, DatabaseUnavailable) as error:
            if args.every is None:
                print(
                    f"creditrelay: poll stopped: {error} (what was committed stays; the next run resumes)",
                    file=sys.stderr,
                )
                return 1
            structlog.get_logger().error("poll_failed", error=str(error))
        if args.every is None:
            return 0
        args.since = None
        time.sleep(args.every)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.reconcile import Reconciler

    started = time.time()
    until = args.until if args.until is not None else int(started)
    since = args.since if args.since is not None else until - 24 * 3600
    poller = make_poller(settings) if settings.polling_enabled else None
    bars: dict[str, tqdm[Any]] = {}

    def progress(what: str, count: int) -> None:
        if what not in bars:
            bars[what] = progress_bar(unit=" rows", desc=f"fixing {what}")
        bars[what].update(count)

    engine = ledger(settings)
    access = None
    if settings.gateway_enforcement != "off":
        from creditrelay.billing.drift import gateway_drift

        client = gateway_access(settings, "read the gateway's access back")
        mode, line = settings.gateway_enforcement, settings.suspend_at_balance
        access = partial(gateway_drift, engine, client, mode, line)
    reconciler = Reconciler(engine, poller, poll_config(settings), progress, access, settings.suspend_at_balance)
    try:
        report = reconciler.run(since, until, fix=args.fix, now=now())
    except UpstreamError as error:
        print(f"creditrelay: reconcile could not read the gateway: {error}", file=sys.stderr)
        return 2
    for bar in bars.values():
        bar.close()
    print(json.dumps(to_json(report)) if args.json else render_table(report))
    return 0 if report.ok else 1


def _checked(report: "ReconcileReport") -> str:
    """What the run compared the ledger with, besides itself."""
    compared = (("usage log", report.upstream_checked), ("access", report.access_checked))
    checked = [name for name, done in compared if done]
    return f"gateway {' and '.join(checked)} checked" if checked else "upstream not configured: ledger only"


def render_table(report: "ReconcileReport") -> str:
    """The report as an operator reads it in a terminal."""
    from creditrelay.schema.database import utc
    from creditrelay.schema.shapes import iso

    lines = [
        f"reconcile {iso(utc(report.window_start))} .. {iso(utc(report.window_end))}  ({_checked(report)})",
    ]
    if report.tokens:
        lines += ["", f"{'token':>10}  {'new-api rows':>12}  {'credits':>10}  {'charged rows':>12}  {'credits':>10}"]
        for t in report.tokens:
            upstream = f"{t.upstream_rows:>12}  {t.upstream_credits:>10}"
            lines.append(f"{t.token:>10}  {upstream}  {t.local_rows:>12}  {t.local_credits:>10}")
    for what, count in report.fixed.items():
        lines.append(f"fixed: {count} {what}")
    if report.findings:
        lines += ["", f"{'kind':<26} {'subject':<40} {'user':<28} detail"]
        for f in report.findings:
            lines.append(f"{f.kind:<26} {f.subject:<40} {f.user or '-':<28} {f.detail}")
    for kind, count in report.unlisted.items():
        lines.append(f"{kind:<26} … and {count} more not listed one by one")
    lines += ["", "OK: no discrepancies" if report.ok else f"{report.discrepancies} discrepancies"]
    return "\n".join(lines)


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.cleanup import delete_expired_tokens, delete_old_logs

    engine = ledger(settings)
    cutoff = now() - timedelta(days=args.older_than_days)
    with progress_bar(unit=" logs", desc="deleting old logs") as bar:
        deleted = delete_old_logs(engine, cutoff, progress=counting(bar))
    tokens = delete_expired_tokens(engine, now())
    return emit({"deleted": deleted, "tokensDeleted": tokens, "olderThan": cutoff})


def cmd_client(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing import clients
    from creditrelay.schema.credit_sync import DEFAULT_RIGHTS

    granted = DEFAULT_RIGHTS if getattr(args, "rights", None) is None else args.rights  # add without --rights
    own_secret = not getattr(args, "default_secret", False)
    if args.action in ("add", "rotate") and not own_secret and settings.credit_sync_secret is None:
        raise SettingsError("CREDIT_SYNC_SECRET: --default-secret needs it set")
    actions: dict[str, Callable[[Connection], Any]] = {
        "add": lambda c: clients.add_client(c, args.source, now(), own_secret=own_secret, rights=granted),
        "rotate": lambda c: clients.rotate_client(c, args.source, now(), own_secret=own_secret),
        "revoke": lambda c: clients.revoke_client(c, args.source, now()),
        "rights": lambda c: clients.set_rights(c, args.source, granted, now()),
        "list": lambda c: {"clients": clients.list_clients(c)},
    }
    return transaction(settings, actions[args.action])


def rights_list(text: str) -> tuple[str, ...]:
    """An argument type: comma-separated credit API rights, an unknown one refused by name."""
    from creditrelay.schema.credit_sync import parse_rights
    from creditrelay.schema.errors import InvalidInput

    try:
        return parse_rights(text)
    except InvalidInput as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_expire(_args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.expiry import expire_once

    return emit(expire_once(ledger(settings), now))


def register(commands: Any) -> None:
    command(commands, "expire", cmd_expire, "end the grants and holds past their expiry (one pass)")
    poll = command(commands, "poll", cmd_poll, "bill new-api's consume log (one pass, or --every SECONDS)")
    poll.add_argument("--since", type=moment, help="start of the first window (default: watermark - overlap)")
    poll.add_argument("--every", type=number(1), metavar="SECONDS", help="keep polling at this interval")
    poll.add_argument(
        "--attempts", type=integer(1, 100), default=ATTEMPTS, help=f"tries per request to new-api (default: {ATTEMPTS})"
    )

    reconcile = command(commands, "reconcile", cmd_reconcile, "check the ledger and new-api agree")
    reconcile.add_argument("--since", type=moment, help="window start (default: 24 h before --until)")
    reconcile.add_argument("--until", type=moment, help="window end (default: now)")
    reconcile.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    reconcile.add_argument("--fix", action="store_true", help="charge missing usage, re-run failed webhooks")

    command(commands, "enforce", cmd_enforce, "push pending suspensions and resumptions to the gateway (one pass)")

    cleanup = command(
        commands, "cleanup", cmd_cleanup, "delete old processed and ignored webhook logs, and expired credit API tokens"
    )
    cleanup.add_argument(
        "--older-than-days", type=number(0), default=7, metavar="DAYS", help="keep this many days (default: 7)"
    )

    client = command(commands, "client", cmd_client, "client projects of the credit API")
    actions = client.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("add", "register a source: prints its API key and secret, once"),
        ("rotate", "a new API key (and secret); the old one stops working"),
    ):
        sub = actions.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        sub.add_argument("source", metavar="SOURCE", help="the client project's name (letters, digits, _ . -)")
        sub.add_argument(
            "--default-secret", action="store_true", help="sign with CREDIT_SYNC_SECRET instead of an own secret"
        )
    add = actions.choices["add"]
    add.add_argument("--rights", type=rights_list, metavar="LIST", help=RIGHTS_HELP)
    revoke = actions.add_parser("revoke", help="the API key stops working", description="The API key stops working.")
    revoke.add_argument("source", metavar="SOURCE", help="the client project's name")
    text = "what the client may do from its next request on"
    given = actions.add_parser("rights", help=text, description=text[:1].upper() + text[1:] + ".")
    given.add_argument("source", metavar="SOURCE", help="the client project's name")
    given.add_argument("rights", type=rights_list, metavar="LIST", help=RIGHTS_HELP)
    actions.add_parser("list", help="every client, without keys or secrets", description="Every client.")
