"""The dashboard: the night at a glance, live from the box's bus.

Figures start from the box's snapshots (``console/overview`` every 15 s and
on connect, telemetry every 10 s) and move with the events that arrive in
between (check-outs, charges, kits, opt-ins), so they change the moment
something happens and are corrected by the next snapshot. Stock and faults
come from the box status, which arrives every second. Every time shown is
the box's, from its status, never this computer's clock. While the link is
down the last values stay on screen, dimmed and marked stale, under a red
``OFFLINE`` line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from tui.link import ConsoleLink, LiveState
from tui.screens.drops import drop_state_text
from tui.widgets import (
    NO_VALUE,
    STALE_CLASS,
    STALE_MARKER,
    Figure,
    LinkHeader,
    StaleBanner,
    app_link,
    as_dict,
    as_list,
    clock_text,
    minor_to_text,
    offline_text,
    site_timezone,
)

CHART_MINUTES = 60
CHART_ROWS = 4
_EIGHTHS = " ▁▂▃▄▅▆▇█"
# Redraws are batched: events can arrive dozens of times a second.
REDRAW_INTERVAL_S = 0.5


@dataclass
class LiveCount:
    """A figure from the box's last snapshot plus the events counted since."""

    base: int | None = None
    delta: int = 0

    def rebase(self, value: object) -> None:
        """Start again from a snapshot's ``value`` (None when it has none)."""
        self.base = value if isinstance(value, int) else None
        self.delta = 0

    @property
    def value(self) -> int | None:
        """The current figure, or None before the first snapshot."""
        return None if self.base is None else self.base + self.delta


