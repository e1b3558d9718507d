"""billing/holds.py: a hold is placed only when the available credits cover it, exactly what fits under
concurrency, once per request id; a usage settles it once, at its actual cost; void and timeout release."""

from datetime import timedelta

import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import top_up
from creditrelay.billing.expiry import expire_once
from creditrelay.billing.grants import GrantTerms
from creditrelay.billing.holds import (
    GATEWAY,
    VOIDED,
    HoldConflict,
    HoldError,
    HoldOutcome,
    HoldRequest,
    capture,
    end_hold,
    held,
    place_hold,
)
from creditrelay.billing.usage import Usage, UsageStatus, apply_usage
from tests.support.database import Database
from tests.support.ledger import NOW, assert_ledger_consistent, concurrently, in_transaction, make_user


def hold(database: Database, user: int, amount: int, request_id: str | None = None, **more: object) -> HoldOutcome:
    asked = HoldRequest(user, amount, GATEWAY, request_id=request_id, **more)  # type: ignore[arg-type]
    return in_transaction(database, lambda c: place_hold(c, asked, 0, NOW))


def usage(
    key: str, cost: int, hold_id: int | None = None, request_id: str | None = None, source: str = "webhook"
) -> Usage:
    return Usage(
        usage_key=f"req:{request_id}" if request_id else key, remote_key_id="k1", model="gpt-4", credit_cost=cost,
        used_at=NOW, source=source, event_id=key, request_id=request_id, hold_id=hold_id,
    )  # fmt: skip


def state(database: Database, hold_id: int) -> tuple[str, int | None]:
    row = database.rows("SELECT state, settled FROM credit_holds WHERE id = :id", id=hold_id)[0]
    return (row.state, row.settled)


def open_holds(database: Database) -> int:
    return int(database.scalar("SELECT openHolds FROM users"))


def test_a_hold_is_refused_when_the_available_credits_do_not_cover_it(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 100, "k1")
    first = hold(database, alice, 70)
    assert (first.allowed, first.available) == (True, 30)
    refused = hold(database, alice, 31)
    assert (refused.allowed, refused.available, refused.hold) == (False, 30, None)
    assert (database.count("credit_holds"), open_holds(database)) == (1, 1)
    assert database.scalar("SELECT balance FROM users") == 100  # a hold moves no balance


def test_the_suspension_line_is_not_available(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 100, "k1")
    asked = HoldRequest(alice, 60, GATEWAY)
    outcome = in_transaction(database, lambda c: place_hold(c, asked, 50, NOW))
    assert (outcome.allowed, outcome.available) == (False, 50)


def test_fifty_holds_at_once_take_exactly_what_fits(database: Database) -> None:
    """Each hold locks the member's row and sums the open holds under the lock: 10 of 50 fit."""
    alice = make_user(database, "alice@example.com", 100, "k1")
    asked = [HoldRequest(alice, 10, GATEWAY, request_id=f"r{i}") for i in range(50)]
    outcomes = concurrently(database, asked, lambda c, a: place_hold(c, a, 0, NOW))
    assert sum(o.allowed for o in outcomes) == 10
    assert in_transaction(database, lambda c: held(c, [alice], NOW)) == {alice: 100}
    assert open_holds(database) == 10


def test_the_same_request_id_is_the_same_hold(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 100, "k1")
    bob = make_user(database, "bob@example.com", 100, "k2")
    first = hold(database, alice, 60, "req-1")
    again = hold(database, alice, 60, "req-1")
    assert first.hold is not None
    assert again.hold is not None
    assert (again.hold.id, again.allowed, database.count("credit_holds")) == (first.hold.id, True, 1)
    with pytest.raises(HoldConflict):
        hold(database, bob, 5, "req-1")
    with pytest.raises(HoldError, match="ttlSeconds"):
        hold(database, alice, 5, ttl_seconds=86_401)


def test_a_usage_settles_its_hold_once_at_its_actual_cost(database: Database) -> None:
    """By holdId: charged what it cost (more than held here), the hold closed; the same usage again, or
    another naming the same hold, settles nothing more."""
    alice = make_user(database, "alice@example.com", 100, "k1")
    placed = hold(database, alice, 40).hold
    assert placed is not None
    [charged] = in_transaction(database, lambda c: apply_usage(c, [usage("e1", 55, hold_id=placed.id)], NOW))
    assert (charged.status, charged.balance) == (UsageStatus.CHARGED, 45)
    assert (state(database, placed.id), open_holds(database)) == (("settled", 55), 0)
    [again] = in_transaction(database, lambda c: apply_usage(c, [usage("e1", 55, hold_id=placed.id)], NOW))
    assert again.status is UsageStatus.DUPLICATE
    in_transaction(database, lambda c: apply_usage(c, [usage("e2", 7, hold_id=placed.id)], NOW))
    assert state(database, placed.id) == ("settled", 55)
    assert database.scalar("SELECT balance FROM users") == 38
    assert_ledger_consistent(database)


