"""LiteLLM, the real package, no network (mock responses, its local price map): calls through
``litellm.acompletion`` with a virtual key's metadata land in the outbox once each, the relay delivers them
and the receiver charges each once, however often the callback or the relay runs again; the pre-call hook
refuses a key creditrelay has suspended, keeps its answers a few seconds, and follows the fail mode when
creditrelay cannot be asked; and the proxy config the docs give loads the callback with LiteLLM's own
loader."""

import asyncio
import os
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no download

import dataclasses

import httpx
import litellm
import pytest
import yaml
from litellm.proxy._types import ProxyException, UserAPIKeyAuth

from creditrelay.billing.accounts import adjust, top_up
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import run_transaction, utc
from creditrelay.schema.errors import SettingsError
from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender import litellm as integration
from creditrelay.sender.delivery import Signer
from creditrelay.sender.litellm import CreditRelayLogger, LiteLLMSettings, Skipped, credits_of
from creditrelay.sender.outbox import Outbox
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from tests.support.database import Database
from tests.support.ledger import NOW
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import SECRET

KEY = "3" * 64  # what LiteLLM reports as user_api_key_hash: the SHA-256 of the virtual key
GATEWAY = "gateway-token-gateway-token-gateway-01"
RATE = Decimal(1_000_000)  # credits per US dollar
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(database: Database) -> Iterator[tuple[str, int]]:
    """The receiver, with the allowance endpoint on, and alice owning the LiteLLM key."""
    alice = add_user(database.engine, key=KEY)
    app = create_app(dataclasses.replace(settings_for(database), gateway_token=GATEWAY), database.engine)
    with serving(app) as url:
        yield url, alice


def _logger(tmp_path: Path, url: str | None = None, **options: Any) -> CreditRelayLogger:
    options.setdefault("outbox_url", f"sqlite:///{tmp_path / 'outbox.db'}")
    settings = LiteLLMSettings(
        credits_per_usd=RATE, receiver_url=url, gateway_token=GATEWAY if url else None, **options
    )
    return CreditRelayLogger(settings)


async def _calls(logger: CreditRelayLogger, count: int) -> list[Any]:
    """``count`` calls through LiteLLM as its proxy makes them for a virtual key, each answered by a mock;
    returns when the callback has committed them (LiteLLM runs it after the call, in the background)."""
    litellm.callbacks = [logger]
    seen: list[Any] = []
    original = logger.record

    def record(kwargs: Any) -> str:
        seen.append(kwargs)
        return original(kwargs)

    logger.record = record  # type: ignore[method-assign]
    try:
        for i in range(count):
            await litellm.acompletion(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}], mock_response="an answer",
                metadata={"user_api_key_hash": KEY, "user_api_key_alias": "alice-key", "user_api_key_user_id": "u-7"},
            )  # fmt: skip
        for _ in range(200):
            if len(seen) == count:
                break
            await asyncio.sleep(0.02)
    finally:  # out of every list LiteLLM copied it into (it keeps one logger of a class, unless dropped)
        litellm.logging_callback_manager.drop_callbacks([logger])
        logger.record = original  # type: ignore[method-assign]
    assert len(seen) == count
    return seen


async def _relay(outbox: Outbox, url: str) -> None:
    relay = OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), RelayConfig(url=f"{url}/api/webhooks/events"))
    async with httpx.AsyncClient() as client:
        while await relay.drain_once(client):
            pass


