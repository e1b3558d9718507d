"""The admin pages' charts, drawn on the server by pygal as inline SVG: axes with titles and whole-number
ticks, one colour per series, labels never cut short (and thinned out, not overlapped, where there are
many), each bar's value in its tooltip (an SVG ``<title>``). The chart's title and its legend are HTML
around the SVG, not in it: on a phone the plot scrolls sideways inside its box (opening at its newest
end), and a title or legend drawn in the SVG would scroll out of sight with it.

pygal puts a ``<script>`` in every chart (its tooltips' configuration); it is taken out, so the pages run
no script at all. Labels come from the database; pygal writes them through ElementTree, which escapes
them.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import pygal
from markupsafe import Markup
from pygal.style import Style

# Okabe and Ito's palette, told apart with every kind of colour vision; then two greys
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000", "#999999", "#666666")
STATUS_COLOURS = {"processed": "#009E73", "failed": "#D55E00", "ignored": "#999999"}
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
WIDTH = 760


MODELS_CHARTED = 8  # the largest models by day; the rest as "other models"


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[int]
    colour: str | None = None


def top_series(by_model: Mapping[str, Sequence[int]], days: int) -> list[Series]:
    """The largest models (``by_model`` lists them largest first), each a series of credits by day, the
    rest summed as one."""
    names = list(by_model)
    series = [Series(name, by_model[name]) for name in names[:MODELS_CHARTED]]
    rest = names[MODELS_CHARTED:]
    if rest:
        summed = [sum(by_model[name][i] for name in rest) for i in range(days)]
        series.append(Series(f"{len(rest)} other models", summed, "#999999"))
    return series


def _style(series: Sequence[Series]) -> Style:
    colours = tuple(s.colour or PALETTE[i % len(PALETTE)] for i, s in enumerate(series))
    return Style(
        font_family=FONT,
        background="#ffffff",
        plot_background="#ffffff",
        foreground="#1f2937",
        foreground_strong="#111827",
        foreground_subtle="#6b7280",
        colors=colours,
        label_font_size=12,
        major_label_font_size=12,
        legend_font_size=12,
        title_font_size=15,
        value_font_size=11,
        tooltip_font_size=12,
    )


def ticks(top: int, count: int = 5) -> list[int]:
    """Whole-number ticks from 0 past ``top``, about ``count`` of them, at 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return list(range(0, top + step, step))


def isolated(text: str) -> str:
    """``text`` between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE, when it holds a character that
    changes direction: a right-to-left override in a model name turns its own text around, not the chart's
    other labels and values."""
    if any(character in _BIDI for character in text):
        return f"\u2068{text}\u2069"
    return text


