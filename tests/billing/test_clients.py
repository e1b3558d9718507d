"""billing/clients.py: the credit API's client registry."""

import time

from creditrelay.billing.clients import Client, add_client, authenticate, list_clients, revoke_client, rotate_client
from creditrelay.schema.database import utc
from tests.support.database import Database
from tests.support.ledger import in_transaction


def test_keys_are_stored_hashed_rotated_and_revoked(database: Database) -> None:
    """Only a hash of the key is kept; rotation retires the old key at once; revocation retires the new one."""
    now = utc(time.time())
    first = in_transaction(database, lambda c: add_client(c, "media_bot", now))
    assert database.count("api_clients", "apiKeyHash = :k", k=first["api_key"]) == 0
    assert in_transaction(database, lambda c: authenticate(c, first["api_key"])) == Client("media_bot", first["secret"])
    second = in_transaction(database, lambda c: rotate_client(c, "media_bot", now))
    assert in_transaction(database, lambda c: authenticate(c, first["api_key"])) is None
    assert in_transaction(database, lambda c: authenticate(c, second["api_key"])) is not None
    in_transaction(database, lambda c: revoke_client(c, "media_bot", now))
    assert in_transaction(database, lambda c: authenticate(c, second["api_key"])) is None
    [listed] = in_transaction(database, list_clients)
    assert (listed["source"], listed["status"], listed["ownSecret"]) == ("media_bot", "revoked", True)
    assert second["api_key"] not in str(listed)
