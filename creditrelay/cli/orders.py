"""What members bought: ``order list`` (docs/payments.md). Prints one JSON object."""

import argparse
from typing import TYPE_CHECKING, Any

from creditrelay.cli.accounts import USER
from creditrelay.cli.base import command, integer, transaction
from creditrelay.schema.orders import STATUSES
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Connection


def cmd_order_list(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user
    from creditrelay.billing.orders import list_orders
    from creditrelay.receiver.payments import order_json

    def work(connection: "Connection") -> dict[str, Any]:
        user = find_user(connection, args.user) if args.user is not None else None
        found = list_orders(connection, user_id=None if user is None else user.id, status=args.status, limit=args.limit)
        return {"orders": [order_json(order) for order in found]}

    return transaction(settings, work)


def register(commands: Any) -> None:
    orders = command(commands, "order", cmd_order_list, "orders of credit packages").add_subparsers(
        required=True, metavar="ACTION"
    )
    listing = command(orders, "list", cmd_order_list, "orders newest first: a member's or everyone's")
    listing.add_argument("--user", metavar=USER, help="one member's (email or numeric id)")
    listing.add_argument("--status", choices=STATUSES, help="only orders in this state (failed: to fix and replay)")
    listing.add_argument("--limit", type=integer(1, 1000), default=50, help="how many (default: 50, at most 1000)")
