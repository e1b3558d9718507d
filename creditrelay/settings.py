"""Configuration from the environment (docs/configuration.md), read once at an entry point and passed down.

A ``.env`` file in the working directory is read too; the real environment wins over it. A bad value is
refused with a ``SettingsError`` that names the variable and never repeats a secret.
"""

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from starlette.config import Config

from creditrelay.schema.database import DEFAULT_LOCK_TIMEOUT, with_driver
from creditrelay.schema.errors import SettingsError as SettingsError  # raised here, defined with the others
from creditrelay.schema.money import MAX_BALANCE
from creditrelay.schema.packages import CreditPackage, PackageError, parse_packages
from creditrelay.schema.portal_tokens import portal_key
from creditrelay.schema.signing import SecretError, WebhookSecret, parse_secrets
from creditrelay.schema.wire import web_url

DEFAULT_DATABASE_URL = "sqlite:///data/creditrelay.db"
ENFORCEMENT_MODES = ("off", "tokens", "users", "litellm")  # GATEWAY_ENFORCEMENT; the first is the default
WRITER_MODES = ("auto", "process", "thread")  # WEBHOOK_WRITER; the first is the default
DEV_SECRET_FILE = Path("data/dev-webhook-secret")  # written by `make run` (scripts/dev_server.py)
DEFAULT_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Settings:
    database_url: URL
    webhook_secrets: tuple[WebhookSecret, ...]
    database_lock_timeout: float = DEFAULT_LOCK_TIMEOUT  # seconds a statement may wait for a lock
    admin_token: str | None = None
    new_api_base_url: str | None = None
    new_api_admin_token: str | None = None
    new_api_user_id: str | None = None
    credit_sync_secret: str | None = None
    body_limit: int = DEFAULT_BODY_LIMIT
    body_timeout: float = 10.0  # seconds a request's body may take to arrive
    usage_match_seconds: float = 10.0  # how far apart a usage's webhook and log row may be to pair
    poll_interval: float | None = None
    poll_quota_per_credit: int = 1
    poll_overlap_seconds: int = 300
    poll_lookback_hours: int = 24
    credit_rate_limit: int | None = None  # requests per minute per credit-API client, per process
    gateway_enforcement: str = "off"  # off | tokens | users | litellm: what the gateway stops while suspended
    suspend_at_balance: int = 0  # a user is suspended while their balance is at or below this
    low_balance_at: int | None = None  # balance.low alert when a balance first drops below this
    alert_webhook_url: str | None = None
    alert_webhook_secret: WebhookSecret | None = None  # whsec_…: signs the alerts (Standard Webhooks)
    gateway_token: str | None = None  # bearer token of GET /api/gateway/allowance/{remoteKeyId}
    metrics_token: str | None = None  # bearer token of /metrics (open when unset: guard it at the proxy)
    litellm_base_url: str | None = None  # GATEWAY_ENFORCEMENT=litellm: the LiteLLM proxy that blocks keys
    litellm_master_key: str | None = None
    portal_secret: str | None = None  # signs members' portal links (else the webhook secrets do)
    public_base_url: str | None = None  # where members reach creditrelay: portal links are printed as URLs
    credit_packages: tuple[CreditPackage, ...] = ()  # what members can buy (CREDIT_PACKAGES)
    stripe_webhook_secret: str | None = None  # whsec_…: verifies POST /api/payments/stripe
    stripe_api_key: str | None = None  # creates Checkout Sessions
    epay_url: str | None = None  # the EPay gateway's submit URL (…/submit.php)
    epay_pid: str | None = None  # the merchant id
    epay_key: str | None = None  # the merchant key: signs the submit URL, checks the notify
    log_level: str = "info"
    # where the group commit applies its batches: on its threads (an app built in code: tests, embedding),
    # in a process per thread, or (auto, WEBHOOK_WRITER unset) in processes where the CPUs outnumber
    # serve's workers (creditrelay.app.writer_processes)
    webhook_writer: str = "thread"
    signing_from: str = "WEBHOOK_SECRET"  # or the development secret's file, when that was used

    @property
    def polling_enabled(self) -> bool:
        return self.new_api_base_url is not None

    @property
    def portal_keys(self) -> tuple[bytes, ...]:
        """The keys portal links are checked with, the first signing: PORTAL_SECRET's, else one per
        webhook secret (so links made before a rotation keep working while the old secret is listed)."""
        if self.portal_secret is not None:
            return (portal_key(self.portal_secret.encode()),)
        return tuple(portal_key(secret.seed_key) for secret in self.webhook_secrets)

    def require_secrets(self) -> tuple[WebhookSecret, ...]:
        if not self.webhook_secrets:
            raise SettingsError("WEBHOOK_SECRET is not set: serve needs at least one secret")
        return self.webhook_secrets


