"""The usage event envelope (docs/webhooks.md): parse raw bytes into a checked event, or say which field is wrong.

Parsing is strict on purpose: the body must be UTF-8 JSON with no duplicate keys and no NaN/Infinity,
integers are JSON integers (not ``15.0``, not ``"15"``, not ``true``) within BIGINT, and every failure
names the field. Unknown extra fields are kept.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from creditrelay.schema.errors import InvalidInput
from creditrelay.schema.money import MAX_AMOUNT

BIGINT_MAX = 2**63 - 1
USAGE_EVENT = "usage"
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime can hold
MAX_MODEL = 128  # characters of a model name
MAX_REQUEST_ID = 128  # characters of a gateway request id

Count = Annotated[int, Field(ge=0, le=BIGINT_MAX)]
Credits = Annotated[int, Field(ge=0, le=MAX_AMOUNT)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64)]
RemoteKeyId = Annotated[int, Field(ge=0, le=BIGINT_MAX)] | Identifier


class EnvelopeError(InvalidInput):
    """The body is not a valid event; ``str(error)`` names the field and the problem."""


class UsageData(BaseModel):
    """The ``data`` of a ``usage`` event."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    remoteKeyId: RemoteKeyId
    model: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MODEL)]
    creditCost: Credits
    promptTokens: Count = 0
    completionTokens: Count = 0
    totalTokens: Count = 0
    requestId: Annotated[str, StringConstraints(min_length=1, max_length=MAX_REQUEST_ID)] | None = None
    userId: RemoteKeyId | None = None
    holdId: Annotated[int, Field(ge=1, le=BIGINT_MAX)] | None = None  # the credit hold it settles


class _Envelope(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    eventId: Identifier
    eventType: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    timestamp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP)]
    data: dict[str, Any] = Field(default_factory=dict)


class _UsageEnvelope(_Envelope):
    """A ``usage`` event, checked with its ``data`` in one validator call (the hot path's)."""

    data: UsageData = Field(default_factory=dict, validate_default=True)  # type: ignore[assignment]


@dataclass(slots=True)
class Event:
    """A parsed event with the exact text it arrived as and the SHA-256 of those bytes."""

    event_id: str
    event_type: str
    timestamp: int
    usage: UsageData | None
    payload: str
    payload_hash: str
    document: dict[str, Any]

    def same_as(self, payload: str) -> bool:
        """Whether ``payload`` (an earlier delivery's text) is this event: equal canonical JSON, so a
        re-serialised body (other key order, other white space) is the same event."""
        try:
            earlier = parse_json(payload.encode())
        except EnvelopeError:
            return False
        return canonical_hash(earlier) == canonical_hash(self.document)

    @property
    def usage_key(self) -> str:
        """What makes a usage unique: its gateway request id when it has one, else its event id."""
        if self.usage is not None and self.usage.requestId is not None:
            return usage_key_for_request(self.usage.requestId)
        return f"evt:{self.event_id}"


def plain_int(text: str, maximum: int = BIGINT_MAX) -> int | None:
    """A whole number from 0 to ``maximum`` written in ASCII digits alone, or None. (``str.isdigit`` also
    takes "²" and Arabic-Indic digits, which ``int`` refuses or reads as digits: neither is what we meant.)"""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None


def usage_key_for_request(request_id: str) -> str:
    return f"req:{request_id}"


def _reject_constant(name: str) -> Any:
    raise EnvelopeError(f"body: {name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise EnvelopeError(f"body: duplicate key {key!r}")
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a repeated key")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
# Finds where an item of a batch ends, whatever the strict rules think of it (its own answer says that)
_BOUNDS = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str)


@dataclass(frozen=True)
class BadItem:
    """An item of a batch that is well-formed JSON text but not what a body may be: why, as
    ``parse_json`` would have said it of the item alone."""

    message: str


