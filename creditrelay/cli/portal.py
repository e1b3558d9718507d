"""Members' own view: ``portal link`` and ``portal revoke``, ``statement``, ``user transactions``
(docs/portal.md). Links and transactions print one JSON object; a statement streams CSV or JSON."""

import argparse
import sys
from typing import TYPE_CHECKING, Any

from creditrelay.cli.accounts import MAX_ID, USER
from creditrelay.cli.base import command, integer, ledger, now, transaction
from creditrelay.schema.portal_tokens import DEFAULT_DAYS, MAX_DAYS
from creditrelay.settings import Settings, SettingsError

if TYPE_CHECKING:
    from sqlalchemy import Connection


def _keys(settings: Settings) -> tuple[bytes, ...]:
    keys = settings.portal_keys
    if not keys:
        raise SettingsError("PORTAL_SECRET (or WEBHOOK_SECRET) is not set: portal links need a secret to sign them")
    return keys


def cmd_portal_link(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user
    from creditrelay.billing.portal import issue_link

    key = _keys(settings)[0]

    def work(connection: "Connection") -> dict[str, Any]:
        link = issue_link(connection, find_user(connection, args.user).id, key, now(), args.days)
        found: dict[str, Any] = {"path": link.path}
        if settings.public_base_url is not None:
            found["url"] = settings.public_base_url + link.path
        return found | {"expiresAt": link.expires_at}

    return transaction(settings, work)


def cmd_portal_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user
    from creditrelay.billing.portal import revoke_links

    def work(connection: "Connection") -> dict[str, Any]:
        user = find_user(connection, args.user)
        revoke_links(connection, user.id)
        return {"userId": user.id, "email": user.email, "revoked": True}

    return transaction(settings, work)


def cmd_statement(args: argparse.Namespace, settings: Settings) -> int:
    """Streamed from one read-only transaction: every line of the month as the database had it then."""
    from creditrelay.billing import statement_files
    from creditrelay.billing.accounts import find_user
    from creditrelay.billing.statements import month_of, parse_month
    from creditrelay.schema.transactions import read_stream

    parse_month(args.month)  # a bad month is refused before the database is opened
    with read_stream(ledger(settings)) as connection:
        month = month_of(connection, args.month)
        if args.user is None:
            parts = (statement_files.summary_csv if args.format == "csv" else statement_files.summary_json)(
                connection, month
            )
        else:
            user = find_user(connection, args.user)
            if args.format == "csv":
                parts = statement_files.user_csv(connection, user.id, month)
            else:
                parts = statement_files.user_json(connection, user.id, user.email, month)
        out = sys.stdout
        for part in parts:
            out.write(part)
        out.flush()
    return 0


def cmd_user_transactions(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user
    from creditrelay.billing.user_queries import transactions

    def work(connection: "Connection") -> dict[str, Any]:
        user = find_user(connection, args.user)
        page = transactions(connection, user.id, args.limit, args.before)
        return {"userId": user.id, "email": user.email, "transactions": page.transactions, "older": page.older}

    return transaction(settings, work)


def register(commands: Any, user: Any) -> None:
    portal = command(commands, "portal", cmd_portal_link, "members' portal links").add_subparsers(
        required=True, metavar="ACTION"
    )
    link = command(portal, "link", cmd_portal_link, "a link to the member's own page (balance, usage, statements)")
    link.add_argument("user", metavar=USER, help="email or numeric id")
    link.add_argument(
        "--days", type=integer(1, MAX_DAYS), default=DEFAULT_DAYS,
        help=f"how long the link works (default: {DEFAULT_DAYS}, at most {MAX_DAYS})",
    )  # fmt: skip
    revoke = command(portal, "revoke", cmd_portal_revoke, "end every portal link of the member made so far")
    revoke.add_argument("user", metavar=USER, help="email or numeric id")

    statement = command(commands, "statement", cmd_statement, "a month's statement: one member's, or everyone's")
    statement.add_argument("--month", required=True, metavar="YYYY-MM", help="the calendar month (UTC)")
    statement.add_argument("--user", metavar=USER, help="one member: every transaction; without: one row per user")
    statement.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default) or json")

    listing = command(user, "transactions", cmd_user_transactions, "a member's transactions, newest first")
    listing.add_argument("user", metavar=USER, help="email or numeric id")
    listing.add_argument("--limit", type=integer(1, 1000), default=50, help="how many (default: 50, at most 1000)")
    listing.add_argument("--before", type=integer(1, MAX_ID), help="the next page: transactions older than this id")