def test_calls_become_usage_events_charged_once_however_often_they_come(
    site: tuple[str, int], database: Database, tmp_path: Path
) -> None:
    url, alice = site
    logger = _logger(tmp_path)
    seen = asyncio.run(_calls(logger, 3))
    assert logger.outbox.counts()["pending"] == 3
    logged = [kwargs["standard_logging_object"] for kwargs in seen]
    expected = sum(credits_of(entry, logger.settings) for entry in logged)
    assert all(credits_of(entry, logger.settings) > 0 for entry in logged)  # the local price map priced them
    assert [logger.record(kwargs) for kwargs in seen] == ["duplicate"] * 3  # a retried callback: nothing new

    asyncio.run(_relay(logger.outbox, url))
    assert logger.outbox.counts() == {"pending": 0, "delivered": 3, "dead": 0}
    charged = database.rows("SELECT requestId, eventId, remoteKeyId, model, creditCost FROM usage_records")
    assert sorted(row[0] for row in charged) == sorted(entry["litellm_call_id"] for entry in logged)
    assert all(row[0] == row[1] and row[2] == KEY and row[3] == "gpt-4o-mini" for row in charged)
    assert int(database.scalar("SELECT balance FROM users WHERE id = :u", u=alice)) == OPENING - expected

    again = Outbox.open(f"sqlite:///{tmp_path / 'restored-outbox.db'}")  # the relay run again, from a copy
    with logger.outbox.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT eventId, body FROM outbox_events").all()
    again.enqueue([(str(event_id), str(body).encode()) for event_id, body in stored])
    asyncio.run(_relay(again, url))
    assert again.counts()["delivered"] == 3
    assert database.count("usage_records") == 3
    assert int(database.scalar("SELECT balance FROM users WHERE id = :u", u=alice)) == OPENING - expected
    assert database.count("webhook_logs", "status = 'processed'") == 3


def test_the_pre_call_hook_refuses_a_suspended_key_as_litellm_refuses_a_spent_budget(
    site: tuple[str, int], database: Database, tmp_path: Path
) -> None:
    url, alice = site
    now = [0.0]
    logger = _logger(tmp_path, url)
    logger.allowance.clock = lambda: now[0]
    auth = UserAPIKeyAuth(token=KEY)

    async def hook() -> Any:
        return await logger.async_pre_call_hook(auth, None, {"model": "gpt-4o-mini"}, "completion")

    assert asyncio.run(hook()) == {"model": "gpt-4o-mini"}  # credits left: the call goes on, unchanged
    run_transaction(database.engine, lambda c: adjust(c, alice, -OPENING, "spent", "spent it all", NOW))
    assert asyncio.run(hook()) == {"model": "gpt-4o-mini"}  # the answer of a moment ago is kept…
    now[0] += 6
    with pytest.raises(ProxyException) as refused:  # …a few seconds: then the key is refused
        asyncio.run(hook())
    assert (refused.value.type, refused.value.code) == ("budget_exceeded", str(litellm.budget_exceeded_status_code))
    assert "no credits left" in refused.value.message
    run_transaction(database.engine, lambda c: top_up(c, alice, 10, "order-1", utc(0)))
    now[0] += 6
    assert asyncio.run(hook()) == {"model": "gpt-4o-mini"}
    with pytest.raises(ProxyException):  # a key creditrelay does not know bills nobody: refused
        asyncio.run(logger.async_pre_call_hook(UserAPIKeyAuth(token="9" * 64), None, {}, "completion"))


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_when_creditrelay_cannot_be_asked_the_hook_follows_the_fail_mode(database: Database, tmp_path: Path) -> None:
    """Fail open (the default) lets the call through; fail closed refuses it with a 503 of LiteLLM's shape."""
    nowhere = "http://127.0.0.1:9"  # nothing listens on the discard port
    auth = UserAPIKeyAuth(token=KEY)
    opened = _logger(tmp_path, nowhere)
    assert asyncio.run(opened.async_pre_call_hook(auth, None, {"n": 1}, "completion")) == {"n": 1}
    closed = _logger(tmp_path, nowhere, fail_closed=True)
    with pytest.raises(ProxyException) as refused:
        asyncio.run(closed.async_pre_call_hook(auth, None, {}, "completion"))
    assert refused.value.code == "503"
    no_key = UserAPIKeyAuth(token=None)  # the master key's own calls carry no virtual key
    assert asyncio.run(closed.async_pre_call_hook(no_key, None, {"n": 2}, "completion")) == {"n": 2}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_call_through_litellms_synchronous_api_is_recorded_too(database: Database, tmp_path: Path) -> None:
    """``litellm.completion`` (not the proxy's way, but a Python shop's) calls the synchronous hook."""
    logger = _logger(tmp_path)
    litellm.callbacks = [logger]
    try:
        litellm.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="ok",
                           metadata={"user_api_key_hash": KEY})  # fmt: skip
        for _ in range(200):
            if logger.outbox.counts()["pending"]:
                break
            time.sleep(0.02)
    finally:
        litellm.logging_callback_manager.drop_callbacks([logger])
    assert logger.outbox.counts()["pending"] == 1


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_what_cannot_be_billed_is_logged_and_counted_never_raised(database: Database, tmp_path: Path) -> None:
    """No virtual key, no call id, a cost past what one usage may cost, an outbox that cannot be written: the
    callback says so and counts it; the call it describes is not failed."""
    logger = _logger(tmp_path)
    good = {"litellm_call_id": "c1", "model": "m", "response_cost": 0.01, "metadata": {"user_api_key_hash": KEY},
            "startTime": 1_700_000_000.5}  # fmt: skip
    assert logger.record({"standard_logging_object": good}) == "queued"
    for broken in (
        good | {"metadata": {}},
        good | {"litellm_call_id": None},
        good | {"response_cost": 10.0**12},
        good | {"response_cost": float("nan")},
        good | {"model": "m" * 200},
    ):
        assert logger.record({"standard_logging_object": broken}) == "skipped"
    failing = _logger(tmp_path, outbox_url="sqlite:////proc/no/such/outbox.db")
    assert failing.record({"standard_logging_object": good | {"litellm_call_id": "c2"}}) == "failed"
    assert logger.outbox.counts()["pending"] == 1