def _field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    # Union members show up in the location as type tags ("constrained-int", "str"); they are not fields.
    parts = [str(part) for part in (prefix, *loc) if part != "" and str(part) not in _TYPE_TAGS]
    return ".".join(parts) or "body"


_TYPE_TAGS = {"int", "str", "constrained-int", "constrained-str"}


def describe(error: ValidationError, prefix: str = "") -> str:
    """The first problem of a validation error, as "field.path: message"."""
    errors = error.errors(include_url=False)
    where = _field_path(prefix, errors[0]["loc"])
    messages = [e["msg"] for e in errors if _field_path(prefix, e["loc"]) == where]
    return f"{where}: {' or '.join(dict.fromkeys(messages))}"


def _nul_at(value: Any, where: str = "") -> str | None:
    """The path of the first string of ``value`` (a key, or a value) holding a NUL character, or None."""
    if isinstance(value, str):
        return (where or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if "\x00" in key:
                return where or "body"
            if (found := _nul_at(item, path)) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_at(item, f"{where}.{index}" if where else str(index))) is not None:
                return found
    return None


def _refuse_nul(value: Any) -> None:
    if (where := _nul_at(value)) is not None:
        where = where.replace("\x00", "\\u0000")
        raise EnvelopeError(f"{where}: a NUL character (\\u0000) is not text every database can store")


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, no lone surrogates and no NUL characters
    (text a database cannot store: MySQL and PostgreSQL refuse the one, PostgreSQL the other)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("body: not UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise EnvelopeError(f"body: not valid JSON ({error.msg} at position {error.pos})") from None
    except RecursionError:
        raise EnvelopeError("body: JSON nested too deeply") from None
    except EnvelopeError:  # the strict rules' own words (a repeated key, NaN)
        raise
    except ValueError:  # an integer past Python's digit limit
        raise EnvelopeError("body: a number with too many digits") from None
    _refuse_deep(text, value)
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(value):  # fine as half of a pair, not alone
        raise EnvelopeError("body: an unpaired surrogate escape (\\uD800-\\uDFFF) is not Unicode text")
    if "\\u0000" in text:  # the escape, or a backslash's followed by "u0000": the value says which
        _refuse_nul(value)
    return value


MAX_DEPTH = 64  # arrays and objects inside one another; no body of ours needs more than a few


def _refuse_deep(text: str, value: Any) -> None:
    """Refuse JSON nested deeper than ``MAX_DEPTH`` (so no later step that walks it — the strict checks,
    validation, canonical JSON — can run out of stack). Only a text with that many brackets is walked."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise EnvelopeError(f"body: JSON nested deeper than {MAX_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Strict JSON with an object at the top."""
    value = parse_json(body)
    if not isinstance(value, dict):
        raise EnvelopeError("body: must be a JSON object")
    return value


_SPACE = " \t\n\r"


def split_array(body: bytes, max_items: int) -> list[tuple[bytes, Any]]:
    """The items of a JSON array body, each exactly as sent (so an event in a batch is byte for byte the
    event a single delivery would carry) with its parsed value, read as strictly as ``parse_json`` reads a
    body. The array's shape is checked here; what each item is, by its reader: one bad event does not
    spoil the others."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("body: not UTF-8") from None
    size = len(text)

    def skip(index: int) -> int:
        while index < size and text[index] in _SPACE:
            index += 1
        return index

    index = skip(0)
    if index >= size or text[index] != "[":
        raise EnvelopeError("body: must be a JSON array of events")
    index = skip(index + 1)
    items: list[tuple[bytes, Any]] = []
    if index < size and text[index] == "]":
        raise EnvelopeError("body: an empty batch")
    while True:
        if len(items) == max_items:
            raise EnvelopeError(f"body: at most {max_items} events in a batch")
        value: Any
        try:
            value, end = _DECODER.raw_decode(text, index)
            _refuse_deep(text[index:end], value)
        except (EnvelopeError, ValueError, RecursionError) as error:  # strict rules: this item's own answer
            value, end = _item_error(error), _item_end(text, index)
        items.append((text[index:end].encode("utf-8"), value))
        index = skip(end)
        if index < size and text[index] == ",":
            index = skip(index + 1)
            continue
        if index < size and text[index] == "]" and skip(index + 1) == size:
            return items
        raise EnvelopeError(f"body: not valid JSON (expected ',' or ']' at position {index})")


def _item_error(error: Exception) -> BadItem:
    if isinstance(error, EnvelopeError):
        return BadItem(str(error))
    if isinstance(error, RecursionError):
        return BadItem("body: JSON nested too deeply")
    if isinstance(error, json.JSONDecodeError):
        return BadItem(f"body: not valid JSON ({error.msg})")
    return BadItem("body: a number with too many digits")


def _item_end(text: str, index: int) -> int:
    """Where the item at ``index`` ends; the whole batch is refused when it is not JSON text at all."""
    try:
        return int(_BOUNDS.raw_decode(text, index)[1])
    except json.JSONDecodeError as error:
        raise EnvelopeError(f"body: not valid JSON ({error.msg} at position {error.pos})") from None
    except RecursionError:  # deeper than the decoder goes: found by counting brackets instead
        return _bracketed_end(text, index)


def _bracketed_end(text: str, index: int) -> int:
    """Where the array or object starting at ``index`` ends, brackets in strings not counted (a loop over
    the characters: only for an item too deep to decode, already refused for that)."""
    depth, in_string, escaped = 0, False, False
    for position in range(index, len(text)):
        character = text[position]
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
        elif character in "]}":
            depth -= 1
            if depth == 0:
                return position + 1
    raise EnvelopeError("body: not valid JSON (an array or object is not closed)")


def canonical_hash(value: Any) -> str:
    """SHA-256 of the value's canonical JSON: key order and white space do not change it."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_event(body: bytes) -> Event:
    """Parse and check one event body."""
    return event_of(parse_json_object(body), body)


def check_item(item: bytes, value: Any) -> None:
    """Raise what ``parse_json`` would have raised of ``item`` alone, for an item ``split_array`` read."""
    if isinstance(value, BadItem):
        raise EnvelopeError(value.message)
    if (b"\\ud" in item or b"\\uD" in item) and _has_lone_surrogate(value):
        raise EnvelopeError("body: an unpaired surrogate escape (\\uD800-\\uDFFF) is not Unicode text")
    if b"\\u0000" in item:
        _refuse_nul(value)


def event_from_item(item: bytes, value: Any) -> Event:
    """``parse_event`` for an item ``split_array`` has parsed already: the same checks, the same messages,
    without reading the JSON twice."""
    check_item(item, value)
    if not isinstance(value, dict):
        raise EnvelopeError("body: must be a JSON object")
    return event_of(value, item)


def event_of(document: dict[str, Any], body: bytes) -> Event:
    """Check an event already parsed from ``body`` (strict JSON, as ``parse_json`` reads it)."""
    is_usage = document.get("eventType") == USAGE_EVENT
    try:
        envelope = (_UsageEnvelope if is_usage else _Envelope).model_validate(document)
    except ValidationError as error:
        raise EnvelopeError(describe(error)) from None
    usage = envelope.data if isinstance(envelope, _UsageEnvelope) else None
    return Event(
        envelope.eventId,
        envelope.eventType,
        envelope.timestamp,
        usage,
        body.decode("utf-8"),
        hashlib.sha256(body).hexdigest(),
        document,
    )


def web_url(text: str) -> bool:
    """An http:// or https:// URL with a host, a valid port if any, and no space or control character."""
    if not text.isprintable() or any(character.isspace() for character in text):
        return False
    try:
        parts = urlsplit(text)
        _ = parts.port  # a port out of range raises too
    except ValueError:  # a malformed host or port
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
