"""LiteLLM → creditrelay: every successful call a usage event in the durable outbox, and a pre-call hook
that refuses a key creditrelay has suspended.

``callback`` (made from the environment when LiteLLM's proxy loads it: ``litellm_settings: callbacks:
creditrelay.sender.litellm.callback``) is a ``CustomLogger``. Its success hook turns LiteLLM's standard
logging object into a usage event (``eventId`` and ``requestId``: a digest of the call's
``litellm_call_id``, key and start, since a client may choose the call id; ``remoteKeyId``: the virtual
key's hash, or its alias or user id by ``CREDITRELAY_KEY_FIELD``;
``creditCost``: ``ceil(response_cost * CREDITS_PER_USD)``) and commits it to the outbox, off the event
loop, before the hook returns; ``creditrelay relay`` delivers it. Nothing it does can fail or slow the
call: each failure is logged and counted (``creditrelay_litellm_events_total``), never raised. The
pre-call hook holds the call's worst-case cost (``POST /api/gateway/holds``; the usage event carries
``holdId`` and settles it, a failed call voids it), raising LiteLLM's own budget error when the member's
available credits do not cover it; a call it cannot price asks the allowance endpoint instead, keeps the
answer a few seconds, and is refused for a suspended key; when creditrelay cannot be asked it lets the call through
(``CREDITRELAY_FAIL_MODE=open``, the default) or refuses it (``closed``).

Needs the ``litellm`` extra (docs/litellm.md says how to install it): nothing else of creditrelay imports
this module.
"""

import asyncio
import hashlib
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import litellm
import structlog
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyErrorTypes, ProxyException, UserAPIKeyAuth
from prometheus_client import Counter
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from creditrelay.schema.errors import DatabaseUnavailable, SettingsError
from creditrelay.schema.holds import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS
from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.wire import BIGINT_MAX, MAX_MODEL, MAX_TIMESTAMP, EnvelopeError, parse_event, web_url
from creditrelay.sender.allowance import Allowance
from creditrelay.sender.events import encode_event, usage_event
from creditrelay.sender.litellm_costs import worst_case_credits
from creditrelay.sender.outbox import DEFAULT_OUTBOX_URL, Outbox