_BIDI = frozenset("\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _number(value: Any) -> str:
    return "" if value is None else f"{value:,.0f}"


def _svg(chart: Any) -> Markup:
    """The chart as inline SVG, without the script pygal adds."""
    tree = chart.render_tree()
    for defs in tree.iter("defs"):
        for script in defs.findall("script"):
            defs.remove(script)
    return Markup(ElementTree.tostring(tree, encoding="unicode"))  # noqa: S704 - ElementTree escaped every value


def _figure(title: str, chart: Any, series: Sequence[Series], *, newest_right: bool = True) -> Markup:
    """The title, the plot (its own scrolling box, opening at its right end when that is the newest), and a
    legend of swatches where there are several series."""
    legend = Markup("")
    if len(series) > 1:
        items = Markup("").join(
            Markup('<li><span class="swatch" style="background:{}"></span>{}</li>').format(
                s.colour or PALETTE[i % len(PALETTE)], isolated(s.name)
            )
            for i, s in enumerate(series)
        )
        legend = Markup('<ul class="legend">{}</ul>').format(items)
    box = "plot-box" if newest_right else "plot-box from-start"
    return Markup('<p class="chart-title">{}</p><div class="{}">{}</div>{}').format(title, box, _svg(chart), legend)


def _empty(message: str) -> Markup:
    return Markup('<p class="empty">{}</p>').format(message)


CHAR = 8  # pixels a character of the 12 px labels takes at most, about


def _width(labels: Sequence[str] = ()) -> int:
    """Wide enough for the plot beside the longest label on the left (horizontal bars): pygal shrinks the
    plot for them, and with no room left for an axis title its title splitting never ends."""
    left = max((len(label) for label in labels), default=0) * CHAR + 420
    return max(WIDTH, left)


def _common(series: Sequence[Series], *, height: int, labels: Sequence[str] = (), **options: Any) -> dict[str, Any]:
    """pygal's options for a chart of ``series`` (no title, no legend: they are HTML, ``_figure``), and a
    width that leaves the plot room beside long labels."""
    return {
        "style": _style(series),
        "js": [],
        "disable_xml_declaration": True,
        "truncate_label": -1,
        "truncate_legend": -1,
        "show_legend": False,
        "value_formatter": _number,
        "width": _width(labels),
        "height": height,
        "margin": 12,
        "spacing": 10,
        **options,
    }


@dataclass(frozen=True, slots=True)
class Frame:
    """What a chart says around its data: its title, its axes' titles, what the page says instead when
    there is nothing to draw, and every how many labels one is written (many days or minutes)."""

    title: str
    x_title: str
    y_title: str
    empty: str
    label_every: int = 1


def _over_labels(kind: Any, labels: Sequence[str], series: Sequence[Series], frame: Frame, **options: Any) -> Markup:
    chart = kind(
        **_common(series, x_title=frame.x_title, y_title=frame.y_title, **options),
        show_minor_x_labels=frame.label_every == 1,
        x_labels_major_every=frame.label_every,
    )
    chart.x_labels = [isolated(label) for label in labels]
    for s in series:
        chart.add(isolated(s.name), list(s.values))
    return _figure(frame.title, chart, series)


def bars(labels: Sequence[str], series: Sequence[Series], frame: Frame, *, height: int = 320) -> Markup:
    """Vertical bars, one per label, stacked by series."""
    if not labels or not any(any(s.values) for s in series):
        return _empty(frame.empty)
    top = max(sum(values) for values in zip(*(s.values for s in series), strict=True))
    return _over_labels(pygal.StackedBar, labels, series, frame, height=height, y_labels=ticks(top))


def lines(labels: Sequence[str], series: Sequence[Series], frame: Frame) -> Markup:
    """A line per series over the labels (values may be negative: a balance)."""
    if not labels or not series:
        return _empty(frame.empty)
    values = [v for s in series for v in s.values]
    low, high = min(0, *values), max(0, *values)
    span = ticks(high - low)
    step = span[1] - span[0]
    start = math.floor(low / step) * step
    scale = list(range(start, max(high, start + step) + step, step))
    return _over_labels(pygal.Line, labels, series, frame, height=300, y_labels=scale, dots_size=2)


def horizontal_bars(pairs: Sequence[tuple[str, int]], frame: Frame) -> Markup:
    """One bar per (label, value), largest on top, each label written in full on the left with its value
    (``frame.x_title`` names the values' axis)."""
    if not pairs or not any(value for _, value in pairs):
        return _empty(frame.empty)
    series = [Series(frame.x_title, [value for _, value in pairs])]
    # pygal draws the first bar at the bottom
    labels = [f"{isolated(label)} · {value:,}" for label, value in reversed(pairs)]
    chart = pygal.HorizontalBar(
        **_common(series, x_title=frame.x_title, height=60 + 30 * len(pairs), labels=labels),
        y_labels=ticks(max(value for _, value in pairs)),
    )
    chart.x_labels = labels
    chart.add(frame.x_title, [value for _, value in reversed(pairs)])
    return _figure(frame.title, chart, series, newest_right=False)  # its labels are on the left
