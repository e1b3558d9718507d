"""The two webhook signature schemes (docs/webhooks.md), for signing and for verifying.

- the seed's scheme: ``X-Webhook-Signature`` = lowercase hex HMAC-SHA256 of the raw body, keyed with the
  secret's UTF-8 bytes (what ``openssl dgst -sha256 -hmac "$SECRET"`` prints);
- Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` (``v1,<base64>`` entries
  separated by spaces) over ``id.timestamp.body``; the key is the base64 part of a ``whsec_`` secret, else
  the secret's UTF-8 bytes.

Every comparison of a signature is constant-time (``hmac.compare_digest``).
"""

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from creditrelay.schema.errors import SettingsError

SEED_HEADER = "x-webhook-signature"
STD_ID_HEADER = "webhook-id"
STD_TIMESTAMP_HEADER = "webhook-timestamp"
STD_SIGNATURE_HEADER = "webhook-signature"
TIMESTAMP_TOLERANCE_SECONDS = 300
MIN_SECRET_LENGTH = 32
STANDARD_PREFIX = "whsec_"

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_ID_LENGTH = 256
_MAX_SIGNATURE_HEADER = 2048  # room for a few v1 entries during a key rotation; more is refused unread
_MAX_SIGNATURES = 8


class SecretError(SettingsError):
    """A configured secret is unusable; the message says why without repeating the secret."""


@dataclass(frozen=True, repr=False)
class WebhookSecret:
    """One shared secret with the two keys derived from it."""

    text: str
    standard_key: bytes

    @property
    def seed_key(self) -> bytes:
        return self.text.encode()

    def __repr__(self) -> str:
        return "WebhookSecret(<redacted>)"

    @classmethod
    def parse(cls, text: str) -> "WebhookSecret":
        if text.startswith(STANDARD_PREFIX):
            try:
                key = base64.b64decode(text.removeprefix(STANDARD_PREFIX), validate=True)
            except binascii.Error:
                raise SecretError("a whsec_ secret must be followed by base64") from None
            if len(key) < 24:
                raise SecretError("a whsec_ secret must hold at least 24 bytes of key")
            return cls(text, key)
        if len(text) < MIN_SECRET_LENGTH:
            raise SecretError(f"each secret must be at least {MIN_SECRET_LENGTH} characters or a whsec_ secret")
        return cls(text, text.encode())


def parse_secrets(value: str) -> tuple[WebhookSecret, ...]:
    """Space-separated secrets, all accepted for verification; the first one signs."""
    secrets = tuple(WebhookSecret.parse(part) for part in value.split())
    if not secrets:
        raise SecretError("at least one secret is required")
    return secrets


def sign_seed(secret: WebhookSecret, body: bytes) -> str:
    return hmac.new(secret.seed_key, body, hashlib.sha256).hexdigest()


def _standard_digest(secret: WebhookSecret, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(secret.standard_key, signed, hashlib.sha256).digest()


def sign_standard(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = _standard_digest(secret, msg_id, str(timestamp), body)
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    secret: WebhookSecret,
    msg_id: str,
    timestamp: int,
    body: bytes,
    *,
    seed: bool = True,
    standard: bool = True,
) -> dict[str, str]:
    """The headers a sender puts on one attempt (the Standard timestamp is the attempt's own)."""
    headers: dict[str, str] = {}
    if seed:
        headers["X-Webhook-Signature"] = sign_seed(secret, body)
    if standard:
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign_standard(secret, msg_id, timestamp, body)
    return headers


def _verify_seed(secrets: Sequence[WebhookSecret], body: bytes, provided: str) -> bool:
    if len(provided) > 128:
        return False
    given = provided.strip().lower().encode("utf-8", "replace")
    # Every secret is tried so the time taken does not tell which one matched.
    matches = [hmac.compare_digest(sign_seed(s, body).encode(), given) for s in secrets]
    return any(matches)


def _candidate_signatures(header: str) -> list[bytes]:
    if len(header) > _MAX_SIGNATURE_HEADER:
        return []
    found = []
    for entry in header.split(" ")[:_MAX_SIGNATURES]:
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return found


def _verify_standard(secrets: Sequence[WebhookSecret], body: bytes, headers: Mapping[str, str], now: float) -> bool:
    msg_id = headers.get(STD_ID_HEADER, "")
    timestamp = headers.get(STD_TIMESTAMP_HEADER, "")
    if not msg_id or len(msg_id) > _MAX_ID_LENGTH or not _TIMESTAMP.fullmatch(timestamp):
        return False
    if abs(now - int(timestamp)) > TIMESTAMP_TOLERANCE_SECONDS:
        return False
    candidates = _candidate_signatures(headers.get(STD_SIGNATURE_HEADER, ""))
    matched = False
    for secret in secrets:
        expected = _standard_digest(secret, msg_id, timestamp, body)
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def verify_signature(secrets: Sequence[WebhookSecret], body: bytes, headers: Mapping[str, str], now: float) -> bool:
    """True when either scheme's headers carry a valid signature of ``body`` under one of ``secrets``.

    ``headers`` must look names up case-insensitively (Starlette's ``Headers`` does).
    """
    seed = headers.get(SEED_HEADER)
    if seed is not None and _verify_seed(secrets, body, seed):
        return True
    if STD_SIGNATURE_HEADER in headers:
        return _verify_standard(secrets, body, headers, now)
    return False
