"""Billing by gateway user: a usage of a key that no ``key link`` names, whose gateway user is mapped to a
user (``users.gatewayUserId``), bills that user and links the key to them, marked automatic
(``api_keys.automatic``), so that everything that gateway user spends is theirs — and their suspension
disables that key too (``billing.enforcement`` reads every key of a user).

Whose a key is comes from the usage itself (a webhook's ``data.userId``, a log row's ``user_id``, the
LiteLLM callback's user id), else from what polling learnt of the key (``gateway_keys``: seed 004's
webhook says nothing of its user). The gateway account creditrelay calls as (``NEW_API_USER_ID``) is
nobody's: in ``tokens`` mode it owns every key.

Race-free by the key's unique constraint: an automatic link is inserted skipping a key that exists
(``schema.inserts``), under its user's row lock; whatever the table holds then is the key's owner. Two
instances seeing a key's first usage at once link it once. A ``key link`` (an upsert) always wins: it
overwrites an automatic link, which never overwrites it.
"""

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import Connection

from creditrelay.billing.rows import key_owners
from creditrelay.billing.rules import LedgerRules
from creditrelay.billing.watch import SUSPEND, queue_intents
from creditrelay.schema.errors import TransactionConflict
from creditrelay.schema.inserts import insert_new
from creditrelay.schema.statements import fetch_in
from creditrelay.schema.tables import api_keys, gateway_keys, users

log = structlog.get_logger()


def unowned(pairs: Iterable[tuple[str, str | None]], owners: Mapping[str, int]) -> dict[str, str | None]:
    """The keys of ``(key, gateway user)`` pairs that nobody owns, each with the first gateway user said."""
    wanted: dict[str, str | None] = {}
    for key, gateway_user in pairs:
        if key not in owners and wanted.get(key) is None:
            wanted[key] = gateway_user
    return wanted


def candidates(connection: Connection, wanted: Mapping[str, str | None], rules: LedgerRules) -> dict[str, int]:
    """The user each unowned key would bill, for the keys whose gateway user (said, or learnt by polling)
    is mapped; nothing is written."""
    if not wanted:
        return {}
    silent = sorted(key for key, gateway_user in wanted.items() if gateway_user is None)
    learnt: dict[str, str] = {}
    if silent:
        rows = fetch_in(
            connection,
            "gateway_keys",
            lambda keys: sa.select(gateway_keys.c.remoteKeyId, gateway_keys.c.gatewayUserId).where(
                gateway_keys.c.remoteKeyId.in_(keys)
            ),
            silent,
        )
        learnt = {key: gateway_user for key, gateway_user in rows}
    gateway_of = {key: gateway_user or learnt.get(key) for key, gateway_user in wanted.items()}
    mapped = {key: g for key, g in gateway_of.items() if g is not None and g != rules.admin_gateway_user}
    if not mapped:
        return {}
    rows = fetch_in(
        connection,
        "mapped_users",
        lambda ids: sa.select(users.c.gatewayUserId, users.c.id).where(users.c.gatewayUserId.in_(ids)),
        sorted(set(mapped.values())),
    )
    user_of = {gateway_user: int(user_id) for gateway_user, user_id in rows}
    return {key: user_of[g] for key, g in mapped.items() if g in user_of}


def link(connection: Connection, links: Mapping[str, int], now: datetime, rules: LedgerRules) -> set[str]:
    """Link the keys automatically (their users' rows locked by the caller); the keys linked here. A key
    another transaction linked meanwhile keeps that link: when it bills another user than ``links`` says,
    the transaction runs again (``TransactionConflict``) and finds the key's owner as it is."""
    if not links:
        return set()
    rows: list[dict[str, Any]] = [
        {"remoteKeyId": key, "userId": user_id, "automatic": True, "openPollUsages": 0, "createdAt": now,
         "updatedAt": now}
        for key, user_id in sorted(links.items())
    ]  # fmt: skip
    written = insert_new(connection, api_keys, rows, "remoteKeyId")
    others = sorted(set(links) - written)
    if others:
        found = key_owners(connection, others)
        if any(found.get(key) != links[key] for key in others):
            raise TransactionConflict("a gateway key was linked to another user meanwhile")
    linked = {key: links[key] for key in sorted(written)}
    if linked:
        log.info("keys_linked_automatically", keys={key: user for key, user in linked.items()})
    if rules.enforce:  # a suspended user's new key is disabled too
        query = sa.select(users.c.id, users.c.balance).where(users.c.id.in_(set(linked.values())))
        suspended = [int(user_id) for user_id, balance in connection.execute(query) if rules.suspended(balance)]
        queue_intents(connection, suspended, SUSPEND, now)
    return written


def learn_keys(connection: Connection, seen: Mapping[str, str], now: datetime) -> None:
    """Keep whose each gateway key is, as the gateway's log says it (``key -> gateway user``); only the keys
    new or changed are written."""
    if not seen:
        return
    rows = fetch_in(
        connection,
        "gateway_keys",
        lambda keys: sa.select(gateway_keys.c.remoteKeyId, gateway_keys.c.gatewayUserId).where(
            gateway_keys.c.remoteKeyId.in_(keys)
        ),
        sorted(seen),
    )
    known = {key: gateway_user for key, gateway_user in rows}
    new = [{"remoteKeyId": k, "gatewayUserId": g, "seenAt": now} for k, g in sorted(seen.items()) if k not in known]
    written = insert_new(connection, gateway_keys, new, "remoteKeyId")
    for key, gateway_user in sorted(seen.items()):
        if (key in known and known[key] != gateway_user) or (key not in known and key not in written):
            connection.execute(
                gateway_keys.update()
                .where(gateway_keys.c.remoteKeyId == key)
                .values(gatewayUserId=gateway_user, seenAt=now)
            )
