"""The night sign: a printable sheet with the portal's QR codes.

The first page shows the site's name, a large QR code of the opt-in page
and a short line on what it is for. Below it comes one QR code per drop,
with the item's name, its price in the site's currency and when it opens
and ends. Drops that do not fit start further pages. Pages are A4 at 150
dots per inch and are written as one PDF (through Pillow's PDF writer) or
as PNG files, the second page and later ones named ``<name>-2.png`` and
so on.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from appliance.config import SiteConfig
from appliance.errors import NightboxError
from appliance.portal._format import money, night_time
from appliance.portal.config import PortalConfig
from appliance.portal.qr import qr_image

# Fonts of Debian's fonts-dejavu-core, which the studio's overlays use too.
FONT_REGULAR = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
FONT_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
SIGN_FORMATS = (".pdf", ".png")
# A4 (210 x 297 mm) at 150 dots per inch.
_DPI = 150
_PAGE = (1240, 1754)
_MARGIN = 90
_COLUMNS = 3
_FIRST_PAGE_ROWS = 2
_LATER_PAGE_ROWS = 4
# A cell contains the QR code, up to two lines of the name, the price and
# the times.
_CELL_HEIGHT = 400
_DROP_QR = 230
_OPTIN_QR = 500
_NAME_LINES = 2
_LINE_SPACING = 1.3


class SignError(NightboxError, ValueError):
    """The sign cannot be drawn or written; the message names what to change."""


@dataclass(frozen=True, slots=True)
class SignDrop:
    """One drop on the sign: its name, price, and opening and end times as printed."""

    name: str
    price: str
    times: str
    url: str


def sign_drops(config: SiteConfig, portal: PortalConfig) -> list[SignDrop]:
    """Return the site file's drops that this box sells, in start order."""
    commerce = config.commerce
    currency = commerce.wallet.currency
    timezone = zoneinfo.ZoneInfo(commerce.timezone)
    drops = sorted(
        (drop for drop in commerce.drops if drop.quota(config.box_id) > 0),
        key=lambda drop: (drop.starts_at, drop.id),
    )
    found = []
    for drop in drops:
        item = commerce.item(drop.item)
        ends = dt.datetime.fromtimestamp(drop.ends_at, timezone).strftime("%H:%M")
        # The sign is for the night of its first drop; a drop on another
        # night shows its date.
        opens = night_time(drop.starts_at, commerce, drops[0].starts_at)
        found.append(
            SignDrop(
                name=drop.id if item is None else item.name,
                price=money(drop.price, currency),
                times=f"{opens} to {ends}",
                url=portal.url(f"/drops/{drop.id}"),
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class PlacedCode:
    """The position of one QR code on the sign: page index, address, pixel box."""

    page: int
    url: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class NightSign:
    """The sign's pages and where each QR code on them was drawn."""

    pages: list[Image.Image]
    codes: list[PlacedCode]


def render_sign(config: SiteConfig, portal: PortalConfig) -> NightSign:
    """Draw the night sign of ``config``'s site.

    Raises SignError when the DejaVu fonts are not installed.
    """
    fonts = _Fonts.load()
    drops = sign_drops(config, portal)
    first, optin_box, top_of_grid = _first_page(config.site_name, portal, fonts)
    pages = [first]
    codes = [PlacedCode(0, portal.url("/optin"), optin_box)]
    # A long site name or line leaves room for fewer rows of drops.
    room = (_PAGE[1] - _MARGIN // 3 - top_of_grid) // _CELL_HEIGHT
    per_page = _COLUMNS * max(0, min(_FIRST_PAGE_ROWS, room))
    cells = [drops[:per_page]]
    rest = drops[per_page:]
    while rest:
        per_page = _COLUMNS * _LATER_PAGE_ROWS
        cells.append(rest[:per_page])
        rest = rest[per_page:]
        pages.append(_blank_page())
    for index, (page, page_drops) in enumerate(zip(pages, cells, strict=True)):
        top = top_of_grid if index == 0 else _MARGIN
        for url, box in _draw_drops(page, page_drops, top, fonts):
            codes.append(PlacedCode(index, url, box))
    if not drops:
        ImageDraw.Draw(pages[0]).text(
            (_PAGE[0] // 2, top_of_grid + 40),
            "No drops tonight.",
            font=fonts.text,
            fill=0,
            anchor="mt",
        )
    return NightSign(pages, codes)


def write_sign(pages: list[Image.Image], output: Path) -> list[Path]:
    """Write ``pages`` to ``output`` (.pdf or .png); return the files written.

    Raises SignError for another suffix or a file that cannot be written.
    """
    suffix = output.suffix.lower()
    if suffix not in SIGN_FORMATS:
        raise SignError(
            f"cannot write the sign as {output.name!r}; give a file name ending in "
            ".pdf or .png"
        )
    try:
        if suffix == ".pdf":
            first, *rest = pages
            first.save(
                output, "PDF", resolution=float(_DPI), save_all=True, append_images=rest
            )
            return [output]
        written = []
        for number, page in enumerate(pages, start=1):
            path = output
            if number > 1:
                path = output.with_name(f"{output.stem}-{number}{output.suffix}")
            page.save(path, "PNG", dpi=(_DPI, _DPI))
            written.append(path)
        return written
    except OSError as err:
        raise SignError(
            f"cannot write the sign to {output}: {err.strerror or err}; choose a "
            "folder this user can write"
        ) from err


@dataclass(frozen=True, slots=True)
class _Fonts:
    title: ImageFont.FreeTypeFont
    heading: ImageFont.FreeTypeFont
    text: ImageFont.FreeTypeFont
    small: ImageFont.FreeTypeFont

    @classmethod
    def load(cls) -> _Fonts:
        try:
            return cls(
                title=ImageFont.truetype(str(FONT_BOLD), 72),
                heading=ImageFont.truetype(str(FONT_BOLD), 34),
                text=ImageFont.truetype(str(FONT_REGULAR), 30),
                small=ImageFont.truetype(str(FONT_REGULAR), 24),
            )
        except OSError as err:
            raise SignError(
                f"cannot load the DejaVu Sans fonts from {FONT_REGULAR.parent}: "
                f"{err}; install them with 'apt-get install fonts-dejavu-core'"
            ) from err


def _blank_page() -> Image.Image:
    return Image.new("L", _PAGE, 255)


OPTIN_LINE = "Scan to get your recovery kit coupon and see your band"


def _first_page(
    site_name: str, portal: PortalConfig, fonts: _Fonts
) -> tuple[Image.Image, tuple[int, int, int, int], int]:
    """Draw the first page's head; return it, the QR code's box and the y below."""
    page = _blank_page()
    draw = ImageDraw.Draw(page)
    width = _PAGE[0] - 2 * _MARGIN
    centre = _PAGE[0] // 2
    y = _draw_lines(
        draw, wrap_text(site_name, fonts.title, width), fonts.title, centre, _MARGIN
    )
    optin_url = portal.url("/optin")
    top = y + 40
    left = centre - _OPTIN_QR // 2
    page.paste(qr_image(optin_url, _OPTIN_QR), (left, top))
    y = top + _OPTIN_QR + 20
    y = _draw_lines(
        draw, wrap_text(OPTIN_LINE, fonts.heading, width), fonts.heading, centre, y
    )
    y = _draw_lines(
        draw, wrap_text(optin_url, fonts.small, width), fonts.small, centre, y + 10
    )
    return page, (left, top, left + _OPTIN_QR, top + _OPTIN_QR), y + 40


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    lines: list[str],
    font: ImageFont.FreeTypeFont,
    centre: int,
    y: int,
) -> int:
    """Draw ``lines`` centred from ``y`` down; return the y below the last one."""
    for line in lines:
        draw.text((centre, y), line, font=font, fill=0, anchor="mt")
        y += int(font.size * _LINE_SPACING)
    return y


def _draw_drops(
    page: Image.Image, drops: list[SignDrop], top: int, fonts: _Fonts
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Draw the drops' cells; return each QR code's address and pixel box."""
    draw = ImageDraw.Draw(page)
    placed = []
    cell_width = (_PAGE[0] - 2 * _MARGIN) // _COLUMNS
    for index, drop in enumerate(drops):
        row, column = divmod(index, _COLUMNS)
        left = _MARGIN + column * cell_width
        y = top + row * _CELL_HEIGHT
        centre = left + cell_width // 2
        qr_left = centre - _DROP_QR // 2
        page.paste(qr_image(drop.url, _DROP_QR), (qr_left, y))
        placed.append((drop.url, (qr_left, y, qr_left + _DROP_QR, y + _DROP_QR)))
        text_width = cell_width - 20
        name = wrap_text(drop.name, fonts.heading, text_width)
        if len(name) > _NAME_LINES:
            # NOTE: a name that needs more than two lines is cut on the
            # second, because the cell has room for two.
            rest = " ".join(name[_NAME_LINES - 1 :])
            name = [*name[: _NAME_LINES - 1], _fit(rest, fonts.heading, text_width)]
        text_y = _draw_lines(draw, name, fonts.heading, centre, y + _DROP_QR + 8)
        text_y = _draw_lines(draw, [drop.price], fonts.text, centre, text_y)
        _draw_lines(
            draw,
            wrap_text(drop.times, fonts.small, text_width),
            fonts.small,
            centre,
            text_y,
        )
    return placed


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Split ``text`` into lines of at most ``width`` pixels in ``font``.

    Lines break between words. A word wider than a line, such as a long
    address, is broken between characters. No character is left out.
    """
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while font.getlength(line) > width and len(line) > 1:
            cut = len(line) - 1
            while cut > 1 and font.getlength(line[:cut]) > width:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
    if line:
        lines.append(line)
    return lines


def _fit(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """Return ``text``, shortened with an ellipsis until it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"
