"""LiteLLM → creditrelay: every successful call a usage event in the durable outbox, and a pre-call hook
that refuses a key creditrelay has suspended.

``callback`` (made from the environment when LiteLLM's proxy loads it: ``litellm_settings: callbacks:
creditrelay.sender.litellm.callback``) is a ``CustomLogger``. Its success hook turns LiteLLM's standard
logging object into a usage event (``eventId`` and ``requestId``: the call's ``litellm_call_id``;
``remoteKeyId``: the virtual key's hash, or its alias or user id by ``CREDITRELAY_KEY_FIELD``;
``creditCost``: ``ceil(response_cost * CREDITS_PER_USD)``) and commits it to the outbox, off the event
loop, before the hook returns; ``creditrelay relay`` delivers it. Nothing it does can fail or slow the
call: each failure is logged and counted (``creditrelay_litellm_events_total``), never raised. The
pre-call hook asks creditrelay's allowance endpoint, keeps the answer a few seconds, and raises LiteLLM's
own budget error for a suspended key; when creditrelay cannot be asked it lets the call through
(``CREDITRELAY_FAIL_MODE=open``, the default) or refuses it (``closed``).

Needs the ``litellm`` extra (``pip install 'creditrelay[litellm]'``): nothing else of creditrelay imports
this module.
"""

import asyncio
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx
import litellm
import structlog
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyErrorTypes, ProxyException, UserAPIKeyAuth
from prometheus_client import Counter

from creditrelay.schema.errors import SettingsError
from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.wire import EnvelopeError, parse_event
from creditrelay.sender.events import encode_event, usage_event
from creditrelay.sender.outbox import DEFAULT_OUTBOX_URL, Outbox

log = structlog.get_logger()
EVENTS = Counter("creditrelay_litellm_events", "LiteLLM calls the callback turned into usage events", ["outcome"])
# CREDITRELAY_KEY_FIELD -> where the pre-call hook finds the same key on LiteLLM's UserAPIKeyAuth
KEY_FIELDS = {"user_api_key_hash": "token", "user_api_key_alias": "key_alias", "user_api_key_user_id": "user_id"}


