"""Prepaid means prepaid: a balance crossing the line writes the gateway intent in its own transaction,
and the enforcer pushes the latest intent to a fake new-api that answers as new-api does."""

import threading
from functools import partial

import pytest
from sqlalchemy import Connection
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from creditrelay.billing.accounts import NewUser, adjust, create_user, link_key, set_gateway_user, top_up
from creditrelay.billing.credit_sync import apply_sync
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.drift import gateway_drift, requeue_drift
from creditrelay.billing.enforcement import EnforceConfig, Enforcer, EnforceReport
from creditrelay.billing.gateways.newapi import NewApiClient
from creditrelay.billing.polling import PollConfig
from creditrelay.billing.reconcile import Reconciler
from creditrelay.billing.rules import LedgerRules
from creditrelay.schema.credit_sync import SyncBody
from creditrelay.schema.errors import UpstreamError
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.fake_newapi import ADMIN_TOKEN, ADMIN_USER, FakeNewApi
from tests.support.ledger import NOW, assert_ledger_consistent, in_transaction, make_user
from tests.support.server import serving
from tests.support.signing import encode, usage_event


def enforcer(database: Database, api: FakeNewApi, mode: str = "tokens", **options: float) -> Enforcer:
    client = NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER)
    return Enforcer(database.engine, client, EnforceConfig(mode, int(ADMIN_USER), wait=0.01, **options))  # type: ignore[arg-type]


def spend(database: Database, event_id: str, cost: int, key: int) -> None:
    deliver(database.engine, [parse_event(encode(usage_event(event_id, cost=cost, key=key)))], NOW)


def statuses(api: FakeNewApi) -> dict[int, int]:
    return {token_id: token["status"] for token_id, token in api.tokens.items()}


@pytest.fixture
def watched(database: Database) -> Database:
    database.rule(LedgerRules(enforce=True))
    return database


def test_crossing_zero_disables_exactly_that_users_keys_and_a_top_up_enables_them(
    watched: Database, api: FakeNewApi
) -> None:
    for token_id in (17, 18, 19):
        api.token(token_id)
    alice = make_user(watched, "alice@example.com", 20, "17", "18")
    make_user(watched, "bob@example.com", 100, "19")
    assert enforcer(watched, api).run_once().calls == 3  # a linked key takes its user's state: enabled
    spend(watched, "evt-1", 15, 17)
    assert enforcer(watched, api).run_once().calls == 0  # still above zero: nothing to say
    spend(watched, "evt-2", 5, 18)  # exactly zero: suspended
    report = enforcer(watched, api).run_once()
    assert (report.applied, report.calls) == (1, 2)
    assert statuses(api) == {17: 2, 18: 2, 19: 1}

    spend(watched, "evt-2", 5, 18)  # a redelivery changes nothing
    assert enforcer(watched, api).run_once().calls == 0
    in_transaction(watched, lambda c: top_up(c, alice, 50, "order-1", NOW))
    in_transaction(watched, lambda c: top_up(c, alice, 50, "order-1", NOW))  # a duplicate top-up: nothing more
    assert enforcer(watched, api).run_once().calls == 2
    assert statuses(api) == {17: 1, 18: 1, 19: 1}
    recorded = watched.rows("SELECT target, action, ok FROM gateway_calls ORDER BY id")[3:]  # after the links'
    assert [tuple(r) for r in recorded] == [
        ("token 17", "suspend", 1), ("token 18", "suspend", 1), ("token 17", "resume", 1), ("token 18", "resume", 1),
    ]  # fmt: skip
    assert_ledger_consistent(watched)


def test_nothing_is_written_without_a_watch(database: Database, api: FakeNewApi) -> None:
    api.token(17)
    make_user(database, "alice@example.com", 5, "17")
    spend(database, "evt-1", 10, 17)
    assert database.count("gateway_states") == 0
    assert database.count("outbox_events") == 0


