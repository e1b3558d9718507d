"""Both signature schemes, checked against independent implementations and the spec's test vector."""

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook
from starlette.datastructures import Headers

from creditrelay.schema.signing import (
    SecretError,
    WebhookSecret,
    parse_secrets,
    sign_seed,
    sign_standard,
    verify_signature,
)
from tests.support.signing import SECRET, STANDARD_SECRET, standard_headers

BODY = b'{"eventId":"evt-1"}'
NOW = 1_700_000_000


def test_standard_webhooks_spec_vector_is_reproduced() -> None:
    """The example of the Standard Webhooks specification signs to its published value."""
    secret = WebhookSecret.parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_seed_signature_is_openssl_hex_hmac() -> None:
    """The seed scheme is the hex HMAC-SHA256 of the raw body keyed with the secret's UTF-8 bytes."""
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign_seed(WebhookSecret.parse(SECRET), BODY) == expected


def test_our_standard_signature_verifies_with_the_reference_library() -> None:
    """A signature we make is accepted by the spec's reference library."""
    secret = WebhookSecret.parse(STANDARD_SECRET)
    now = int(time.time())  # the reference library checks the timestamp against its own clock
    headers = {
        "webhook-id": "evt-1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign_standard(secret, "evt-1", now, BODY),
    }
    assert Webhook(STANDARD_SECRET).verify(BODY.decode(), headers) == {"eventId": "evt-1"}


def test_reference_library_signature_verifies_with_ours() -> None:
    """A signature made by the reference library is accepted by our verifier, inside the window only."""
    secrets = parse_secrets(STANDARD_SECRET)
    headers = Headers(standard_headers(BODY, "evt-1", at=NOW))
    assert verify_signature(secrets, BODY, headers, NOW + 299)
    assert not verify_signature(secrets, BODY, headers, NOW + 301)
    assert not verify_signature(secrets, BODY, headers, NOW - 301)
    assert not verify_signature(secrets, BODY + b" ", headers, NOW)


def test_plain_secret_keys_standard_webhooks_with_its_utf8_bytes() -> None:
    """Without whsec_, the Standard Webhooks key is the secret's UTF-8 bytes."""
    secret = WebhookSecret.parse(SECRET)
    digest = hmac.new(SECRET.encode(), f"m.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert sign_standard(secret, "m", NOW, BODY) == "v1," + base64.b64encode(digest).decode()


@pytest.mark.parametrize(
    "signature",
    ["", "v1,", "v1", "v2,abc", "v1,!!!notbase64", "v1,AAAA", " ", "v1,,v1,"],
)
def test_malformed_standard_signatures_are_refused_without_error(signature: str) -> None:
    """Empty, versionless or non-base64 entries are a refusal, never an exception."""
    headers = Headers({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": signature})
    assert not verify_signature(parse_secrets(STANDARD_SECRET), BODY, headers, NOW)


@pytest.mark.parametrize("timestamp", ["", "soon", "1.5", "-5", "1e9", "9" * 40])
def test_standard_timestamps_that_are_not_integers_are_refused(timestamp: str) -> None:
    """A timestamp that is not a plain integer is a refusal."""
    secret = WebhookSecret.parse(STANDARD_SECRET)
    headers = Headers(
        {
            "webhook-id": "m",
            "webhook-timestamp": timestamp,
            "webhook-signature": sign_standard(secret, "m", NOW, BODY),
        }
    )
    assert not verify_signature((secret,), BODY, headers, NOW)


def test_non_ascii_seed_signature_is_refused_without_error() -> None:
    """A header that is not hex at all is a refusal."""
    headers = Headers(raw=[(b"x-webhook-signature", "é".encode("latin-1"))])
    assert not verify_signature(parse_secrets(SECRET), BODY, headers, NOW)


@pytest.mark.parametrize(
    "value", ["short", "x" * 31, "whsec_", "whsec_%%%", "whsec_" + base64.b64encode(b"k" * 8).decode()]
)
def test_weak_secrets_are_refused(value: str) -> None:
    """Secrets under 32 characters and malformed whsec_ secrets are refused."""
    with pytest.raises(SecretError):
        parse_secrets(value)


def test_several_secrets_parse_in_order_and_never_print() -> None:
    """Space-separated secrets are all kept, first first, and their repr hides them."""
    secrets = parse_secrets(f"  {SECRET}   {STANDARD_SECRET} ")
    assert [s.text for s in secrets] == [SECRET, STANDARD_SECRET]
    assert SECRET not in repr(secrets)