@dataclass(frozen=True)
class LiteLLMSettings:
    credits_per_usd: Decimal
    outbox_url: str = DEFAULT_OUTBOX_URL
    key_field: str = "user_api_key_hash"
    zero_cost_credits: int = 0  # credits for a call LiteLLM priced at 0, or could not price
    cache_hit_credits: int | None = None  # credits for a cache hit; None: as LiteLLM priced it
    receiver_url: str | None = None  # creditrelay, for the pre-call hook (None: no hook)
    gateway_token: str | None = None
    fail_closed: bool = False
    allowance_seconds: float = 5.0  # how long an answer of the allowance endpoint is kept
    timeout: float = 2.0  # seconds the hook waits for creditrelay

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "LiteLLMSettings":
        """The settings of ``docs/litellm.md``; a bad value is a ``SettingsError`` naming its variable."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        rate = get("CREDITS_PER_USD")
        if rate is None:
            raise SettingsError("CREDITS_PER_USD is not set: how many credits one US dollar of LiteLLM's cost is")
        key_field = get("CREDITRELAY_KEY_FIELD") or "user_api_key_hash"
        if key_field not in KEY_FIELDS:
            raise SettingsError(f"CREDITRELAY_KEY_FIELD must be one of {', '.join(KEY_FIELDS)}")
        fail_mode = (get("CREDITRELAY_FAIL_MODE") or "open").lower()
        if fail_mode not in ("open", "closed"):
            raise SettingsError("CREDITRELAY_FAIL_MODE must be open or closed")
        receiver, token = get("CREDITRELAY_URL"), get("GATEWAY_TOKEN")
        if receiver is not None and not receiver.startswith(("http://", "https://")):
            raise SettingsError("CREDITRELAY_URL must be creditrelay's http:// or https:// base URL")
        if (receiver is None) != (token is None):
            raise SettingsError("CREDITRELAY_URL and GATEWAY_TOKEN go together (the pre-call hook needs both)")
        cache_hit = get("CREDITRELAY_CACHE_HIT_CREDITS")
        return cls(
            credits_per_usd=_decimal("CREDITS_PER_USD", rate),
            outbox_url=get("CREDITRELAY_OUTBOX_URL") or DEFAULT_OUTBOX_URL,
            key_field=key_field,
            zero_cost_credits=_credits("CREDITRELAY_ZERO_COST_CREDITS", get("CREDITRELAY_ZERO_COST_CREDITS") or "0"),
            cache_hit_credits=None if cache_hit is None else _credits("CREDITRELAY_CACHE_HIT_CREDITS", cache_hit),
            receiver_url=receiver,
            gateway_token=token,
            fail_closed=fail_mode == "closed",
            allowance_seconds=float(
                _decimal("CREDITRELAY_ALLOWANCE_SECONDS", get("CREDITRELAY_ALLOWANCE_SECONDS") or "5")
            ),
        )


def _decimal(name: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise SettingsError(f"{name} must be a number, not {text[:40]!r}") from None
    if not value.is_finite() or value < 0 or value > MAX_AMOUNT:
        raise SettingsError(f"{name} must be a number from 0 to {MAX_AMOUNT}")
    return value


def _credits(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_AMOUNT:
        raise SettingsError(f"{name} must be a whole number of credits from 0 to {MAX_AMOUNT}")
    return int(text)


class Skipped(Exception):
    """A call that makes no usage event: the reason, for the log."""


def credits_of(logged: Mapping[str, Any], settings: LiteLLMSettings) -> int:
    """The credits a call costs: LiteLLM's ``response_cost`` (US dollars) times the rate, rounded up, so a
    fraction of a credit is never given away; a cache hit or a call priced at 0 as configured."""
    if logged.get("cache_hit") and settings.cache_hit_credits is not None:
        return settings.cache_hit_credits
    cost = logged.get("response_cost")
    if cost is None or cost == 0:
        return settings.zero_cost_credits
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or cost < 0:
        raise Skipped(f"response_cost {cost!r} is not a cost")
    credits = math.ceil(Decimal(repr(cost)) * settings.credits_per_usd)
    if credits > MAX_AMOUNT:
        raise Skipped(f"response_cost {cost!r} is {credits} credits, past the {MAX_AMOUNT} one usage may cost")
    return credits


def event_of(logged: Mapping[str, Any], settings: LiteLLMSettings) -> tuple[str, bytes]:
    """The usage event of one logged call (its id, its exact bytes), checked as the receiver will check it."""
    call_id, metadata = logged.get("litellm_call_id"), logged.get("metadata") or {}
    if not isinstance(call_id, str) or not call_id:
        raise Skipped("no litellm_call_id")
    key = metadata.get(settings.key_field)
    if not isinstance(key, str) or not key:
        raise Skipped(f"no {settings.key_field} in the call's metadata (a call without a virtual key)")
    user = metadata.get("user_api_key_user_id")
    event = usage_event(
        remote_key_id=key,
        model=str(logged.get("model") or "unknown"),
        credit_cost=credits_of(logged, settings),
        prompt_tokens=int(logged.get("prompt_tokens") or 0),
        completion_tokens=int(logged.get("completion_tokens") or 0),
        request_id=call_id,
        user_id=user if isinstance(user, str) and 0 < len(user) <= 64 else None,
        timestamp=int(logged.get("startTime") or time.time()),
        event_id=call_id,
    )
    body = encode_event(event)
    try:
        parse_event(body)
    except EnvelopeError as error:
        raise Skipped(f"the usage event would be refused: {error}") from None
    return call_id, body


@dataclass
class _Answer:
    allowed: bool | None  # None: creditrelay could not say
    until: float


@dataclass
class Allowance:
    """creditrelay's word on keys, kept ``settings.allowance_seconds`` (a failure to ask, one second)."""

    settings: LiteLLMSettings
    clock: Any = time.monotonic
    answers: dict[str, _Answer] = field(default_factory=dict)
    _client: tuple[Any, httpx.AsyncClient] | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:  # a client belongs to its event loop
            assert self.settings.receiver_url is not None
            headers = {"Authorization": f"Bearer {self.settings.gateway_token}", "Accept": "application/json"}
            client = httpx.AsyncClient(
                base_url=self.settings.receiver_url, headers=headers, timeout=self.settings.timeout
            )
            self._client = (loop, client)
        return self._client[1]

    async def allowed(self, key: str) -> bool | None:
        """True or False as creditrelay says (a key it does not know: False), None when it cannot be asked."""
        now = self.clock()
        kept = self.answers.get(key)
        if kept is not None and kept.until > now:
            return kept.allowed
        try:
            reply = await self._http().get(f"/api/gateway/allowance/{quote(key, safe='')}")
            if reply.status_code == 404:
                verdict: bool | None = False
            elif reply.status_code == 200:
                verdict = bool(reply.json()["data"]["allowed"])
            else:
                raise ValueError(f"HTTP {reply.status_code}")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            log.warning("allowance_unavailable", error=str(error)[:200])
            self.answers[key] = _Answer(None, now + 1.0)
            return None
        self.answers[key] = _Answer(verdict, now + self.settings.allowance_seconds)
        return verdict