def test_a_gateway_answering_502_three_times_still_converges(watched: Database, api: FakeNewApi) -> None:
    api.token(17)
    make_user(watched, "alice@example.com", 5, "17")
    spend(watched, "evt-1", 10, 17)
    api.access_502 = 3
    clock = [NOW.timestamp()]
    first = Enforcer(
        watched.engine,
        NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER),
        EnforceConfig("tokens", attempts=2, wait=0.01),
        clock=lambda: clock[0],
    )
    assert first.run_once().failed == 1  # two 502s: tried again later, not now
    assert first.run_once().calls == 0
    assert "502" in str(watched.scalar("SELECT lastError FROM gateway_states"))
    clock[0] += 10
    assert first.run_once().applied == 1  # one more 502, then done
    assert statuses(api) == {17: 2}
    assert watched.scalar("SELECT COUNT(*) FROM gateway_calls WHERE ok = :no", no=False) == 1


def test_the_last_intent_wins_when_the_gateway_comes_back(watched: Database, api: FakeNewApi) -> None:
    api.token(17)
    alice = make_user(watched, "alice@example.com", 5, "17")
    spend(watched, "evt-1", 10, 17)  # suspend
    in_transaction(watched, lambda c: top_up(c, alice, 100, "order-1", NOW))  # resume, before any push
    assert enforcer(watched, api).run_once().applied == 1
    assert api.access_calls == [("token", 17, 1)]  # enabled, never disabled
    assert watched.scalar("SELECT version - applied FROM gateway_states") == 0


def test_a_user_created_without_credits_starts_suspended_and_a_linked_key_is_disabled(
    watched: Database, api: FakeNewApi
) -> None:
    api.token(21)
    api.token(22, status=2)
    bare = make_user(watched, "new@example.com", 0)
    assert enforcer(watched, api).run_once().calls == 0  # suspended, with no key to disable yet
    in_transaction(watched, lambda c: link_key(c, "21", bare, NOW))
    enforcer(watched, api).run_once()
    assert statuses(api) == {21: 2, 22: 2}  # 22: disabled by hand before, nobody's yet
    funded = make_user(watched, "funded@example.com", 10)
    assert enforcer(watched, api).run_once().calls == 0
    in_transaction(watched, lambda c: link_key(c, "22", funded, NOW))  # a key moved from broke@ to a payer
    enforcer(watched, api).run_once()
    assert statuses(api) == {21: 2, 22: 1}
    in_transaction(watched, lambda c: link_key(c, "21", funded, NOW))
    enforcer(watched, api).run_once()
    assert statuses(api) == {21: 1, 22: 1}  # enabled again with its new, paying user


