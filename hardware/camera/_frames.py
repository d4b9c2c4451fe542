"""Raw I420 frames for the software cameras: a test card, a slate, a video file.

Every source returns a fresh array of shape (height * 3 // 2, width) per
frame, luma first and then the two chroma planes, so an overlay may draw on
it in place. Text is rendered with Pillow once and cached, so a frame costs
a copy and a few numpy slices.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from hardware.camera._base import CameraError

Frame = npt.NDArray[np.uint8]

# Colour bars at 75 % as (Y, U, V) in BT.601 limited range: white, yellow,
# cyan, green, magenta, red, blue.
_BARS_YUV = (
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
)
_BLACK_Y = 16
_WHITE_Y = 235


def blank_frame(width: int, height: int, luma: int = _BLACK_Y) -> Frame:
    """Return an I420 frame of one grey level with neutral chroma."""
    frame = np.full((height * 3 // 2, width), 128, np.uint8)
    frame[:height] = luma
    return frame


def check_frame_size(width: int, height: int) -> None:
    """Raise CameraError unless I420 can hold a frame of this size."""
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise CameraError(
            f"invalid frame size {width}x{height}; use even numbers of at least 16"
            " pixels, such as 1280x720"
        )


def chroma_planes(frame: Frame, width: int, height: int) -> tuple[Frame, Frame]:
    """Return views of the U and V planes of an I420 frame as 2-D arrays."""
    half_width, half_height = width // 2, height // 2
    chroma = frame[height:].reshape(-1)
    plane_size = half_width * half_height
    u_plane = chroma[:plane_size].reshape(half_height, half_width)
    v_plane = chroma[plane_size : 2 * plane_size].reshape(half_height, half_width)
    return u_plane, v_plane


class TextBitmaps:
    """Luma masks of text lines rendered with Pillow's built-in font, cached."""

    def __init__(self, size_px: int):
        self._font = ImageFont.load_default(size=max(8, size_px))
        self._cache: dict[str, npt.NDArray[np.bool_]] = {}

    def mask(self, text: str) -> npt.NDArray[np.bool_]:
        """Return a boolean mask, True where the text's pixels are."""
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        left, top, right, bottom = self._font.getbbox(text)
        size = (max(1, int(right - left)), max(1, int(bottom - top)))
        image = Image.new("L", size, 0)
        ImageDraw.Draw(image).text((-left, -top), text, fill=255, font=self._font)
        mask = np.asarray(image) > 127
        self._cache[text] = mask
        return mask


def draw_mask(
    frame: Frame, mask: npt.NDArray[np.bool_], x: int, y: int, luma: int
) -> None:
    """Draw a mask's pixels at (x, y) of the luma plane, clipped to the frame."""
    height = frame.shape[0] * 2 // 3
    width = frame.shape[1]
    rows = min(mask.shape[0], height - y)
    columns = min(mask.shape[1], width - x)
    if rows <= 0 or columns <= 0 or x < 0 or y < 0:
        return
    region = frame[y : y + rows, x : x + columns]
    region[mask[:rows, :columns]] = luma


