"""The stream screen: the camera studio's stream state, and its start, stop and clip.

``console/overview`` has ``stream: null`` on a box without a camera
studio, so the screen shows that and keeps its buttons disabled with that
reason. With a studio it shows each field of the stream state.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, Static

from tui.screens._operation import OperationScreen

NO_STUDIO = (
    "This box has no camera studio, so there is no stream to start, stop or "
    "clip. The buttons stay disabled until a studio reports its state."
)
_ACTIONS = (("start", "Start stream"), ("stop", "Stop stream"), ("clip", "Clip"))


class StreamScreen(OperationScreen):
    """The camera studio's stream: its state and its controls."""

    TITLE = "Stream"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "stream('start')", "Start"),
        Binding("x", "stream('stop')", "Stop"),
        Binding("g", "stream('clip')", "Clip"),
    ]
    DEFAULT_CSS = """
    StreamScreen #stream-state { height: auto; padding: 1 1; }
    StreamScreen #stream-buttons { height: auto; }
    """

    def compose_body(self) -> ComposeResult:
        yield Static(NO_STUDIO, id="stream-state", markup=False)
        with Horizontal(id="stream-buttons"):
            for action, label in _ACTIONS:
                yield Button(label, id=f"stream-{action}", disabled=True)

    def stream_state(self) -> dict[str, Any] | None:
        """The studio's stream state, or None on a box without a studio."""
        stream = self.overview().get("stream")
        return stream if isinstance(stream, dict) else None

    def redraw(self, source: str) -> None:
        if source not in ("shown", "overview", "link"):
            return
        stream = self.stream_state()
        state = self.query_one("#stream-state", Static)
        if stream is None:
            state.update(NO_STUDIO)
        else:
            state.update(
                Text("\n".join(f"{key}: {value}" for key, value in stream.items()))
            )
        for action, _ in _ACTIONS:
            button = self.query_one(f"#stream-{action}", Button)
            button.disabled = stream is None
            button.tooltip = NO_STUDIO if stream is None else None

    def on_button_pressed(self, event: Button.Pressed) -> None:
        action = (event.button.id or "").removeprefix("stream-")
        self.action_stream(action)

    def action_stream(self, action: str) -> None:
        if self.stream_state() is None:
            self.show_error(f"stream {action} unavailable: {NO_STUDIO}")
            return
        self.start_action(self._send(action))

    async def _send(self, action: str) -> None:
        # NOTE: no box serves console/stream-* yet. The camera studio is to
        # register these actions, and until then the box replies unknown-action.
        reply = await self.send(
            "console", f"stream-{action}", {}, admin=True, mutating=True
        )
        if reply is not None:
            self.show_ok(f"stream {action}: done")