def test_two_enforcers_push_each_intent_once(watched: Database, api: FakeNewApi) -> None:
    keys = [str(k) for k in range(30, 40)]
    for key in keys:
        api.token(int(key))
    for index, key in enumerate(keys):
        make_user(watched, f"u{index}@example.com", 1, key)
        spend(watched, f"evt-{key}", 1, int(key))
    pair = [enforcer(watched, api), enforcer(watched, api)]
    start = threading.Barrier(2)

    def run(one: Enforcer) -> None:
        start.wait()
        one.run_once()

    threads = [threading.Thread(target=run, args=(one,)) for one in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(call[1] for call in api.access_calls) == [int(k) for k in keys]
    assert watched.count("gateway_calls") == len(keys)


def test_a_token_of_another_account_is_refused_and_recorded(watched: Database, api: FakeNewApi) -> None:
    api.token(40, owner=5)
    make_user(watched, "alice@example.com", 1, "40")
    spend(watched, "evt-1", 1, 40)
    report = enforcer(watched, api, attempts=1).run_once()
    assert report.failed == 1
    assert "record not found" in str(watched.scalar("SELECT lastError FROM gateway_states"))
    assert statuses(api) == {40: 1}


def test_users_mode_disables_the_gateway_user_and_never_its_own_account(watched: Database, api: FakeNewApi) -> None:
    api.users.update({7: 1, int(ADMIN_USER): 1})
    alice = make_user(watched, "alice@example.com", 5, "17")
    in_transaction(watched, lambda c: set_gateway_user(c, alice, "7", NOW))
    spend(watched, "evt-1", 10, 17)
    assert enforcer(watched, api, "users").run_once().applied == 1
    assert api.users[7] == 2
    mallory = make_user(watched, "mallory@example.com", 5, "18")
    in_transaction(watched, lambda c: set_gateway_user(c, mallory, ADMIN_USER, NOW))
    spend(watched, "evt-2", 10, 18)
    report = enforcer(watched, api, "users", attempts=1).run_once()
    assert report.failed == 1
    assert api.users[int(ADMIN_USER)] == 1


def test_reconcile_reads_access_back_reports_drift_and_fix_queues_it_again(watched: Database, api: FakeNewApi) -> None:
    api.token(17, status=2)  # someone disabled it by hand, though alice has credits
    api.token(18)
    api.token(19, owner=5)  # not ours to read
    make_user(watched, "alice@example.com", 50, "17")
    make_user(watched, "bob@example.com", 50, "18", "19")
    client = NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER)
    access = partial(gateway_drift, watched.engine, client, "tokens", 0)
    reconciler = Reconciler(watched.engine, None, PollConfig(), access=access)
    found = reconciler.run(0, 1, fix=False, now=NOW)
    assert sorted((f.kind, f.subject) for f in found.findings) == [
        ("gateway_drift", "token 17"), ("gateway_unreadable", "token 19"),
    ]  # fmt: skip
    fixed = reconciler.run(0, 1, fix=True, now=NOW)
    assert fixed.fixed == {"users whose gateway access was queued again": 1}
    enforcer(watched, api).run_once()
    assert api.tokens[17]["status"] == 1
    assert [(f.kind, f.subject) for f in reconciler.run(0, 1, fix=False, now=NOW).findings] == [
        ("gateway_unreadable", "token 19")
    ]


def test_users_mode_learns_the_gateway_user_from_what_the_gateway_says_but_the_operator_wins(
    database: Database, api: FakeNewApi
) -> None:
    database.rule(LedgerRules(enforce=True, learn_users=True))
    api.users.update({7: 1, 8: 1, 9: 1})
    alice = make_user(database, "alice@example.com", 5, "17")
    bob = make_user(database, "bob@example.com", 5, "18")
    told = usage_event("evt-1", cost=1, key=17)
    told["data"]["userId"] = 7
    deliver(database.engine, [parse_event(encode(told))], NOW)
    in_transaction(database, lambda c: set_gateway_user(c, bob, "9", NOW))
    other = usage_event("evt-2", cost=1, key=18)
    other["data"]["userId"] = 8  # the gateway says 8; the operator said 9
    deliver(database.engine, [parse_event(encode(other))], NOW)
    learned = dict(database.rows("SELECT id, gatewayUserId FROM users ORDER BY id"))
    assert learned == {alice: "7", bob: "9"}
    spend(database, "evt-3", 10, 17)
    spend(database, "evt-4", 10, 18)
    enforcer(database, api, "users").run_once()
    assert api.users == {7: 2, 8: 1, 9: 2}


def test_credit_api_and_adjust_cross_the_line_too(watched: Database, api: FakeNewApi) -> None:
    """A credit API deduction that empties a balance suspends, its top-up resumes; an adjust suspends."""
    api.token(17)
    api.token(18)

    def telegram_user(connection: Connection) -> int:
        created = create_user(connection, NewUser("tg@example.com", telegram_id=555, opening_credits=30), NOW)
        link_key(connection, "17", created.id, NOW)
        return created.id

    in_transaction(watched, telegram_user)

    def body(amount: int, reference: str) -> SyncBody:
        return SyncBody(
            telegram_id=555, amount=amount, source="bot", reason="vip", timestamp=1, token="0" * 64,
            external_reference=reference,
        )  # fmt: skip

    spent = body(-30, "order-1")
    in_transaction(watched, lambda c: apply_sync(c, spent, NOW))
    enforcer(watched, api).run_once()
    assert statuses(api)[17] == 2
    paid = body(10, "order-2")
    in_transaction(watched, lambda c: apply_sync(c, paid, NOW))
    enforcer(watched, api).run_once()
    assert statuses(api)[17] == 1

    bob = make_user(watched, "bob@example.com", 20, "18")
    in_transaction(watched, lambda c: adjust(c, bob, -25, "ticket-1", "charged back", NOW))
    enforcer(watched, api).run_once()
    assert statuses(api) == {17: 1, 18: 2}


