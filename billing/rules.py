"""What a ledger's transactions do beside moving balances, set once where its engine is opened: whether a
balance crossing the suspension line queues a gateway intent and an alert, where the lines are, whether
the gateway's user ids are learnt, and how far apart a usage's webhook and log row may be to pair.

The rules travel with the engine (an execution option), so every connection and transaction made from it
carries them, and a batch reads them once (``rules_of``). An engine opened without rules writes no
intents and no alerts, and pairs within the default tolerance: what a test or a tool opening a database
of its own gets.
"""

from dataclasses import dataclass

from sqlalchemy import Connection, Engine

DEFAULT_TOLERANCE = 10.0  # seconds between a log row's created_at and its webhook's timestamp
_OPTION = "creditrelay_ledger_rules"


@dataclass(frozen=True)
class LedgerRules:
    enforce: bool = False  # write gateway intents (GATEWAY_ENFORCEMENT is not off)
    alerts: bool = False  # write alerts (ALERT_WEBHOOK_URL is set)
    suspend_at: int = 0  # a balance at or below this is suspended
    low_at: int | None = None  # a balance dropping below this is low
    learn_users: bool = False  # keep the gateway's user ids the usages report (GATEWAY_ENFORCEMENT=users)
    admin_gateway_user: str | None = None  # NEW_API_USER_ID: the gateway account that is nobody's
    match_seconds: float = DEFAULT_TOLERANCE  # how far apart a usage's two paths may be (billing.matching)

    def suspended(self, balance: int) -> bool:
        return balance <= self.suspend_at


NO_RULES = LedgerRules()


def with_rules(engine: Engine, rules: LedgerRules) -> Engine:
    """``engine``, its connections carrying ``rules`` (the same pool: a view of the engine, not a copy)."""
    return engine.execution_options(**{_OPTION: rules})


def rules_of(connection: Connection) -> LedgerRules:
    """The rules of the engine ``connection`` came from (``NO_RULES`` when it was opened without)."""
    rules: LedgerRules = connection.get_execution_options().get(_OPTION, NO_RULES)
    return rules
