"""The base of the operations screens: live data from the link, requests, refusals.

Every operations screen watches the console link and redraws itself from the
link's live state when a source it shows changes. Requests go through
:meth:`OperationScreen.send`, which fetches the admin token when the action
needs one and turns the box's refusal into a message line on the screen
(code and message), so no refusal ever reaches the user as a traceback.
When the box refuses the admin token as expired or revoked, the screen asks
for the PIN again and sends the request once more. Every worker the screen
starts runs guarded: an unexpected exception is logged with its traceback,
counted, and shown as one line, and the console goes on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Select, Static
from textual.widgets.data_table import CellDoesNotExist

from appliance.errors import RequestError
from tui.widgets import (
    LinkHeader,
    app_link,
    app_session,
    clock_text,
    count_action_error,
    minor_to_text,
    site_timezone,
)

if TYPE_CHECKING:
    from tui.link import ConsoleLink
    from tui.session import AdminSession

_LOGGER = logging.getLogger(__name__)

# Refusals whose cause is the admin token itself: the session forgets the
# token, so the next action asks for the PIN again.
_TOKEN_REFUSALS = ("token-expired", "token-revoked", "token-forged", "token-malformed")
# Refusals after which a new token is likely to succeed, so the request is
# sent once more after the PIN.
_RENEWABLE_REFUSALS = ("token-expired", "token-revoked")


class OperationScreen(Screen[None]):
    """A screen of the console that shows the box's live state and acts on it.

    Subclasses compose their widgets inside :meth:`compose_body`, redraw in
    :meth:`redraw` (called with the changed source, or ``"shown"``), and may
    set :attr:`POLL_S` to have :meth:`poll` run while the screen is shown.
    """

    TITLE: ClassVar[str] = ""
    # Sensitive as a whole: the PIN is asked for whenever the screen is shown.
    SENSITIVE: ClassVar[bool] = False
    POLL_S: ClassVar[float | None] = None
    # Esc in a text field or a choice moves the focus to the screen's first
    # table, where the letter keys of the screens work again.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave_field", "Leave field"),
    ]

    DEFAULT_CSS = """
    OperationScreen { layout: vertical; }
    OperationScreen .title { text-style: bold; height: 1; }
    OperationScreen #message { height: auto; max-height: 3; }
    OperationScreen #message.-error { color: $error; text-style: bold; }
    OperationScreen #message.-ok { color: $success; }
    OperationScreen DataTable { height: auto; max-height: 12; }
    OperationScreen .-stale { opacity: 60%; }
    OperationScreen Input, OperationScreen Select { width: 1fr; }
    OperationScreen .form { height: auto; }
    OperationScreen .form > Horizontal { height: auto; }
    OperationScreen .form Label { width: 14; padding: 0 1 0 0; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._unwatch: Callable[[], None] | None = None
        self._poll_timer: Timer | None = None
        # Whether another screen of this screen's stack covers it now.
        self._covered = False
        self._unlocking = False
        self._acting = False

    @property
    def link(self) -> ConsoleLink:
        """The app's connection to the box."""
        return app_link(self)

    @property
    def session(self) -> AdminSession:
        """The app's admin session, which keeps the admin token."""
        return app_session(self)

    def compose(self) -> ComposeResult:
        yield LinkHeader()
        yield Static(self.TITLE, classes="title")
        yield from self.compose_body()
        yield Static("", id="message")
        yield Footer()

    def compose_body(self) -> ComposeResult:
        """Yield the screen's own widgets."""
        yield from ()

    def on_mount(self) -> None:
        self._unwatch = self.link.watch(self._on_link_change)

    def on_unmount(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self._stop_polling()

    def on_screen_resume(self) -> None:
        # A resume after a modal of this screen closed (a form, the PIN) is
        # no new visit: asking for the PIN again would loop after a cancel.
        returning = self._covered
        self._covered = False
        self._redraw_guarded("shown")
        if self.POLL_S is not None and self._poll_timer is None:
            self._poll_timer = self.set_interval(self.POLL_S, self._poll_tick)
            self._poll_tick()
        if self.SENSITIVE and not returning and not self._unlocking:
            self._unlocking = True
            self.run_worker(self._unlock_on_show(), group="unlock")

    def on_screen_suspend(self) -> None:
        self._covered = self.app.screen is not self and self in self.app.screen_stack
        self._stop_polling()

    def _stop_polling(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None

    def _poll_tick(self) -> None:
        self.run_latest(self.poll, "poll")

    # Focus.

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # The footer shows "Leave field" only while a field has the focus.
        if action == "leave_field":
            return isinstance(self.focused, Input | Select)
        return True

    def action_leave_field(self) -> None:
        """Move the focus out of a field to the screen's first table."""
        tables = self.query(DataTable)
        if tables:
            tables.first().focus()
        else:
            self.set_focus(None)

    async def poll(self) -> None:
        """Fetch what the screen polls for; runs every :attr:`POLL_S` while shown."""

    async def _unlock_on_show(self) -> None:
        try:
            token = await self.session.token()
        except Exception:
            self.report_unexpected("unlock")
            return
        finally:
            self._unlocking = False
        if token is None:
            self.show_error(
                "locked: this screen needs the admin PIN, which was cancelled or "
                "refused; leave and open the screen again to retry"
            )
            return
        await self.unlocked()

    async def unlocked(self) -> None:
        """Load what a sensitive screen shows once the admin token is held."""

    def _on_link_change(self, source: str) -> None:
        if self.is_attached:
            self._redraw_guarded(source)

    def _redraw_guarded(self, source: str) -> None:
        try:
            self.redraw(source)
        except Exception:
            self.report_unexpected(f"redraw of {source}")

    def redraw(self, source: str) -> None:
        """Redraw the widgets that show ``source`` (``"shown"`` redraws everything)."""

    def run_latest(self, work: Callable[[], Awaitable[None]], group: str) -> None:
        """Run ``work()`` in a worker that replaces the group's running one.

        The worker calls ``work`` only when it starts, so a worker replaced
        before it started leaves no coroutine that was never awaited.
        """

        async def guarded() -> None:
            try:
                await work()
            except NoMatches:
                # A reply that arrives while the screen is being taken down
                # finds its widgets gone; there is nothing left to show it on.
                _LOGGER.debug(
                    "The %s screen lost its widgets during %s", self.TITLE, group
                )
            except Exception:
                self.report_unexpected(group)

        # mypy infers Never for run_worker's result from an async callable,
        # whose two matching union arms disagree, so the callable goes as Any.
        self.run_worker(cast(Any, guarded), group=group, exclusive=True)

    def start_action(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a change on the box) unless the last one is still running.

        A second charge or restock while the first waits for its reply would
        be sent twice by an impatient key press, so it is refused instead.
        """
        if self._acting:
            work.close()
            self.show_error("the last action has no reply yet; wait for it")
            return
        self._acting = True
        self.run_worker(self._run_action(work), group="action")

    async def _run_action(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            self.report_unexpected("action")
        finally:
            self._acting = False

    def report_unexpected(self, what: str) -> None:
        """Log the exception being handled with its traceback, count it, show a line.

        The traceback goes to the log only: its frames may hold the admin
        token or a guest's data, which the screen must not show.
        """
        _LOGGER.error(
            "Unexpected error in %s of the %s screen", what, self.TITLE, exc_info=True
        )
        count = count_action_error(self)
        error = sys.exc_info()[1]
        kind = type(error).__name__ if error is not None else "error"
        if self.is_attached:
            self.show_error(
                f"{what} failed with an unexpected {kind} (error {count} of this "
                "session); the log file has the details, and the console goes on"
            )

    # Messages and requests.

    def show_error(self, text: str) -> None:
        """Show ``text`` as the screen's message, styled as an error."""
        self._show_message(text, "-error")

    def show_ok(self, text: str) -> None:
        """Show ``text`` as the screen's message, styled as a success."""
        self._show_message(text, "-ok")

    def _show_message(self, text: str, style: str) -> None:
        # A screen that is being taken down has no message line any more.
        for message in self.query("#message").results(Static):
            message.set_classes(style)
            message.update(Text(text))

    def show_refusal(self, action: str, err: RequestError) -> None:
        """Show the box's refusal of ``action`` with its code and message.

        A refusal of the admin token itself is shown in the console's words,
        because the box's message tells a terminal to get a new token, which
        here means giving the PIN again.
        """
        if err.code in _TOKEN_REFUSALS:
            self.session.lock()
            self.show_error(
                f"{action} refused: {err.code}: the admin token is no longer "
                "accepted; the console is locked, and the next action asks for "
                "the PIN"
            )
            return
        text = f"{action} refused: {err.code}: {err.message}"
        note = self.refusal_note(err)
        self.show_error(f"{text}\n{note}" if note else text)

    def refusal_note(self, err: RequestError) -> str | None:
        """Return a line that puts the refusal's figures in people's terms, or None."""
        return None

    async def send(
        self,
        service: str,
        action: str,
        data: dict[str, Any],
        *,
        admin: bool = False,
        mutating: bool = False,
        timeout_s: float = 5.0,
        quiet: bool = False,
    ) -> dict[str, Any] | None:
        """Send a request and return its reply data, or None after a refusal.

        ``admin`` fetches the admin token first (asking for the PIN when none
        is held). A refusal is shown as the screen's message unless ``quiet``.
        """
        name = f"{service}/{action}"
        renewed = False
        while True:
            token: str | None = None
            if admin:
                token = await self.session.token()
                if token is None:
                    self.show_error(
                        f"{name} not sent: it needs the admin PIN, "
                        "which was cancelled or refused"
                    )
                    return None
            try:
                return await self.link.request(
                    service,
                    action,
                    data,
                    token=token,
                    mutating=mutating,
                    timeout_s=timeout_s,
                )
            except RequestError as err:
                if admin and not renewed and err.code in _RENEWABLE_REFUSALS:
                    # The box refused the token before acting, so sending
                    # again (with a new idempotency key) cannot act twice.
                    _LOGGER.info("%s refused: %s; asking for the PIN", name, err.code)
                    renewed = True
                    self.session.lock()
                    continue
                _LOGGER.info("%s refused: %s", name, err.code)
                if not quiet:
                    self.show_refusal(name, err)
                return None
            except ValueError as err:
                # The request could not be encoded (a number beyond 64 bits,
                # for one). PayloadError is a ValueError and names the value.
                _LOGGER.warning("%s not sent: %s", name, err)
                count_action_error(self)
                if not quiet:
                    self.show_error(f"{name} not sent: {err}")
                return None

    # Shared views of the live state.

    def overview(self) -> dict[str, Any]:
        """The last ``console/overview`` reply, or an empty dict before the first."""
        stamped = self.link.state.overview
        return dict(stamped.value) if stamped is not None else {}

    def box_status(self) -> dict[str, Any]:
        """The box's last retained status, or an empty dict before the first."""
        stamped = self.link.state.box_status
        return dict(stamped.value) if stamped is not None else {}

    def box_now(self) -> float | None:
        """The box's Unix time now, counted from its last status."""
        return self.link.state.box_time()

    def money(self, amount: object) -> str:
        """Format ``amount`` minor units with the site's currency."""
        if not isinstance(amount, int):
            return "--"
        site = self.overview().get("site") or {}
        return minor_to_text(
            amount, str(site.get("currency") or ""), self.minor_units()
        )

    def time_text(self, unix_s: object, *, seconds: bool = True) -> str:
        """Format a box time as ``HH:MM:SS`` (or ``HH:MM``) in the site's time zone."""
        if not isinstance(unix_s, int | float):
            return "--"
        timezone = site_timezone(self.overview())
        return clock_text(float(unix_s), timezone, seconds=seconds)

    def minor_units(self) -> int:
        """The digits after the decimal point of the site's currency."""
        site = self.overview().get("site") or {}
        minor_units = site.get("minor_units")
        return minor_units if isinstance(minor_units, int) else 2

    def mark_stale(self, widget_id: str, source: str) -> None:
        """Dim the widget ``widget_id`` while the link reports ``source`` as stale."""
        widget = self.query_one(f"#{widget_id}")
        widget.set_class(self.link.state.is_stale(source), "-stale")


def fill_table(
    table: DataTable[Any],
    columns: Sequence[str],
    rows: Iterable[tuple[str, Sequence[object]]],
) -> None:
    """Replace the rows of ``table`` keeping the cursor on the same row key.

    ``rows`` are ``(key, cells)``; ``None`` cells are shown as ``--``. A key
    seen before in ``rows`` is skipped, so the first row of a key wins.
    """
    if not table.columns:
        table.add_columns(*columns)
    selected = selected_key(table)
    table.clear()
    for key, cells in rows:
        if key in table.rows:
            continue
        table.add_row(*("--" if cell is None else cell for cell in cells), key=key)
    if selected is not None and selected in table.rows:
        table.move_cursor(row=table.get_row_index(selected), animate=False)


def selected_key(table: DataTable[Any]) -> str | None:
    """Return the key of the row under the cursor, or None when the table is empty."""
    if table.row_count == 0:
        return None
    try:
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
    except CellDoesNotExist:
        return None
    return None if row_key.value is None else str(row_key.value)


def format_rssi(rssi: object) -> str:
    """Format an RSSI in dBm as a whole number, or ``--`` when it is missing."""
    return f"{rssi:.0f}" if isinstance(rssi, int | float) else "--"


def format_age(seconds: float | None) -> str:
    """Format a duration in seconds as ``42 s``, ``7 min`` or ``3 h 5 min``."""
    if seconds is None:
        return "--"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
