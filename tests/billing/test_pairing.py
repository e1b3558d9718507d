"""billing/pairing.py: arrivals are placed on the other path's charged usages as a maximum one-to-one matching
on a line — as many pairs as can be, the nearest preferred among those, earlier pairs moved when that pairs
one more."""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import permutations

from hypothesis import given, settings
from hypothesis import strategies as st

from creditrelay.billing.pairing import Partner, Slot, place

AT = datetime(2026, 1, 1, 12)
WINDOW = (AT - timedelta(days=1), AT + timedelta(days=1))
TOLERANCE = 10


@dataclass
class Arriving:
    usage_key: str
    match_key: str
    used_at: datetime
    credit_cost: int = 1


def arrival(key: str, seconds: float, match: str = "m") -> Arriving:
    return Arriving(key, match, AT + timedelta(seconds=seconds))


def slot(number: int, seconds: float, match: str = "m", partner: Partner | None = None) -> Slot:
    return Slot(number, 1, match, AT + timedelta(seconds=seconds), 1, partner)


def placed(arrivals: list[Arriving], slots: list[Slot]) -> dict[str, int]:
    return {key: s.id for key, s in place(arrivals, slots, TOLERANCE, WINDOW, AT).placed.items()}


def test_each_arrival_and_each_slot_pair_at_most_once() -> None:
    """Three arrivals near two slots: two pairs; another fingerprint or a time past the tolerance never pairs."""
    slots = [slot(1, 1), slot(2, 30), slot(3, 0)]
    result = placed([arrival("a", 0), arrival("b", 1), arrival("c", 2), arrival("e", 0, match="x")], slots)
    assert len(result) == 2
    assert len(set(result.values())) == 2
    assert set(result.values()) == {1, 3}
    assert "e" not in result


def test_the_nearest_slot_is_taken_when_pairing_as_many_either_way() -> None:
    """One slot, three log rows 5 s before, 1 s before and 4 s after it: the row 1 s away pairs."""
    assert placed([arrival("far", -5), arrival("near", -1), arrival("after", 4)], [slot(1, 0)]) == {"near": 1}


def test_twins_under_clock_skew_pair_both_whatever_comes_first() -> None:
    """Two identical usages s seconds apart, the webhook's clock d seconds behind the log's: whichever path
    came first and in whatever order the other arrives, both pair (2 charges, never 3)."""
    for d in (0, 6, 8):
        for s in (0, 5, 7, 9):
            webhooks, logs = [-d, s - d], [0, s]
            for first, then in ((webhooks, logs), (logs, webhooks)):
                for order in permutations(range(2)):
                    slots = [slot(i + 1, at) for i, at in enumerate(first)]
                    total = 0
                    for i in order:  # one arrival per pass
                        total += len(placed([arrival(f"a{i}", then[i])], slots))
                    assert total == 2, (d, s, first is webhooks, order)
                    slots = [slot(i + 1, at) for i, at in enumerate(first)]
                    assert len(placed([arrival(f"a{i}", at) for i, at in enumerate(then)], slots)) == 2


def test_a_pairing_is_moved_to_a_twin_and_written_as_such() -> None:
    """The first log row took the webhook nearest it; the second can only pair with that one, so the first
    moves to the other twin: the moves name each changed slot and the partner it had before."""
    slots = [slot(1, -6), slot(2, -1)]
    first = place([arrival("row-1", 0)], slots, TOLERANCE, WINDOW, AT)
    assert {k: s.id for k, s in first.placed.items()} == {"row-1": 2}
    second = place([arrival("row-2", 5)], slots, TOLERANCE, WINDOW, AT)
    assert {k: s.id for k, s in second.placed.items()} == {"row-2": 2}
    assert [(s.id, None if p is None else p.usage_key) for s, p in second.moves] == [(1, None), (2, "row-1")]
    assert [s.id for s in second.claimed] == [1]
    assert slots[0].partner is not None
    assert slots[0].partner.usage_key == "row-1"


def test_a_partner_paired_before_its_time_was_kept_stays_where_it_is() -> None:
    """An old pairing without the arrival's time cannot be checked elsewhere, so it is never moved."""
    old = Partner("row-1", None, 1, AT)
    slots = [slot(1, -6), slot(2, -1, partner=old)]
    assert placed([arrival("row-2", 5)], slots) == {}
    assert slots[1].partner is old


def test_a_search_past_the_window_says_so() -> None:
    """A chain that reaches beyond the window read is reported incomplete, for the caller to read wider."""
    slots = [slot(1, 0, partner=Partner("w", AT + timedelta(seconds=9), 1, AT))]
    result = place([arrival("row", 5)], slots, TOLERANCE, (AT - timedelta(seconds=15), AT + timedelta(seconds=15)), AT)
    assert not result.complete


def _maximum(left: list[float], right: list[float]) -> int:
    """The size of a maximum matching of two sets of points on a line, pairs at most TOLERANCE apart:
    pairing greedily in time order, each point with the earliest unpaired one it reaches, is optimal."""
    right = sorted(right)
    taken = [False] * len(right)
    count = 0
    for point in sorted(left):
        for index, other in enumerate(right):
            if not taken[index] and abs(other - point) <= TOLERANCE:
                taken[index] = True
                count += 1
                break
    return count


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 60), min_size=1, max_size=7),
    st.lists(st.integers(0, 60), min_size=1, max_size=7),
    st.randoms(use_true_random=False),
    st.integers(1, 3),
)
def test_one_at_a_time_or_in_batches_as_many_pair_as_a_maximum_matching(
    charged: list[int], arriving: list[int], order: random.Random, batch: int
) -> None:
    """Whatever the order and grouping of the arrivals, as many pair as in a maximum matching of all the
    points (everything one path sent charged first, then the other path's usages arriving)."""
    slots = [slot(i + 1, at) for i, at in enumerate(charged)]
    arrivals = [arrival(f"a{i}", at) for i, at in enumerate(arriving)]
    order.shuffle(arrivals)
    total = 0
    for start in range(0, len(arrivals), batch):
        total += len(placed(arrivals[start : start + batch], slots))
    assert total == _maximum([float(x) for x in arriving], [float(x) for x in charged])
