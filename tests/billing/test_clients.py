"""billing/clients.py: the credit API's client registry, and each client's rights."""

import time

import pytest

from creditrelay.billing.clients import (
    Client,
    ClientError,
    add_client,
    authenticate,
    list_clients,
    revoke_client,
    rotate_client,
    set_rights,
)
from creditrelay.schema.database import utc
from creditrelay.schema.errors import InvalidInput
from tests.support.database import Database
from tests.support.ledger import in_transaction

DEFAULT = frozenset({"balance", "records", "credit", "debit"})


def test_keys_are_stored_hashed_rotated_and_revoked(database: Database) -> None:
    """Only a hash of the key is kept; rotation retires the old key at once; revocation retires the new one."""
    now = utc(time.time())
    first = in_transaction(database, lambda c: add_client(c, "media_bot", now))
    assert database.count("api_clients", "apiKeyHash = :k", k=first["api_key"]) == 0
    found = in_transaction(database, lambda c: authenticate(c, first["api_key"]))
    assert found == Client("media_bot", first["secret"], DEFAULT)
    second = in_transaction(database, lambda c: rotate_client(c, "media_bot", now))
    assert in_transaction(database, lambda c: authenticate(c, first["api_key"])) is None
    assert in_transaction(database, lambda c: authenticate(c, second["api_key"])) is not None
    in_transaction(database, lambda c: revoke_client(c, "media_bot", now))
    assert in_transaction(database, lambda c: authenticate(c, second["api_key"])) is None
    [listed] = in_transaction(database, list_clients)
    assert (listed["source"], listed["status"], listed["ownSecret"]) == ("media_bot", "revoked", True)
    assert second["api_key"] not in str(listed)


def test_rights_are_given_changed_and_listed(database: Database) -> None:
    """A new client gets every right but records:all unless told otherwise; rights can be changed (rotation
    keeps them), are listed in one order, and take effect at the next request."""
    now = utc(time.time())
    shop = in_transaction(database, lambda c: add_client(c, "shop", now))
    in_transaction(database, lambda c: add_client(c, "auditor", now, rights=["records:all", "balance", "balance"]))
    listed = {c["source"]: c["rights"] for c in in_transaction(database, list_clients)}
    assert listed == {"auditor": ["balance", "records:all"], "shop": ["balance", "records", "credit", "debit"]}
    changed = in_transaction(database, lambda c: set_rights(c, "shop", ["debit", "credit"], now))
    assert changed == {"source": "shop", "rights": ["credit", "debit"]}
    rotated = in_transaction(database, lambda c: rotate_client(c, "shop", now))
    assert in_transaction(database, lambda c: authenticate(c, shop["api_key"])) is None
    found = in_transaction(database, lambda c: authenticate(c, rotated["api_key"]))
    assert found is not None
    assert found.rights == {"credit", "debit"}


def test_unknown_rights_and_clients_are_refused_by_name(database: Database) -> None:
    """A right that does not exist is refused naming it, and nothing is written; so is an unknown client."""
    now = utc(time.time())
    with pytest.raises(InvalidInput, match="'refund'"):
        in_transaction(database, lambda c: add_client(c, "shop", now, rights=["credit", "refund"]))
    assert database.count("api_clients") == 0
    with pytest.raises(ClientError, match="no client 'nobody'"):
        in_transaction(database, lambda c: set_rights(c, "nobody", ["credit"], now))
