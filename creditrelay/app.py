"""How creditrelay is put together from its settings: the ledger's engine with its rules.

Every entry point (``serve``, the cron commands, the account commands) opens the ledger here, so what a
ledger transaction does beside moving balances — gateway intents, alerts, learning gateway user ids, how
far apart a usage's two paths may pair — is what the settings say, set once where the engine is made.
"""

from sqlalchemy import Engine

from creditrelay.billing.rules import LedgerRules, with_rules
from creditrelay.schema.database import make_engine
from creditrelay.settings import Settings


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
