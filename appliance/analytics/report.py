"""The night report: the figures of a night as an HTML page and a JSON file.

The HTML page is self-contained: its charts are inline SVG with titles, axis
labels and the numbers beside the bars, its style is inline, and it has no
script and loads nothing. Both files render the same document from
:func:`~appliance.analytics.figures.night_figures`, so a group the
suppression hid is missing from both.

:class:`ReadOnlyStore` reads the box's SQLite file while the box runs: WAL
mode lets a reader see the last commit without blocking the box.
"""

from __future__ import annotations

import html
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.currency import minor_unit_digits
from appliance.errors import NightboxError
from appliance.store._migrations import MIGRATIONS

# The schema version that added the analytics tables (page_views and more).
_ANALYTICS_SCHEMA = 11
_CHART_WIDTH = 640
_LABEL_WIDTH = 170
_ROW_HEIGHT = 30
_SUPPRESSED_TEXT = "suppressed (fewer than 5 guests)"


class ReportError(NightboxError, RuntimeError):
    """The report cannot be written; the message names the file and the fix."""


class ReadOnlyStore:
    """A read-only connection to the box's SQLite file."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ReportError(
                f"no Nightbox store at {path}; check data_dir in the site file or "
                "run the box with this configuration first"
            )
        try:
            self._connection = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True
            )
            self._connection.execute("PRAGMA busy_timeout=5000")
            (version,) = self._connection.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as err:
            raise ReportError(f"cannot read the store {path}: {err}") from err
        if version < _ANALYTICS_SCHEMA:
            self._connection.close()
            raise ReportError(
                f"the store {path} has schema version {version}, older than the "
                f"report needs ({_ANALYTICS_SCHEMA}); start the box once with this "
                "release so it migrates the store"
            )
        if version > len(MIGRATIONS):
            self._connection.close()
            raise ReportError(
                f"the store {path} has schema version {version}, newer than this "
                f"Nightbox ({len(MIGRATIONS)}); install the newer release"
            )

    def query(
        self, sql: str, parameters: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only query and return every row."""
        return self._connection.execute(sql, parameters).fetchall()

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """The two files of a written report."""

    html: Path
    json: Path


def write_report(figures: dict[str, Any], output_dir: Path) -> ReportFiles:
    """Write ``report-<night>.html`` and ``report-<night>.json`` into ``output_dir``.

    Each file is written to a temporary name and renamed, so a reader never
    sees half a report. Raises :class:`ReportError` when the folder cannot be
    created or written.
    """
    night = figures["night"]
    files = ReportFiles(
        output_dir / f"report-{night}.html", output_dir / f"report-{night}.json"
    )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(files.json, orjson.dumps(figures, option=_JSON_OPTIONS))
        _write_atomic(files.html, render_html(figures).encode())
    except OSError as err:
        raise ReportError(
            f"cannot write the report into {output_dir}: {err.strerror}; give a "
            "writable folder with --output"
        ) from err
    return files


