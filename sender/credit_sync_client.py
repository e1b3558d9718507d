"""Python SDK of the credit API (docs/credit-api.md), also installed as ``credit_sync_client``:
``from credit_sync_client import CreditSyncClient``.

A member is named by their Telegram id (an ``int``, as seed 001 does) or by ``Member("user_id", 42)`` /
``Member("email", "ann@example.com")`` (``by_user_id``, ``by_email``) wherever a call takes ``telegram_id``.

Every request is signed afresh with a v2 token, which signs the reference too
(``v2:member:amount:source:timestamp:reference``, the member's identifier as sent), so equal requests
with distinct references made in the same second have distinct tokens, and a copy of a request cannot name
another reference. Only idempotent requests are retried on network errors — those with a reference, and
reads — because only for them can the server tell a retry from a second request.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from creditrelay.schema.credit_holds import capture_token, hold_token, void_token
from creditrelay.schema.credit_sync import GrantFields, Member, sync_token_v2, sync_token_v3
from creditrelay.schema.errors import CreditRelayError
from creditrelay.schema.holds import DEFAULT_TTL_SECONDS

USER_AGENT = "creditrelay-credit-sdk/0.1"
MemberRef = int | Member  # a Telegram id, or a Member naming the user id or email
NO_GRANT: GrantFields = (None, None, None)
__all__ = ["CreditSyncClient", "CreditSyncError", "Member", "SyncResult", "by_email", "by_user_id"]


def by_email(email: str) -> Member:
    return Member("email", email)


def by_user_id(user_id: int) -> Member:
    return Member("user_id", user_id)


def _member(member: MemberRef) -> Member:
    return member if isinstance(member, Member) else Member("telegram_id", member)


class CreditSyncError(CreditRelayError):
    """A read could not be answered (network, authentication, server); the message says which."""


@dataclass(frozen=True)
class SyncResult:
    success: bool
    message: str
    data: dict[str, Any] | None = None
    status_code: int | None = None

    @property
    def balance(self) -> int | None:
        return None if self.data is None else self.data.get("balance")

    @property
    def duplicate(self) -> bool:
        return bool(self.data and self.data.get("duplicate"))


class CreditSyncClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        secret_key: str,
        source: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.secret_key = secret_key
        self.source = source
        self.retries = retries
        self.clock = clock
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"X-Api-Key": api_key, "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "CreditSyncClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _signed(
        self, telegram_id: MemberRef, amount: int, reason: str, reference: str | None, grant: GrantFields = NO_GRANT
    ) -> dict[str, Any]:
        timestamp = int(self.clock())
        member = _member(telegram_id)
        token = (
            sync_token_v2(self.secret_key, member.value, amount, self.source, timestamp, reference)
            if grant == NO_GRANT
            else sync_token_v3(self.secret_key, member.value, amount, self.source, timestamp, reference, grant)
        )
        body: dict[str, Any] = {
            member.field: member.value,
            "amount": amount,
            "source": self.source,
            "reason": reason,
            "timestamp": timestamp,
            "token": token,
        }
        if reference is not None:
            body["external_reference"] = reference
        body |= {
            name: value
            for name, value in zip(("expires_at", "priority", "kind"), grant, strict=True)
            if value is not None
        }
        return body

    def _send(self, request: Callable[[], httpx.Response], idempotent: bool) -> httpx.Response:
        retrying = Retrying(
            retry=retry_if_exception_type(httpx.TransportError),
            stop=stop_after_attempt(self.retries if idempotent else 1),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(request)

    @staticmethod
    def _result(response: httpx.Response) -> SyncResult:
        try:
            answer = response.json()
        except ValueError:
            return SyncResult(False, f"HTTP {response.status_code}: {response.text[:200]}", None, response.status_code)
        return SyncResult(
            bool(answer.get("success")), str(answer.get("message", "")), answer.get("data"), response.status_code
        )

    def sync(
        self,
        telegram_id: MemberRef,
        amount: int,
        reason: str = "",
        reference: str | None = None,
        grant: GrantFields = NO_GRANT,
    ) -> SyncResult:
        """Change the balance by ``amount`` (negative deducts), once per ``reference``; a top-up may carry
        grant terms ``(expires_at Unix seconds, priority, kind)``, signed with the rest (v3)."""

        def post() -> httpx.Response:
            body = self._signed(telegram_id, amount, reason, reference, grant)
            return self.http.post("/api/credits/sync", json=body)

        try:
            return self._result(self._send(post, idempotent=reference is not None))
        except httpx.TransportError as error:
            return SyncResult(False, f"network error: {type(error).__name__}: {error}")

    def add_credits(
        self,
        telegram_id: MemberRef,
        amount: int,
        reason: str = "",
        reference: str | None = None,
        *,
        expires_at: int | None = None,
        priority: int | None = None,
        kind: str | None = None,
    ) -> SyncResult:
        """Add credits; with ``expires_at`` (Unix seconds), ``priority`` or ``kind`` (paid, promo) they are a
        grant, spent before the credits without expiry (docs/grants-and-holds.md)."""
        if amount <= 0:
            raise ValueError("add_credits takes a positive amount")
        return self.sync(telegram_id, amount, reason, reference, (expires_at, priority, kind))

    def deduct_credits(
        self, telegram_id: MemberRef, amount: int, reason: str = "", reference: str | None = None
    ) -> SyncResult:
        if amount <= 0:
            raise ValueError("deduct_credits takes a positive amount (it is deducted)")
        return self.sync(telegram_id, -amount, reason, reference)

    def batch_sync(self, items: Sequence[dict[str, Any]]) -> SyncResult:
        """Items ``{"telegram_id" | "user_id" | "email", "amount", "reason", "reference"?}``; ``.data`` has
        success/failed/results."""
        references = [item.get("reference", item.get("external_reference")) for item in items]

        def post() -> httpx.Response:
            signed = [
                self._signed(_item_member(item), int(item["amount"]), str(item.get("reason", "")), reference)
                for item, reference in zip(items, references, strict=True)
            ]
            return self.http.post("/api/credits/batch", json={"items": signed})

        try:
            return self._result(self._send(post, idempotent=all(r is not None for r in references)))
        except httpx.TransportError as error:
            return SyncResult(False, f"network error: {type(error).__name__}: {error}")

    def _post(self, path: str, body: dict[str, Any], idempotent: bool) -> SyncResult:
        try:
            return self._result(self._send(lambda: self.http.post(path, json=body), idempotent=idempotent))
        except httpx.TransportError as error:
            return SyncResult(False, f"network error: {type(error).__name__}: {error}")

    def hold(self, telegram_id: MemberRef, amount: int, reference: str, ttl: int = DEFAULT_TTL_SECONDS) -> SyncResult:
        """Set ``amount`` credits aside for ``ttl`` seconds (a long job about to start), once per
        ``reference``; ``.data["hold_id"]``, or ``success`` false (402) when the member's available credits
        do not cover it."""
        member = _member(telegram_id)
        timestamp = int(self.clock())
        token = hold_token(self.secret_key, member.value, amount, self.source, timestamp, reference, ttl)
        body = {member.field: member.value, "amount": amount, "source": self.source, "timestamp": timestamp,
                "token": token, "reference": reference, "ttl": ttl}  # fmt: skip
        return self._post("/api/credits/holds", body, idempotent=True)

    def capture(self, hold_id: int, amount: int) -> SyncResult:
        """Charge what the job cost, at most what was held, once; the rest is released."""
        timestamp = int(self.clock())
        token = capture_token(self.secret_key, hold_id, amount, self.source, timestamp)
        body = {"amount": amount, "source": self.source, "timestamp": timestamp, "token": token}
        return self._post(f"/api/credits/holds/{hold_id}/capture", body, idempotent=True)

    def void(self, hold_id: int) -> SyncResult:
        """Give the held credits back (the job did not run)."""
        timestamp = int(self.clock())
        token = void_token(self.secret_key, hold_id, self.source, timestamp)
        body = {"source": self.source, "timestamp": timestamp, "token": token}
        return self._post(f"/api/credits/holds/{hold_id}/void", body, idempotent=True)

    def _read(self, path: str, params: dict[str, int | str] | None = None) -> dict[str, Any] | None:
        try:
            response = self._send(lambda: self.http.get(path, params=params), idempotent=True)
        except httpx.TransportError as error:
            raise CreditSyncError(f"network error: {type(error).__name__}: {error}") from None
        if response.status_code == 404:
            return None
        result = self._result(response)
        if not result.success or result.data is None:
            raise CreditSyncError(f"HTTP {response.status_code}: {result.message}")
        return result.data

    def get_balance(self, telegram_id: MemberRef) -> dict[str, Any] | None:
        """``{"telegram_id" (or "user_id", "email"), "credits", "nickname"}``, or None when the user is not
        registered."""
        member = _member(telegram_id)
        if member.field == "telegram_id":
            return self._read(f"/api/credits/balance/{member.value}")
        return self._read("/api/credits/balance", {member.field: member.value})

    def get_records(self, telegram_id: MemberRef, limit: int = 20) -> dict[str, Any] | None:
        """`{"telegram_id" (or "user_id", "email"), "records": [{"change", "reason", "balance", "source",
        "created_at", …}]}`, newest first."""
        member = _member(telegram_id)
        if member.field == "telegram_id":
            return self._read(f"/api/credits/records/{member.value}", {"limit": limit})
        return self._read("/api/credits/records", {member.field: member.value, "limit": limit})


def _item_member(item: dict[str, Any]) -> MemberRef:
    """The member a batch item names (``telegram_id``, ``user_id`` or ``email``)."""
    if item.get("user_id") is not None:
        return by_user_id(int(item["user_id"]))
    if item.get("email") is not None:
        return by_email(str(item["email"]))
    return int(item["telegram_id"])