def parse_database_url(value: str) -> URL:
    try:
        url = make_url(value)
    except ArgumentError:
        raise SettingsError("DATABASE_URL is not a SQLAlchemy URL") from None
    if url.get_backend_name() not in ("sqlite", "mysql", "postgresql"):
        raise SettingsError("DATABASE_URL must be sqlite:///…, mysql+pymysql://… or postgresql://…")
    if url.get_backend_name() == "mysql" and url.get_driver_name() != "pymysql":
        raise SettingsError("DATABASE_URL: MySQL is reached through pymysql (mysql+pymysql://…)")
    if url.get_backend_name() == "postgresql" and "+" in url.drivername and url.get_driver_name() != "psycopg":
        raise SettingsError(
            "DATABASE_URL: PostgreSQL is reached through psycopg 3 (postgresql:// or postgresql+psycopg://…)"
        )
    return with_driver(url)


def _optional(config: Config, name: str) -> str | None:
    value = config(name, default="")
    return value.strip() or None


def _number(config: Config, name: str, default: str, *, minimum: float, integer: bool = True) -> float:
    text = config(name, default=default).strip()
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise SettingsError(f"{name} must be a{'n integer' if integer else ' number'}, not {text!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    return value


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    dev_secret_file: Path | None = DEV_SECRET_FILE,
) -> Settings:
    """Read and check every setting (docs/configuration.md).

    With no ``WEBHOOK_SECRET`` set, the development secret ``make run`` keeps in ``data/`` (of the
    working directory) is used when it exists, so ``serve``, ``send`` and ``relay`` run beside ``make run``
    agree on it; a production set-up sets ``WEBHOOK_SECRET`` and never reaches this."""
    present = env_file if env_file is not None and env_file.is_file() else None
    config = Config(present, environ=dict(os.environ if environ is None else environ))
    database_url = parse_database_url(config("DATABASE_URL", default=DEFAULT_DATABASE_URL))
    secrets_text = config("WEBHOOK_SECRET", default="")
    signing_from = "WEBHOOK_SECRET"
    if not secrets_text.strip() and dev_secret_file is not None and dev_secret_file.is_file():
        secrets_text = dev_secret_file.read_text().strip()
        signing_from = f"the development secret in {dev_secret_file}"
    try:
        secrets = parse_secrets(secrets_text) if secrets_text.strip() else ()
    except SecretError as error:
        raise SettingsError(f"WEBHOOK_SECRET: {error}") from None
    admin_token = _optional(config, "ADMIN_TOKEN")
    if admin_token is not None and len(admin_token) < 32:
        raise SettingsError("ADMIN_TOKEN must be at least 32 characters")
    polling = {name: _optional(config, name) for name in ("NEW_API_BASE_URL", "NEW_API_ADMIN_TOKEN", "NEW_API_USER_ID")}
    admin_user = polling["NEW_API_USER_ID"]
    if admin_user is not None and not (admin_user.isascii() and admin_user.isdigit() and int(admin_user) > 0):
        raise SettingsError("NEW_API_USER_ID must be the numeric id of the new-api account (a positive integer)")
    if any(polling.values()) and not all(polling.values()):
        missing = ", ".join(name for name, value in polling.items() if not value)
        raise SettingsError(f"{missing}: polling needs NEW_API_BASE_URL, NEW_API_ADMIN_TOKEN and NEW_API_USER_ID")
    enforcement = _choice(config, "GATEWAY_ENFORCEMENT", ENFORCEMENT_MODES)
    litellm = {name: _optional(config, name) for name in ("LITELLM_BASE_URL", "LITELLM_MASTER_KEY")}
    if litellm["LITELLM_BASE_URL"] is not None and not web_url(litellm["LITELLM_BASE_URL"]):
        raise SettingsError("LITELLM_BASE_URL must be an http:// or https:// URL with a host")
    if enforcement == "litellm" and not all(litellm.values()):
        raise SettingsError("GATEWAY_ENFORCEMENT=litellm needs LITELLM_BASE_URL and LITELLM_MASTER_KEY")
    if enforcement in ("tokens", "users") and not all(polling.values()):
        raise SettingsError(
            f"GATEWAY_ENFORCEMENT={enforcement} needs NEW_API_BASE_URL, NEW_API_ADMIN_TOKEN and NEW_API_USER_ID"
        )
    alert_url, alert_secret = _optional(config, "ALERT_WEBHOOK_URL"), _optional(config, "ALERT_WEBHOOK_SECRET")
    if alert_url is not None and not web_url(alert_url):
        raise SettingsError("ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host")
    if (alert_url is None) != (alert_secret is None):
        raise SettingsError("ALERT_WEBHOOK_URL and ALERT_WEBHOOK_SECRET go together")
    if alert_secret is not None and not alert_secret.startswith("whsec_"):
        raise SettingsError("ALERT_WEBHOOK_SECRET must be a Standard Webhooks secret (whsec_…)")
    try:
        alert_key = WebhookSecret.parse(alert_secret) if alert_secret is not None else None
    except SecretError as error:
        raise SettingsError(f"ALERT_WEBHOOK_SECRET: {error}") from None
    tokens = {
        name: _optional(config, name)
        for name in ("GATEWAY_TOKEN", "METRICS_TOKEN", "CREDIT_SYNC_SECRET", "PORTAL_SECRET")
    }
    for name, value in tokens.items():
        if value is not None and len(value) < 32:
            raise SettingsError(f"{name} must be at least 32 characters")
    low = _optional(config, "LOW_BALANCE_AT")
    public = _optional(config, "PUBLIC_BASE_URL")
    if public is not None and not web_url(public):
        raise SettingsError("PUBLIC_BASE_URL must be an http:// or https:// URL with a host")
    packages, stripe, epay = _payments(config)
    if epay["EPAY_URL"] is not None and public is None:
        raise SettingsError("EPAY_URL needs PUBLIC_BASE_URL: EPay's notify and return URLs are made from it")
    if stripe["STRIPE_API_KEY"] is not None and public is None:
        raise SettingsError("STRIPE_API_KEY needs PUBLIC_BASE_URL: Checkout sends the member back to the portal there")
    return Settings(
        database_url=database_url,
        database_lock_timeout=_number(config, "DATABASE_LOCK_TIMEOUT", "5", minimum=0.1, integer=False),
        webhook_secrets=secrets,
        signing_from=signing_from,
        admin_token=admin_token,
        new_api_base_url=polling["NEW_API_BASE_URL"],
        new_api_admin_token=polling["NEW_API_ADMIN_TOKEN"],
        new_api_user_id=polling["NEW_API_USER_ID"],
        credit_sync_secret=tokens["CREDIT_SYNC_SECRET"],
        poll_interval=_number(config, "POLL_INTERVAL", "0", minimum=0, integer=False) or None,
        poll_quota_per_credit=int(_number(config, "POLL_QUOTA_PER_CREDIT", "1", minimum=1)),
        poll_overlap_seconds=int(_number(config, "POLL_OVERLAP_SECONDS", "300", minimum=0)),
        poll_lookback_hours=int(_number(config, "POLL_LOOKBACK_HOURS", "24", minimum=1)),
        credit_rate_limit=int(_number(config, "CREDIT_RATE_LIMIT", "0", minimum=0)) or None,
        body_timeout=_number(config, "BODY_READ_TIMEOUT", "10", minimum=0.1, integer=False),
        usage_match_seconds=_number(config, "USAGE_MATCH_SECONDS", "10", minimum=0, integer=False),
        gateway_enforcement=enforcement,
        suspend_at_balance=_balance(config, "SUSPEND_AT_BALANCE", "0"),
        low_balance_at=None if low is None else _balance(config, "LOW_BALANCE_AT", low),
        alert_webhook_url=alert_url,
        alert_webhook_secret=alert_key,
        gateway_token=tokens["GATEWAY_TOKEN"],
        metrics_token=tokens["METRICS_TOKEN"],
        litellm_base_url=litellm["LITELLM_BASE_URL"],
        litellm_master_key=litellm["LITELLM_MASTER_KEY"],
        portal_secret=tokens["PORTAL_SECRET"],
        public_base_url=None if public is None else public.rstrip("/"),
        credit_packages=packages,
        stripe_webhook_secret=stripe["STRIPE_WEBHOOK_SECRET"],
        stripe_api_key=stripe["STRIPE_API_KEY"],
        epay_url=epay["EPAY_URL"],
        epay_pid=epay["EPAY_PID"],
        epay_key=epay["EPAY_KEY"],
        log_level=config("LOG_LEVEL", default="info").strip().lower() or "info",
        webhook_writer=_choice(config, "WEBHOOK_WRITER", WRITER_MODES),
    )


