"""LiteLLM's pre-call hook holds each call's worst-case cost, the real ``litellm`` package answering with
``mock_response``: 50 calls at once for a member with credits for 10 worst-case calls serve 10, and the
usages, delivered, settle their holds at the actual cost; a failed call gives its hold back; a call that
cannot be priced is asked for as before."""

import asyncio
import dataclasses
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no download

import httpx
import litellm
import pytest
from litellm.proxy._types import ProxyException, UserAPIKeyAuth

from creditrelay.receiver.app import create_app
from creditrelay.schema.money import MAX_AMOUNT
from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Signer
from creditrelay.sender.litellm import CreditRelayLogger, LiteLLMSettings
from creditrelay.sender.litellm_costs import worst_case_credits
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from tests.support.database import Database
from tests.support.receiver import add_user, settings_for
from tests.support.server import serving
from tests.support.signing import SECRET

KEY = "4" * 64
GATEWAY = "gateway-token-gateway-token-gateway-01"
RATE = Decimal(1_000_000)  # credits per US dollar
MODEL = "gpt-4o-mini"
MAX_TOKENS = 1000


def request(i: int) -> dict[str, Any]:
    """The body the proxy hands its pre-call hook (it sets the call id first)."""
    messages = [{"role": "user", "content": f"question {i}"}]
    return {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "litellm_call_id": f"call-{i}"}


PRICED = worst_case_credits(request(0), RATE)
assert PRICED is not None
WORST: int = PRICED


@pytest.fixture
def site(database: Database) -> Iterator[str]:
    add_user(database.engine, credits=10 * WORST + WORST // 2, key=KEY)  # ten worst-case calls, not eleven
    app = create_app(dataclasses.replace(settings_for(database), gateway_token=GATEWAY), database.engine)
    with serving(app) as url:
        yield url


def _logger(tmp_path: Path, url: str) -> CreditRelayLogger:
    outbox = f"sqlite:///{tmp_path / 'outbox.db'}"
    # closed and patient: on a busy machine a hold not answered in time refuses its call, never serves it
    settings = LiteLLMSettings(RATE, outbox, receiver_url=url, gateway_token=GATEWAY, fail_closed=True, timeout=60.0)
    return CreditRelayLogger(settings)


async def _call(logger: CreditRelayLogger, i: int, answer: Any = "an answer", key: str = KEY) -> bool:
    """One call as the proxy makes it: the hook, then (unless refused) the model; whether it was served."""
    data = request(i)
    try:
        await logger.async_pre_call_hook(UserAPIKeyAuth(token=key), None, data, "completion")
    except ProxyException:
        return False
    try:
        await litellm.acompletion(
            model=MODEL, messages=data["messages"], max_tokens=MAX_TOKENS, mock_response=answer,
            litellm_call_id=data["litellm_call_id"], metadata={"user_api_key_hash": key},
        )  # fmt: skip
    except litellm.exceptions.APIError:
        return False
    return True


async def _settled(logger: CreditRelayLogger, url: str, served: int) -> None:
    """Wait for LiteLLM's callbacks (run after each call) to commit, then relay the usages."""
    for _ in range(300):
        if logger.outbox.counts()["pending"] == served and not logger.holds:
            break
        await asyncio.sleep(0.02)
    relay = OutboxRelay(
        logger.outbox, Signer(WebhookSecret.parse(SECRET)), RelayConfig(url=f"{url}/api/webhooks/events")
    )
    async with httpx.AsyncClient() as client:
        while await relay.drain_once(client):
            pass


def test_fifty_parallel_calls_serve_what_the_credits_cover(site: str, database: Database, tmp_path: Path) -> None:
    logger = _logger(tmp_path, site)
    litellm.callbacks = [logger]

    async def run() -> list[bool]:
        served = await asyncio.gather(*(_call(logger, i) for i in range(50)))
        await _settled(logger, site, sum(served))
        return list(served)

    try:
        served = asyncio.run(run())
    finally:
        litellm.logging_callback_manager.drop_callbacks([logger])
    assert sum(served) == 10
    assert database.count("credit_holds", "state = 'settled'") == 10
    charged = database.scalar("SELECT SUM(creditCost) FROM usage_records")
    assert 0 < charged < WORST  # what the calls cost: far less than held
    assert database.scalar("SELECT balance FROM users") == 10 * WORST + WORST // 2 - charged
    assert database.scalar("SELECT openHolds FROM users") == 0


def test_two_keys_calls_with_one_call_id_settle_their_own_holds(site: str, database: Database, tmp_path: Path) -> None:
    """A client chooses its call id: two keys' calls naming the same one each settle the hold they placed."""
    other = "5" * 64
    add_user(database.engine, credits=2 * WORST, key=other, email="bob@example.com")
    logger = _logger(tmp_path, site)
    litellm.callbacks = [logger]

    async def run() -> list[bool]:
        served = await asyncio.gather(_call(logger, 7), _call(logger, 7, key=other))
        await _settled(logger, site, sum(served))
        return list(served)

    try:
        assert asyncio.run(run()) == [True, True]
    finally:
        litellm.logging_callback_manager.drop_callbacks([logger])
    assert database.rows("SELECT state FROM credit_holds") == [("settled",), ("settled",)]
    assert database.scalar("SELECT SUM(openHolds) FROM users") == 0


def test_a_failed_call_gives_its_hold_back(site: str, database: Database, tmp_path: Path) -> None:
    logger = _logger(tmp_path, site)
    litellm.callbacks = [logger]

    async def run() -> bool:
        served = await _call(logger, 1, answer=litellm.exceptions.APIError(500, "upstream down", "openai", MODEL))
        for _ in range(300):
            if database.count("credit_holds", "state = 'voided'"):
                break
            await asyncio.sleep(0.02)
        return served

    try:
        assert asyncio.run(run()) is False
    finally:
        litellm.logging_callback_manager.drop_callbacks([logger])
    assert database.rows("SELECT state FROM credit_holds") == [("voided",)]
    assert database.scalar("SELECT openHolds FROM users") == 0


def test_an_unpriced_call_asks_the_allowance_and_holds_nothing(site: str, database: Database, tmp_path: Path) -> None:
    logger = _logger(tmp_path, site)
    data = {"model": "a-model-litellm-does-not-know", "messages": [{"role": "user", "content": "hi"}]}
    assert asyncio.run(logger.async_pre_call_hook(UserAPIKeyAuth(token=KEY), None, data, "completion")) == data
    assert database.count("credit_holds") == 0
    assert worst_case_credits({"model": MODEL, "messages": []}, RATE) is None


def test_a_worst_case_past_the_bound_is_held_at_the_bound_not_skipped() -> None:
    """A caller's huge ``max_tokens`` prices the call past any amount: it is held at the bound (which no
    balance covers, so it is refused), never sent to the allowance check instead."""
    assert worst_case_credits(request(0) | {"max_tokens": 10**15}, RATE) == MAX_AMOUNT
