"""LiteLLM, the real package, no network (mock responses, its local price map): calls through
``litellm.acompletion`` with a virtual key's metadata land in the outbox once each, the relay delivers them
and the receiver charges each once, however often the callback or the relay runs again; the pre-call hook
refuses a key creditrelay has suspended, keeps its answers a few seconds, and follows the fail mode when
creditrelay cannot be asked; and the proxy config the docs give loads the callback with LiteLLM's own
loader."""

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from creditrelay.billing.accounts import adjust, top_up
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import utc
from creditrelay.schema.errors import SettingsError
from creditrelay.schema.signing import WebhookSecret
from creditrelay.schema.transactions import run_transaction
from creditrelay.sender import litellm as integration
from creditrelay.sender.delivery import Signer
from creditrelay.sender.litellm import CreditRelayLogger, LiteLLMSettings, Skipped, credits_of, event_id_of
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
CALL = {"litellm_call_id": "c1", "model": "m", "response_cost": 0.01, "metadata": {"user_api_key_hash": KEY},
        "startTime": 1_700_000_000.5}  # fmt: skip  # LiteLLM's standard logging object of one billable call
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


async def _calls(logger: CreditRelayLogger, count: int, key: str = KEY, **options: Any) -> list[Any]:
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
                metadata={"user_api_key_hash": key, "user_api_key_alias": "alice-key", "user_api_key_user_id": "u-7"},
                **options,
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
    ids = sorted(event_id_of(entry["litellm_call_id"], KEY, entry["startTime"]) for entry in logged)
    assert sorted(row[0] for row in charged) == ids
    assert all(row[0] == row[1] and row[2] == KEY and row[3] == "gpt-4o-mini" for row in charged)
    call_ids = {
        json.loads(payload)["data"]["litellmCallId"] for (payload,) in database.rows("SELECT payload FROM webhook_logs")
    }
    assert call_ids == {entry["litellm_call_id"] for entry in logged}  # the call id kept, to find it in LiteLLM
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


def test_a_call_id_the_client_chose_again_is_still_a_call_charged(
    site: tuple[str, int], database: Database, tmp_path: Path
) -> None:
    """LiteLLM's proxy takes the client's ``x-litellm-call-id`` as the call id: three calls with one id (and
    one taking another key's id) are four calls to pay for, not one charged and three "duplicates"."""
    url, alice = site
    logger = _logger(tmp_path)
    seen = asyncio.run(_calls(logger, 3, litellm_call_id="chosen-by-the-client"))
    assert {kwargs["standard_logging_object"]["litellm_call_id"] for kwargs in seen} == {"chosen-by-the-client"}
    other = "4" * 64
    add_user(database.engine, "bob@example.com", key=other)
    asyncio.run(_calls(logger, 1, litellm_call_id="chosen-by-the-client", key=other))
    assert logger.outbox.counts()["pending"] == 4
    asyncio.run(_relay(logger.outbox, url))
    assert database.count("usage_records") == 4
    assert database.count("usage_records", f"userId = {alice}") == 3


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
def test_a_wrong_creditrelay_url_path_is_no_answer_not_a_refusal(
    site: tuple[str, int], database: Database, tmp_path: Path
) -> None:
    """creditrelay answers a path it does not serve with its own ``"success": false`` 404: the hook takes
    only the allowance's 404, which names the key, for "unknown key"; a wrong path follows the fail mode."""
    url, _ = site
    for wrong in (f"{url}/api/webhooks/events", f"{url}/api"):
        logger = _logger(tmp_path, wrong)
        assert asyncio.run(logger.allowance.allowed(KEY)) is None, wrong
        auth = UserAPIKeyAuth(token=KEY)
        assert asyncio.run(logger.async_pre_call_hook(auth, None, {"n": 1}, "completion")) == {"n": 1}
    assert asyncio.run(_logger(tmp_path, url).allowance.allowed("9" * 64)) is False  # its own 404: unknown


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_key_without_the_configured_field_is_billed_and_asked_by_its_hash(
    site: tuple[str, int], database: Database, tmp_path: Path
) -> None:
    """CREDITRELAY_KEY_FIELD=user_api_key_alias, and a virtual key made without an alias (or with one past
    64 characters, or one shaped like another key's hash): the call is neither free nor lost, nor billed
    to someone else. The hook asks about the key's hash (unknown here:
    refused, even failing open), and the usage is billed to the hash, waiting as an unknown key's until the
    operator links it."""
    url, _ = site
    logger = _logger(tmp_path, url, key_field="user_api_key_alias")
    for alias in (None, "", "a" * 65, KEY):  # KEY: alice's hash, chosen as another key's alias
        with pytest.raises(ProxyException) as refused:
            asyncio.run(logger.async_pre_call_hook(UserAPIKeyAuth(token="9" * 64, key_alias=alias), None, {}, "x"))
        assert refused.value.type == "budget_exceeded"
    known = UserAPIKeyAuth(token=KEY, key_alias=None)  # alice's key, linked by its hash
    assert asyncio.run(logger.async_pre_call_hook(known, None, {"n": 1}, "completion")) == {"n": 1}
    call = CALL | {"metadata": {"user_api_key_hash": KEY, "user_api_key_alias": None}}
    assert logger.record({"standard_logging_object": call}) == "queued"
    [event] = [json.loads(e.body) for e in logger.outbox.claim_due(utc(2**31), 10, timedelta(seconds=30))]
    assert event["data"]["remoteKeyId"] == KEY


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
    # the master key's calls, as LiteLLM's user_api_key_auth describes them: no virtual key, refused by nobody
    master = UserAPIKeyAuth.model_validate({"api_key": "litellm_proxy_master_key", "user_role": "proxy_admin"})
    assert master.token == "litellm_proxy_master_key"
    assert asyncio.run(closed.async_pre_call_hook(master, None, {"n": 2}, "completion")) == {"n": 2}


