"""A push on a slow gateway makes progress: the targets the gateway confirmed are kept for the intent's
version, the next pass calls only the others, and calls overlap (a bounded number at a time)."""

import dataclasses
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from creditrelay.app import make_enforcer
from creditrelay.billing.accounts import top_up
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.enforcement import EnforceConfig, Enforcer, read_progress, write_progress
from creditrelay.billing.rules import LedgerRules
from creditrelay.schema.database import utc
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.tables import gateway_states
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi
from tests.support.ledger import NOW, in_transaction, make_user
from tests.support.receiver import settings_for
from tests.support.signing import encode, usage_event

TOKENS = EnforceConfig("tokens")


class Clock:
    """Seconds that pass only when told to (by a gateway call, or between passes)."""

    def __init__(self) -> None:
        self.now = NOW.timestamp()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


@dataclasses.dataclass
class SlowGateway:
    """new-api's token access as an object: each call takes ``seconds`` of the clock, as if no two calls
    overlapped (the worst case for a push); ``down`` refuses every call; ``during`` runs inside each."""

    clock: Clock
    seconds: float
    down: bool = False
    during: Callable[[int], None] = lambda _calls: None
    calls: list[tuple[int, bool]] = dataclasses.field(default_factory=list)  # (token, enabled), in call order
    enabled: dict[int, bool] = dataclasses.field(default_factory=dict)

    def set_token_status(self, token_id: int, enabled: bool) -> None:
        self.clock.advance(self.seconds)
        if self.down:
            raise UpstreamError("new-api answered HTTP 502")
        with self.clock.lock:
            self.calls.append((token_id, enabled))
            self.enabled[token_id] = enabled
            count = len(self.calls)
        self.during(count)

    def set_user_enabled(self, user_id: int, enabled: bool) -> None:
        raise AssertionError("tokens mode never calls this")


def suspended_with_keys(database: Database, keys: range) -> int:
    """A user owning ``keys`` whose balance just crossed zero: a suspension to push, nothing pushed yet."""
    user = make_user(database, "alice@example.com", 5, *map(str, keys))  # linked before the watch: no intent
    database.rule(LedgerRules(enforce=True))
    deliver(database.engine, [parse_event(encode(usage_event("evt-1", cost=10, key=keys[0])))], NOW)
    return user


def slow_enforcer(database: Database, gateway: SlowGateway, config: EnforceConfig = TOKENS) -> Enforcer:
    clock = gateway.clock
    return Enforcer(database.engine, gateway, config, clock=clock, monotonic=clock)


def waiting(database: Database) -> bool:
    return bool(database.scalar("SELECT version - applied FROM gateway_states"))


def state(database: Database) -> tuple[int, datetime]:
    """The intent's attempts and when it is due."""
    with database.engine.connect() as connection:
        query = sa.select(gateway_states.c.attempts, gateway_states.c.nextAttemptAt)
        attempts, due = connection.execute(query).one()
    return attempts, due


def test_every_key_of_a_slow_gateway_is_disabled_within_a_few_passes_each_called_once(database: Database) -> None:
    """40 keys at 0.4 s a call outlast one push: the next pass calls only the keys not yet confirmed."""
    keys = range(500, 540)
    suspended_with_keys(database, keys)
    gateway = SlowGateway(Clock(), 0.4)
    enforcer = slow_enforcer(database, gateway)
    passes = 0
    while waiting(database) and passes < 10:
        enforcer.run_once()
        passes += 1
        gateway.clock.advance(1.0)  # serve's loop: a pass about every second
    assert sorted(token for token, _ in gateway.calls) == list(keys)  # the last one too; none twice
    assert gateway.enabled == dict.fromkeys(keys, False)
    assert passes <= 3


def test_forty_keys_of_a_slow_new_api_are_disabled_in_the_first_passes_of_serve(
    database: Database, api: FakeNewApi
) -> None:
    """new-api taking 0.4 s per call, over HTTP: the enforcer serve and enforce run disables 40 keys in a
    few seconds, a bounded number of calls overlapping."""
    keys = range(500, 540)
    for key in keys:
        api.token(key)
    suspended_with_keys(database, keys)
    api.access_delay = 0.4
    settings = dataclasses.replace(
        settings_for(database),
        gateway_enforcement="tokens",
        new_api_base_url=api.url,
        new_api_admin_token=ADMIN_TOKEN,
        new_api_user_id=ADMIN_USER,
    )
    enforcer = make_enforcer(settings, database.engine)
    for _ in range(3):
        enforcer.run_once()
    assert {key: api.tokens[key]["status"] for key in keys} == dict.fromkeys(keys, 2)
    assert sorted(token for _, token, _ in api.access_calls) == list(keys)
    assert 1 < api.most_in_flight <= enforcer.config.concurrency


def test_a_newer_intent_written_during_a_push_starts_with_no_progress(database: Database) -> None:
    """A top-up lands while the suspension is half pushed: the resumption then calls every key, from the
    first, and not the ones the suspension had left."""
    keys = range(600, 610)
    alice = suspended_with_keys(database, keys)
    gateway = SlowGateway(Clock(), 0.4)
    enforcer = slow_enforcer(database, gateway, EnforceConfig("tokens", lease=2.0, concurrency=1))  # 3 calls a pass
    enforcer.run_once()
    assert [call for call, _ in gateway.calls] == [600, 601, 602]

    def top_up_once(count: int) -> None:
        if count == 4:
            in_transaction(database, lambda c: top_up(c, alice, 100, "order-1", NOW))

    gateway.during = top_up_once
    enforcer.run_once()
    assert [call for call, _ in gateway.calls[3:]] == [603, 604, 605]  # resumed where it stopped
    while waiting(database):
        enforcer.run_once()
    assert [call for call, enabled in gateway.calls if enabled] == list(keys)
    assert gateway.enabled == dict.fromkeys(keys, True)
    assert database.scalar("SELECT COUNT(*) FROM gateway_states WHERE progress IS NULL") == 1


def test_a_push_that_confirms_some_targets_is_due_at_once_and_one_that_confirms_none_backs_off(
    database: Database,
) -> None:
    """Progress is not failure: attempts stay as they were and the rest is due now; a pass the gateway
    refuses whole waits 5 s."""
    suspended_with_keys(database, range(700, 706))
    gateway = SlowGateway(Clock(), 0.4)
    enforcer = slow_enforcer(database, gateway, EnforceConfig("tokens", lease=2.0, concurrency=1, attempts=1))
    first = enforcer.run_once()
    assert (first.applied, first.calls, first.failed, first.pending) == (0, 3, 0, 3)
    assert state(database) == (0, utc(gateway.clock()))
    gateway.down = True
    report = enforcer.run_once()  # due at once: no time passed
    assert (report.failed, report.calls) == (1, 3)
    assert state(database) == (1, utc(gateway.clock()) + timedelta(seconds=5))
    assert enforcer.run_once().calls == 0  # not due before then
    gateway.down = False
    gateway.clock.advance(5)
    enforcer.run_once()
    assert sorted(gateway.enabled) == list(range(700, 706))
    assert not waiting(database)


def test_progress_is_read_back_as_written_whatever_a_key_id_holds() -> None:
    """A key id with a newline is one target; a line that is not a JSON string names none."""
    targets = frozenset({"token 17", "key a\nb", "key ä"})
    assert read_progress(write_progress(targets)) == targets
    assert read_progress('"token 17"\nnot json\n42\n') == {"token 17"}
    assert read_progress(None) == frozenset()
