"""Sound from an ALSA device through PyAV, encoded as AAC in a thread of its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import av
import numpy as np

from hardware.camera._base import AudioInfo, CameraError, EncodedPacket
from hardware.camera._encoder import AAC_PRIMING_SAMPLES, AacEncoder

_log = logging.getLogger(__name__)

CHANNELS = 1
PacketSink = Callable[[list[EncodedPacket]], None]


class AlsaCapture:
    """Capture a sound device, mix it to mono and encode it with AAC.

    Timestamps count samples from the camera's start: the first block read
    is placed by the monotonic clock, and every later one follows it
    sample by sample, so the sound stays continuous. A source that delivers
    faster than real time, such as a file, is paced to real time.
    """

    def __init__(
        self,
        device: str,
        sample_rate: int,
        bitrate_kbps: int,
        *,
        input_format: str = "alsa",
    ):
        self.device = device
        try:
            self._container = av.open(device, format=input_format, mode="r")
        except (av.FFmpegError, OSError, ValueError) as error:
            raise CameraError(
                f"cannot open the sound device {device!r} ({input_format}): {error};"
                " list devices with `arecord -l` and set audio to 'alsa:hw:<card>,0'"
            ) from error
        self._encoder = AacEncoder(sample_rate, CHANNELS, bitrate_kbps)
        self._resampler = av.AudioResampler(
            format="fltp", layout="mono", rate=sample_rate
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    @property
    def info(self) -> AudioInfo:
        """The AAC stream's parameters."""
        return self._encoder.info

    def start(self, started_at: float, sink: PacketSink) -> None:
        """Start capturing, calling ``sink`` with the packets in the capture thread."""
        self._thread = threading.Thread(
            target=self._run,
            args=(started_at, sink),
            name=f"audio {self.device}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, started_at: float, sink: PacketSink) -> None:
        rate = self._encoder.sample_rate
        try:
            for decoded in self._container.decode(audio=0):
                if self._stopping.is_set():
                    break
                for frame in self._resampler.resample(decoded):
                    now = time.monotonic()
                    samples = frame.to_ndarray().astype(np.float32)
                    if self._encoder.next_sample == AAC_PRIMING_SAMPLES:
                        sink(self._silence_until(now - started_at, now))
                    ahead_s = self._encoder.next_sample / rate - (now - started_at)
                    if ahead_s > 0.1:
                        time.sleep(ahead_s - 0.1)
                    sink(self._encoder.encode(samples, now))
        except (av.FFmpegError, OSError) as error:
            self.errors += 1
            _log.error("sound capture from %s stopped: %s", self.device, error)

    def _silence_until(self, offset_s: float, now: float) -> list[EncodedPacket]:
        # Silence fills the time from the camera's start to the first sound.
        missing = round(offset_s * self._encoder.sample_rate) - AAC_PRIMING_SAMPLES
        if missing <= 0:
            return []
        return self._encoder.encode(np.zeros((CHANNELS, missing), np.float32), now)

    def close(self) -> None:
        """Stop the capture thread and close the device. Safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._container.close()