def _allowance_site(requests: list[str]) -> Starlette:
    """What may answer at CREDITRELAY_URL besides creditrelay's allowance: the key names the answer."""

    async def answer(request: Request) -> Response:
        key = request.path_params["key"]
        requests.append(key)
        if key == "slow":  # an answer trickling in, byte by byte, past the hook's two seconds

            async def trickle() -> AsyncIterator[bytes]:
                for byte in b'{"success":true,"data":{"allowed":true}}':
                    await asyncio.sleep(0.15)
                    yield bytes([byte])

            return StreamingResponse(trickle(), media_type="application/json")
        if key == "late":
            await asyncio.sleep(3)
        answers = {
            "text-false": JSONResponse({"success": True, "data": {"allowed": "false"}}),
            "not-ours": PlainTextResponse("Not Found", 404),  # a wrong base path, a proxy's 404
            "refused": JSONResponse({"success": False, "message": "bad token"}, 401),
            "deep": Response("[" * 100_000 + "]" * 100_000, media_type="application/json"),
        }
        return answers.get(key, JSONResponse({"success": True, "data": {"allowed": True}}))

    return Starlette(routes=[Route("/api/gateway/allowance/{key}", answer)])


def test_only_creditrelays_own_answer_decides_anything_else_follows_the_fail_mode(tmp_path: Path) -> None:
    """A "false" that is a string, a 404 that is not creditrelay's, a refused token, a nested answer past
    Python's recursion, an answer trickling in for longer than the hook waits: none allows or refuses the
    key; each is "cannot say", and fail closed refuses with a 503."""
    requests: list[str] = []
    with serving(_allowance_site(requests)) as url:
        allowance = _logger(tmp_path, url).allowance
        for key in ("text-false", "not-ours", "refused", "deep", "slow"):
            assert asyncio.run(allowance.allowed(key)) is None, key
        assert asyncio.run(allowance.allowed("fine")) is True

        async def together() -> list[bool | None]:  # twenty calls of one key at once: one ask
            return await asyncio.gather(*(allowance.allowed("late") for _ in range(20)))

        assert asyncio.run(together()) == [None] * 20  # three seconds late: cannot say, for all twenty
        assert asyncio.run(allowance.allowed("late")) is None  # kept a second from when it failed
        assert requests.count("late") == 1
    closed = _logger(tmp_path, url, fail_closed=True)
    closed.allowance.answers = allowance.answers
    with pytest.raises(ProxyException) as refused:
        asyncio.run(closed.async_pre_call_hook(UserAPIKeyAuth(token="5" * 64, key_alias="x"), None, {}, "completion"))
    assert refused.value.code == "503"


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)
def test_a_usage_is_committed_once_the_outbox_is_back_within_seconds(database: Database, tmp_path: Path) -> None:
    """The outbox's server is away for a moment (its connections cut, new ones refused): the callback tries
    the commit again on its thread, and the usage is queued once, not logged as lost."""
    with database.fragile_engine() as (engine, outage):
        logger = CreditRelayLogger(_logger(tmp_path).settings, Outbox(engine))
        away, back = threading.Event(), threading.Event()

        def a_moment_away() -> None:
            with outage():
                away.set()
                time.sleep(0.8)
            back.set()

        threading.Thread(target=a_moment_away).start()
        away.wait(5)
        assert logger.record({"standard_logging_object": CALL}) == "queued"
        assert back.is_set()
        assert logger.outbox.counts()["pending"] == 1


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
    good = CALL
    assert logger.record({"standard_logging_object": good}) == "queued"
    for broken in (
        good | {"metadata": {}},
        good | {"litellm_call_id": None},
        good | {"response_cost": 10.0**12},
        good | {"response_cost": float("nan")},
        good | {"response_cost": 10**400},
        good | {"metadata": {"user_api_key_hash": "litellm_proxy_master_key"}},  # the master key's own calls
        good | {"metadata": {"user_api_key_hash": "hashed-jwt-" + "a" * 64}},  # a JWT's
        good | {"metadata": ["not", "a", "mapping"]},
    ):
        assert logger.record({"standard_logging_object": broken}) == "skipped"
    repairable = {"model": "m" * 200, "prompt_tokens": "abc", "completion_tokens": float("inf"), "startTime": "x"}
    for number, (name, value) in enumerate(repairable.items()):  # what only describes the call: still charged
        call = good | {"litellm_call_id": f"r{number}", name: value}
        assert logger.record({"standard_logging_object": call}) == "queued", name
    failing = _logger(tmp_path, outbox_url="sqlite:////proc/no/such/outbox.db")
    assert failing.record({"standard_logging_object": good | {"litellm_call_id": "c2"}}) == "failed"
    assert logger.outbox.counts()["pending"] == 1 + len(repairable)


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
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_ZERO_COST_CREDITS": "9" * 5000}, "CREDITRELAY_ZERO_COST_CREDITS"),
        ({"CREDITS_PER_USD": "0"}, "CREDITS_PER_USD"),
        ({"CREDITS_PER_USD": "1e400"}, "CREDITS_PER_USD"),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_ALLOWANCE_SECONDS": "1e12"}, "CREDITRELAY_ALLOWANCE_SECONDS"),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_URL": "http://[::1", "GATEWAY_TOKEN": GATEWAY}, "CREDITRELAY_URL"),
        (
            {"CREDITS_PER_USD": "1", "CREDITRELAY_URL": "https://exa mple.com", "GATEWAY_TOKEN": GATEWAY},
            "CREDITRELAY_URL",
        ),
        ({"CREDITS_PER_USD": "100", "CREDITRELAY_URL": "http://x", "GATEWAY_TOKEN": "short"}, "GATEWAY_TOKEN"),
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
    monkeypatch.setenv("CREDITRELAY_OUTBOX_URL", "sqlite:////proc/no/such/outbox.db")  # a proxy start stopped
    monkeypatch.delattr(integration, "callback")
    with pytest.raises(SettingsError, match="CREDITRELAY_OUTBOX_URL"):
        get_instance_fn(value, config_file_path=str(tmp_path / "config.yaml"))