class ExitChart(Widget):
    """A bar chart of exits per minute over the last hour, with a scale and times."""

    DEFAULT_CSS = f"""
    ExitChart {{ height: {CHART_ROWS + 1}; width: 1fr; color: $accent; }}
    ExitChart.-stale {{ color: $text-muted; }}
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts: list[int] = []
        self.end_label = ""

    def show(self, counts: list[int], end_label: str) -> None:
        """Show ``counts`` (oldest minute first); ``end_label`` names the last."""
        if counts == self.counts and end_label == self.end_label:
            return
        self.counts = list(counts)
        self.end_label = end_label
        self.refresh()

    def render(self) -> Text:
        scale_width = max(len(str(max(self.counts, default=0))), 1) + 1
        columns = max(1, self.size.width - scale_width)
        # A narrow terminal gets several minutes per column, summed.
        per_column = max(1, math.ceil(len(self.counts) / columns)) if self.counts else 1
        bars = [
            sum(self.counts[start : start + per_column])
            for start in range(0, len(self.counts), per_column)
        ]
        top = max(bars, default=0)
        text = Text(no_wrap=True, overflow="crop")
        for row in range(CHART_ROWS - 1, -1, -1):
            label = ""
            if row == CHART_ROWS - 1:
                label = str(top)
            elif row == 0:
                label = "0"
            text.append(label.rjust(scale_width - 1) + "|", style="dim")
            for value in bars:
                eighths = 0 if top == 0 else round(value * CHART_ROWS * 8 / top)
                level = min(8, max(0, eighths - row * 8))
                text.append(_EIGHTHS[level])
            text.append("\n")
        span = f"-{len(self.counts)} min"
        axis_width = max(len(bars), len(span) + len(self.end_label) + 1)
        gap = axis_width - len(span) - len(self.end_label)
        text.append(" " * scale_width + span + " " * gap + self.end_label, style="dim")
        return text


class Panel(Static):
    """A block of text on the dashboard, dimmed while stale."""

    DEFAULT_CSS = """
    Panel { height: auto; width: 1fr; padding: 0 1 0 0; }
    Panel.-stale { color: $text-muted; text-style: dim; }
    """

    def show(self, text: Text, *, stale: bool) -> None:
        """Show ``text``, marked stale when ``stale``."""
        self.set_class(stale, STALE_CLASS)
        if stale:
            text.append(STALE_MARKER, style="italic")
        self.update(text)


class DashboardScreen(Screen[None]):
    """The night at a glance: guests, exits, kits, sales, drops, readers, sync."""

    DEFAULT_CSS = """
    DashboardScreen #dash-body { height: 1fr; }
    DashboardScreen #figures {
        grid-size: 3; grid-columns: 1fr 1fr 1fr; grid-rows: 1; height: auto;
    }
    DashboardScreen #chart-title { height: 1; text-style: bold; margin-top: 1; }
    DashboardScreen #panels { height: auto; margin-top: 1; }
    DashboardScreen #status-lines { margin-top: 1; }
    """

    WATCHED: ClassVar[tuple[str, ...]] = (
        "link",
        "box_status",
        "telemetry",
        "sync",
        "overview",
        "health",
    )

    def __init__(self) -> None:
        super().__init__()
        self._unwatch: Callable[[], None] | None = None
        self._dirty = True
        self.checkouts = LiveCount()
        self.sales = LiveCount()
        self.optins = LiveCount()
        self.coupons = LiveCount()
        self.kits_issued: dict[str, LiveCount] = {}
        # Exits per minute: the overview's counts, plus check-out events
        # counted since it arrived, by the minute of the box's clock.
        self.exits_base: dict[int, int] = {}
        self.exits_live: dict[int, int] = {}

    def compose(self) -> ComposeResult:
        yield LinkHeader()
        yield StaleBanner(id="offline")
        with VerticalScroll(id="dash-body"):
            with Grid(id="figures"):
                yield Figure("Guests in", id="guests")
                yield Figure("Checked out", id="checkouts")
                yield Figure("Sales", id="sales")
                yield Figure("Opt-ins", id="optins")
                yield Figure("Coupons", id="coupons")
                yield Figure("Readers", id="readers")
            yield Static("Exits per minute, last hour", id="chart-title")
            yield ExitChart(id="chart")
            with Horizontal(id="panels"):
                yield Panel(id="kits")
                yield Panel(id="top-items")
            yield Panel(id="drops")
            yield Panel(id="status-lines")
        yield Footer()

    def on_mount(self) -> None:
        link = app_link(self)
        self._unwatch = link.watch(self._on_change)
        self._rebase_overview(link.state)
        self._rebase_telemetry(link.state)
        self.set_interval(REDRAW_INTERVAL_S, self._redraw_if_needed)
        self.redraw()

    def on_unmount(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def on_screen_resume(self) -> None:
        self.redraw()

    # Following the bus.

    def _on_change(self, source: str) -> None:
        state = app_link(self).state
        if source == "overview":
            self._rebase_overview(state)
        elif source == "telemetry":
            self._rebase_telemetry(state)
        elif source.startswith("event:") and state.events:
            event_type, data = state.events[-1]
            self._count_event(event_type, data)
        elif source not in self.WATCHED:
            return
        self._dirty = True

    def _rebase_overview(self, state: LiveState) -> None:
        if state.overview is None:
            return
        overview = state.overview.value
        self.checkouts.rebase(overview.get("checkouts"))
        self.sales.rebase(overview.get("sales_minor"))
        self.optins.rebase(overview.get("optins"))
        self.coupons.rebase(overview.get("coupons"))
        kits = overview.get("kits")
        if isinstance(kits, dict):
            for station, stock in kits.items():
                issued = stock.get("issued") if isinstance(stock, dict) else None
                self.kits_issued.setdefault(station, LiveCount()).rebase(issued)
        self.exits_base = {}
        for entry in overview.get("exits_per_minute") or []:
            if isinstance(entry, list | tuple) and len(entry) == 2:
                minute, count = entry
                if isinstance(minute, int | float) and isinstance(count, int):
                    self.exits_base[int(minute) // 60] = count
        self.exits_live = {}

    def _rebase_telemetry(self, state: LiveState) -> None:
        if state.telemetry is None:
            return
        telemetry = state.telemetry.value
        self.checkouts.rebase(telemetry.get("checkouts"))
        self.sales.rebase(telemetry.get("sales_minor"))
        kits = telemetry.get("kits_issued")
        stations = kits.get("stations") if isinstance(kits, dict) else None
        if isinstance(stations, dict):
            for station, issued in stations.items():
                self.kits_issued.setdefault(station, LiveCount()).rebase(issued)

    def _count_event(self, event_type: str, data: dict[str, Any]) -> None:
        amount = data.get("amount")
        amount = amount if isinstance(amount, int) else 0
        if event_type == "checkout":
            self.checkouts.delta += 1
            seen_at = data.get("seen_at")
            if isinstance(seen_at, int | float):
                minute = int(seen_at) // 60
                self.exits_live[minute] = self.exits_live.get(minute, 0) + 1
        elif event_type == "wallet_charge":
            self.sales.delta += amount
        elif event_type in ("wallet_refund", "wallet_void"):
            # Sales are net of refunds and voids; the next snapshot is exact.
            self.sales.delta -= abs(amount)
        elif event_type == "optin_recorded":
            self.optins.delta += 1
        elif event_type == "coupon_issued":
            self.coupons.delta += 1
        elif event_type == "kit_issued":
            station = data.get("station")
            if isinstance(station, str):
                self.kits_issued.setdefault(station, LiveCount()).delta += 1

    # Drawing.

    def _redraw_if_needed(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        """Redraw every part of the dashboard from the live state."""
        if not self.is_attached:
            return
        self._dirty = False
        link = app_link(self)
        state = link.state
        problem = link.problem
        banner = offline_text(link) if problem is None else problem
        self.query_one("#offline", StaleBanner).show_offline(banner)
        overview = state.overview.value if state.overview else {}
        status = state.box_status.value if state.box_status else {}
        snapshot_stale = state.is_stale("overview") and state.is_stale("telemetry")
        status_stale = state.is_stale("box_status")
        self._draw_figures(link, overview, snapshot_stale)
        self._draw_chart(state, overview, snapshot_stale)
        self._draw_kits(overview, status, snapshot_stale or status_stale)
        self._draw_top_items(overview, state.is_stale("overview"))
        self._draw_drops(overview, status, status_stale)
        self._draw_status_lines(link, overview, status, status_stale)

    def _money(self, overview: dict[str, Any], amount: int | None) -> str | None:
        if amount is None:
            return None
        site = as_dict(overview.get("site"))
        telemetry_currency = ""
        state = app_link(self).state
        if state.telemetry is not None:
            telemetry_currency = str(state.telemetry.value.get("currency") or "")
        currency = str(site.get("currency") or telemetry_currency)
        minor_units = site.get("minor_units")
        return minor_to_text(
            amount, currency, minor_units if isinstance(minor_units, int) else 2
        )

    def _draw_figures(
        self, link: ConsoleLink, overview: dict[str, Any], stale: bool
    ) -> None:
        state = link.state
        guests = _latest(state, "guests_in")
        self.query_one("#guests", Figure).show(guests, stale=stale)
        self.query_one("#checkouts", Figure).show(self.checkouts.value, stale=stale)
        sales = self._money(overview, self.sales.value)
        self.query_one("#sales", Figure).show(sales, stale=stale)
        self.query_one("#optins", Figure).show(self.optins.value, stale=stale)
        self.query_one("#coupons", Figure).show(self.coupons.value, stale=stale)
        online, configured = _readers_online(state, overview)
        readers = None if configured is None else f"{online}/{configured} online"
        self.query_one("#readers", Figure).show(readers, stale=stale)

    def _draw_chart(
        self, state: LiveState, overview: dict[str, Any], stale: bool
    ) -> None:
        now = state.status_time()
        if now is None:
            now = overview.get("now") if isinstance(overview.get("now"), int) else None
        chart = self.query_one("#chart", ExitChart)
        chart.set_class(stale, STALE_CLASS)
        if now is None:
            chart.show([], "no data yet")
            return
        last_minute = int(now) // 60
        counts = [
            self.exits_base.get(minute, 0) + self.exits_live.get(minute, 0)
            for minute in range(last_minute - CHART_MINUTES + 1, last_minute + 1)
        ]
        timezone = site_timezone(overview)
        end = clock_text(last_minute * 60.0, timezone)[:5]
        chart.show(counts, f"{end}{' stale' if stale else ''}")
        total = sum(counts)
        self.query_one("#chart-title", Static).update(
            Text.assemble(
                ("Exits per minute", "bold"),
                f", last hour: {total} (peak {max(counts, default=0)}/min)",
            )
        )

    def _draw_kits(
        self, overview: dict[str, Any], status: dict[str, Any], stale: bool
    ) -> None:
        text = Text("Kits", style="bold")
        stock = as_dict(status.get("kit_stock"))
        kits = as_dict(overview.get("kits"))
        stations = sorted(set(stock) | set(kits) | set(self.kits_issued))
        if not stations:
            text.append("\n no kit stations")
        for station in stations:
            issued = self.kits_issued.get(station, LiveCount()).value
            left = _station_left(stock.get(station), kits.get(station))
            text.append(f"\n {station}: ")
            text.append(f"{_or_dash(issued)} issued, {_or_dash(left)} left")
        self.query_one("#kits", Panel).show(text, stale=stale)

    def _draw_top_items(self, overview: dict[str, Any], stale: bool) -> None:
        text = Text("Top items", style="bold")
        items = overview.get("top_items")
        if not isinstance(items, list) or not items:
            text.append("\n no sales yet" if items == [] else f"\n {NO_VALUE}")
        else:
            for item in items[:5]:
                if not isinstance(item, dict):
                    continue
                name = str(item.get("name") or item.get("item") or "?")
                revenue = item.get("revenue")
                money = self._money(
                    overview, revenue if isinstance(revenue, int) else None
                )
                text.append(
                    f"\n {item.get('quantity', 0)} x {name}: {money or NO_VALUE}"
                )
        self.query_one("#top-items", Panel).show(text, stale=stale)

    def _draw_drops(
        self, overview: dict[str, Any], status: dict[str, Any], stale: bool
    ) -> None:
        text = Text("Drops ", style="bold")
        live = as_dict(status.get("drops"))
        # A scheduled drop opens by its times, so the box's time decides
        # whether it is upcoming, open or ended.
        now = app_link(self).state.box_time()
        states = {
            drop.get("id"): drop_state_text(drop, now)
            for drop in overview.get("drops") or []
            if isinstance(drop, dict)
        }
        parts = []
        for drop_id in sorted(
            set(live) | {key for key in states if isinstance(key, str)}
        ):
            stock = as_dict(live.get(drop_id))
            available = stock.get("available")
            quota = stock.get("quota")
            part = f"{drop_id} {_or_dash(available)}/{_or_dash(quota)} left"
            if states.get(drop_id):
                part += f" ({states[drop_id]})"
            parts.append(part)
        text.append("; ".join(parts) if parts else "none tonight")
        self.query_one("#drops", Panel).show(text, stale=stale)

    def _draw_status_lines(
        self,
        link: ConsoleLink,
        overview: dict[str, Any],
        status: dict[str, Any],
        stale: bool,
    ) -> None:
        state = link.state
        timezone = site_timezone(overview)
        text = Text()
        text.append("Stream ", style="bold")
        stream = overview.get("stream") if overview else None
        if isinstance(stream, dict):
            text.append(str(stream.get("state") or "on"))
        else:
            text.append("no studio" if overview else NO_VALUE)
        backlog, last_success = _sync_figures(state, status)
        text.append("  Sync ", style="bold")
        text.append(f"backlog {_or_dash(backlog)}, last ")
        text.append(
            "never" if last_success is None else clock_text(last_success, timezone)
        )
        clock = as_dict(status.get("clock"))
        text.append("\nClock ", style="bold")
        if clock:
            text.append(_clock_trust(clock))
        else:
            text.append(NO_VALUE)
        faults = as_list(status.get("faults"))
        text.append("  Faults ", style="bold")
        if not faults:
            text.append("none" if status else NO_VALUE)
        for index, fault in enumerate(faults):
            if not isinstance(fault, dict):
                continue
            since = fault.get("since")
            when = clock_text(
                since if isinstance(since, int | float) else None, timezone
            )
            separator = ", " if index else ""
            text.append(
                f"{separator}{fault.get('reader')} {fault.get('kind')} since {when}",
                style="bold red",
            )
        self.query_one("#status-lines", Panel).show(text, stale=stale)


def _or_dash(value: object) -> str:
    return NO_VALUE if value is None else str(value)


def _latest(state: LiveState, key: str) -> int | None:
    """Return ``key`` from the newer of the telemetry and the overview."""
    snapshots = [stamp for stamp in (state.telemetry, state.overview) if stamp]
    snapshots.sort(key=lambda stamp: stamp.received, reverse=True)
    for stamp in snapshots:
        value = stamp.value.get(key)
        if isinstance(value, int):
            return value
    return None


def _station_left(live: object, snapshot: object) -> int | None:
    for stock, key in ((live, "remaining"), (snapshot, "left")):
        if isinstance(stock, dict) and isinstance(stock.get(key), int):
            return int(stock[key])
    return None


def _readers_online(
    state: LiveState, overview: dict[str, Any]
) -> tuple[int, int | None]:
    """Return readers online and configured: availability, else telemetry."""
    readers = overview.get("readers")
    if isinstance(readers, list) and readers:
        ids = [reader.get("id") for reader in readers if isinstance(reader, dict)]
        online = sum(
            1
            for reader_id in ids
            if isinstance(reader_id, str)
            and reader_id in state.readers
            and state.readers[reader_id].availability == "online"
        )
        if online or state.telemetry is None:
            return online, len(ids)
    if state.telemetry is not None:
        value = state.telemetry.value
        online_count = value.get("readers_online")
        configured = value.get("readers")
        if isinstance(online_count, int) and isinstance(configured, int):
            return online_count, configured
    return 0, None


def _sync_figures(
    state: LiveState, status: dict[str, Any]
) -> tuple[int | None, float | None]:
    """Return the sync backlog and last success: box status, tele/sync, telemetry."""
    sync = status.get("sync")
    if not isinstance(sync, dict) and state.sync is not None:
        sync = state.sync.value
    if isinstance(sync, dict):
        backlog = sync.get("backlog")
        last = sync.get("last_success")
        return (
            backlog if isinstance(backlog, int) else None,
            float(last) if isinstance(last, int | float) else None,
        )
    telemetry = state.telemetry.value if state.telemetry else {}
    backlog = telemetry.get("sync_backlog")
    if not isinstance(backlog, int):
        backlog = status.get("outbox_backlog")
    last = telemetry.get("sync_last_success")
    return (
        backlog if isinstance(backlog, int) else None,
        float(last) if isinstance(last, int | float) else None,
    )


def _clock_trust(clock: dict[str, Any]) -> str:
    """Return whether the box trusts its clock and which source vouched for it."""
    if not clock.get("trusted"):
        return "untrusted (no time source has set it)"
    return f"trusted ({clock.get('source') or 'unknown source'})"
