"""Overlays burned into the studio's frames: a drop countdown, its QR code, sales.

The event loop reads the night's state once a second (:func:`read_overlay_state`)
and hands it to :meth:`OverlayCompositor.update`, which renders each text
line and the QR code into a small luma bitmap, cached until its content
changes. Text wider than the frame is wrapped, set in a smaller font or cut
with an ellipsis (:func:`fit_message`), so part of it always shows. The
camera calls the compositor on every raw I420 frame from its own thread.
That call only copies the prepared bitmaps into numpy slices of the luma
plane and sets the chroma under them to neutral grey, so a frame costs a
few slice copies, whatever the text.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import qrcode
from PIL import Image, ImageDraw, ImageFont
from qrcode.constants import ERROR_CORRECT_M

from appliance.analytics.suppression import MIN_GROUP
from appliance.currency import minor_unit_digits

if TYPE_CHECKING:
    from appliance.runtime import Box

_LOGGER = logging.getLogger(__name__)

# Studio-range luma (ITU-R BT.601): 16 is black and 235 white.
LUMA_BLACK = 16
LUMA_WHITE = 235
CHROMA_NEUTRAL = 128
# The QR specification (ISO/IEC 18004) requires a light border of four modules.
QR_QUIET_ZONE_MODULES = 4
# Rendered bitmaps kept for reuse. A countdown renders one new line a second.
_MAX_CACHED_BITMAPS = 64
# A message too wide for one line wraps onto two, in a font down to two
# thirds of the normal size, before its end is cut.
_MAX_MESSAGE_LINES = 2
_MIN_FONT_PX = 8
ELLIPSIS = "\u2026"
# Debian's fonts-dejavu-core, which FFmpeg's packages pull in and the box's
# image installs: Latin with its accents, Greek and Cyrillic. Without it the
# overlay uses the font bundled with Pillow (Aileron in Pillow 13) at the same
# size, which has no accented letters.
DEJAVU_SANS = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# Zero width (non-)joiners: they draw nothing, so they are never reported.
_JOINERS = "\u200c\u200d"
# A private-use code point that neither font maps, so it renders
# as the font's .notdef glyph, the box drawn for missing characters.
_UNMAPPED = "\U000ffffd"
_PROBE_FONT_PX = 48

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
    """The content of the overlays at box time ``now``.

    ``sales`` and ``revenue_minor`` are the current set's figures of its
    creator, or None while the box suppresses them because fewer than
    :data:`~appliance.analytics.suppression.MIN_GROUP` guests bought.
    ``message`` is the custom line set over the bus, if any.
    """

    now: float
    creator_name: str | None = None
    drop: DropOverlay | None = None
    sales: int | None = 0
    revenue_minor: int | None = 0
    currency: str = "EUR"
    message: str | None = None


@dataclass(frozen=True, slots=True)
class MessageFit:
    """The layout of a custom message on the frame.

    ``lines`` are what the frame shows. ``shortened`` is True when the end of
    the message was cut, and the last line then ends with an ellipsis.
    Wrapping and a smaller font keep the whole message.
    """

    lines: tuple[str, ...]
    font_px: int
    shortened: bool

    @property
    def display(self) -> str:
        """``shown`` for the whole message, ``shortened`` when its end was cut."""
        return "shortened" if self.shortened else "shown"


@dataclass(frozen=True, slots=True)
class _Placed:
    # The overlay the bitmap draws, named in log lines.
    name: str
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
        lines.append(_sales_line(state))
    return lines


class OverlayCompositor:
    """Draws the current overlays onto I420 frames of one size.

    :meth:`update` runs on the event loop; calling the compositor with a
    frame runs on the camera's thread. The two share one immutable list of
    placed bitmaps, replaced as a whole under a lock. ``message_fit`` is the
    layout of the message on screen, None without a message.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.font_px = base_font_px(height)
        self._margin = frame_margin(height)
        self._cache: dict[tuple[str, str, int], Bitmap] = {}
        self._lock = threading.Lock()
        self._placed: tuple[_Placed, ...] = ()
        self.message_fit: MessageFit | None = None
        self._logged_message: str | None = None
        self._left_out: tuple[str, ...] = ()
        self.renders = 0
        self.frames_drawn = 0
        self.frames_skipped = 0

    def update(self, state: OverlayState) -> None:
        """Prepare the bitmaps for ``state``, which the frames drawn afterwards show."""
        placed: list[_Placed] = []
        bottom = self.height - self._margin
        panel_right = self.width - self._margin
        if state.drop is not None:
            qr = self._bitmap("qr", state.drop.claim_url, 0)
            if qr.shape[0] <= self.height // 2 and qr.shape[1] <= self.width // 3:
                y = _even(bottom - qr.shape[0])
                x = _even(self.width - self._margin - qr.shape[1])
                placed.append(_Placed("QR code", y, x, qr))
                panel_right = x - self._margin

        # Each panel line is cut to the room left of the QR code.
        panel_width = panel_right - self._margin
        lines = [
            shown
            for line in overlay_lines(state)
            for shown in _layout(line, self.font_px, panel_width, 1, cut=True) or ()
        ]
        if lines:
            panel = self._bitmap("text", "\n".join(lines), self.font_px)
            y = _even(bottom - panel.shape[0])
            placed.append(_Placed("panel", y, self._margin, panel))

        fit = None
        if state.message:
            fit = fit_message(state.message, self.width, self.height)
            if fit.lines:
                banner = self._bitmap("text", "\n".join(fit.lines), fit.font_px)
                x = _even(max(0, (self.width - banner.shape[1]) // 2))
                placed.append(_Placed("message", self._margin, x, banner))

        self._log_shortened(state.message, fit)
        fitting = tuple(item for item in placed if self._fits(item))
        self._log_left_out(placed, fitting)
        with self._lock:
            self._placed = fitting
        self.message_fit = fit

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

    def _log_shortened(self, message: str | None, fit: MessageFit | None) -> None:
        # update() runs every second, so each new message is logged once.
        if message == self._logged_message:
            return
        self._logged_message = message
        if message is not None and fit is not None and fit.shortened:
            shown = sum(len(line) for line in fit.lines) - len(fit.lines)
            _LOGGER.info(
                "Overlay message shortened to fit the %dx%d frame: %d of its %d "
                "characters show",
                self.width,
                self.height,
                max(0, shown),
                len(message),
            )

    def _log_left_out(
        self, placed: list[_Placed], fitting: tuple[_Placed, ...]
    ) -> None:
        left_out = tuple(item.name for item in placed if item not in fitting)
        if left_out and left_out != self._left_out:
            _LOGGER.warning(
                "Overlay %s left out: it does not fit the %dx%d frame",
                " and ".join(left_out),
                self.width,
                self.height,
            )
        self._left_out = left_out

    def _fits(self, item: _Placed) -> bool:
        rows, columns = item.bitmap.shape
        return (
            item.y >= 0
            and item.x >= 0
            and item.y + rows <= self.height
            and item.x + columns <= self.width
        )

    def _bitmap(self, kind: str, content: str, font_px: int) -> Bitmap:
        key = (kind, content, font_px)
        bitmap = self._cache.get(key)
        if bitmap is not None:
            return bitmap
        if len(self._cache) >= _MAX_CACHED_BITMAPS:
            self._cache.clear()
        if kind == "qr":
            bitmap = self._render_qr(content)
        else:
            bitmap = render_text(content, font_px)
        self._cache[key] = bitmap
        self.renders += 1
        return bitmap

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


def base_font_px(height: int) -> int:
    """Return the overlays' normal font size in pixels for frames ``height`` tall."""
    return max(10, height // 22)


def frame_margin(height: int) -> int:
    """Return the even margin in pixels between the overlays and the frame's edges."""
    return _even(max(4, height // 40))


@functools.lru_cache(maxsize=64)
def fit_message(text: str, width: int, height: int) -> MessageFit:
    """Lay ``text`` out in the banner at the top of a ``width`` x ``height`` frame.

    The banner is at most the frame's width less its margins and a quarter
    of its height. The text goes on one line, or wraps onto two, at the
    normal font size and then at smaller sizes. When it does not fit even
    in the smallest size, its end is cut and an ellipsis added.
    """
    text = _drawn_text(text)
    max_width = width - 2 * frame_margin(height)
    max_height = height // 4
    normal = base_font_px(height)
    smallest = max(_MIN_FONT_PX, normal * 2 // 3)
    for font_px in range(normal, smallest - 1, -1):
        lines = _layout(text, font_px, max_width, _MAX_MESSAGE_LINES, cut=False)
        if lines and text_size("\n".join(lines), font_px)[1] <= max_height:
            return MessageFit(lines, font_px, shortened=False)
    for line_count in range(_MAX_MESSAGE_LINES, 0, -1):
        lines = _layout(text, smallest, max_width, line_count, cut=True)
        if lines and text_size("\n".join(lines), smallest)[1] <= max_height:
            return MessageFit(lines, smallest, shortened=True)
    return MessageFit((), smallest, shortened=True)


def undrawable_character(text: str) -> str | None:
    """Return the first character of ``text`` the overlay font has no glyph for.

    The font would draw such a character as a box. Spaces and the zero
    width (non-)joiners are never reported, because they draw nothing.
    """
    for character in text:
        if character == " " or character in _JOINERS:
            continue
        if not _has_glyph(character):
            return character
    return None


def drawable_substitute(character: str) -> str | None:
    """Return ``character`` without its accents when the font draws that form.

    For example ``"e"`` for ``"\u00e9"`` and ``"W"`` for the full-width
    ``"\uff37"``. Returns None when no such form exists.
    """
    decomposed = unicodedata.normalize("NFKD", character)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    if not base.strip() or undrawable_character(base) is not None:
        return None
    return base


@functools.lru_cache(maxsize=4096)
def _has_glyph(character: str) -> bool:
    # Pillow exposes no character map, so the glyph is compared with the
    # .notdef glyph that a character without one renders as.
    font = _font(_PROBE_FONT_PX)
    return _glyph_mask(font, character) != _glyph_mask(font, _UNMAPPED)


def _glyph_mask(
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont, character: str
) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(character)
    return mask.size, bytes(mask)


def _drawn_text(text: str) -> str:
    """Return ``text`` without its joiners.

    Without libraqm's shaping a joiner changes nothing on screen, and the
    bundled fallback font would draw it as a box.
    """
    for joiner in _JOINERS:
        text = text.replace(joiner, "")
    return text


def text_size(text: str, font_px: int) -> tuple[int, int]:
    """Return the width and height of the bitmap :func:`render_text` makes."""
    padding = _padding(font_px)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox(
        (0, 0), text, font=_font(font_px), spacing=padding
    )
    return (
        _even(math.ceil(right - left) + 2 * padding + 1),
        _even(math.ceil(bottom - top) + 2 * padding + 1),
    )


def render_text(text: str, font_px: int) -> Bitmap:
    """Render white text on a black panel, in final luma values."""
    padding = _padding(font_px)
    font = _font(font_px)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, _, _ = probe.multiline_textbbox((0, 0), text, font=font, spacing=padding)
    image = Image.new("L", text_size(text, font_px), 0)
    ImageDraw.Draw(image).multiline_text(
        (padding - left, padding - top), text, fill=255, font=font, spacing=padding
    )
    coverage = np.asarray(image, dtype=np.uint16)
    # Anti-aliased edges map the 0-255 coverage onto the luma range.
    scaled = LUMA_BLACK + coverage * (LUMA_WHITE - LUMA_BLACK) // 255
    return scaled.astype(np.uint8)


def _layout(
    text: str, font_px: int, max_width: int, max_lines: int, *, cut: bool
) -> tuple[str, ...] | None:
    """Break ``text`` into at most ``max_lines`` lines no wider than ``max_width``.

    Lines break after a word where one fits. Returns None when the text
    needs more lines, unless ``cut``: then the last line ends with an
    ellipsis where the text stops.
    """
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        length = _longest_prefix(rest, font_px, max_width, "")
        if length >= len(rest):
            lines.append(rest)
            return tuple(lines)
        if len(lines) == max_lines - 1:
            break
        space = rest.rfind(" ", 0, length + 1)
        if space > 0:
            length = space
        if length == 0:
            break
        lines.append(rest[:length].rstrip())
        rest = rest[length:].lstrip()
    if not cut:
        return None
    length = _longest_prefix(rest, font_px, max_width, ELLIPSIS)
    if length >= 0:
        lines.append(rest[:length].rstrip() + ELLIPSIS)
    return tuple(lines)


def _longest_prefix(text: str, font_px: int, max_width: int, suffix: str) -> int:
    """Return the maximum number of characters of ``text`` that fit with ``suffix``.

    Returns -1 when not even ``suffix`` alone fits.
    """
    if text_size(suffix, font_px)[0] > max_width:
        return -1
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if text_size(text[:middle] + suffix, font_px)[0] <= max_width:
            low = middle
        else:
            high = middle - 1
    return low


def _padding(font_px: int) -> int:
    return max(2, font_px // 3)


def drawable_text() -> str:
    """Return a sentence on which characters the overlay font draws, for errors."""
    if _dejavu_installed():
        return (
            "the overlay font (DejaVu Sans) draws Latin letters with their "
            "accents, Greek, Cyrillic and common symbols, left to right"
        )
    return (
        "the overlay font draws English letters, digits and ASCII punctuation, "
        "plus a few symbols such as \u2026 \u00a9 \u2122 \u00b0 and curly "
        "quotes; install fonts-dejavu-core for accented letters"
    )


def right_to_left_character(text: str) -> str | None:
    """Return the first character of a right-to-left script in ``text``.

    Pillow lays text out left to right unless it was built with libraqm,
    which its wheels are not, so Hebrew or Arabic would be drawn backwards
    and unjoined even where the font has the glyphs.
    """
    for character in text:
        if unicodedata.bidirectional(character) in ("R", "AL"):
            return character
    return None


@functools.lru_cache(maxsize=1)
def _dejavu_installed() -> bool:
    return DEJAVU_SANS.is_file()


@functools.lru_cache(maxsize=16)
def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if _dejavu_installed():
        return ImageFont.truetype(str(DEJAVU_SANS), size_px)
    return ImageFont.load_default(size=size_px)


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
    # A set without sales or claims yet is missing from the figures: zero.
    figures = box.figures.figures(creator.id)["sets"].get(current.id, {})
    sales = figures.get("sales", 0)
    revenue = figures.get("revenue", 0)
    return OverlayState(
        now=now,
        creator_name=creator.name,
        drop=_creator_drop(box, creator.id, now),
        sales=None if sales is None else int(sales),
        revenue_minor=None if revenue is None else int(revenue),
        currency=commerce.wallet.currency,
        message=message,
    )


def _sales_line(state: OverlayState) -> str:
    # The stream is shown to the whole venue, so a suppressed figure is drawn as words.
    if state.sales is None or state.revenue_minor is None:
        return f"Sales this set: fewer than {MIN_GROUP} buyers so far"
    amount = _money(state.revenue_minor, state.currency)
    return f"Sales this set: {state.sales} ({amount})"


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
