"""The system screen: the box's clock, version, network, updates, sync and logs.

The whole screen needs the admin PIN, because the box's log may name
devices, tokens' ids and errors. ``console/system`` returns the box's time,
clock trust and source, version, uptime, broker, network interfaces,
updates and the last log lines. The sync state is live from the retained
``tele/sync`` and the telemetry's ``sync_backlog`` and ``sync_last_success``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import RichLog, Static

from tui.screens._operation import OperationScreen, format_age

_LOCKED = "System: locked until the admin PIN is given"


class SystemScreen(OperationScreen):
    """The box's system facts, its sync state and its log."""

    TITLE = "Sync and system"
    SENSITIVE = True
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("g", "reload", "Refresh logs"),
    ]
    DEFAULT_CSS = """
    SystemScreen #facts { height: auto; }
    SystemScreen #system-info { width: 1fr; height: auto; }
    SystemScreen #sync-info { width: 1fr; height: auto; }
    SystemScreen #logs { height: 1fr; min-height: 4; border: round $panel; }
    """

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="facts"):
            yield Static(_LOCKED, id="system-info")
            yield Static("Sync: --", id="sync-info")
        yield RichLog(id="logs", max_lines=500, wrap=False, markup=False)

    async def unlocked(self) -> None:
        await self._load()

    def action_reload(self) -> None:
        self.run_latest(self._load, "system")

    def redraw(self, source: str) -> None:
        if source in ("shown", "sync", "telemetry", "link"):
            self._draw_sync()
        if source == "session" and not self.session.unlocked:
            # Locking hides what the PIN showed.
            self.query_one("#system-info", Static).update(_LOCKED)
            self.query_one("#logs", RichLog).clear()

    async def _load(self) -> None:
        reply = await self.send("console", "system", {}, admin=True)
        if reply is None or not self.is_attached:
            return
        self.query_one("#system-info", Static).update(self._system_text(reply))
        reply = await self.send("console", "logs", {}, admin=True)
        if reply is None or not self.is_attached:
            return
        log = self.query_one("#logs", RichLog)
        log.clear()
        lines = [str(line) for line in reply.get("lines") or []]
        for line in lines:
            log.write(Text(line, style=_log_style(line)))
        self.show_ok(
            f"{len(lines)} log lines at box time {self.time_text(reply.get('now'))}"
        )

    def _system_text(self, reply: dict[str, Any]) -> Text:
        clock = reply.get("clock") or {}
        trust = "trusted" if clock.get("trusted") else "untrusted"
        updates = reply.get("updates") or {}
        update_text = "available" if updates.get("available") else "none"
        if updates.get("note"):
            update_text += f" ({updates['note']})"
        lines = [
            f"box time {self.time_text(reply.get('now'))}, clock {trust} "
            f"({clock.get('source', '--')})",
            f"version {reply.get('version')}, up {format_age(reply.get('uptime_s'))}",
            f"broker {reply.get('broker')}",
            f"updates: {update_text}",
        ]
        for interface in reply.get("network") or []:
            lines.append(
                f"{interface.get('name')} ({interface.get('kind')}): "
                f"{interface.get('state')} {interface.get('address') or ''}".rstrip()
            )
        return Text("\n".join(lines))

    def _draw_sync(self) -> None:
        state = self.link.state
        sync = state.sync.value if state.sync is not None else {}
        telemetry = state.telemetry.value if state.telemetry is not None else {}
        lines = []
        if sync:
            connected = "connected" if sync.get("connected") else "not connected"
            lines.append(f"sync {connected} to {sync.get('broker')}")
            lines.append(f"backlog {sync.get('backlog')}, sent {sync.get('sent')}")
            if sync.get("last_error"):
                lines.append(f"last error: {sync['last_error']}")
        else:
            lines.append("sync: no upstream broker configured ([sync] missing)")
        backlog = telemetry.get("sync_backlog", sync.get("backlog"))
        last = telemetry.get("sync_last_success", sync.get("last_success"))
        lines.append(
            f"events not yet synced: {backlog if backlog is not None else '--'}"
        )
        lines.append(f"last synced: {self.time_text(last) if last else 'never'}")
        widget = self.query_one("#sync-info", Static)
        widget.update(Text("\n".join(lines)))
        widget.set_class(state.is_stale("telemetry"), "-stale")


def _log_style(line: str) -> str:
    if " ERROR " in line or " CRITICAL " in line:
        return "bold red"
    if " WARNING " in line:
        return "yellow"
    return ""