def test_a_push_that_outlived_its_lease_cannot_leave_the_newer_intent_undone(
    watched: Database, api: FakeNewApi
) -> None:
    """A claims the suspension and hangs; a top-up queues a resume; B pushes it after A's lease ran out;
    A's late call disables the key again — so A's settle, finding its lease gone, queues the current
    intent once more, and the next pass enables the key."""
    api.token(17)
    alice = make_user(watched, "alice@example.com", 5, "17")
    enforcer(watched, api).run_once()
    spend(watched, "evt-1", 10, 17)
    clock = [NOW.timestamp()]
    client = NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER)
    slow = Enforcer(watched.engine, client, EnforceConfig("tokens"), owner="a", clock=lambda: clock[0])
    fast = Enforcer(watched.engine, client, EnforceConfig("tokens"), owner="b", clock=lambda: clock[0])
    claimed = in_transaction(watched, partial(slow._claim, user_id=alice))
    assert claimed is not None
    assert claimed.desired == "suspend"
    in_transaction(watched, lambda c: top_up(c, alice, 100, "order-1", NOW))
    clock[0] += 60  # A's lease is over
    assert fast.run_once().applied == 1  # the resume
    assert statuses(api) == {17: 1}
    slow._push(alice, claimed, EnforceReport())  # A's call lands late
    assert statuses(api) == {17: 2}
    assert fast.run_once().applied == 1
    assert statuses(api) == {17: 1}


def test_reconcile_fix_queues_what_the_balance_says_when_it_fixes_not_when_it_looked(
    watched: Database, api: FakeNewApi
) -> None:
    api.token(17)
    alice = make_user(watched, "alice@example.com", 5, "17")
    enforcer(watched, api).run_once()
    spend(watched, "evt-1", 10, 17)  # -5: suspend queued, not pushed: the key is still enabled
    drift = gateway_drift(watched.engine, NewApiClient(api.url, ADMIN_TOKEN, ADMIN_USER), "tokens", 0)
    assert [d.desired for d in drift] == ["suspend"]
    in_transaction(watched, lambda c: top_up(c, alice, 100, "order-1", NOW))  # 95 before --fix acts
    assert requeue_drift(watched.engine, drift, 0, NOW) == 1
    assert watched.scalar("SELECT desired FROM gateway_states") == "resume"


def test_users_mode_parks_an_intent_until_the_gateway_user_is_known(database: Database, api: FakeNewApi) -> None:
    database.rule(LedgerRules(enforce=True, learn_users=True))
    api.users[7] = 1
    alice = make_user(database, "alice@example.com", 5, "17")
    spend(database, "evt-1", 10, 17)
    parked = enforcer(database, api, "users").run_once()
    assert (parked.applied, parked.calls, parked.failed) == (1, 0, 0)  # nothing to call, nothing failed
    told = usage_event("evt-2", cost=1, key=17)
    told["data"]["userId"] = 7
    deliver(database.engine, [parse_event(encode(told))], NOW)  # the gateway says who alice is
    assert enforcer(database, api, "users").run_once().calls == 1
    assert api.users[7] == 2
    assert database.scalar("SELECT gatewayUserId FROM users WHERE id = :u", u=alice) == "7"


def test_an_answer_that_is_not_json_is_an_upstream_error() -> None:
    async def garbage(_request: object) -> Response:
        return Response(b'{"success": true, "message": "\\xff\\xfe', media_type="application/json")

    app = Starlette(routes=[Route("/api/token/", garbage, methods=["PUT"])])
    with serving(app) as url, pytest.raises(UpstreamError, match="not JSON"):
        NewApiClient(url, ADMIN_TOKEN, ADMIN_USER).set_token_status(1, False)
