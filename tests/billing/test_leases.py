"""billing/leases.py: work one instance of many does at a time — one holder, renewed while it lives, taken
over once it has run out or been given up."""

from datetime import datetime, timedelta

from sqlalchemy import Connection

from creditrelay.billing.leases import give_up_lease, take_lease
from tests.support.database import Database
from tests.support.ledger import NOW, concurrently, in_transaction

WORK = "poll:new-api"
MINUTE = timedelta(seconds=60)


def take(database: Database, holder: str, seconds_later: float = 0, name: str = WORK) -> bool:
    at = NOW + timedelta(seconds=seconds_later)
    return in_transaction(database, lambda c: take_lease(c, name, holder, at, MINUTE))


def test_one_holder_at_a_time_until_its_lease_runs_out(database: Database) -> None:
    """The first instance takes the lease and renews it; another cannot take it while it runs, and takes
    it over once it has run out (its holder died); the first then finds it lost."""
    assert take(database, "instance-1")
    assert not take(database, "instance-2")
    assert take(database, "instance-1", 50)  # renewed: a minute from then
    assert not take(database, "instance-2", 100)
    assert take(database, "instance-2", 111)
    assert not take(database, "instance-1", 112)


def test_a_lease_given_up_is_taken_at_once(database: Database) -> None:
    """An instance that stops cleanly gives its lease up: another takes it without waiting it out; giving up
    a lease held by someone else changes nothing."""
    assert take(database, "instance-1")
    in_transaction(database, lambda c: give_up_lease(c, WORK, "instance-2", NOW))
    assert not take(database, "instance-2", 1)
    in_transaction(database, lambda c: give_up_lease(c, WORK, "instance-1", NOW + timedelta(seconds=1)))
    assert take(database, "instance-2", 2)


def test_leases_of_different_work_are_independent(database: Database) -> None:
    """A lease names one piece of work: holding one says nothing about another."""
    assert take(database, "instance-1")
    assert take(database, "instance-2", name="other-work")


def test_instances_racing_for_a_lease_get_one_holder(database: Database) -> None:
    """Several instances ask at the same moment, for a lease nobody holds and then for one run out: each
    time exactly one of them holds it."""
    holders = [f"instance-{n}" for n in range(4)]
    for round_at in (NOW, NOW + 2 * MINUTE):

        def ask(connection: Connection, holder: str, at: datetime = round_at) -> bool:
            return take_lease(connection, WORK, holder, at, MINUTE)

        assert sum(concurrently(database, holders, ask)) == 1