class TestCard:
    """A moving test card: colour bars, a sliding box and the stream clock.

    The clock shows the frame's time since the camera started and its frame
    number, so a viewer can read latency and dropped frames off the picture.
    """

    def __init__(self, width: int, height: int):
        check_frame_size(width, height)
        self.width = width
        self.height = height
        self._base = self._draw_bars()
        self._text = TextBitmaps(height // 12)
        self._box = max(2, height // 9) // 2 * 2

    def _draw_bars(self) -> Frame:
        frame = blank_frame(self.width, self.height)
        u_plane, v_plane = chroma_planes(frame, self.width, self.height)
        bars_bottom = self.height * 2 // 3
        for index, (luma, u_value, v_value) in enumerate(_BARS_YUV):
            left = index * self.width // len(_BARS_YUV) // 2 * 2
            right = (index + 1) * self.width // len(_BARS_YUV) // 2 * 2
            frame[:bars_bottom, left:right] = luma
            u_plane[: bars_bottom // 2, left // 2 : right // 2] = u_value
            v_plane[: bars_bottom // 2, left // 2 : right // 2] = v_value
        # A luma ramp under the bars shows banding and clipping.
        ramp = np.linspace(_BLACK_Y, _WHITE_Y, self.width).astype(np.uint8)
        frame[bars_bottom : self.height] = ramp
        return frame

    def frame(self, index: int, seconds: float) -> Frame:
        """Return frame number ``index``, captured ``seconds`` after start."""
        frame = self._base.copy()
        travel = self.width - self._box
        # The box slides across and back once every four seconds.
        phase = (seconds / 4.0) % 1.0
        position = phase * 2 if phase < 0.5 else 2 - phase * 2
        x = int(position * travel) // 2 * 2
        y = self.height * 2 // 3 - self._box
        frame[y : y + self._box, x : x + self._box] = _WHITE_Y
        minutes, rest = divmod(seconds, 60.0)
        hours, minutes = divmod(int(minutes), 60)
        clock = f"{hours:02d}:{minutes:02d}:{rest:06.3f}  #{index:06d}"
        mask = self._text.mask(clock)
        text_x = max(0, (self.width - mask.shape[1]) // 2)
        text_y = self.height // 3 - mask.shape[0] // 2
        frame[
            max(0, text_y - 4) : text_y + mask.shape[0] + 4,
            max(0, text_x - 8) : text_x + mask.shape[1] + 8,
        ] = _BLACK_Y
        draw_mask(frame, mask, text_x, text_y, _WHITE_Y)
        return frame


class SlateCard:
    """A still card with a message, shown while the camera is down."""

    def __init__(self, width: int, height: int, message: str):
        check_frame_size(width, height)
        self.width = width
        self.height = height
        self._frame = blank_frame(width, height, luma=40)
        text = TextBitmaps(height // 10)
        mask = text.mask(message)
        draw_mask(
            self._frame,
            mask,
            max(0, (width - mask.shape[1]) // 2),
            max(0, (height - mask.shape[0]) // 2),
            _WHITE_Y,
        )

    def frame(self, index: int, seconds: float) -> Frame:
        """Return a copy of the card, which does not change with time."""
        return self._frame.copy()


class FileSource:
    """Frames decoded from a video file, scaled to the camera's size, looped.

    The file's own frame rate is ignored: frame ``n`` of the stream is the
    file's frame ``n`` modulo its length, so a file plays at the camera's
    rate. Its sound is not used.
    """

    def __init__(self, path: Path, width: int, height: int):
        check_frame_size(width, height)
        self.path = path
        self.width = width
        self.height = height
        self._container: av.container.InputContainer | None = None
        self._decoded: Iterator[av.VideoFrame] | None = None
        self._open()

    def _open(self) -> Iterator[av.VideoFrame]:
        self.close()
        try:
            container = av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError) as error:
            raise CameraError(
                f"cannot open the video source {self.path}: {error}; give a video"
                " file that ffprobe can read"
            ) from error
        if not container.streams.video:
            container.close()
            raise CameraError(
                f"the video source {self.path} has no video stream; give a video file"
            )
        self._container = container
        self._decoded = container.decode(video=0)
        return self._decoded

    def frame(self, index: int, seconds: float) -> Frame:
        """Return the next frame of the file, from its start after the end."""
        for _attempt in range(2):
            decoded_frames = self._decoded or self._open()
            try:
                decoded = next(decoded_frames)
            except StopIteration:
                self._open()
                continue
            except av.FFmpegError as error:
                raise CameraError(
                    f"cannot decode the video source {self.path}: {error}"
                ) from error
            scaled = decoded.reformat(
                width=self.width, height=self.height, format="yuv420p"
            )
            return np.array(scaled.to_ndarray(), dtype=np.uint8)
        raise CameraError(f"the video source {self.path} has no decodable frame")

    def close(self) -> None:
        """Close the file, which ``frame`` opens again."""
        if self._container is not None:
            self._container.close()
            self._container = None
            self._decoded = None
