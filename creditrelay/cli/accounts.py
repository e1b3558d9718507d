"""Users, their gateway keys and their credits: ``user``, ``key``, ``topup``, ``adjust``, ``replay``.
Each prints one JSON object; a change is one transaction."""

import argparse
from typing import TYPE_CHECKING, Any

from creditrelay.cli.base import MAX_AMOUNT, CommandError, command, instant, integer, now, remote_key, transaction
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Connection

USER = "EMAIL_OR_ID"
GATEWAY_USER_HELP = (
    "the user's id at the gateway (new-api's numeric user id, LiteLLM's user_id): that gateway user's keys"
    " bill this user without `key link`, and GATEWAY_ENFORCEMENT=users disables it"
)
MAX_ID = 2**63 - 1


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import NewUser, create_user

    new = NewUser(args.email, args.name, args.telegram_id, args.credits, args.gateway_user)
    return transaction(settings, lambda c: create_user(c, new, now()))


def cmd_user_set_gateway_user(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user, set_gateway_user

    if (args.gateway_user is None) == (not args.clear):
        raise CommandError("give the gateway user's id, or --clear (not both)")

    def work(connection: "Connection") -> Any:
        return set_gateway_user(connection, find_user(connection, args.user).id, args.gateway_user, now())

    return transaction(settings, work)


def cmd_user_show(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user
    from creditrelay.billing.grants import grants_of
    from creditrelay.billing.holds import open_holds
    from creditrelay.schema.shapes import to_json

    def work(connection: "Connection") -> dict[str, Any]:
        user = find_user(connection, args.user)
        grants = grants_of(connection, user.id)
        held = open_holds(connection, user.id, now())
        shown: dict[str, Any] = to_json(user)
        return shown | {
            "grants": grants.live,
            "consumption": {"granted": grants.granted_used, "purchased": grants.purchased_used},
            "expired": grants.expired,
            "held": sum(hold.amount for hold in held),
            "holds": held,
        }

    return transaction(settings, work)


def cmd_user_list(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import list_users

    def work(connection: "Connection") -> dict[str, Any]:
        return {"users": list_users(connection, limit=args.limit, after=args.after, below=args.below)}

    return transaction(settings, work)


def cmd_key_link(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user, link_key, set_gateway_user

    def work(connection: "Connection") -> Any:
        user = find_user(connection, args.user)
        if args.gateway_user is not None:
            set_gateway_user(connection, user.id, str(args.gateway_user), now())
        return link_key(connection, args.remote_key_id, user.id, now())

    return transaction(settings, work)


def cmd_key_unlink(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import unlink_key

    return transaction(settings, lambda c: unlink_key(c, args.remote_key_id))


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.accounts import find_user, list_keys

    def work(connection: "Connection") -> dict[str, Any]:
        user_id = None if args.user is None else find_user(connection, args.user).id
        return {"keys": list_keys(connection, user_id=user_id)}

    return transaction(settings, work)


def cmd_credit(args: argparse.Namespace, settings: Settings) -> int:
    """``topup`` and ``adjust``: the same answer, a change recorded once per reference."""
    from creditrelay.billing.accounts import adjust, find_user, top_up
    from creditrelay.billing.grants import GrantTerms
    from creditrelay.billing.ledger import CreditStatus

    def work(connection: "Connection") -> dict[str, Any]:
        user = find_user(connection, args.user)
        if args.adjust:
            outcome = adjust(connection, user.id, args.amount, args.reference, args.reason, now())
        else:
            terms = GrantTerms(args.kind, args.priority, args.expires_at)
            outcome = top_up(connection, user.id, args.amount, args.reference, now(), args.reason, terms)
        return {
            "userId": user.id,
            "email": user.email,
            "amount": args.amount,
            "balance": outcome.balance,
            "duplicate": outcome.status is CreditStatus.DUPLICATE,
            "reference": args.reference,
            "transactionId": outcome.transaction_id,
        }

    return transaction(settings, work)


def cmd_grant_void(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing.grants import void_grant

    return transaction(settings, lambda c: void_grant(c, args.grant_id, args.reason, now()))


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.billing import admin

    def work(connection: "Connection") -> dict[str, Any]:
        replayed = admin.replay(connection, args.event_id, now())
        if replayed is None:
            raise CommandError(f"no stored delivery {args.event_id!r}")
        outcome = replayed.outcome
        return {"eventId": outcome.event_id, "status": outcome.status.value, "error": outcome.error}

    return transaction(settings, work)


def register(commands: Any) -> None:
    user = command(commands, "user", cmd_user_show, "create, show and list users").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = command(user, "create", cmd_user_create, "create a user (with opening credits)")
    create.add_argument("--email", required=True, help="the user's email, unique")
    create.add_argument("--name", help="a display name")
    create.add_argument("--telegram-id", type=integer(1, MAX_ID), help="the id the credit API knows the user by")
    create.add_argument(
        "--credits", type=integer(0, MAX_AMOUNT), default=0, help="opening balance, recorded as a transaction"
    )
    create.add_argument("--gateway-user", metavar="ID", help=GATEWAY_USER_HELP)
    mapping = command(
        user, "set-gateway-user", cmd_user_set_gateway_user, "map a user to a gateway user, or --clear the mapping"
    )
    mapping.add_argument("user", metavar=USER, help="email or numeric id")
    mapping.add_argument("gateway_user", nargs="?", metavar="ID", help=GATEWAY_USER_HELP)
    mapping.add_argument("--clear", action="store_true", help="bill no gateway user's unlinked keys to this user")
    from creditrelay.cli import portal

    portal.register(commands, user)
    command(user, "show", cmd_user_show, "show a user").add_argument("user", metavar=USER, help="email or numeric id")
    listing = command(user, "list", cmd_user_list, "list users in id order")
    listing.add_argument("--limit", type=integer(1, 1000), default=50, help="how many (default: 50, at most 1000)")
    listing.add_argument("--after", type=integer(0, MAX_ID), help="the next page: users after this id")
    listing.add_argument(
        "--below", type=integer(-(10**15), 10**15), help="only users whose balance is under this (0: who owes)"
    )

    key = command(commands, "key", cmd_key_list, "gateway keys and the users they bill").add_subparsers(
        required=True, metavar="ACTION"
    )
    link = command(key, "link", cmd_key_link, "the gateway key bills that user (moved if linked to another)")
    link.add_argument("remote_key_id", type=remote_key, metavar="REMOTE_KEY_ID", help="the gateway's key (token) id")
    link.add_argument("--user", required=True, metavar=USER, help="the user it bills")
    link.add_argument(
        "--gateway-user",
        type=integer(1, MAX_ID),
        metavar="ID",
        help="also map the user to this gateway user (as `user set-gateway-user`)",
    )
    unlink = command(key, "unlink", cmd_key_unlink, "the gateway key bills nobody (its usages fail until linked)")
    unlink.add_argument("remote_key_id", type=remote_key, metavar="REMOTE_KEY_ID", help="the gateway's key id")
    keys = command(key, "list", cmd_key_list, "linked gateway keys")
    keys.add_argument("--user", metavar=USER, help="only this user's keys")

    for name, text, low, high in (
        ("topup", "add credits, once per reference", 1, MAX_AMOUNT),
        ("adjust", "take credits back (a negative AMOUNT), once per reference, with a reason", -MAX_AMOUNT, -1),
    ):
        sub = command(commands, name, cmd_credit, text)
        sub.set_defaults(adjust=name == "adjust")
        sub.add_argument("user", metavar=USER, help="email or numeric id")
        sub.add_argument("amount", type=integer(low, high), metavar="AMOUNT", help=f"credits, {low} to {high}")
        sub.add_argument(
            "--reference", required=True, help="an order or ticket id: the same reference again is a duplicate"
        )
        sub.add_argument("--reason", required=name == "adjust", help="why, kept with the transaction")
        if name == "topup":
            sub.add_argument("--expires-at", type=instant, metavar="ISO8601", help="the credits expire then (UTC)")
            sub.add_argument(
                "--priority", type=integer(0, 1_000_000), metavar="N", help="lower is spent first (default: after all)"
            )
            sub.add_argument("--kind", choices=("paid", "promo"), default="paid", help="paid (default) or promo")

    grant = command(commands, "grant", cmd_grant_void, "credit grants (a top-up with an expiry or a priority)")
    void = command(grant.add_subparsers(required=True, metavar="ACTION"), "void", cmd_grant_void, "end a grant now")
    void.add_argument("grant_id", type=integer(1, MAX_ID), metavar="GRANT_ID", help="the grant's id (user show)")
    void.add_argument("--reason", required=True, help="why, kept with its expiry transaction")

    replay = command(commands, "replay", cmd_replay, "run a stored webhook delivery through billing again")
    replay.add_argument("event_id", metavar="EVENT_ID", help="the delivery's eventId (a failed one is charged now)")
