"""receiver/clients.py: who may sync, with which secret (the credit API's edge)."""

import time

import pytest

from creditrelay.billing.credit_sync import SyncRefused, SyncUnavailable
from creditrelay.receiver.clients import (
    Client,
    add_client,
    authenticate,
    list_clients,
    revoke_client,
    rotate_client,
    verify_request,
)
from creditrelay.schema.credit_sync import parse_sync_body
from creditrelay.schema.database import utc
from tests.support.credits import Credentials, signed
from tests.support.database import Database
from tests.support.ledger import in_transaction

DEFAULT_SECRET = "the-operators-default-credit-sync-secret"


def test_a_client_without_its_own_secret_signs_with_the_default() -> None:
    """CREDIT_SYNC_SECRET verifies for clients registered without a secret; without it, the API is unavailable."""
    client = Client("shop", None)
    body = parse_sync_body(signed(Credentials("shop", "k", DEFAULT_SECRET), 5))
    verify_request(client, body, time.time(), DEFAULT_SECRET)
    with pytest.raises(SyncRefused):
        verify_request(client, body, time.time(), "another-default-secret")
    with pytest.raises(SyncUnavailable):
        verify_request(client, body, time.time(), None)


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
