"""Which arrivals are the same usage as one the other path charged: a maximum one-to-one matching on a line.

The usages of one fingerprint (``billing.matching``) are points in time on two sides: the *slots* — usages the
other path charged, each free or holding the one arrival that paired with it (which charged nothing) — and
the *arrivals* of this path looking for one. An arrival and a slot may pair when their times are at most the
tolerance apart. Every arrival that finds a slot is a usage not charged twice, so the arrivals placed must be
as many as can be: a maximum matching. Taking the nearest free slot is not one (two twins five seconds apart,
the webhook's clock six seconds behind the log's: the first log row takes the second webhook, and the second
row is then too far from the first webhook), so a placement may move arrivals already paired — each to
another slot within its own tolerance — along an *augmenting path* that ends at a free slot (Berge): the
slots held before stay held, one more is taken, and no charge moves.

Among placements that pair as many, the nearest is preferred: arrivals are placed in the order of their
nearest slot, and each search tries the slots nearest in time first and takes the shortest path. An arrival
paired before its time was kept (``Partner.used_at`` unknown) stays where it is.

Pure: it sees what ``matching`` loaded and says what to change. The search is bounded (``SEARCH_LIMIT``
slots per arrival) and says when it wanted slots beyond the loaded window (``Placement.complete``), so the
caller can load a wider one.
"""

import bisect
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

SEARCH_LIMIT = 1000  # slots one arrival's search may visit: a cluster of identical usages larger than this
# pairs what it can nearby, and charges the rest


@dataclass(slots=True)  # values built per usage on the writer: slotted, not frozen (see ledger.Usage)
class Partner:
    """An arrival that paired with a slot, and so charged nothing."""

    usage_key: str
    used_at: datetime | None  # None: paired before this was kept, and so never moved
    credit_cost: int
    paired_at: datetime


@dataclass(slots=True)
class Slot:
    """A usage the other path charged: free, or holding its ``partner``."""

    id: int
    user_id: int
    match_key: str
    used_at: datetime
    credit_cost: int
    partner: Partner | None = None


@dataclass(slots=True)
class Placement:
    """What ``place`` decided: where each placed arrival is, and the slots to write."""

    placed: dict[str, Slot] = field(default_factory=dict)  # arrival key -> the slot that holds it now
    claimed: list[Slot] = field(default_factory=list)  # slots that were free and are held now
    moves: list[tuple[Slot, Partner | None]] = field(default_factory=list)  # (slot, its partner before) changed
    complete: bool = True  # no search wanted a slot outside the window it was given


class _Line:
    """The slots of each fingerprint in time order, with the window they were loaded for."""

    def __init__(self, slots: Iterable[Slot], window: tuple[datetime, datetime], tolerance: float) -> None:
        self.by_key: dict[str, list[Slot]] = {}
        for slot in sorted(slots, key=lambda s: (s.used_at, s.id)):
            self.by_key.setdefault(slot.match_key, []).append(slot)
        self.times = {key: [s.used_at for s in line] for key, line in self.by_key.items()}
        self.window = window
        self.slack = timedelta(seconds=tolerance)
        self.outside = False  # a search asked about times the window does not cover

    def reach(self, at: datetime) -> tuple[datetime, datetime]:
        """The times within the tolerance of ``at``, noting when the window does not cover them."""
        low, high = at - self.slack, at + self.slack
        if low < self.window[0] or high > self.window[1]:
            self.outside = True
        return low, high

    def near(self, match_key: str, at: datetime) -> list[Slot]:
        """The slots within the tolerance of ``at``, nearest first (ties: older slot first)."""
        low, high = self.reach(at)
        line = self.by_key.get(match_key, [])
        times = self.times.get(match_key, [])
        found = line[bisect.bisect_left(times, low) : bisect.bisect_right(times, high)]
        return sorted(found, key=lambda s: (abs(s.used_at - at), s.id))


class Candidate(Protocol):
    """An arrival looking for a slot (``matching.Arrival``)."""

    @property
    def usage_key(self) -> str: ...
    @property
    def match_key(self) -> str: ...
    @property
    def used_at(self) -> datetime: ...
    @property
    def credit_cost(self) -> int: ...


def place(
    arrivals: Sequence[Candidate],
    slots: Iterable[Slot],
    tolerance: float,
    window: tuple[datetime, datetime],
    now: datetime,
) -> Placement:
    """Place as many ``arrivals`` as can be on ``slots`` (loaded for ``window``), moving earlier partners
    along augmenting paths where that places one more; ``slots`` are changed in place."""
    line = _Line(slots, window, tolerance)
    result = Placement()
    before: dict[int, Partner | None] = {}

    def nearest(arrival: Candidate) -> tuple[timedelta, datetime, str]:
        options = line.near(arrival.match_key, arrival.used_at)
        gap = abs(options[0].used_at - arrival.used_at) if options else line.slack * 2
        return gap, arrival.used_at, arrival.usage_key

    # An arrival whose fingerprint has no slot in the window pairs with nothing there: no search, only the
    # note that a wider window is wanted when its own reach passes this one's
    seeking = []
    for arrival in arrivals:
        if arrival.match_key in line.by_key:
            seeking.append(arrival)
        else:
            line.reach(arrival.used_at)
    for arrival in sorted(seeking, key=nearest):
        partner = Partner(arrival.usage_key, arrival.used_at, arrival.credit_cost, now)
        path = _augmenting_path(line, arrival.match_key, partner)
        if path is None:
            continue
        for slot in path:
            before.setdefault(slot.id, slot.partner)
        result.claimed.append(path[-1])
        for index in range(len(path) - 1, 0, -1):  # each partner moves one slot along, the last into the free one
            path[index].partner = path[index - 1].partner
        path[0].partner = partner
        for slot in path:
            assert slot.partner is not None
            result.placed[slot.partner.usage_key] = slot
    placed_now = {a.usage_key for a in arrivals}
    result.placed = {key: slot for key, slot in result.placed.items() if key in placed_now}
    changed = {slot.id: slot for slot in (s for line_slots in line.by_key.values() for s in line_slots)}
    result.moves = [
        (changed[slot_id], partner)
        for slot_id, partner in sorted(before.items())
        if _key(changed[slot_id].partner) != _key(partner)
    ]
    result.complete = not line.outside
    return result


def _key(partner: Partner | None) -> str | None:
    return None if partner is None else partner.usage_key


def _augmenting_path(line: _Line, match_key: str, arrival: Partner) -> list[Slot] | None:
    """The shortest path of slots from one near ``arrival`` to a free one, each next slot near the partner of
    the one before (breadth first, nearest slots first); None when there is none within ``SEARCH_LIMIT``."""
    assert arrival.used_at is not None
    came_from: dict[int, Slot | None] = {}
    queue: deque[Slot] = deque()
    for slot in line.near(match_key, arrival.used_at):
        came_from[slot.id] = None
        queue.append(slot)
    while queue:
        slot = queue.popleft()
        if slot.partner is None:
            path = [slot]
            while (previous := came_from[path[-1].id]) is not None:
                path.append(previous)
            return path[::-1]
        if slot.partner.used_at is None or len(came_from) >= SEARCH_LIMIT:
            continue
        for onward in line.near(match_key, slot.partner.used_at):
            if onward.id not in came_from:
                came_from[onward.id] = slot
                queue.append(onward)
    return None
