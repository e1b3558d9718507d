"""The statements the ledger is made of: find key owners, lock users in id order, write balances (rows are
inserted once by their unique key with ``schema.inserts``). Rules live in ``billing.ledger``; these only
say what the database did."""

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.statements import fetch_in, padded, placeholders, run_cached
from creditrelay.schema.tables import api_keys, users


def key_owners(connection: Connection, remote_key_ids: Iterable[str]) -> dict[str, int]:
    """The user behind each known gateway key."""
    rows = fetch_in(
        connection,
        "key_owners",
        lambda keys: sa.select(api_keys.c.remoteKeyId, api_keys.c.userId).where(api_keys.c.remoteKeyId.in_(keys)),
        sorted(set(remote_key_ids)),
    )
    return {key: user for key, user in rows}


def lock_balances(connection: Connection, user_ids: Collection[int]) -> dict[int, int]:
    """Lock the users' rows in id order (the one order every transaction uses) and read their balances."""
    rows = fetch_in(
        connection,
        "lock_balances",
        lambda ids: (
            sa.select(users.c.id, users.c.balance).where(users.c.id.in_(ids)).order_by(users.c.id).with_for_update()
        ),
        sorted(user_ids),
    )
    return {user_id: balance for user_id, balance in rows}


def lock_users(connection: Connection, user_ids: Collection[int]) -> dict[int, tuple[int, int, int]]:
    """``lock_balances``, with each user's count of open polled usages (``billing.matching``) and of live
    grants and open holds (``billing.grants``, ``billing.holds``; their sum: only whether either is
    there matters) beside the balance: what charging usage needs, in the same statement."""
    rows = fetch_in(
        connection,
        "lock_users",
        lambda ids: (
            sa.select(users.c.id, users.c.balance, users.c.openPollUsages, users.c.liveGrants + users.c.openHolds)
            .where(users.c.id.in_(ids))
            .order_by(users.c.id)
            .with_for_update()
        ),
        sorted(user_ids),
    )
    return {user_id: (balance, waiting, grants) for user_id, balance, waiting, grants in rows}


def lock_accounts(connection: Connection, user_ids: Collection[int]) -> dict[int, tuple[int, int]]:
    """``lock_balances``, with each user's count of live grants beside the balance."""
    rows = fetch_in(
        connection,
        "lock_accounts",
        lambda ids: (
            sa.select(users.c.id, users.c.balance, users.c.liveGrants)
            .where(users.c.id.in_(ids))
            .order_by(users.c.id)
            .with_for_update()
        ),
        sorted(user_ids),
    )
    return {user_id: (balance, grants) for user_id, balance, grants in rows}


def set_balances(connection: Connection, balances: Mapping[int, int], now: datetime) -> None:
    """Write new balances in one statement (``CASE id WHEN … THEN …``), users in id order."""
    if not balances:
        return
    ids = padded(sorted(balances))  # a repeated user id repeats the same CASE arm

    def build() -> sa.Update:
        new = sa.case(
            {
                sa.bindparam(f"u{i}", type_=sa.BigInteger): sa.bindparam(f"b{i}", type_=sa.BigInteger)
                for i in range(len(ids))
            },
            value=users.c.id,
        )
        ids_in = users.c.id.in_(placeholders("w", len(ids)))
        return (
            users.update()
            .where(ids_in)
            .values(balance=new, updatedAt=sa.bindparam("now", type_=users.c.updatedAt.type))
        )

    values = [value for user_id in ids for value in (user_id, balances[user_id], user_id)]
    params: dict[str, Any] = dict(zip(_balance_names(len(ids)), values, strict=True)) | {"now": now}
    run_cached(connection, ("set_balances", len(ids)), build, params)


@cache
def _balance_names(count: int) -> tuple[str, ...]:
    """``set_balances``' parameter names for ``count`` users: each user's id, new balance, id again."""
    return tuple(name for i in range(count) for name in (f"u{i}", f"b{i}", f"w{i}"))
