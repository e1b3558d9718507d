"""The sender's commands: ``send`` one event, ``relay`` (the sidecar with its durable outbox), and
``outbox`` to see and manage what the relay holds. They sign with ``WEBHOOK_SECRET`` (or ``make run``'s
development secret, as ``serve`` does)."""

import argparse
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from creditrelay.cli.base import command, counting, emit, fail, integer, now, number, progress_bar
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from creditrelay.sender.outbox import Outbox

DEFAULT_OUTBOX_URL = "sqlite:///data/outbox.db"  # creditrelay.sender.outbox's, checked equal by a test
STATUSES = ("pending", "delivered", "dead")
DAY = 24 * 3600.0
RETENTION_DAYS = 7  # creditrelay.sender.relay.DEFAULT_RETENTION in days, checked equal by a test


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from creditrelay.schema.wire import EnvelopeError, parse_event
    from creditrelay.sender.delivery import DeliveryPolicy, Signer, Verdict, deliver

    secret = settings.require_secrets()[0]
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        return fail(f"cannot read {args.file}: {error.strerror}")
    try:
        event = parse_event(body)
    except EnvelopeError as error:
        return fail(f"not a valid event: {error}")
    policy = DeliveryPolicy(attempts=args.attempts, timeout=args.timeout)
    with httpx.Client(timeout=policy.timeout) as client:
        attempts = deliver(client, args.url, event.event_id, body, Signer(secret), policy)
    last = attempts[-1]
    if last.verdict is not Verdict.DELIVERED:
        return fail(f"not delivered after {len(attempts)} attempt(s): {last.status_code or ''} {last.snippet}")
    return emit(
        {
            "eventId": event.event_id,
            "delivered": True,
            "duplicate": last.duplicate,
            "attempts": len(attempts),
            "status": last.status_code,
        }
    )


def _schedule(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of seconds, e.g. 5,300,1800") from None
    if not delays or any(not 0 <= d < float("inf") for d in delays):
        raise argparse.ArgumentTypeError("a comma-separated list of non-negative seconds")
    return delays


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        raise argparse.ArgumentTypeError("HOST:PORT, e.g. 127.0.0.1:4100")
    return host, int(port)


def _relay_name(text: str) -> str:
    from creditrelay.schema.outbox import HOLDER_MAX

    if not 0 < len(text) <= HOLDER_MAX:
        raise argparse.ArgumentTypeError(f"1 to {HOLDER_MAX} characters")
    return text


def cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from creditrelay.sender.delivery import Signer
    from creditrelay.sender.outbox import Outbox
    from creditrelay.sender.relay import DEFAULT_SCHEDULE, OutboxRelay, RelayConfig
    from creditrelay.sender.sidecar import create_sidecar

    secret = settings.require_secrets()[0]
    outbox = Outbox.open(args.outbox)
    host, port = args.listen
    config = RelayConfig(
        name=args.name or f"{socket.gethostname()}:{port}",  # the same again after a restart here
        url=args.to,
        schedule=args.retry_schedule or DEFAULT_SCHEDULE,
        concurrency=args.concurrency,
        retention=args.retention_days * DAY,
        purge_dead=args.purge_dead,
    )
    relay = OutboxRelay(outbox, Signer(secret), config)
    uvicorn.run(create_sidecar(outbox, relay), host=host, port=port, access_log=False, server_header=False)
    return 0


def cmd_outbox(args: argparse.Namespace, _settings: Settings) -> int:
    from creditrelay.sender.outbox import Outbox

    outbox = Outbox.open(args.outbox)
    if args.action == "status":
        return emit(outbox.counts())
    if args.action == "list":
        return emit({"events": outbox.list_events(args.status, args.limit)})
    if args.action == "retry":
        return emit({"requeued": outbox.requeue(args.event_ids or None, now())})
    return _purge(args, outbox)


def _purge(args: argparse.Namespace, outbox: "Outbox") -> int:
    """Purge in chunks, with a progress bar on a terminal; with ``--vacuum``, then rewrite a SQLite outbox
    at its new size (the command line's mistake, before anything is purged, on any other database)."""
    if args.vacuum and outbox.file_bytes() is None:
        return fail("--vacuum is for a SQLite outbox: MySQL and PostgreSQL reuse the space of purged events", 2)
    before = outbox.file_bytes()
    statuses = ["delivered", "dead"] if args.dead else ["delivered"]
    with progress_bar(unit=" events", desc="purging the outbox") as bar:
        purged = outbox.purge(statuses, now() - timedelta(days=args.older_than_days), progress=counting(bar))
    if not args.vacuum:
        return emit({"purged": purged})
    outbox.vacuum()
    return emit({"purged": purged, "bytesBefore": before, "bytesAfter": outbox.file_bytes()})


def _outbox_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outbox",
        default=DEFAULT_OUTBOX_URL,
        metavar="URL",
        help=f"the outbox database (default: {DEFAULT_OUTBOX_URL})",
    )


