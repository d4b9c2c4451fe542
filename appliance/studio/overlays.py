"""Overlays burned into the studio's frames: a drop countdown, its QR code, sales.

The event loop reads the night's state once a second (:func:`read_overlay_state`)
and hands it to :meth:`OverlayCompositor.update`, which renders each text
line and the QR code into a small luma bitmap, cached until its content
changes. The camera calls the compositor on every raw I420 frame from its
own thread. That call only copies the prepared bitmaps into numpy slices of
the luma plane and sets the chroma under them to neutral grey, so a frame
costs a few slice copies, whatever the text.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import qrcode
from PIL import Image, ImageDraw, ImageFont
from qrcode.constants import ERROR_CORRECT_M

from appliance.currency import minor_unit_digits

if TYPE_CHECKING:
    from appliance.runtime import Box


# Studio-range luma (ITU-R BT.601): 16 is black and 235 white.
LUMA_BLACK = 16
LUMA_WHITE = 235
CHROMA_NEUTRAL = 128
# The QR specification asks for a light border of four modules.
QR_QUIET_ZONE_MODULES = 4
# Rendered bitmaps kept for reuse; a countdown renders one new line a second.
_MAX_CACHED_BITMAPS = 64
_MAX_MESSAGE_CHARS = 120

Bitmap = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class DropOverlay:
    """The drop shown on the stream: open now, or the next one of the creator."""

    id: str
    item_name: str
    starts_at: float
    is_open: bool
    available: int
    claim_url: str


@dataclass(frozen=True, slots=True)
class OverlayState:
    """What the overlays show at box time ``now``.

    ``sales`` and ``revenue_minor`` are the current set's figures of its
    creator; ``message`` is the custom line set over the bus, if any.
    """

    now: float
    creator_name: str | None = None
    drop: DropOverlay | None = None
    sales: int = 0
    revenue_minor: int = 0
    currency: str = "EUR"
    message: str | None = None


@dataclass(frozen=True, slots=True)
class _Placed:
    # Top-left corner in the frame, both even so that the chroma planes,
    # which have half the resolution, line up with the luma.
    y: int
    x: int
    bitmap: Bitmap


def overlay_lines(state: OverlayState) -> list[str]:
    """Return the lines of the bottom panel for ``state``, top to bottom."""
    lines: list[str] = []
    if state.creator_name is not None:
        lines.append(f"{state.creator_name} live")
    drop = state.drop
    if drop is not None:
        if drop.is_open:
            stock = f"{drop.available} left" if drop.available > 0 else "sold out"
            lines.append(f"Drop: {drop.item_name}, {stock}")
        else:
            wait = _countdown(drop.starts_at - state.now)
            lines.append(f"Drop: {drop.item_name} opens in {wait}")
    if state.creator_name is not None:
        amount = _money(state.revenue_minor, state.currency)
        lines.append(f"Sales this set: {state.sales} ({amount})")
    return lines


class OverlayCompositor:
    """Draws the current overlays onto I420 frames of one size.

    :meth:`update` runs on the event loop; calling the compositor with a
    frame runs on the camera's thread. The two share one immutable list of
    placed bitmaps, replaced as a whole under a lock.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.font_px = max(10, height // 22)
        self._font = ImageFont.load_default(size=self.font_px)
        self._margin = _even(max(4, height // 40))
        self._cache: dict[tuple[str, str], Bitmap] = {}
        self._lock = threading.Lock()
        self._placed: tuple[_Placed, ...] = ()
        self.renders = 0
        self.frames_drawn = 0
        self.frames_skipped = 0

    def update(self, state: OverlayState) -> None:
        """Prepare the bitmaps for ``state``; frames drawn afterwards show it."""
        placed: list[_Placed] = []
        lines = overlay_lines(state)
        bottom = self.height - self._margin
        if state.drop is not None:
            qr = self._bitmap("qr", state.drop.claim_url)
            if qr.shape[0] <= self.height // 2 and qr.shape[1] <= self.width // 3:
                y = _even(bottom - qr.shape[0])
                x = _even(self.width - self._margin - qr.shape[1])
                placed.append(_Placed(y, x, qr))
        if lines:
            panel = self._bitmap("panel", "\n".join(lines))
            placed.append(_Placed(_even(bottom - panel.shape[0]), self._margin, panel))
        if state.message:
            banner = self._bitmap("panel", state.message[:_MAX_MESSAGE_CHARS])
            x = _even(max(0, (self.width - banner.shape[1]) // 2))
            placed.append(_Placed(self._margin, x, banner))
        fitting = tuple(item for item in placed if self._fits(item))
        with self._lock:
            self._placed = fitting

    def __call__(self, frame: npt.NDArray[np.uint8], t: float) -> None:
        """Draw the prepared bitmaps onto ``frame``, an I420 array, in place."""
        with self._lock:
            placed = self._placed
        width, height = self.width, self.height
        if frame.shape != (height * 3 // 2, width) or not frame.flags.c_contiguous:
            self.frames_skipped += 1
            return
        luma = frame[:height]
        chroma = frame.reshape(-1)[width * height :]
        quarter = (width // 2) * (height // 2)
        u_plane = chroma[:quarter].reshape(height // 2, width // 2)
        v_plane = chroma[quarter : 2 * quarter].reshape(height // 2, width // 2)
        for item in placed:
            rows, columns = item.bitmap.shape
            luma[item.y : item.y + rows, item.x : item.x + columns] = item.bitmap
            y, x = item.y // 2, item.x // 2
            u_plane[y : y + rows // 2, x : x + columns // 2] = CHROMA_NEUTRAL
            v_plane[y : y + rows // 2, x : x + columns // 2] = CHROMA_NEUTRAL
        self.frames_drawn += 1

    def _fits(self, item: _Placed) -> bool:
        rows, columns = item.bitmap.shape
        return (
            item.y >= 0
            and item.x >= 0
            and item.y + rows <= self.height
            and item.x + columns <= self.width
        )

    def _bitmap(self, kind: str, content: str) -> Bitmap:
        key = (kind, content)
        bitmap = self._cache.get(key)
        if bitmap is not None:
            return bitmap
        if len(self._cache) >= _MAX_CACHED_BITMAPS:
            self._cache.clear()
        bitmap = self._render_qr(content) if kind == "qr" else self._render(content)
        self._cache[key] = bitmap
        self.renders += 1
        return bitmap

    def _render(self, text: str) -> Bitmap:
        """Render white text on a black panel; the luma values are final."""
        padding = max(2, self.font_px // 3)
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        left, top, right, bottom = probe.multiline_textbbox(
            (0, 0), text, font=self._font, spacing=padding
        )
        size = (
            _even(math.ceil(right - left) + 2 * padding + 1),
            _even(math.ceil(bottom - top) + 2 * padding + 1),
        )
        image = Image.new("L", size, 0)
        ImageDraw.Draw(image).multiline_text(
            (padding - left, padding - top),
            text,
            fill=255,
            font=self._font,
            spacing=padding,
        )
        coverage = np.asarray(image, dtype=np.uint16)
        # Anti-aliased edges map the 0-255 coverage onto the luma range.
        scaled = LUMA_BLACK + coverage * (LUMA_WHITE - LUMA_BLACK) // 255
        return scaled.astype(np.uint8)

    def _render_qr(self, url: str) -> Bitmap:
        modules = qr_modules(url)
        # Whole pixels per module keep the code sharp after encoding.
        scale = max(2, (self.height // 4) // len(modules))
        dark = np.kron(modules, np.ones((scale, scale), dtype=bool))
        bitmap = np.where(dark, LUMA_BLACK, LUMA_WHITE).astype(np.uint8)
        rows, columns = bitmap.shape
        return np.pad(
            bitmap, ((0, rows % 2), (0, columns % 2)), constant_values=LUMA_WHITE
        )


def qr_modules(url: str) -> npt.NDArray[np.bool_]:
    """Return the QR code of ``url`` as a boolean array, quiet zone included.

    True is a dark module. Level M survives the blur of a video encode
    better than level L.
    """
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=QR_QUIET_ZONE_MODULES)
    code.add_data(url)
    code.make(fit=True)
    return np.array(code.get_matrix(), dtype=bool)


def claim_url(portal_url: str, drop_id: str) -> str:
    """Return the guest portal's page for claiming drop ``drop_id``."""
    return f"{portal_url.rstrip('/')}/drops/{drop_id}"


def read_overlay_state(box: Box, message: str | None) -> OverlayState:
    """Read the current set, its creator's drop and sales from the box's store."""
    commerce = box.config.commerce
    now = box.clock.now()
    current = commerce.set_at(now)
    creator_id = None if current is None else current.creator
    creator = next((c for c in commerce.creators if c.id == creator_id), None)
    if current is None or creator is None:
        return OverlayState(now=now, message=message)
    figures = box.figures.figures(creator.id)["sets"].get(current.id, {})
    return OverlayState(
        now=now,
        creator_name=creator.name,
        drop=_creator_drop(box, creator.id, now),
        sales=int(figures.get("sales", 0)),
        revenue_minor=int(figures.get("revenue", 0)),
        currency=commerce.wallet.currency,
        message=message,
    )


def _creator_drop(box: Box, creator_id: str, now: float) -> DropOverlay | None:
    """Return the creator's open drop, or else the next one to open."""
    commerce = box.config.commerce
    names = {item.id: item.name for item in commerce.items}
    states = {
        drop_id: (state, available)
        for drop_id, state, available in box.store.query(
            "SELECT id, state, available FROM drops"
        )
    }
    upcoming: list[DropOverlay] = []
    for drop in box.drops.all_drops():
        state, available = states.get(drop.id, ("scheduled", 0))
        if drop.creator != creator_id or state == "stopped" or now >= drop.ends_at:
            continue
        shown = DropOverlay(
            id=drop.id,
            item_name=names.get(drop.item, drop.item),
            starts_at=drop.starts_at,
            is_open=state == "live" or now >= drop.starts_at,
            available=int(available),
            claim_url=claim_url(commerce.portal_url, drop.id),
        )
        if shown.is_open:
            return shown
        upcoming.append(shown)
    return min(upcoming, key=lambda drop: drop.starts_at, default=None)


def _countdown(seconds: float) -> str:
    whole = max(0, int(seconds + 0.999))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _money(amount_minor: int, currency: str) -> str:
    digits = minor_unit_digits(currency)
    if digits == 0:
        return f"{currency} {amount_minor}"
    return f"{currency} {amount_minor / 10**digits:.{digits}f}"


def _even(value: int) -> int:
    return value - value % 2