log = structlog.get_logger()
EVENTS = Counter("creditrelay_litellm_events", "LiteLLM calls the callback turned into usage events", ["outcome"])
# CREDITRELAY_KEY_FIELD -> where the pre-call hook finds the same key on LiteLLM's UserAPIKeyAuth
KEY_FIELDS = {"user_api_key_hash": "token", "user_api_key_alias": "key_alias", "user_api_key_user_id": "user_id"}
# a virtual key's hash: what LiteLLM reports for a virtual key, and only for one (the master key is
# "litellm_proxy_master_key", a service account its name, a JWT "hashed-jwt-…")
VIRTUAL_KEY = re.compile(r"[0-9a-f]{64}")
MAX_ALLOWANCE_SECONDS = 3600
OUTBOX_PATIENCE = 3.0  # seconds a usage's commit is tried again while the outbox is out of reach


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
    hold_seconds: int = DEFAULT_TTL_SECONDS  # how long a call's hold lasts if nothing settles it
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
        if receiver is not None and not web_url(receiver):
            raise SettingsError("CREDITRELAY_URL must be creditrelay's http:// or https:// base URL, with a host")
        if (receiver is None) != (token is None):
            raise SettingsError("CREDITRELAY_URL and GATEWAY_TOKEN go together (the pre-call hook needs both)")
        if token is not None and not (32 <= len(token) <= 256 and token.isascii() and token.isprintable()):
            raise SettingsError(
                "GATEWAY_TOKEN must be creditrelay's GATEWAY_TOKEN: 32 or more printable ASCII characters"
            )
        per_usd = _decimal("CREDITS_PER_USD", rate)
        if per_usd == 0:
            raise SettingsError("CREDITS_PER_USD must be more than 0 (0 would make every call free)")
        seconds = _decimal("CREDITRELAY_ALLOWANCE_SECONDS", get("CREDITRELAY_ALLOWANCE_SECONDS") or "5")
        if seconds > MAX_ALLOWANCE_SECONDS:
            raise SettingsError(f"CREDITRELAY_ALLOWANCE_SECONDS must be at most {MAX_ALLOWANCE_SECONDS}")
        cache_hit = get("CREDITRELAY_CACHE_HIT_CREDITS")
        hold = get("CREDITRELAY_HOLD_SECONDS") or str(DEFAULT_TTL_SECONDS)
        if not (hold.isascii() and hold.isdigit() and 0 < int(hold[:6]) <= MAX_TTL_SECONDS):
            raise SettingsError(
                f"CREDITRELAY_HOLD_SECONDS must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}"
            )
        return cls(
            credits_per_usd=per_usd,
            outbox_url=get("CREDITRELAY_OUTBOX_URL") or DEFAULT_OUTBOX_URL,
            key_field=key_field,
            zero_cost_credits=_credits("CREDITRELAY_ZERO_COST_CREDITS", get("CREDITRELAY_ZERO_COST_CREDITS") or "0"),
            cache_hit_credits=None if cache_hit is None else _credits("CREDITRELAY_CACHE_HIT_CREDITS", cache_hit),
            receiver_url=receiver,
            gateway_token=token,
            fail_closed=fail_mode == "closed",
            allowance_seconds=float(seconds),
            hold_seconds=int(hold),
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
    if not (text.isascii() and text.isdigit() and len(text) <= 20) or int(text) > MAX_AMOUNT:
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
    if (
        isinstance(cost, bool)
        or not isinstance(cost, int | float)
        or (isinstance(cost, float) and not math.isfinite(cost))
    ):
        raise Skipped(f"response_cost {str(cost)[:40]!r} is not a cost")
    dollars = Decimal(cost) if isinstance(cost, int) else Decimal(repr(cost))
    if dollars < 0:
        raise Skipped(f"response_cost {str(cost)[:40]} is negative")
    credits = math.ceil(min(dollars * settings.credits_per_usd, Decimal(MAX_AMOUNT + 1)))
    if credits > MAX_AMOUNT:
        raise Skipped(f"response_cost {str(cost)[:40]} is past the {MAX_AMOUNT} credits one usage may cost")
    return credits


def event_id_of(call_id: str, key_hash: str, started: Any) -> str:
    """The usage's id: the same for every run of the callback on one call, and different for two calls.
    Not the call id itself: a client chooses it (LiteLLM's proxy takes its ``x-litellm-call-id`` header),
    and a call id used again — by the same client or to match someone else's — would make a served call a
    "duplicate" nobody pays for. The virtual key and the call's start tell two such calls apart."""
    identity = "\n".join((call_id, key_hash, repr(started))).encode("utf-8", "surrogatepass")
    return "litellm-" + hashlib.sha256(identity).hexdigest()[:48]


def _text(value: Any, limit: int) -> str | None:
    """``value`` if it is text the receiver stores as it is (1 to ``limit`` characters, no NUL, UTF-8)."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or "\x00" in value:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return None
    return value


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if 0 <= value <= BIGINT_MAX else None


def billed_key(configured: Any, key_hash: str, field: str) -> str:
    """The ``remoteKeyId`` a virtual key's call is billed to: its ``CREDITRELAY_KEY_FIELD`` (the hash, the
    alias or the user id), or its hash when that field is empty, not storable (a key made without an alias,
    an alias past 64 characters) or itself shaped like a key's hash (an alias chosen to be another key's
    hash would bill that key's owner). Never nobody: an unknown hash is refused by the pre-call hook, and
    its usage waits in ``webhook_logs`` as an unknown key's, to be charged once the key is linked."""
    if field == "user_api_key_hash":
        return key_hash
    if (text := _text(configured, 64)) is not None and not VIRTUAL_KEY.fullmatch(text.lower()):
        return text
    log.warning("litellm_key_field_missing", field=field, billed_to="user_api_key_hash")
    return key_hash


