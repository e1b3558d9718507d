"""Leases: work that one instance of many does at a time, such as the poller's passes.

A lease is a row of ``leases`` named after the work. An instance takes it with one insert that skips an
existing row and, when the row exists, one conditional ``UPDATE`` that only matches a lease that is this
holder's or has run out — so of instances asking at once exactly one holds it (a second ``UPDATE`` waits
for the first's row lock, then finds it taken; Galera certifies one of two nodes' updates and the other
runs again). The holder renews it by taking it again before it runs out; if the holder dies, another
instance takes it over once it has. Clocks are the instances' own: they must agree (NTP) to well within
a lease.

The caller owns the transaction, as for every billing function.
"""

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.inserts import insert_new
from creditrelay.schema.tables import leases


def take_lease(connection: Connection, name: str, holder: str, now: datetime, duration: timedelta) -> bool:
    """Hold the lease ``name`` until ``now + duration`` if nobody holds it, its lease ran out, or it is
    ``holder``'s already (a renewal); whether ``holder`` holds it now."""
    until = now + duration
    if insert_new(connection, leases, [{"name": name, "holder": holder, "expiresAt": until}], "name"):
        return True
    taken = connection.execute(
        leases.update()
        .where(leases.c.name == name, sa.or_(leases.c.holder == holder, leases.c.expiresAt <= now))
        .values(holder=holder, expiresAt=until)
    )
    return int(taken.rowcount) == 1


def give_up_lease(connection: Connection, name: str, holder: str, now: datetime) -> None:
    """End ``holder``'s lease on ``name`` now (a clean stop), so another instance takes it at once; a lease
    someone else holds is left alone."""
    connection.execute(leases.update().where(leases.c.name == name, leases.c.holder == holder).values(expiresAt=now))
