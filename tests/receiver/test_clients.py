"""receiver/clients.py: who may sync, with which secret (the credit API's edge)."""

import time

import pytest

from creditrelay.billing.clients import Client
from creditrelay.billing.credit_sync import SyncRefused, SyncUnavailable
from creditrelay.receiver.clients import verify_request
from creditrelay.schema.credit_sync import parse_sync_body
from tests.support.credits import Credentials, signed

DEFAULT_SECRET = "the-operators-default-credit-sync-secret"


def test_a_client_without_its_own_secret_signs_with_the_default() -> None:
    """CREDIT_SYNC_SECRET verifies for clients registered without a secret; without it, the API is unavailable."""
    client = Client("shop", None, frozenset())
    body = parse_sync_body(signed(Credentials("shop", "k", DEFAULT_SECRET), 5))
    verify_request(client, body, time.time(), DEFAULT_SECRET)
    with pytest.raises(SyncRefused):
        verify_request(client, body, time.time(), "another-default-secret")
    with pytest.raises(SyncUnavailable):
        verify_request(client, body, time.time(), None)
