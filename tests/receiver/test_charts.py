"""receiver/charts.py: whole-number ticks that cover the data, no script in any chart, labels escaped, and
an empty state that says what to do instead of an empty frame."""

from itertools import pairwise
from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditrelay.receiver.charts import Frame, Series, bars, horizontal_bars, lines, ticks

FRAME = Frame("A title", "day", "credits", "Nothing yet: send an event.")


@given(st.integers(min_value=0, max_value=10**15))
def test_ticks_are_whole_numbers_from_zero_past_the_top_at_a_round_step(top: int) -> None:
    found = ticks(top)
    step = found[1] - found[0]
    assert found[0] == 0
    assert found[-1] >= top
    assert found[-2] < top or top == 0
    assert all(b - a == step for a, b in pairwise(found))
    assert int(str(step).rstrip("0") or "0") in (1, 2, 5)
    assert 2 <= len(found) <= 11


def _texts(markup: str) -> list[str]:
    """Every text of a chart: its HTML title and legend entries, and the texts of its SVG."""
    tree = ElementTree.fromstring(f"<figure>{markup}</figure>")  # noqa: S314 - our own chart, not outside input
    html = [e.text or "" for e in tree.iter() if e.get("class") == "chart-title"]
    html += ["".join(e.itertext()) for e in tree.iter("li")]
    return html + [t.text or "" for t in tree.iter("{http://www.w3.org/2000/svg}text")]


CHARTS = {
    "bars": lambda: bars(["a", "b"], [Series("<script>x</script>", [1, 2]), Series("b & c", [0, 3])], FRAME),
    "lines": lambda: lines(["a", "b"], [Series("<script>x</script>", [-7, 2]), Series("line", [0, 0])], FRAME),
    "horizontal": lambda: horizontal_bars([("<script>x</script>", 5), ("b & c", 2)], FRAME),
}


@pytest.mark.parametrize("name", list(CHARTS))
def test_no_chart_carries_a_script_and_its_labels_are_text(name: str) -> None:
    """pygal's own <script> is taken out; a label from the database stays text (escaped), whole, in the
    chart or its legend; the title is there."""
    markup = str(CHARTS[name]())
    assert "<script" not in markup
    texts = _texts(markup)
    assert any("<script>x</script>" in text for text in texts)
    assert "A title" in texts


def test_a_balance_below_zero_gets_ticks_below_zero() -> None:
    texts = _texts(str(lines(["a", "b", "c"], [Series("balance", [-35, 0, 12])], FRAME)))
    numbers = [int(t.replace(",", "")) for t in texts if t.lstrip("-").replace(",", "").isdigit()]
    assert min(numbers) <= -35
    assert max(numbers) >= 12
    assert 0 in numbers


def test_nothing_to_draw_says_what_to_do() -> None:
    assert str(bars(["a"], [Series("s", [0])], FRAME)) == '<p class="empty">Nothing yet: send an event.</p>'
    assert str(horizontal_bars([], FRAME)).startswith('<p class="empty">')


EXTREMES = """
from creditrelay.receiver.charts import Frame, Series, bars, horizontal_bars, lines
frame = Frame("t", "day", "credits", "none", label_every=5)
longest = "m" * 128  # the longest model name an event may carry
horizontal_bars([(longest + str(i), 10**12 - i) for i in range(20)], frame)
bars([f"d{i}" for i in range(30)], [Series(longest[:-1] + str(i), [10**12] * 30) for i in range(9)], frame)
lines([f"d{i}" for i in range(30)], [Series(longest, [-10**15] * 30), Series(longest + "x", [10**15] * 30)], frame)
print("drawn")
"""


def test_the_longest_names_and_largest_values_are_drawn_promptly() -> None:
    """128-character model names as bar labels and as nine legend entries, and balances at ±10^15: drawn
    (pygal's title splitting never ended when long labels left its axis no room), in a process of its own
    so that a hang fails the test instead of stalling the run."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", EXTREMES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "drawn"
