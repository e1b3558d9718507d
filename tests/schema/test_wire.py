"""The event envelope: what is accepted, what is refused, and how the refusal names the field."""

import json

import pytest

from creditrelay.schema.wire import EnvelopeError, canonical_hash, parse_event
from tests.support.signing import encode, usage_event


def test_seed_event_parses_with_defaults_and_extras_kept() -> None:
    """Token counts default to 0 and unknown fields stay in the stored payload."""
    event = usage_event("evt-1", request_id="req-9", channel="c7")
    del event["data"]["promptTokens"]
    parsed = parse_event(encode(event))
    assert parsed.usage is not None
    assert parsed.usage.promptTokens == 0
    assert parsed.usage_key == "req:req-9"
    assert json.loads(parsed.payload)["channel"] == "c7"


def test_usage_key_falls_back_to_the_event_id() -> None:
    """Without a requestId the usage is identified by its event id."""
    assert parse_event(encode(usage_event("evt-2"))).usage_key == "evt:evt-2"


def test_string_remote_key_ids_are_accepted() -> None:
    """A gateway key id may be an integer or a string."""
    parsed = parse_event(encode(usage_event("evt-3", key="sk-abc")))
    assert parsed.usage is not None
    assert parsed.usage.remoteKeyId == "sk-abc"


def test_canonical_hash_ignores_order_and_spacing() -> None:
    """Two serialisations of one document hash alike; another value does not."""
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash(json.loads('{ "b":[1,2], "a":1 }'))
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "body: not UTF-8"),
        (b'{"a":1,"a":2}', "body: duplicate key 'a'"),
        (b'{"a":NaN}', "body: NaN is not a JSON number"),
        (b'{"a":Infinity}', "body: Infinity is not a JSON number"),
        (b"[" * 100_000, "body: JSON nested too deeply"),
        (b'{"n":' + b"9" * 5000 + b"}", "body: a number with too many digits"),
        (b"", "body: not valid JSON"),
        (b'"text"', "body: must be a JSON object"),
        (encode({"eventId": "e", "eventType": "usage", "timestamp": 10**13}), "timestamp"),
        (encode({"eventId": "e", "eventType": "usage", "timestamp": True}), "timestamp"),
        (encode(usage_event("e", key=True)), "data.remoteKeyId"),
        (encode(usage_event("e", key="")), "data.remoteKeyId"),
        (encode(usage_event("e", request_id="")), "data.requestId"),
    ],
)
def test_invalid_bodies_name_the_problem(body: bytes, message: str) -> None:
    """Each invalid body is refused with a message that starts with the field at fault."""
    with pytest.raises(EnvelopeError) as caught:
        parse_event(body)
    assert str(caught.value).startswith(message)