def _choice(config: Config, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when unset), case and surrounding space ignored."""
    value = config(name, default=choices[0]).strip().lower() or choices[0]
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _balance(config: Config, name: str, default: str) -> int:
    value = int(_number(config, name, default, minimum=-MAX_BALANCE))
    if value > MAX_BALANCE:
        raise SettingsError(f"{name} must be at most {MAX_BALANCE}")
    return value


def _payments(config: Config) -> tuple[tuple[CreditPackage, ...], dict[str, str | None], dict[str, str | None]]:
    """CREDIT_PACKAGES, STRIPE_* and EPAY_* (docs/payments.md): each provider's settings go together."""
    try:
        packages = parse_packages(config("CREDIT_PACKAGES", default=""))
    except PackageError as error:
        raise SettingsError(f"CREDIT_PACKAGES: {error}") from None
    stripe = {name: _optional(config, name) for name in ("STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY")}
    if stripe["STRIPE_WEBHOOK_SECRET"] is not None and not stripe["STRIPE_WEBHOOK_SECRET"].startswith("whsec_"):
        raise SettingsError("STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret (whsec_…)")
    if any(stripe.values()) and importlib.util.find_spec("stripe") is None:
        raise SettingsError("STRIPE_WEBHOOK_SECRET, STRIPE_API_KEY: Stripe needs pip install 'creditrelay[stripe]'")
    epay = {name: _optional(config, name) for name in ("EPAY_URL", "EPAY_PID", "EPAY_KEY")}
    if any(epay.values()) and not all(epay.values()):
        missing = ", ".join(name for name, value in epay.items() if not value)
        raise SettingsError(f"{missing}: EPay needs EPAY_URL, EPAY_PID and EPAY_KEY")
    if epay["EPAY_URL"] is not None and not web_url(epay["EPAY_URL"]):
        raise SettingsError("EPAY_URL must be an http:// or https:// URL with a host (the gateway's submit.php)")
    pid = epay["EPAY_PID"]
    if pid is not None and (len(pid) > 64 or not pid.isascii() or not pid.isalnum()):
        raise SettingsError("EPAY_PID must be the merchant id EPay gave (letters and digits)")
    return packages, stripe, epay