_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def _write_atomic(path: Path, content: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def render_html(figures: dict[str, Any]) -> str:
    """Return the report page of ``figures`` as one self-contained HTML document."""
    money = _Money(figures["currency"])
    night = html.escape(figures["night"])
    site = html.escape(figures["site_name"])
    sections = [
        _drops_section(figures["drops"]),
        _creators_section(figures["creators"], money),
        _kits_section(figures["kits"]),
        _exits_section(figures["exits"], figures["timezone"]),
    ]
    hidden = figures["suppressed"]
    partial = (
        "<p><strong>Partial report:</strong> written before the night ended, "
        "so its figures are not final.</p>"
        if figures.get("partial")
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Night report {night} · {site}</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>Night report {night}</h1>
<p>{site} (site {html.escape(figures["site"])}, box {html.escape(figures["box"])}).
Every figure counts distinct guests. A figure about fewer than
{figures["min_group"]} guests, or one that would give such a figure back by
subtraction, is suppressed: {hidden} suppressed on this page.</p>
{partial}
</header>
{"".join(sections)}
</body>
</html>
"""


_STYLE = """
body { font: 15px/1.45 sans-serif; color: #111; background: #fff;
  max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.3rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #999; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin-bottom: 0.3rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #bbb; padding: 0.2rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.suppressed { color: #555; font-style: italic; }
svg { display: block; max-width: 100%; height: auto; margin: 0.5rem 0; }
svg text { font: 12px sans-serif; fill: #111; }
svg .title { font-size: 14px; font-weight: bold; }
svg .bar { fill: #4a6fa5; }
svg .hidden { fill: none; stroke: #777; stroke-dasharray: 4 3; }
svg .axis { stroke: #111; stroke-width: 1; }
svg .grid { stroke: #ddd; stroke-width: 1; }
svg .line { fill: none; stroke: #4a6fa5; stroke-width: 2; }
section { break-inside: avoid; }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  svg .bar { fill: #555; }
  svg .line { stroke: #111; }
}
"""


class _Money:
    """Formats minor units of one currency."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.digits = minor_unit_digits(currency)

    def __call__(self, minor: int | None) -> str:
        if minor is None:
            return "suppressed"
        if self.digits == 0:
            return f"{minor} {self.currency}"
        sign = "-" if minor < 0 else ""
        whole, fraction = divmod(abs(minor), 10**self.digits)
        return f"{sign}{whole}.{fraction:0{self.digits}d} {self.currency}"


def _number(value: Any) -> str:
    return "suppressed" if value is None else html.escape(str(value))


def _cell(value: Any, text: str | None = None) -> str:
    if value is None:
        return '<td class="suppressed">suppressed</td>'
    return f"<td>{html.escape(text if text is not None else str(value))}</td>"


def _bar_chart(
    title: str, axis_label: str, rows: Sequence[tuple[str, int | float | None, str]]
) -> str:
    """Return a horizontal bar chart: one ``(label, value, text)`` per bar.

    A bar whose value is None is drawn as a dashed outline with the text
    "suppressed" and no length that could give its value away.
    """
    top = 34
    height = top + len(rows) * _ROW_HEIGHT + 44
    plot_width = _CHART_WIDTH - _LABEL_WIDTH - 150
    largest = max((value for _, value, _ in rows if value), default=0)
    scale = plot_width / largest if largest else 0.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {_CHART_WIDTH} {height}" width="{_CHART_WIDTH}" '
        f'height="{height}">',
        f"<title>{html.escape(title)}</title>",
        f'<text class="title" x="0" y="18">{html.escape(title)}</text>',
    ]
    axis_y = top + len(rows) * _ROW_HEIGHT
    for index, (label, value, text) in enumerate(rows):
        y = top + index * _ROW_HEIGHT
        parts.append(
            f'<text x="{_LABEL_WIDTH - 8}" y="{y + 19}" text-anchor="end">'
            f"{html.escape(label)}</text>"
        )
        if value is None:
            parts.append(
                f'<rect class="hidden" x="{_LABEL_WIDTH}" y="{y + 5}" '
                f'width="{plot_width // 3}" height="{_ROW_HEIGHT - 10}"/>'
            )
            parts.append(
                f'<text x="{_LABEL_WIDTH + plot_width // 3 + 8}" y="{y + 19}">'
                f"{_SUPPRESSED_TEXT}</text>"
            )
            continue
        width = max(value * scale, 0.0)
        parts.append(
            f'<rect class="bar" x="{_LABEL_WIDTH}" y="{y + 5}" '
            f'width="{width:.1f}" height="{_ROW_HEIGHT - 10}"/>'
        )
        parts.append(
            f'<text x="{_LABEL_WIDTH + width + 8:.1f}" y="{y + 19}">'
            f"{html.escape(text)}</text>"
        )
    parts += [
        f'<line class="axis" x1="{_LABEL_WIDTH}" y1="{top}" x2="{_LABEL_WIDTH}" '
        f'y2="{axis_y}"/>',
        f'<line class="axis" x1="{_LABEL_WIDTH}" y1="{axis_y}" '
        f'x2="{_LABEL_WIDTH + plot_width}" y2="{axis_y}"/>',
        f'<text x="{_LABEL_WIDTH}" y="{axis_y + 16}">0</text>',
        f'<text x="{_LABEL_WIDTH + plot_width}" y="{axis_y + 16}" '
        f'text-anchor="end">{html.escape(_tick(largest))}</text>',
        f'<text x="{_LABEL_WIDTH + plot_width / 2:.0f}" y="{axis_y + 36}" '
        f'text-anchor="middle">{html.escape(axis_label)}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def _tick(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _drops_section(drops: list[dict[str, Any]]) -> str:
    if not drops:
        return "<section><h2>Drops</h2><p>No drop was viewed or claimed.</p></section>"
    parts = ["<section><h2>Drop funnel</h2>"]
    for drop in drops:
        name = html.escape(drop["drop"])
        stages = [
            ("claimed", drop["claimed"]["guests"]),
            ("paid", drop["paid"]["guests"]),
            ("picked up", drop["picked_up"]["guests"]),
        ]
        parts.append(f"<h3>Drop {name}</h3>")
        parts.append(
            f"<p>Page views {drop['views']}, try-on views {drop['try_on_views']}"
            f" (item {html.escape(str(drop['item']))}).</p>"
        )
        parts.append(
            _bar_chart(
                f"Drop {drop['drop']}: guests per stage",
                "guests",
                [(label, value, _number(value)) for label, value in stages],
            )
        )
        parts.append(
            "<table><tr><th>stage</th><th>guests</th></tr>"
            + "".join(
                f"<tr><td>{label}</td>{_cell(value)}</tr>" for label, value in stages
            )
            + "</table>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _average_bar(group: dict[str, Any], money: _Money) -> tuple[float | None, str]:
    """Return the bar of a group's average spend: its length and its text."""
    if group["suppressed"]:
        return None, "suppressed"
    if group["average"] is None:
        return 0, "no guests"
    return group["average"] / 10**money.digits, money(group["average"])


def _group_cell(group: dict[str, Any], name: str, money: _Money) -> str:
    """Return the table cell of a money value; "-" where the group has none."""
    if group["suppressed"]:
        return _cell(None)
    value = group.get(name)
    return "<td>-</td>" if value is None else _cell(value, money(value))


def _creators_section(creators: dict[str, Any], money: _Money) -> str:
    rows = [
        ("all guests who paid", creators["all_guests"], None),
        (
            "used a creator code",
            creators["with_creator"],
            creators["with_creator"]["uplift"],
        ),
        ("used no creator code", creators["without_creator"], None),
    ]
    rows += [
        (f"creator {entry['name']}", entry, entry["uplift"])
        for entry in creators["by_creator"]
    ]
    chart = _bar_chart(
        f"Average net spend per guest ({money.currency})",
        f"average spend per guest, {money.currency}",
        [(label, *_average_bar(group, money)) for label, group, _ in rows],
    )
    table = [
        "<table><tr><th>group</th><th>guests</th><th>net spend</th>"
        "<th>average per guest</th><th>attributed sales</th><th>uplift</th></tr>"
    ]
    for label, group, uplift in rows:
        cells = [
            _cell(group["guests"]),
            _cell(group["spend"], money(group["spend"])),
            _group_cell(group, "average", money),
            _group_cell(group, "attributed", money),
            "<td>-</td>" if uplift is None else f"<td>{uplift:.2f}&#215;</td>",
        ]
        table.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}</tr>")
    table.append("</table>")
    return (
        "<section><h2>Creator attribution and uplift</h2>"
        "<p>Net spend is charges less refunds, voided sales left out. The uplift "
        "is a group's average spend per guest divided by that of guests who "
        "used no creator code.</p>"
        f"{chart}{''.join(table)}</section>"
    )


def _kits_section(kits: dict[str, Any]) -> str:
    stages = [
        ("kits handed out", kits["kits"]["guests"]),
        ("coupons issued", kits["coupons_issued"]["guests"]),
        ("coupons redeemed", kits["coupons_redeemed"]["guests"]),
    ]
    chart = _bar_chart(
        "Kit, coupon and redemption funnel",
        "guests",
        [(label, value, _number(value)) for label, value in stages],
    )
    table = (
        "<table><tr><th>stage</th><th>guests</th></tr>"
        + "".join(f"<tr><td>{label}</td>{_cell(value)}</tr>" for label, value in stages)
        + "</table>"
    )
    return f"<section><h2>Kits and coupons</h2>{chart}{table}</section>"


def _exits_section(exits: dict[str, Any], timezone: str) -> str:
    buckets = exits["buckets"]
    total = exits["total"]["checkouts"]
    heading = (
        f"<section><h2>Exits over time</h2><p>Check-outs per "
        f"{exits['bucket_minutes']} minutes, times in {html.escape(timezone)}; "
        f"{_number(total)} check-outs in all.</p>"
    )
    if not buckets:
        return heading + "<p>No check-outs this night.</p></section>"
    table = (
        "<table><tr><th>from</th><th>check-outs</th></tr>"
        + "".join(
            f"<tr><td>{html.escape(bucket['label'])}</td>"
            f"{_cell(bucket['checkouts'])}</tr>"
            for bucket in buckets
        )
        + "</table>"
    )
    return (
        heading + _line_chart(buckets, exits["bucket_minutes"]) + table + "</section>"
    )


def _line_chart(buckets: list[dict[str, Any]], minutes: int) -> str:
    """Return a line chart of check-outs per bucket; suppressed buckets are gaps."""
    left, top, bottom, right = 56, 34, 56, 20
    height = 300
    plot_width = _CHART_WIDTH - left - right
    plot_height = height - top - bottom
    largest = max((b["checkouts"] for b in buckets if b["checkouts"]), default=0)
    y_max = max(largest, 1)
    step = plot_width / max(len(buckets) - 1, 1)

    def x_of(index: int) -> float:
        return left + index * step

    def y_of(value: int) -> float:
        return top + plot_height - value * plot_height / y_max

    title = f"Check-outs per {minutes} minutes"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {_CHART_WIDTH} {height}" width="{_CHART_WIDTH}" '
        f'height="{height}">',
        f"<title>{html.escape(title)}</title>",
        f'<text class="title" x="0" y="18">{html.escape(title)}</text>',
    ]
    for tick in sorted({0, y_max // 2, y_max}):
        y = y_of(tick)
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_width}" '
            f'y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    segment: list[str] = []
    segments: list[list[str]] = []
    for index, bucket in enumerate(buckets):
        value = bucket["checkouts"]
        if value is None:
            if segment:
                segments.append(segment)
            segment = []
            parts.append(
                f'<text x="{x_of(index):.1f}" y="{top + plot_height - 4}" '
                'text-anchor="middle">&#215;</text>'
            )
            continue
        x, y = x_of(index), y_of(value)
        segment.append(f"{x:.1f},{y:.1f}")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{y - 7:.1f}" text-anchor="middle">{value}</text>'
        )
    if segment:
        segments.append(segment)
    parts += [
        f'<polyline class="line" points="{" ".join(points)}"/>' for points in segments
    ]
    label_every = max(1, len(buckets) // 8)
    for index, bucket in enumerate(buckets):
        if index % label_every == 0:
            parts.append(
                f'<text x="{x_of(index):.1f}" y="{top + plot_height + 16}" '
                f'text-anchor="middle">{html.escape(bucket["label"])}</text>'
            )
    parts += [
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" '
        f'y2="{top + plot_height}"/>',
        f'<line class="axis" x1="{left}" y1="{top + plot_height}" '
        f'x2="{left + plot_width}" y2="{top + plot_height}"/>',
        f'<text x="{left + plot_width / 2:.0f}" y="{height - 8}" '
        'text-anchor="middle">start of the bucket (local time); &#215; marks a '
        "suppressed bucket</text>",
        f'<text x="14" y="{top + plot_height / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_height / 2:.0f})">check-outs</text>',
        "</svg>",
    ]
    return "\n".join(parts)
