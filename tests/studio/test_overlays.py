"""The overlay compositor: panels and the QR code land in the frame, cached."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from appliance.studio.overlays import (
    CHROMA_NEUTRAL,
    LUMA_BLACK,
    LUMA_WHITE,
    DropOverlay,
    OverlayCompositor,
    OverlayState,
    claim_url,
    overlay_lines,
    qr_modules,
)

WIDTH, HEIGHT = 640, 360
GREY = 90
URL = claim_url("http://nightbox.local/", "maya-tee")


def frame(width: int = WIDTH, height: int = HEIGHT) -> npt.NDArray[np.uint8]:
    """Return a flat grey I420 frame with a colour cast in its chroma."""
    data = np.full((height * 3 // 2, width), GREY, dtype=np.uint8)
    data[height:] = 60
    return data


def drop(*, is_open: bool = False, available: int = 12) -> DropOverlay:
    return DropOverlay(
        id="maya-tee",
        item_name="Drop tee",
        starts_at=1000.0,
        is_open=is_open,
        available=available,
        claim_url=URL,
    )


def state(**changes: object) -> OverlayState:
    values: dict[str, object] = {
        "now": 1000.0 - 272,
        "creator_name": "Maya",
        "drop": drop(),
        "sales": 3,
        "revenue_minor": 2400,
        "currency": "EUR",
    }
    values.update(changes)
    return OverlayState(**values)  # type: ignore[arg-type]


def chroma_planes(
    data: npt.NDArray[np.uint8], width: int, height: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    flat = data.reshape(-1)[width * height :]
    quarter = (width // 2) * (height // 2)
    u_plane = flat[:quarter].reshape(height // 2, width // 2)
    v_plane = flat[quarter : 2 * quarter].reshape(height // 2, width // 2)
    return u_plane, v_plane


def test_lines_before_drop_opens() -> None:
    assert overlay_lines(state()) == [
        "Maya live",
        "Drop: Drop tee opens in 4:32",
        "Sales this set: 3 (EUR 24.00)",
    ]


def test_suppressed_sales_in_words() -> None:
    lines = overlay_lines(state(sales=None, revenue_minor=None))

    assert lines[-1] == "Sales this set: fewer than 5 buyers so far"


def test_zero_sales_shown() -> None:
    lines = overlay_lines(state(sales=0, revenue_minor=0))

    assert lines[-1] == "Sales this set: 0 (EUR 0.00)"


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"drop": drop(is_open=True)}, "Drop: Drop tee, 12 left"),
        ({"drop": drop(is_open=True, available=0)}, "Drop: Drop tee, sold out"),
        ({"now": 1000.0 - 3725}, "Drop: Drop tee opens in 1:02:05"),
        ({"now": 999.5}, "Drop: Drop tee opens in 0:01"),
    ],
)
def test_drop_line(changes: dict[str, object], line: str) -> None:
    assert overlay_lines(state(**changes))[1] == line


def test_no_set_shows_only_message() -> None:
    empty = OverlayState(now=0.0, message="Doors at nine")

    assert overlay_lines(empty) == []


def test_claim_url_joins_portal() -> None:
    assert URL == "http://nightbox.local/drops/maya-tee"


def test_panel_and_qr_drawn() -> None:
    compositor = OverlayCompositor(WIDTH, HEIGHT)
    compositor.update(state())
    data = frame()
    compositor(data, 0.0)
    luma = data[:HEIGHT]
    u_plane, v_plane = chroma_planes(data, WIDTH, HEIGHT)

    bottom_left = luma[HEIGHT * 3 // 4 :, : WIDTH // 3]
    assert (bottom_left == LUMA_WHITE).any()
    assert (bottom_left == LUMA_BLACK).any()
    assert (luma[: HEIGHT // 2, : WIDTH // 2] == GREY).all()
    # The panel keeps a margin of 8 pixels (4 chroma samples) to the edges.
    assert (u_plane[-10:-4, 4:20] == CHROMA_NEUTRAL).all()
    assert (v_plane[-10:-4, 4:20] == CHROMA_NEUTRAL).all()
    assert (u_plane[-4:, :4] == 60).all()
    assert (u_plane[:20, :20] == 60).all()
    assert compositor.frames_drawn == 1


def test_qr_encodes_claim_url() -> None:
    compositor = OverlayCompositor(WIDTH, HEIGHT)
    compositor.update(state())
    data = frame()
    compositor(data, 0.0)
    modules = qr_modules(URL)
    size = len(modules)
    scale = (HEIGHT // 4) // size
    rows = np.nonzero((data[:HEIGHT, WIDTH * 2 // 3 :] == LUMA_BLACK).any(axis=1))[0]
    columns = np.nonzero((data[:HEIGHT, WIDTH * 2 // 3 :] == LUMA_BLACK).any(axis=0))[0]
    # The first dark module is the finder pattern's corner, in module 4.
    top = rows[0] - 4 * scale
    left = WIDTH * 2 // 3 + columns[0] - 4 * scale
    centres = data[
        top + scale // 2 : top + size * scale : scale,
        left + scale // 2 : left + size * scale : scale,
    ]

    assert centres.shape == modules.shape
    assert ((centres == LUMA_BLACK) == modules).all()


def test_bitmaps_cached_until_text_changes() -> None:
    compositor = OverlayCompositor(WIDTH, HEIGHT)
    compositor.update(state())
    first = compositor.renders
    compositor.update(state())
    same = compositor.renders
    compositor.update(state(now=1000.0 - 271))
    ticked = compositor.renders

    assert first == 2
    assert same == first
    assert ticked == first + 1


def test_message_banner_at_top() -> None:
    compositor = OverlayCompositor(WIDTH, HEIGHT)
    compositor.update(OverlayState(now=0.0, message="Last call at the bar"))
    data = frame()
    compositor(data, 0.0)
    luma = data[:HEIGHT]

    assert (luma[: HEIGHT // 8] == LUMA_WHITE).any()
    assert (luma[HEIGHT // 2 :] == GREY).all()


def test_wrong_frame_size_skipped() -> None:
    compositor = OverlayCompositor(WIDTH, HEIGHT)
    compositor.update(state())
    data = frame(320, 180)
    before = data.copy()
    compositor(data, 0.0)

    assert (data == before).all()
    assert compositor.frames_skipped == 1
    assert compositor.frames_drawn == 0


def test_small_frame_shows_message_shortened() -> None:
    compositor = OverlayCompositor(160, 90)
    compositor.update(state(message="x" * 120))
    data = frame(160, 90)
    compositor(data, 0.0)
    fit = compositor.message_fit

    assert compositor.frames_drawn == 1
    assert data.shape == (135, 160)
    assert fit is not None
    assert fit.display == "shortened"
    # The banner sits in the top quarter; anti-aliasing keeps small glyphs grey.
    assert (data[: 90 // 4] > GREY + 60).any()
