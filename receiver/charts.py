"""Bar charts drawn on the server as inline SVG, so the admin pages need no script and no CDN.

Every value is put in through ``Markup(...).format``, which escapes it: labels come from the database.
"""

from collections.abc import Sequence

from markupsafe import Markup

_BAR = Markup('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}"><title>{}: {}</title></rect>')
_LABEL = Markup('<text x="{:.1f}" y="{}" text-anchor="middle" font-size="10">{}</text>')


def bar_chart(bars: Sequence[tuple[str, int]], *, width: int = 720, height: int = 180, title: str = "") -> Markup:
    """One bar per (label, value); labels under the bars when there are few enough to read."""
    if not bars:
        return Markup('<p class="empty">No data: {}.</p>').format(title)
    top = max(value for _, value in bars) or 1
    slot = min(width / len(bars), 60.0)
    label_room = 40 if len(bars) <= 31 else 4
    plot = height - label_room
    parts = [
        Markup('<svg class="chart" role="img" viewBox="0 0 {0} {1}" width="{0}" height="{1}">').format(width, height)
    ]
    parts.append(Markup("<title>{}</title>").format(title))
    for index, (label, value) in enumerate(bars):
        bar = max(1.0, plot * value / top) if value else 0.0
        x = index * slot
        parts.append(_BAR.format(x + slot * 0.1, plot - bar, slot * 0.8, bar, label, value))
        if label_room > 4:
            parts.append(_LABEL.format(x + slot / 2, plot + 14, label[-10:]))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
