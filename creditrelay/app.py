"""How creditrelay is put together from its settings: the ledger's engine with its rules, the gateway
clients, the poller, the enforcer, the background workers and the receiver app.

Every entry point (``serve``, the cron commands, the account commands, the tests) builds its parts here, so
what a ledger transaction does beside moving balances — gateway intents, alerts, learning gateway user ids,
how far apart a usage's two paths may pair — is what the settings say, set once where the engine is made.
The command line only parses arguments and prints; nothing below this module reads the environment.
"""

import os
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from creditrelay.billing.rules import LedgerRules, with_rules
from creditrelay.schema.database import make_engine, utc
from creditrelay.schema.errors import SettingsError
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from creditrelay.billing.enforcement import Enforcer
    from creditrelay.billing.gateways.litellm import LiteLLMClient
    from creditrelay.billing.gateways.newapi import NewApiClient
    from creditrelay.billing.polling import PollConfig, Poller, PollReport
    from creditrelay.receiver.background import Worker

ATTEMPTS = 6  # creditrelay.billing.polling.PollConfig.attempts, checked equal by a test
EXPIRE_INTERVAL = 10.0  # seconds between expiry passes in serve (grants past expiry end sooner when used)


def ledger_rules(settings: Settings) -> LedgerRules:
    return LedgerRules(
        enforce=settings.gateway_enforcement != "off",
        alerts=settings.alert_webhook_url is not None,
        suspend_at=settings.suspend_at_balance,
        low_at=settings.low_balance_at,
        learn_users=settings.gateway_enforcement == "users",
        admin_gateway_user=settings.new_api_user_id,
        match_seconds=settings.usage_match_seconds,
    )


def open_ledger(settings: Settings) -> Engine:
    """The ledger's database as every entry point opens it, with the rules the settings give it."""
    engine = make_engine(settings.database_url, lock_timeout=settings.database_lock_timeout)
    return with_rules(engine, ledger_rules(settings))


def poll_config(settings: Settings, attempts: int = ATTEMPTS) -> "PollConfig":
    from creditrelay.billing.polling import PollConfig

    return PollConfig(
        quota_per_credit=settings.poll_quota_per_credit,
        overlap_seconds=settings.poll_overlap_seconds,
        lookback_hours=settings.poll_lookback_hours,
        attempts=attempts,
    )


def new_api(settings: Settings, purpose: str = "poll new-api", timeout: float = 15.0) -> "NewApiClient":
    from creditrelay.billing.gateways.newapi import NewApiClient

    if not (settings.new_api_base_url and settings.new_api_admin_token and settings.new_api_user_id):
        raise SettingsError(f"NEW_API_BASE_URL, NEW_API_ADMIN_TOKEN and NEW_API_USER_ID are needed to {purpose}")
    return NewApiClient(
        settings.new_api_base_url, settings.new_api_admin_token, settings.new_api_user_id, timeout=timeout
    )


def make_poller(
    settings: Settings,
    progress: "Callable[[int, int, PollReport], None] | None" = None,
    attempts: int = ATTEMPTS,
    committed: "Callable[[PollReport], None] | None" = None,
) -> "Poller":
    from creditrelay.billing.polling import Poller

    client = new_api(settings)
    config = poll_config(settings, attempts)
    return Poller(open_ledger(settings), client, config, progress=progress, committed=committed)


def gateway_access(settings: Settings, purpose: str) -> "NewApiClient | LiteLLMClient":
    """The gateway the enforcement mode tells to stop and resume: LiteLLM's proxy, or new-api; 5 s a call,
    so that a push stays well inside its lease (billing.enforcement)."""
    if settings.gateway_enforcement == "litellm":
        from creditrelay.billing.gateways.litellm import LiteLLMClient

        if settings.litellm_base_url is None or settings.litellm_master_key is None:
            raise SettingsError(f"LITELLM_BASE_URL and LITELLM_MASTER_KEY are needed to {purpose}")
        return LiteLLMClient(settings.litellm_base_url, settings.litellm_master_key, timeout=5.0)
    return new_api(settings, purpose, timeout=5.0)


