"""Asking creditrelay whether a gateway key may be served (``GET /api/gateway/allowance/{remoteKeyId}``,
docs/enforcement.md), or to hold credits for one call (``POST /api/gateway/holds``, and ``DELETE`` to give
them back: docs/grants-and-holds.md), from a gateway's event loop: the answers kept a few seconds, one ask per key at a
time, every ask bounded in time, and every failure an answer of its own ("cannot say"), never an error.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import structlog

log = structlog.get_logger()


@dataclass
class _Answer:
    allowed: bool | None  # None: creditrelay could not say
    until: float


@dataclass
class Allowance:
    """creditrelay's word on keys, kept ``keep_seconds`` (a failure to ask, one second from when it
    failed). One ask per key at a time: the calls that arrive meanwhile wait for its answer."""

    url: str  # creditrelay's base URL
    token: str  # its GATEWAY_TOKEN
    keep_seconds: float = 5.0  # how long an answer is kept
    timeout: float = 2.0  # the longest one ask may take, in all
    clock: Any = time.monotonic
    answers: dict[str, _Answer] = field(default_factory=dict)
    _asking: dict[str, "asyncio.Future[bool | None]"] = field(default_factory=dict)
    _client: tuple[Any, httpx.AsyncClient] | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:  # a client belongs to its event loop
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout)
            self._client = (loop, client)
        return self._client[1]

    async def allowed(self, key: str) -> bool | None:
        """True or False as creditrelay says (a key it does not know: False), None when it cannot be asked."""
        kept = self.answers.get(key)
        if kept is not None and kept.until > self.clock():
            return kept.allowed
        asking = self._asking.get(key)
        if asking is None or asking.get_loop() is not asyncio.get_running_loop():
            asking = asyncio.ensure_future(self._ask(key))
            self._asking[key] = asking
            asking.add_done_callback(
                lambda done: self._asking.pop(key, None) if self._asking.get(key) is done else None
            )
        return await asyncio.shield(asking)

    async def _ask(self, key: str) -> bool | None:
        try:  # the whole ask within the timeout, however slowly an answer trickles in
            reply = await asyncio.wait_for(
                self._http().get(f"/api/gateway/allowance/{quote(key, safe='')}"), self.timeout
            )
            verdict = _verdict(reply, key)
        except (httpx.HTTPError, TimeoutError, ValueError, PermissionError) as error:
            level = log.error if isinstance(error, PermissionError) else log.warning
            level("allowance_unavailable", error=str(error)[:200] or type(error).__name__)
            self._cannot_say(key)
            return None
        except Exception:  # whatever else went wrong, the fail mode decides: never the call's error
            log.error("allowance_failed", exc_info=True)
            self._cannot_say(key)
            return None
        self.answers[key] = _Answer(verdict, self.clock() + self.keep_seconds)
        return verdict

    async def hold(self, key: str, amount: int, ttl_seconds: int) -> tuple[bool | None, int | None]:
        """Ask creditrelay to hold ``amount`` credits of the key's member (``POST /api/gateway/holds``):
        ``(True, holdId)`` when held, ``(False, None)`` when the available credits do not cover it (or
        creditrelay does not know the key), ``(None, None)`` when it cannot be asked. Never kept: each
        call holds its own."""
        body = {"remoteKeyId": key, "amount": amount, "ttlSeconds": ttl_seconds}
        try:
            reply = await asyncio.wait_for(self._http().post("/api/gateway/holds", json=body), self.timeout)
            if reply.status_code == 201:
                hold_id = reply.json()["data"]["holdId"]
                if isinstance(hold_id, int) and not isinstance(hold_id, bool):
                    return True, hold_id
            return _verdict(reply, key), None
        except (httpx.HTTPError, TimeoutError, ValueError, KeyError, TypeError, PermissionError) as error:
            level = log.error if isinstance(error, PermissionError) else log.warning
            level("hold_unavailable", error=str(error)[:200] or type(error).__name__)
        except Exception:  # whatever else went wrong, the fail mode decides: never the call's error
            log.error("hold_failed", exc_info=True)
        return None, None

    async def release(self, hold_id: int) -> None:
        """Void a hold (``DELETE /api/gateway/holds/{holdId}``); a failure is logged, and the hold expires
        by itself."""
        try:
            reply = await asyncio.wait_for(self._http().delete(f"/api/gateway/holds/{hold_id}"), self.timeout)
            if reply.status_code != 200:
                log.warning("hold_not_released", hold_id=hold_id, status=reply.status_code)
        except Exception as error:  # noqa: BLE001 - never the call's error: the hold runs out anyway
            log.warning("hold_not_released", hold_id=hold_id, error=str(error)[:200] or type(error).__name__)

    def _cannot_say(self, key: str) -> None:
        self.answers[key] = _Answer(None, self.clock() + 1.0)


def _verdict(reply: httpx.Response, key: str) -> bool:
    """The allowance endpoint's answer: ``data.allowed`` as JSON's true or false, or, for a key creditrelay
    does not know, its own 404, which names that key (``remoteKeyId``). Anything else — another 404 (a
    wrong ``CREDITRELAY_URL``: creditrelay's answer for a path it does not serve is ``"success": false``
    too), a refused token, a value that is not a boolean — is no answer."""
    if reply.status_code in (401, 403):
        raise PermissionError(f"creditrelay refused GATEWAY_TOKEN (HTTP {reply.status_code}): check the setting")
    answer = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else None
    if not isinstance(answer, dict):
        raise ValueError(f"HTTP {reply.status_code}, not creditrelay's allowance answer (is CREDITRELAY_URL right?)")
    if reply.status_code == 404 and answer.get("success") is False and answer.get("remoteKeyId") == key:
        return False
    data = answer.get("data")
    allowed = data.get("allowed") if reply.status_code in (200, 201) and isinstance(data, dict) else None
    if not isinstance(allowed, bool):
        raise ValueError(f"HTTP {reply.status_code} without a true or false data.allowed")
    return allowed
