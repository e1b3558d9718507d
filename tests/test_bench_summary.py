"""scripts/benchkit: the table of `make bench` gives each run's medians over its rounds and hides no failure."""

from scripts.benchkit import Result, summarize


def _round(
    rps: float, ceiling: float, p99: float, *, ledger: str = "OK (10 charged once of 10 distinct sent)"
) -> Result:
    return Result(name="sqlite: unique events", rps=rps, ceiling_rps=ceiling, p50_ms=1.0, p99_ms=p99, ledger=ledger)


def test_summary_takes_medians_and_the_spread_of_the_ratio() -> None:
    """Three rounds: the median of events/s, of the ratios and of p99; the lowest and highest ratio."""
    summary = summarize([_round(5000, 20000, 9.0), _round(9000, 20000, 30.0), _round(6000, 15000, 12.0)])
    assert summary.rounds == 3
    assert summary.rps == 6000
    assert summary.ratio == 0.4  # the median of 0.25, 0.45 and 0.40, not 6000 / 20000 of the medians
    assert summary.ratio_range == (0.25, 0.45)
    assert summary.p99_ms == 12.0
    assert summary.worst_p99_ms == 30.0
    assert summary.ledger == "OK in 3 of 3 (10 charged once of 10 distinct sent)"


def test_a_failed_exactly_once_check_in_any_round_is_shown() -> None:
    """One failing ledger among passing rounds makes the row say what failed."""
    failed = "FAILED: 2 events sent but not charged (8 charged once of 10 distinct sent)"
    summary = summarize([_round(5000, 20000, 9.0), _round(5000, 20000, 9.0, ledger=failed)])
    assert summary.ledger == f"1 of 2 rounds {failed}"


def test_runs_below_full_load_have_no_ratio() -> None:
    """The moderate-load run is not compared with the ceiling."""
    summary = summarize([_round(1500, 0, 4.0), _round(1600, 0, 5.0)])
    assert summary.ratio is None
    assert summary.ratio_range is None
    assert summary.rps == 1550
