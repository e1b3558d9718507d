"""The sender's commands: ``send``, ``relay`` and ``outbox``, registered into ``creditrelay``."""

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from creditrelay.schema.database import utc
from creditrelay.schema.settings import Settings
from creditrelay.schema.wire import EnvelopeError, parse_event, plain_int
from creditrelay.sender.delivery import DeliveryPolicy, Signer, Verdict, deliver
from creditrelay.sender.outbox import DEAD, DEFAULT_OUTBOX_URL, DELIVERED, PENDING, Outbox
from creditrelay.sender.relay import DEFAULT_SCHEDULE, OutboxRelay, RelayConfig
from creditrelay.sender.sidecar import create_sidecar

Handler = Callable[[argparse.Namespace, Settings], int]
Register = Callable[[Any, str, Handler, str], argparse.ArgumentParser]


def _fail(message: str, code: int = 1) -> int:
    print(f"creditrelay: {message}", file=sys.stderr)
    return code


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    secret = settings.require_secrets()[0]
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        event = parse_event(body)
    except EnvelopeError as error:
        return _fail(f"not a valid event: {error}")
    policy = DeliveryPolicy(attempts=args.attempts, timeout=args.timeout)
    with httpx.Client(timeout=policy.timeout) as client:
        attempts = deliver(client, args.url, event.event_id, body, Signer(secret), policy)
    last = attempts[-1]
    report = {
        "eventId": event.event_id,
        "delivered": last.verdict is Verdict.DELIVERED,
        "duplicate": last.duplicate,
        "attempts": len(attempts),
        "status": last.status_code,
    }
    if last.verdict is not Verdict.DELIVERED:
        return _fail(f"not delivered after {len(attempts)} attempt(s): {last.status_code or ''} {last.snippet}")
    print(json.dumps(report))
    return 0


def _schedule(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of seconds, e.g. 5,300,1800") from None
    if not delays or any(d < 0 for d in delays):
        raise argparse.ArgumentTypeError("a comma-separated list of non-negative seconds")
    return delays


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    number = plain_int(port, 65535)
    if not host or number is None:
        raise argparse.ArgumentTypeError("HOST:PORT, e.g. 127.0.0.1:4100")
    return host, number


def cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    secret = settings.require_secrets()[0]
    outbox = Outbox.open(args.outbox)
    config = RelayConfig(url=args.to, schedule=args.retry_schedule, concurrency=args.concurrency)
    relay = OutboxRelay(outbox, Signer(secret), config)
    host, port = args.listen
    uvicorn.run(create_sidecar(outbox, relay), host=host, port=port, access_log=False, server_header=False)
    return 0


def cmd_outbox(args: argparse.Namespace, _settings: Settings) -> int:
    outbox = Outbox.open(args.outbox)
    now = utc(time.time())
    result: dict[str, Any]
    if args.action == "status":
        result = outbox.counts()
    elif args.action == "list":
        result = {"events": outbox.list_events(args.status, args.limit)}
    elif args.action == "retry":
        result = {"requeued": outbox.requeue(args.event_ids or None, now)}
    else:
        statuses = [DELIVERED, DEAD] if args.dead else [DELIVERED]
        result = {"purged": outbox.purge(statuses, now - timedelta(days=args.older_than_days))}
    print(json.dumps(result))
    return 0


def register(commands: Any, command: Register) -> None:
    send = command(commands, "send", cmd_send, "sign and deliver one event with retries")
    send.add_argument("url", metavar="URL")
    send.add_argument("file", metavar="FILE", help="the event as JSON, or - for standard input")
    send.add_argument("--attempts", type=int, default=DeliveryPolicy.attempts)
    send.add_argument("--timeout", type=float, default=DeliveryPolicy.timeout, help="seconds per request")

    relay = command(commands, "relay", cmd_relay, "accept events on HTTP and relay them durably")
    relay.add_argument("--listen", type=_listen, required=True, metavar="HOST:PORT")
    relay.add_argument("--to", required=True, metavar="URL", help="the receiver's /api/webhooks/events")
    relay.add_argument("--outbox", default=DEFAULT_OUTBOX_URL, metavar="URL")
    relay.add_argument("--retry-schedule", type=_schedule, default=DEFAULT_SCHEDULE, metavar="S,S,…")
    relay.add_argument("--concurrency", type=int, default=16)

    outbox = command(commands, "outbox", cmd_outbox, "see and manage the relay's outbox")
    outbox.add_argument("--outbox", default=DEFAULT_OUTBOX_URL, metavar="URL")
    actions = outbox.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="how many events are pending, delivered, dead")
    listing = actions.add_parser("list", help="the newest events")
    listing.add_argument("--status", choices=[PENDING, DELIVERED, DEAD])
    listing.add_argument("--limit", type=int, default=50)
    retry = actions.add_parser("retry", help="requeue dead events (all, or those named)")
    retry.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    purge = actions.add_parser("purge", help="delete delivered events (and with --dead, dead ones)")
    purge.add_argument("--older-than-days", type=float, default=7)
    purge.add_argument("--dead", action="store_true")
