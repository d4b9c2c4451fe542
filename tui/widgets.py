"""Widgets every console screen shares: the link header, figures and money.

:class:`LinkHeader` is the first line of every screen. It shows the site, the
box, whether the link is live or since when it is offline, and the box's own
time with whether its clock is trusted. Times are always the box's, taken
from its status, never this computer's clock.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

if TYPE_CHECKING:
    from tui.link import ConsoleLink
    from tui.session import AdminSession

STALE_CLASS = "-stale"
STALE_MARKER = " (stale)"
NO_VALUE = "--"


def as_dict(value: object) -> dict[str, Any]:
    """Return ``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """Return ``value`` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def minor_to_text(amount: int, currency: str, minor_units: int = 2) -> str:
    """Format minor units as money: ``minor_to_text(1250, "EUR")`` is ``12.50 EUR``."""
    sign = "-" if amount < 0 else ""
    magnitude = abs(amount)
    if minor_units <= 0:
        number = f"{magnitude:,}"
    else:
        scale = 10**minor_units
        number = f"{magnitude // scale:,}.{magnitude % scale:0{minor_units}d}"
    return f"{sign}{number} {currency}".rstrip()


def clock_text(
    unix_s: float | None,
    timezone: datetime.tzinfo | None = None,
    *,
    seconds: bool = True,
) -> str:
    """Format a box time as ``HH:MM:SS``, or ``HH:MM`` without ``seconds``.

    UTC unless ``timezone`` is given; ``--`` for None or a time outside the
    years a datetime holds.
    """
    if unix_s is None:
        return NO_VALUE
    try:
        moment = datetime.datetime.fromtimestamp(unix_s, timezone or datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return NO_VALUE
    return moment.strftime("%H:%M:%S" if seconds else "%H:%M")


def site_timezone(overview: dict[str, Any] | None) -> datetime.tzinfo:
    """Return the site's time zone from the overview, or UTC when it names none."""
    import zoneinfo

    site = (overview or {}).get("site")
    name = site.get("timezone") if isinstance(site, dict) else None
    if isinstance(name, str) and name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return datetime.UTC


def app_link(widget: Any) -> ConsoleLink:
    """Return the console link of the app ``widget`` belongs to."""
    return cast("ConsoleLink", widget.app.link)


def app_session(widget: Any) -> AdminSession:
    """Return the admin session of the app ``widget`` belongs to."""
    return cast("AdminSession", widget.app.session)


def count_action_error(widget: Any) -> int:
    """Count an error of an action on the app ``widget`` belongs to; return the count.

    The count is the app's ``action_errors``: requests that could not be sent
    and exceptions that ended a screen's worker.
    """
    app = widget.app
    app.action_errors = int(getattr(app, "action_errors", 0)) + 1
    return int(app.action_errors)