def require_enforcement(settings: Settings) -> None:
    if settings.gateway_enforcement == "off":
        raise SettingsError("GATEWAY_ENFORCEMENT is off: set it to tokens, users or litellm to enforce")


def make_enforcer(settings: Settings, engine: Engine) -> "Enforcer":
    from creditrelay.billing.enforcement import EnforceConfig, Enforcer

    require_enforcement(settings)
    client = gateway_access(settings, f"enforce (GATEWAY_ENFORCEMENT={settings.gateway_enforcement})")
    admin = settings.new_api_user_id
    config = EnforceConfig(settings.gateway_enforcement, int(admin) if admin and admin.isdigit() else None)
    return Enforcer(engine, client, config)


def clock() -> datetime:
    """The time, naive UTC, as the tables keep it."""
    return utc(time.time())


def workers(settings: Settings, engine: Engine) -> "list[Worker]":
    """What ``serve`` runs beside the requests: the gateway enforcer, about once a second, and the relay
    that delivers the alerts billing writes into the ledger's outbox (and, as every relay does, purges
    those delivered more than the default retention ago, hourly; dead ones stay). Every instance (and
    every worker process of one) runs both: claims with leases keep them from doing the same work twice,
    and purges at once share theirs. Each worker's relay claims under a name of its own process. And the
    expiry pass (``billing.expiry``), every ``EXPIRE_INTERVAL`` seconds on every instance: passes at once
    end each grant once."""
    from creditrelay.billing.expiry import expire_once
    from creditrelay.receiver.background import every
    from creditrelay.receiver.metrics import GATEWAY_CALLS

    found: list[Worker] = [every(EXPIRE_INTERVAL, partial(expire_once, engine, clock), "expire")]
    if settings.gateway_enforcement != "off":
        enforcer = make_enforcer(settings, engine)

        def enforce() -> None:
            report = enforcer.run_once()
            GATEWAY_CALLS.labels("ok").inc(report.calls - report.failed_calls)
            GATEWAY_CALLS.labels("failed").inc(report.failed_calls)

        found.append(every(1.0, enforce, "enforce"))
    if settings.alert_webhook_url is not None and settings.alert_webhook_secret is not None:
        from creditrelay.sender.delivery import Signer
        from creditrelay.sender.outbox import Outbox
        from creditrelay.sender.relay import OutboxRelay, RelayConfig, process_name

        signer = Signer(settings.alert_webhook_secret, seed=False, standard=True)
        # the operator's own endpoint: one alert per request, never a creditrelay batch
        config = RelayConfig(url=settings.alert_webhook_url, batch=False, name=process_name("serve"))
        relay = OutboxRelay(Outbox(engine, create=False), signer, config)
        found.append(relay.run)
    return found


def writer_processes(settings: Settings, cpus: int | None = None, workers: int = 1) -> bool:
    """Whether the webhook writers apply their batches in processes of their own (decision 0037):
    WEBHOOK_WRITER=process, or auto when the CPUs this process may run on (``cpus``: by default its CPU
    affinity) outnumber the ``workers`` serving. Where the workers already fill the CPUs, a writer process
    only adds a hand-off and memory."""
    if settings.webhook_writer != "auto":
        return settings.webhook_writer == "process"
    if cpus is None:
        affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU counts
        cpus = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return cpus > workers


def build_app(settings: Settings) -> "Starlette":
    """The receiver as ``serve`` runs it: the ledger opened with its rules, the poller when POLL_INTERVAL
    asks for one, and the background workers the settings call for."""
    from creditrelay.receiver.app import create_app
    from creditrelay.receiver.metrics import count_polled

    polls = settings.polling_enabled and settings.poll_interval
    poller = make_poller(settings, committed=count_polled) if polls else None
    engine = open_ledger(settings)
    writer = None
    if writer_processes(settings):
        from creditrelay.receiver.writers import ProcessWriter, deadline_for

        deadline = deadline_for(settings.database_lock_timeout)
        writer = ProcessWriter(partial(open_ledger, settings), settings.log_level, deadline=deadline)
    return create_app(settings, engine, poller=poller, workers=workers(settings, engine), writer=writer)