def test_a_usage_naming_a_credit_api_hold_leaves_it_to_its_client(database: Database) -> None:
    """A usage's holdId settles gateway holds only: a credit-API client's hold stays open for its capture."""
    alice = make_user(database, "alice@example.com", 100, "k1")
    asked = HoldRequest(alice, 30, "credit_api:bot", request_id="job-1", ttl_seconds=60)
    placed = in_transaction(database, lambda c: place_hold(c, asked, 0, NOW)).hold
    assert placed is not None
    [charged] = in_transaction(database, lambda c: apply_usage(c, [usage("e1", 12, hold_id=placed.id)], NOW))
    assert charged.status is UsageStatus.CHARGED
    assert (state(database, placed.id)[0], open_holds(database)) == ("open", 1)
    captured = in_transaction(database, lambda c: capture(c, placed.id, "credit_api:bot", 30, NOW))
    assert captured.state == "captured"
    assert database.scalar("SELECT balance FROM users") == 58
    assert_ledger_consistent(database)


def test_a_usage_settles_the_hold_of_its_request_id_whichever_path_comes_first(database: Database) -> None:
    """A polled row carries no holdId, but its request id names the hold; the webhook after it is a
    duplicate and settles nothing again."""
    alice = make_user(database, "alice@example.com", 100, "k1")
    placed = hold(database, alice, 30, "req-9").hold
    assert placed is not None
    polled = usage("p1", 12, request_id="req-9", source="poll")
    in_transaction(database, lambda c: apply_usage(c, [polled], NOW))
    assert state(database, placed.id) == ("settled", 12)
    webhook = usage("e9", 12, hold_id=placed.id, request_id="req-9")
    [late] = in_transaction(database, lambda c: apply_usage(c, [webhook], NOW))
    assert late.status is UsageStatus.DUPLICATE
    assert (database.scalar("SELECT balance FROM users"), open_holds(database)) == (88, 0)


def test_a_hold_past_its_ttl_is_not_held_and_the_pass_closes_it(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 100, "k1")
    hold(database, alice, 100, ttl_seconds=60)
    assert hold(database, alice, 1).allowed is False
    later = NOW + timedelta(seconds=61)
    asked = HoldRequest(alice, 100, GATEWAY)
    assert in_transaction(database, lambda c: place_hold(c, asked, 0, later)).allowed  # released at once
    assert expire_once(database.engine, lambda: later).holds == 1
    assert database.count("credit_holds", "state = 'expired'") == 1
    assert open_holds(database) == 1


def test_void_releases_and_a_second_void_changes_nothing(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 100, "k1")
    placed = hold(database, alice, 100).hold
    assert placed is not None

    def void(connection: Connection) -> str:
        return end_hold(connection, placed.id, GATEWAY, VOIDED, NOW).state

    assert in_transaction(database, void) == "voided"
    assert in_transaction(database, void) == "voided"
    assert (open_holds(database), hold(database, alice, 100).allowed) == (0, True)


def test_a_grant_past_its_expiry_is_not_available_to_a_hold(database: Database) -> None:
    alice = make_user(database, "alice@example.com", 0, "k1")
    terms = GrantTerms(expires_at=NOW + timedelta(minutes=1))
    in_transaction(database, lambda c: top_up(c, alice, 50, "trial", NOW, terms=terms))
    asked = HoldRequest(alice, 10, GATEWAY)
    outcome = in_transaction(database, lambda c: place_hold(c, asked, 0, NOW + timedelta(minutes=2)))
    assert (outcome.allowed, outcome.available) == (False, 0)
    assert database.count("credit_transactions", "type = 'expiry'") == 1


def test_a_request_id_whose_hold_ended_is_refused_not_answered_as_held(database: Database) -> None:
    """A hold voided, settled or past its time sets nothing aside: asking again by its request id is a
    conflict naming its state, never ``allowed`` on credits nobody holds."""
    alice = make_user(database, "alice@example.com", 100, "k1")
    placed = hold(database, alice, 100, "req-void").hold
    assert placed is not None
    in_transaction(database, lambda c: end_hold(c, placed.id, GATEWAY, VOIDED, NOW))
    with pytest.raises(HoldConflict, match="voided"):
        hold(database, alice, 100, "req-void")
    timed = hold(database, alice, 100, "req-late", ttl_seconds=60).hold
    assert timed is not None
    late = HoldRequest(alice, 100, GATEWAY, request_id="req-late")
    with pytest.raises(HoldConflict, match="expired"):
        in_transaction(database, lambda c: place_hold(c, late, 0, NOW + timedelta(seconds=61)))


def test_a_hold_past_its_time_cannot_be_captured(database: Database) -> None:
    """Once past its expiry a hold is no longer counted, so its credits may be spent by others: a capture
    then is a conflict, not an overdraft."""
    alice = make_user(database, "alice@example.com", 100, "k1")
    asked = HoldRequest(alice, 100, "credit_api:bot", request_id="job-1", ttl_seconds=60)
    placed = in_transaction(database, lambda c: place_hold(c, asked, 0, NOW)).hold
    assert placed is not None
    later = NOW + timedelta(seconds=61)
    with pytest.raises(HoldConflict, match="expired"):
        in_transaction(database, lambda c: capture(c, placed.id, "credit_api:bot", 100, later))
    assert database.scalar("SELECT balance FROM users") == 100