def event_of(logged: Mapping[str, Any], settings: LiteLLMSettings, hold_id: int | None = None) -> tuple[str, bytes]:
    """The usage event of one logged call (its id, its exact bytes), checked as the receiver will check it.

    What bills (the key, the cost) must be right or the call is ``Skipped``; what only describes it is
    repaired rather than losing the charge, and the log says which: a model name that is not storable
    text becomes ``unknown``, a token count that is no count 0, a start that is no Unix time the time now,
    a gateway user id that is not storable text is left out."""
    call_id = logged.get("litellm_call_id")
    metadata = logged.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    if not isinstance(call_id, str) or not call_id:
        raise Skipped("no litellm_call_id")
    key_hash = metadata.get("user_api_key_hash")
    if not isinstance(key_hash, str) or not VIRTUAL_KEY.fullmatch(key_hash):
        raise Skipped("not a virtual key's call (the master key, a service account, a JWT): it bills nobody")
    key = billed_key(metadata.get(settings.key_field), key_hash, settings.key_field)
    repaired: list[str] = []
    model = _text(logged.get("model"), MAX_MODEL)
    if model is None:
        repaired.append("model")
    tokens = {name: _count(logged.get(name) or 0) for name in ("prompt_tokens", "completion_tokens")}
    if sum(count or 0 for count in tokens.values()) > BIGINT_MAX:  # their total must be a count too
        tokens = dict.fromkeys(tokens)
    repaired += [name for name, count in tokens.items() if count is None]
    started = logged.get("startTime")
    seconds = _count(int(started) if isinstance(started, float) and math.isfinite(started) else started)
    timestamp = seconds if seconds is not None and seconds <= MAX_TIMESTAMP else None
    if timestamp is None:
        repaired.append("startTime")
        timestamp = int(time.time())
    user = metadata.get("user_api_key_user_id")
    if user is not None and _text(user, 64) is None:
        repaired.append("user_api_key_user_id")
    if repaired:
        log.warning("litellm_usage_repaired", fields=repaired, call_id=str(call_id)[:100])
    event_id = event_id_of(call_id, key_hash, started)
    event = usage_event(
        remote_key_id=key,
        model=model or "unknown",
        credit_cost=credits_of(logged, settings),
        prompt_tokens=tokens["prompt_tokens"] or 0,
        completion_tokens=tokens["completion_tokens"] or 0,
        request_id=event_id,
        user_id=_text(user, 64),
        timestamp=timestamp,
        event_id=event_id,
    )
    if _text(call_id, 256) is not None:
        event["data"]["litellmCallId"] = call_id  # kept with the payload: to find the call in LiteLLM's logs
    if hold_id is not None:
        event["data"]["holdId"] = hold_id  # the usage settles the call's hold
    body = encode_event(event)
    try:
        parse_event(body)
    except EnvelopeError as error:
        raise Skipped(f"the usage event would be refused: {error}") from None
    return event_id, body