class CreditRelayLogger(CustomLogger):
    """LiteLLM's callback: usage events into the outbox, suspended keys refused before their call."""

    def __init__(self, settings: LiteLLMSettings, outbox: Outbox | None = None) -> None:
        super().__init__()
        self.settings = settings
        self._outbox = outbox
        self._opening = threading.Lock()
        self.allowance = Allowance(settings)

    @property
    def outbox(self) -> Outbox:
        """Opened on the first event (not when LiteLLM imports the module), by one thread: the first events
        of a busy proxy arrive together."""
        if self._outbox is None:
            with self._opening:
                if self._outbox is None:
                    self._outbox = Outbox.open(self.settings.outbox_url)
        return self._outbox

    def record(self, kwargs: Mapping[str, Any]) -> str:
        """Commit the call's usage event; what became of it (``queued``, ``duplicate``, ``skipped``,
        ``failed``), counted. Never raises: the call it describes has been served."""
        try:
            event_id, body = event_of(kwargs.get("standard_logging_object") or {}, self.settings)
            outcome = "queued" if self.outbox.enqueue([(event_id, body)]) else "duplicate"
        except Skipped as reason:
            log.warning("litellm_usage_skipped", reason=str(reason))
            outcome = "skipped"
        except Exception:
            log.error("litellm_usage_not_recorded", exc_info=True)
            outcome = "failed"
        EVENTS.labels(outcome).inc()
        return outcome

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        await asyncio.to_thread(self.record, kwargs)  # the commit's fsync off the proxy's event loop

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.record(kwargs)

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Refuse the call of a key creditrelay has suspended, as LiteLLM refuses one over its budget."""
        key = getattr(user_api_key_dict, KEY_FIELDS[self.settings.key_field], None)
        if self.settings.receiver_url is None or not isinstance(key, str) or not key:
            return data
        allowed = await self.allowance.allowed(key)
        if allowed or (allowed is None and not self.settings.fail_closed):
            return data
        message = (
            "creditrelay: no credits left for this key; top up to use it again"
            if allowed is False
            else "creditrelay: credits cannot be checked now; try again shortly"
        )
        if allowed is False:  # LiteLLM's own answer for a key over its budget
            raise ProxyException(message, ProxyErrorTypes.budget_exceeded, None, litellm.budget_exceeded_status_code)
        raise ProxyException(message, ProxyErrorTypes.internal_server_error, None, 503)


def __getattr__(name: str) -> Any:
    """``callback``: the ready instance, made from the environment when first asked for (when LiteLLM's
    proxy loads its config), so that a bad setting stops the proxy's start with its name."""
    if name == "callback":
        made = CreditRelayLogger(LiteLLMSettings.from_environment())
        globals()["callback"] = made
        return made
    raise AttributeError(name)
