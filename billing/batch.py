"""What charging a batch needs, built once per batch and passed down: when it happens, the ledger's rules,
whether its inserts must learn exactly which rows were new, and what its first read already found."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from creditrelay.billing.rules import LedgerRules


class Raced:
    """Another transaction wrote one of the batch's keys first, and the batch's inserts were optimistic
    (``Batch.exact`` false, on a database that only counts what it wrote): the batch stops, its
    transaction is rolled back, and it runs again exactly (``deliveries.deliver``)."""

    def __repr__(self) -> str:
        return "RACED"


RACED = Raced()


@dataclass(slots=True)
class Batch:
    now: datetime
    rules: LedgerRules
    exact: bool = True  # inserts learn which rows were new whatever it costs (see schema.inserts)
    owners: Mapping[str, int] | None = None  # the batch's gateway keys' users, when read in this transaction
    paired: set[str] | None = None  # which of its webhook usage keys paired before, when read
    # of its keys nobody owned, the users their mapped gateway user makes them bill (billing.autolink),
    # when read with ``owners`` (which then holds them too)
    automatic: Mapping[str, int] | None = None
    linked: set[str] = field(default_factory=set)  # the keys the batch linked automatically