class Figure(Static):
    """A labelled value, such as ``Checked out 57``, dimmed when stale."""

    DEFAULT_CSS = """
    Figure { height: 1; width: auto; min-width: 16; padding: 0 1 0 0; }
    Figure.-stale { color: $text-muted; text-style: dim; }
    """

    def __init__(self, label: str, value: str = NO_VALUE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label
        self._value = value
        self._stale = True

    def on_mount(self) -> None:
        self._render_figure()

    def show(self, value: object, *, stale: bool) -> None:
        """Show ``value`` (None as ``--``), marked stale when ``stale``."""
        text = NO_VALUE if value is None else str(value)
        if text == self._value and stale == self._stale:
            return
        self._value = text
        self._stale = stale
        self._render_figure()

    @property
    def value(self) -> str:
        """The value as shown, without the label."""
        return self._value

    def _render_figure(self) -> None:
        self.set_class(self._stale, STALE_CLASS)
        text = Text.assemble((f"{self.label} ", "bold"), self._value)
        if self._stale:
            text.append(STALE_MARKER, style="italic")
        self.update(text)


class StaleBanner(Static):
    """A red line shown while the link is down: since when, and that it reconnects."""

    DEFAULT_CSS = """
    StaleBanner { height: auto; color: $text; background: $error; display: none; }
    StaleBanner.-offline { display: block; }
    """

    def show_offline(self, text: str | None) -> None:
        """Show ``text``, or hide the banner when it is None."""
        self.set_class(text is not None, "-offline")
        self.update(text or "")


def offline_text(link: ConsoleLink) -> str | None:
    """Return the offline message of ``link``, or None while it is live."""
    if link.login_refusal is not None:
        return "LOGIN REFUSED, retrying"
    state = link.state
    if state.offline_since is None:
        return "NO REPLY from the box" if link.problem else None
    since = state.box_time(state.offline_since)
    if since is None:
        return f"OFFLINE, connecting to {link.address}"
    timezone = site_timezone(state.overview.value if state.overview else None)
    return f"OFFLINE since {clock_text(since, timezone)}, reconnecting"


class LinkHeader(Vertical):
    """The top of every screen: site, box, link, box time and clock; screen keys.

    The first line shows the state of the link, the second line the key of
    every screen the console has, with the screen shown highlighted.
    """

    DEFAULT_CSS = """
    LinkHeader { height: 2; dock: top; background: $panel; }
    LinkHeader > Horizontal { height: 1; }
    LinkHeader #header-site {
        width: 1fr; text-style: bold; padding: 0 0 0 1;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    LinkHeader #header-link { width: auto; padding: 0 1; color: $success; }
    LinkHeader #header-link.-offline { color: $text; background: $error; }
    LinkHeader #header-clock { width: auto; padding: 0 1 0 0; }
    LinkHeader #header-keys { height: 1; padding: 0 1; background: $boost; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._unwatch: Callable[[], None] | None = None
        # The screen this header belongs to is the app's mode when it mounts.
        self._mode = ""

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(id="header-site")
            yield Static(id="header-link")
            yield Static(id="header-clock")
        yield Static(id="header-keys")

    def on_mount(self) -> None:
        self._mode = str(getattr(self.app, "current_mode", ""))
        self._unwatch = app_link(self).watch(self._on_change)
        # Offline time and staleness move without any message arriving.
        self.set_interval(1.0, self.refresh_header)
        self.refresh_header()

    def on_unmount(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def _on_change(self, source: str) -> None:
        if source in ("link", "box_status", "overview", "session"):
            self.refresh_header()

    def refresh_header(self) -> None:
        """Redraw the header from the link's live state."""
        if not self.is_attached:
            return
        link = app_link(self)
        state = link.state
        overview = state.overview.value if state.overview else {}
        site = as_dict(overview.get("site"))
        site_name = str(site.get("name") or link.settings.site)
        self.query_one("#header-site", Static).update(
            Text(f"{site_name} / {link.settings.box}")
        )
        offline = offline_text(link)
        link_widget = self.query_one("#header-link", Static)
        link_widget.set_class(offline is not None, "-offline")
        link_widget.update(offline or "live")
        self.query_one("#header-clock", Static).update(self._clock_text(overview))
        self.query_one("#header-keys", Static).update(self._keys_text())

    def _keys_text(self) -> Text:
        keys = getattr(self.app, "screen_keys", None)
        current = self._mode
        text = Text(no_wrap=True, overflow="crop")
        for key, name, label in keys() if callable(keys) else []:
            style = "reverse bold" if name == current else ""
            text.append(key, style=f"bold {style}".strip())
            text.append(f" {label}", style=style)
            text.append(" ")
        return text

    def _clock_text(self, overview: dict[str, Any]) -> Text:
        link = app_link(self)
        state = link.state
        status = state.box_status.value if state.box_status else {}
        clock = as_dict(status.get("clock"))
        text = Text()
        extras = getattr(self.app, "header_extras", None)
        if callable(extras):
            for extra in extras():
                text.append(f"{extra} ", style="bold yellow")
        if state.box_status is None:
            text.append("box time unknown")
            return text
        moment = clock_text(state.status_time(), site_timezone(overview))
        text.append(moment, style="bold")
        if clock.get("trusted"):
            text.append(" clock trusted")
        else:
            text.append(" clock untrusted", style="bold yellow")
        if state.is_stale("box_status", time.monotonic()):
            text.append(STALE_MARKER, style="italic")
        return text
