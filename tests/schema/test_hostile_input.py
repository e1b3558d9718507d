"""Property tests: hostile bodies and headers are refused with a clear error, never an exception."""

import hashlib
import hmac
import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from creditrelay.schema.credit_sync import parse_sync_body
from creditrelay.schema.signing import parse_secrets, sign_standard, verify_signature
from creditrelay.schema.wire import EnvelopeError, parse_event
from tests.support.signing import SECRET, STANDARD_SECRET

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
SECRETS = parse_secrets(f"{SECRET} {STANDARD_SECRET}")


def _parse_or_refuse(body: bytes) -> None:
    """An event, or an EnvelopeError whose message starts with the field at fault; anything else fails."""
    message = ""
    try:
        parse_event(body)
    except EnvelopeError as error:
        message = str(error)
    assert message == "" or message.split(":")[0]


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_are_refused_by_name(body: bytes) -> None:
    """Arbitrary bytes are an event or an EnvelopeError naming the field — nothing else."""
    _parse_or_refuse(body)


@given(json_values)
def test_any_json_document_parses_or_is_refused_by_name(document: object) -> None:
    """Any JSON value at all, as a body: an event or an EnvelopeError."""
    _parse_or_refuse(json.dumps(document).encode())


@given(
    st.fixed_dictionaries(
        {
            "eventId": st.text(max_size=70) | st.integers(),
            "eventType": st.sampled_from(["usage", "ping", ""]),
            "timestamp": st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=5),
            "data": st.fixed_dictionaries(
                {
                    "remoteKeyId": st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=70),
                    "model": st.text(max_size=140),
                    "creditCost": st.integers(min_value=-(2**70), max_value=2**70) | st.floats(),
                }
            ),
        }
    )
)
def test_near_valid_events_are_checked_field_by_field(document: dict[str, object]) -> None:
    """Plausible envelopes with hostile values (past BIGINT, negative, float, too long) never escape."""
    _parse_or_refuse(json.dumps(document).encode())


@given(st.dictionaries(st.sampled_from(["x-webhook-signature", "webhook-id", "webhook-timestamp", "webhook-signature"]),
                       st.text(st.characters(max_codepoint=255), max_size=300)), st.binary(max_size=256))  # fmt: skip
def test_verifiers_refuse_any_forged_headers_without_error(headers: dict[str, str], body: bytes) -> None:
    """Random signature headers are a refusal, never an exception (the reference library can crash)."""
    assert verify_signature(SECRETS, body, Headers(headers), time.time()) is False


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80))
def test_standard_ids_with_dots_or_punctuation_sign_and_verify_as_themselves(msg_id: str) -> None:
    """An id with dots cannot be shifted into the timestamp: only the exact id verifies."""
    now = int(time.time())
    secret = SECRETS[1]
    signature = sign_standard(secret, msg_id, now, b"{}")
    good = Headers({"webhook-id": msg_id, "webhook-timestamp": str(now), "webhook-signature": signature})
    assert verify_signature(SECRETS, b"{}", good, now)
    shifted = Headers({"webhook-id": msg_id + ".", "webhook-timestamp": str(now), "webhook-signature": signature})
    assert not verify_signature(SECRETS, b"{}", shifted, now)


@given(json_values)
@settings(max_examples=200)
def test_any_credit_body_parses_or_is_refused_by_name(document: object) -> None:
    """The credit API's body checker is total as well."""
    message = "parsed"
    try:
        parse_sync_body(document)
    except EnvelopeError as error:
        message = str(error)
    assert message


def test_the_seed_signature_of_another_body_never_verifies() -> None:
    """A signature is bound to its exact bytes."""
    body, other = b'{"a":1}', b'{"a":2}'
    headers = Headers({"x-webhook-signature": hmac.new(SECRET.encode(), other, hashlib.sha256).hexdigest()})
    assert not verify_signature(SECRETS, body, headers, time.time())
