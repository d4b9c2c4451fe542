"""QR codes of the portal's public addresses, as inline SVG and as PNG.

The codes carry only public addresses (the opt-in page, a drop's page),
never a guest's data. Pages embed SVG, which scales on any screen; the
night sign and the band printer get PNG bytes or a Pillow image.
"""

from __future__ import annotations

import io

import segno
from PIL import Image

# Medium error correction survives a scuffed or partly covered print.
_ERROR_CORRECTION = "m"


def qr_svg(url: str, *, scale: int = 4) -> str:
    """Return an ``<svg>`` element of the QR code of ``url``, for a page.

    The element has the class ``qr`` and a title naming the address, so a
    screen reader announces it.
    """
    code = segno.make(url, error=_ERROR_CORRECTION, micro=False)
    return code.svg_inline(
        scale=scale,
        svgclass="qr",
        title=url,
        omitsize=False,
    )


def qr_png(url: str, *, scale: int = 8) -> bytes:
    """Return the QR code of ``url`` as PNG bytes, ``scale`` pixels a module."""
    code = segno.make(url, error=_ERROR_CORRECTION, micro=False)
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=scale, border=4)
    return buffer.getvalue()


def qr_image(url: str, size: int) -> Image.Image:
    """Return the QR code of ``url`` as a black-on-white image ``size`` pixels wide.

    The code is drawn with whole pixels per module and centred, so it stays
    sharp at any size of at least its module count plus the quiet zone.
    """
    code = segno.make(url, error=_ERROR_CORRECTION, micro=False)
    modules = int(code.symbol_size(scale=1, border=4)[0])
    scale = max(1, size // modules)
    with Image.open(io.BytesIO(qr_png(url, scale=scale))) as drawn:
        image = drawn.convert("L")
    canvas = Image.new("L", (size, size), 255)
    offset = (size - image.width) // 2
    canvas.paste(image, (offset, offset))
    return canvas