def test_credits_are_the_cost_at_the_rate_rounded_up_and_free_calls_as_configured() -> None:
    settings = LiteLLMSettings(credits_per_usd=RATE, zero_cost_credits=2, cache_hit_credits=1)
    assert credits_of({"response_cost": 1.35e-05}, settings) == 14  # 13.5 credits: a part is a whole credit
    assert credits_of({"response_cost": 0.0001}, settings) == 100
    assert credits_of({"response_cost": 0}, settings) == 2
    assert credits_of({"response_cost": None}, settings) == 2
    assert credits_of({"response_cost": 0.5, "cache_hit": True}, settings) == 1
    assert (
        credits_of({"response_cost": 0.5, "cache_hit": True}, dataclasses.replace(settings, cache_hit_credits=None))
        == 500_000
    )
    with pytest.raises(Skipped):
        credits_of({"response_cost": -1.0}, settings)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, "CREDITS_PER_USD"),
        ({"CREDITS_PER_USD": "lots"}, "CREDITS_PER_USD"),
        ({"CREDITS_PER_USD": "-3"}, "CREDITS_PER_USD"),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_KEY_FIELD": "api_key"}, "CREDITRELAY_KEY_FIELD"),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_FAIL_MODE": "maybe"}, "CREDITRELAY_FAIL_MODE"),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_URL": "http://x"}, "GATEWAY_TOKEN"),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_URL": "x", "GATEWAY_TOKEN": "t"}, "CREDITRELAY_URL"),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_ZERO_COST_CREDITS": "1.5"}, "CREDITRELAY_ZERO_COST_CREDITS"),
    ],
)
def test_a_bad_setting_is_refused_by_name(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        LiteLLMSettings.from_environment(environ)


def test_the_documented_proxy_config_loads_the_callback_with_litellms_own_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/litellm.md's config.yaml, beside no file of ours, read as LiteLLM's proxy reads ``callbacks``."""
    from litellm.proxy.types_utils.utils import get_instance_fn

    page = (ROOT / "docs" / "litellm.md").read_text()
    config_text = re.findall(r"```yaml\n(.*?)```", page, re.DOTALL)[0]
    config = yaml.safe_load(config_text)
    (tmp_path / "config.yaml").write_text(config_text)
    for name, value in {"CREDITS_PER_USD": "500000", "CREDITRELAY_OUTBOX_URL": f"sqlite:///{tmp_path}/o.db"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delattr(integration, "callback", raising=False)
    [value] = config["litellm_settings"]["callbacks"]
    loaded = get_instance_fn(value, config_file_path=str(tmp_path / "config.yaml"))
    assert isinstance(loaded, CreditRelayLogger)
    assert loaded.settings.credits_per_usd == 500000
    assert integration.callback is loaded  # made once