def register(commands: Any) -> None:
    send = command(commands, "send", cmd_send, "sign and deliver one event, with retries")
    send.add_argument("url", metavar="URL", help="the receiver's /api/webhooks/events")
    send.add_argument("file", metavar="FILE", help="the event as JSON, or - for standard input")
    send.add_argument("--attempts", type=integer(1, 100), default=6, help="tries before giving up (default: 6)")
    send.add_argument("--timeout", type=number(0.1), default=10.0, help="seconds per request (default: 10)")

    relay = command(commands, "relay", cmd_relay, "accept events over HTTP and relay them durably")
    relay.add_argument("--listen", type=_listen, required=True, metavar="HOST:PORT", help="where the gateway posts")
    relay.add_argument("--to", required=True, metavar="URL", help="the receiver's /api/webhooks/events")
    _outbox_option(relay)
    relay.add_argument(
        "--retry-schedule",
        type=_schedule,
        metavar="S,S,…",
        help="seconds before each retry (default: 5,300,1800,7200,18000,36000,36000, about 28 h in all)",
    )
    relay.add_argument(
        "--concurrency", type=integer(1, 1000), default=16, help="deliveries in flight at once (default: 16)"
    )
    relay.add_argument(
        "--retention-days",
        type=number(0),
        default=RETENTION_DAYS,
        metavar="DAYS",
        help=f"purge delivered events this many days old, hourly (default: {RETENTION_DAYS})",
    )
    relay.add_argument("--purge-dead", action="store_true", help="purge dead events past the retention too")
    relay.add_argument(
        "--name",
        type=_relay_name,
        metavar="NAME",
        help="this relay's name on the events it claims; a restart under it resumes what it had in flight,"
        " and relays sharing an outbox need names of their own (default: HOST:PORT of --listen)",
    )

    outbox = command(commands, "outbox", cmd_outbox, "see and manage the relay's outbox")
    actions = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = command(actions, "status", cmd_outbox, "how many events are pending, delivered, dead")
    listing = command(actions, "list", cmd_outbox, "the newest events")
    listing.add_argument("--status", choices=STATUSES, help="only events in this state")
    listing.add_argument("--limit", type=integer(1, 10000), default=50, help="how many (default: 50)")
    retry = command(actions, "retry", cmd_outbox, "requeue dead events (all, or those named)")
    retry.add_argument(
        "event_ids", nargs="*", metavar="EVENT_ID", help="the events to requeue (default: every dead one)"
    )
    purge = command(actions, "purge", cmd_outbox, "delete delivered events (and with --dead, dead ones)")
    purge.add_argument(
        "--older-than-days", type=number(0), default=7, metavar="DAYS", help="keep this many days (default: 7)"
    )
    purge.add_argument("--dead", action="store_true", help="dead events too")
    purge.add_argument(
        "--vacuum",
        action="store_true",
        help="then rewrite a SQLite outbox at its new size (writers wait while it runs)",
    )
    for sub in (status, listing, retry, purge):
        _outbox_option(sub)
