"""How long a slow gateway takes to have every key of a suspended member disabled.

For each scenario (keys, seconds per call) a fresh SQLite ledger holds one member with no credits and
that many linked new-api tokens: one suspension to push. The gateway is an object that takes the given
seconds per call (really waiting, as a slow gateway does; calls may overlap). The enforcer runs as in
``serve``: a pass, then a second's pause, until every key is disabled or ``--limit`` seconds have
passed. Prints, per scenario, the time until the last key was disabled (or how many were still enabled
at the limit), the passes, the calls, the most calls any one key got, and whether the ledger records the
intent as applied (it must, exactly when every key is disabled). Figures are printed, never asserted.

    .venv/bin/python scripts/enforce_convergence.py [--limit 180] [--concurrency N]

To measure another checkout's enforcer (say main's, exported with ``git archive main | tar -x -C DIR``),
put it first on the path: ``PYTHONPATH=DIR .venv/bin/python scripts/enforce_convergence.py``.
"""

import argparse
import logging
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

import creditrelay
from creditrelay.billing.accounts import NewUser, create_user, link_key
from creditrelay.billing.enforcement import EnforceConfig, Enforcer
from creditrelay.billing.rules import LedgerRules, with_rules
from creditrelay.schema.database import make_engine
from creditrelay.schema.migrate import upgrade
from creditrelay.schema.tables import gateway_states
from creditrelay.schema.transactions import run_transaction

SCENARIOS = ((40, 0.4), (20, 1.0), (6, 3.0))  # the outside tester's: keys, seconds per call
FIRST_KEY = 500


@dataclass
class SlowGateway:
    """new-api's token access, each call taking ``seconds``."""

    seconds: float
    enabled: dict[int, bool] = field(default_factory=dict)
    calls: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_token_status(self, token_id: int, enabled: bool) -> None:
        time.sleep(self.seconds)
        with self.lock:
            self.calls[token_id] += 1
            self.enabled[token_id] = enabled

    def set_user_enabled(self, user_id: int, enabled: bool) -> None:
        raise NotImplementedError("tokens mode only")


def suspended_member(folder: Path, keys: int) -> sa.Engine:
    """A ledger with one member at zero credits owning ``keys`` tokens: their suspension waits."""
    engine = make_engine(sa.make_url(f"sqlite:///{folder / 'ledger.db'}"))
    upgrade(engine)
    engine = with_rules(engine, LedgerRules(enforce=True))
    now = datetime.now(UTC).replace(tzinfo=None)

    def work(connection: sa.Connection) -> None:
        member = create_user(connection, NewUser("member@example.com"), now)
        for key in range(FIRST_KEY, FIRST_KEY + keys):
            link_key(connection, str(key), member.id, now)

    run_transaction(engine, work)
    return engine


def converge(keys: int, seconds: float, limit: float, concurrency: int | None) -> dict[str, Any]:
    gateway = SlowGateway(seconds, dict.fromkeys(range(FIRST_KEY, FIRST_KEY + keys), True))
    options = {} if concurrency is None else {"concurrency": concurrency}
    with tempfile.TemporaryDirectory() as folder:
        engine = suspended_member(Path(folder), keys)
        enforcer = Enforcer(engine, gateway, EnforceConfig("tokens", **options))
        start = time.monotonic()
        passes = 0
        while any(gateway.enabled.values()) and time.monotonic() - start < limit:
            enforcer.run_once()
            passes += 1
            if any(gateway.enabled.values()):
                time.sleep(1.0)  # serve's loop: the next pass a second after this one ended
        elapsed = time.monotonic() - start
        states = gateway_states.c
        with engine.connect() as connection:
            applied = connection.execute(sa.select(states.version == states.applied)).scalar_one()
        engine.dispose()
    left = sum(gateway.enabled.values())
    return {
        "scenario": f"{keys} keys at {seconds:g} s per call",
        "result": f"all disabled after {elapsed:.1f} s" if not left else f"{left} still enabled after {elapsed:.0f} s",
        "passes": passes,
        "calls": sum(gateway.calls.values()),
        "most calls of one key": max(gateway.calls.values(), default=0),
        "intent recorded as applied": bool(applied),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=180.0, help="seconds to give each scenario")
    parser.add_argument("--concurrency", type=int, help="EnforceConfig.concurrency (the code's default if unset)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))  # figures only
    print(f"enforcer from {Path(creditrelay.__file__).resolve().parent}")
    for keys, seconds in SCENARIOS:
        found = converge(keys, seconds, args.limit, args.concurrency)
        print(" | ".join(f"{name}: {value}" for name, value in found.items()), flush=True)


if __name__ == "__main__":
    main()
