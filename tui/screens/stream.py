"""The stream screen: the camera studio's stream state, and its start, stop and clip.

The box's retained status (every second) and ``console/overview`` carry
``stream``: null on a box without a camera studio, so the screen says so
and keeps its buttons disabled with that reason. With a studio it shows
the source (camera or slate), rates, segments, viewers, the clip queue and
the last clip, and its buttons send ``console/stream-start``,
``stream-stop`` and ``stream-clip`` with the admin PIN.
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
        """The studio's stream state, or None on a box without a studio.

        The box status, published every second, is newer than the overview
        when both carry it.
        """
        for source in (self.box_status(), self.overview()):
            stream = source.get("stream")
            if isinstance(stream, dict):
                return stream
        return None

    def redraw(self, source: str) -> None:
        if source not in ("shown", "overview", "box_status", "link"):
            return
        stream = self.stream_state()
        state = self.query_one("#stream-state", Static)
        state.update(NO_STUDIO if stream is None else Text(self._state_text(stream)))
        state.set_class(self.link.state.is_stale("box_status"), "-stale")
        for action, _ in _ACTIONS:
            button = self.query_one(f"#stream-{action}", Button)
            button.disabled = stream is None
            button.tooltip = NO_STUDIO if stream is None else None

    def _state_text(self, stream: dict[str, Any]) -> str:
        running = "running" if stream.get("running") else "stopped"
        source = stream.get("source") or "--"
        lines = [
            f"stream {running}, showing {source} ({stream.get('camera')} camera, "
            f"{stream.get('size')})",
        ]
        if stream.get("camera_down_since") is not None:
            lines.append(
                f"camera down since {self.time_text(stream['camera_down_since'])}: "
                f"{stream.get('last_error') or 'no reason given'}"
            )
        lines.append(
            f"{stream.get('fps', 0)} fps, {stream.get('bitrate_kbps', 0)} kbit/s, "
            f"encoder {stream.get('encoder_latency_ms', 0)} ms, "
            f"{stream.get('dropped_frames', 0)} frames dropped"
        )
        lines.append(
            f"segments written {stream.get('segments_written', 0)}, served "
            f"{stream.get('segments_served', 0)}, viewers {stream.get('viewers', 0)}"
        )
        lines.append(
            f"clips {stream.get('clips', 0)}, waiting for upload "
            f"{stream.get('clip_queue', 0)}"
        )
        last = stream.get("last_clip")
        if isinstance(last, dict):
            lines.append(
                f"last clip {str(last.get('id'))[:8]} at "
                f"{self.time_text(last.get('created_at'))} ({last.get('trigger')}, "
                f"{last.get('duration_s')} s)"
            )
        playing = stream.get("set")
        if isinstance(playing, dict):
            lines.append(f"set {playing.get('id')} by {playing.get('creator')}")
        push = stream.get("push")
        if isinstance(push, dict):
            link = "connected" if push.get("connected") else "not connected"
            lines.append(f"push to {push.get('target')}: {link}")
        if stream.get("message"):
            lines.append(f"overlay message: {stream['message']}")
        return "\n".join(lines)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        action = (event.button.id or "").removeprefix("stream-")
        self.action_stream(action)

    def action_stream(self, action: str) -> None:
        if self.stream_state() is None:
            self.show_error(f"stream {action} unavailable: {NO_STUDIO}")
            return
        self.start_action(self._send(action))

    async def _send(self, action: str) -> None:
        reply = await self.send(
            "console", f"stream-{action}", {}, admin=True, mutating=True
        )
        if reply is None:
            return
        if action == "clip":
            self.show_ok(
                f"stream clip: clip {str(reply.get('clip'))[:8]} is being written "
                f"from the last {reply.get('buffer_s')} s"
            )
        else:
            self.show_ok(f"stream {action}: {reply.get('state')}")