class CreditRelayLogger(CustomLogger):
    """LiteLLM's callback: usage events into the outbox, suspended keys refused before their call."""

    def __init__(self, settings: LiteLLMSettings, outbox: Outbox | None = None) -> None:
        super().__init__()
        self.settings = settings
        self._outbox = outbox
        self._opening = threading.Lock()
        self.allowance = Allowance(
            settings.receiver_url or "", settings.gateway_token or "", settings.allowance_seconds, settings.timeout
        )
        # (virtual key's hash, litellm_call_id) -> its hold: a client may choose the id, two keys the same one
        self.holds: dict[tuple[str, str], int] = {}

    @property
    def outbox(self) -> Outbox:
        """Opened on the first event (not when LiteLLM imports the module), by one thread: the first events
        of a busy proxy arrive together."""
        if self._outbox is None:
            with self._opening:
                if self._outbox is None:
                    self._outbox = Outbox.open(self.settings.outbox_url)
        return self._outbox

    def check_outbox(self) -> None:
        """Open the outbox now (its tables made if missing), and let go of its connections: a URL it cannot
        open or a file it cannot write stops the proxy's start instead of losing every usage after it. (The
        proxy may fork its workers after this: each opens connections of its own on its first event.)"""
        try:
            self.outbox.engine.dispose()
        except Exception as error:
            self._outbox = None
            raise SettingsError(f"CREDITRELAY_OUTBOX_URL: the outbox cannot be opened: {str(error)[:300]}") from error

    def record(self, kwargs: Mapping[str, Any]) -> str:
        """Commit the call's usage event; what became of it (``queued``, ``duplicate``, ``skipped``,
        ``failed``), counted. Never raises: the call it describes has been served. An outbox out of reach
        (SQLite's lock held past its timeout, a server away) is tried again for up to ``OUTBOX_PATIENCE``
        seconds, on this worker thread."""
        try:
            logged = kwargs.get("standard_logging_object") or {}
            hold_id = self.take_hold(logged)
            event_id, body = event_of(logged, self.settings, hold_id)
            written = Retrying(
                retry=retry_if_exception_type(DatabaseUnavailable),
                stop=stop_after_delay(OUTBOX_PATIENCE),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            )(self.outbox.enqueue, [(event_id, body)])
            outcome = "queued" if written else "duplicate"
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

    def take_hold(self, logged: Any) -> int | None:
        """The hold the call's pre-call hook placed, once (its success or its failure takes it)."""
        if not isinstance(logged, Mapping):
            return None
        metadata = logged.get("metadata")
        key_hash = metadata.get("user_api_key_hash") if isinstance(metadata, Mapping) else None
        call_id = logged.get("litellm_call_id")
        if not isinstance(key_hash, str) or not isinstance(call_id, str):
            return None
        return self.holds.pop((key_hash, call_id), None)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """A call that failed gives its hold back."""
        hold_id = self.take_hold(kwargs.get("standard_logging_object") if isinstance(kwargs, dict) else None)
        if hold_id is not None:
            await self.allowance.release(hold_id)

    async def _held(self, token: str, key: str, data: dict[str, Any]) -> bool | Literal["unpriced"] | None:
        """Hold the call's worst-case cost (``litellm_costs``): whether it was held (None: creditrelay
        cannot be asked), or ``"unpriced"`` when the call has no id or cannot be priced."""
        call_id = data.get("litellm_call_id")
        worst = worst_case_credits(data, self.settings.credits_per_usd) if isinstance(call_id, str) else None
        if worst is None or not isinstance(call_id, str):
            return "unpriced"
        held, hold_id = await self.allowance.hold(key, worst, self.settings.hold_seconds)
        if hold_id is not None:
            self.holds[token, call_id] = hold_id
        return held

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """Hold the call's worst-case cost, refused as LiteLLM refuses a call over its budget when the
        member's available credits do not cover it; a call that cannot be priced is asked for as before:
        refused while creditrelay has the key suspended."""
        token = getattr(user_api_key_dict, "token", None)  # a virtual key's hash, or no virtual key's call
        if self.settings.receiver_url is None or not isinstance(token, str) or not VIRTUAL_KEY.fullmatch(token):
            return data  # the master key, a service account, a JWT: billed to nobody, refused by nobody
        field = self.settings.key_field
        key = billed_key(getattr(user_api_key_dict, KEY_FIELDS[field], None), token, field)
        allowed = await self._held(token, key, data)
        if allowed == "unpriced":
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
        made.check_outbox()
        globals()["callback"] = made
        return made
    raise AttributeError(name)
