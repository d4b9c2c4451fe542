"""Overlay text that is wider than the frame: wrapped, shrunk or cut, never lost."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import pytest

from appliance.studio.overlays import (
    ELLIPSIS,
    OverlayCompositor,
    OverlayState,
    base_font_px,
    claim_url,
    drawable_substitute,
    fit_message,
    frame_margin,
    overlay_lines,
    qr_modules,
    render_text,
    right_to_left_character,
    text_size,
    undrawable_character,
)

GREY = 90
# Small fonts are anti-aliased, so few pixels of a glyph reach full white.
BRIGHT = 180


def frame(width: int, height: int) -> npt.NDArray[np.uint8]:
    return np.full((height * 3 // 2, width), GREY, dtype=np.uint8)


def draw_message(
    message: str, width: int, height: int
) -> tuple[OverlayCompositor, npt.NDArray[np.uint8]]:
    """Draw only ``message`` onto a grey frame; return the compositor and luma."""
    compositor = OverlayCompositor(width, height)
    compositor.update(OverlayState(now=0.0, message=message))
    data = frame(width, height)
    compositor(data, 0.0)
    return compositor, data[:height]


def test_wide_message_wraps_and_shows() -> None:
    message = "@" * 120
    compositor, luma = draw_message(message, 640, 360)
    fit = compositor.message_fit

    assert fit is not None
    assert fit.display == "shown"
    assert len(fit.lines) == 2
    assert "".join(fit.lines) == message
    assert (luma[: 360 // 4] >= BRIGHT).any()
    assert (luma[360 // 2 :] == GREY).all()


def test_long_ascii_message_keeps_words() -> None:
    message = " ".join(["encore"] * 17)
    fit = fit_message(message, 640, 360)

    assert len(message) > 100
    assert fit.display == "shown"
    assert fit.font_px == base_font_px(360)
    assert " ".join(fit.lines) == message
    assert all(not line.endswith(" ") for line in fit.lines)


def test_wide_message_shrinks_font() -> None:
    message = "W" * 100
    fit = fit_message(message, 640, 360)

    assert fit.display == "shown"
    assert fit.font_px < base_font_px(360)
    assert "".join(fit.lines) == message


@pytest.mark.parametrize(("width", "height"), [(320, 180), (160, 90)])
def test_too_long_message_cut_with_ellipsis(width: int, height: int) -> None:
    message = "W" * 120
    compositor, luma = draw_message(message, width, height)
    fit = compositor.message_fit

    assert fit is not None
    assert fit.display == "shortened"
    assert fit.shortened
    assert fit.lines
    assert fit.lines[-1].endswith(ELLIPSIS)
    assert message.startswith("".join(fit.lines).removesuffix(ELLIPSIS))
    banner_width, banner_height = text_size("\n".join(fit.lines), fit.font_px)
    assert banner_width <= width
    assert banner_height <= height // 4
    assert (luma[: height // 4] >= BRIGHT).any()


def test_shortened_message_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    compositor = OverlayCompositor(320, 180)
    message_state = OverlayState(now=0.0, message="W" * 120)
    with caplog.at_level(logging.INFO, logger="appliance.studio.overlays"):
        compositor.update(message_state)
        compositor.update(message_state)
        compositor.update(OverlayState(now=1.0, message="Last call"))
    shortened = [r for r in caplog.records if "shortened" in r.getMessage()]

    assert len(shortened) == 1
    assert "320x180" in shortened[0].getMessage()
    assert compositor.message_fit is not None
    assert compositor.message_fit.display == "shown"


def test_joiners_left_out_of_drawn_lines() -> None:
    plain = fit_message("Mixed up!", 320, 180)
    joined = fit_message("Mi\u200cxed up\u200d!", 320, 180)

    assert joined.lines == plain.lines
    assert render_text("\n".join(joined.lines), joined.font_px).shape == (
        render_text("\n".join(plain.lines), plain.font_px).shape
    )


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Drop at 10 \u2026 \u201cgo\u201d \u00a9", None),
        ("Tokyo \u6771\u4eac", "\u6771"),
        ("\U0001f469\u200d\U0001f4bb", "\U0001f469"),
        ("Caf\u00e9 Zo\u00eb 5 \u20ac \u041f\u0440\u0438\u0432\u0435\u0442", None),
        ("a\u200db\u200cc", None),
    ],
)
def test_undrawable_character_found(text: str, first: str | None) -> None:
    assert undrawable_character(text) == first


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("\u05e9\u05dc\u05d5\u05dd", "\u05e9"),
        ("Drop \u0645\u0631\u062d\u0628\u0627", "\u0645"),
        ("Caf\u00e9 \u0395\u03bb\u03bb\u03ac\u03b4\u03b1", None),
    ],
)
def test_right_to_left_character_found(text: str, first: str | None) -> None:
    assert right_to_left_character(text) == first


def test_drawable_substitute_drops_accents() -> None:
    assert drawable_substitute("\u00e9") == "e"
    assert drawable_substitute("\uff37") == "W"
    assert drawable_substitute("\u6771") is None


def test_hidden_message_has_no_fit() -> None:
    compositor = OverlayCompositor(320, 180)
    compositor.update(OverlayState(now=0.0, message="Last call"))
    compositor.update(OverlayState(now=1.0, message=None))

    assert compositor.message_fit is None


def test_long_creator_name_panel_cut() -> None:
    compositor = OverlayCompositor(320, 180)
    compositor.update(OverlayState(now=0.0, creator_name="M" * 200))
    data = frame(320, 180)
    compositor(data, 0.0)
    luma = data[:180]

    assert (luma[180 * 3 // 4 :] >= BRIGHT).any()
    assert (luma[: 180 // 2] == GREY).all()


@pytest.mark.parametrize(("width", "height"), [(320, 180), (640, 360), (1280, 720)])
def test_suppressed_sales_line_fits(width: int, height: int) -> None:
    state = OverlayState(now=0.0, creator_name="Maya", sales=None, revenue_minor=None)
    line = overlay_lines(state)[-1]
    # The panel is what the frame leaves beside a drop's QR code and margins.
    modules = len(qr_modules(claim_url("http://nightbox.local/", "maya-tee")))
    qr_px = max(2, (height // 4) // modules) * modules + 1
    panel_px = width - 3 * frame_margin(height) - qr_px

    assert text_size(line, base_font_px(height))[0] <= panel_px
