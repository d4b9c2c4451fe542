"""The box's camera: picamera2 on a Raspberry Pi, or a simulator you can drive.

Pick a backend with :func:`create_camera` (``"simulator"`` or
``"picamera2"``). Every backend yields H.264 and AAC packets as described
in ``hardware.camera._base``. :class:`SlateCamera` encodes a still card
that keeps a stream valid while the camera is down.
"""

from hardware.camera._base import (
    VIDEO_TIME_BASE,
    AudioInfo,
    Camera,
    CameraError,
    CameraSettings,
    CameraStats,
    EncodedPacket,
    Overlay,
    PacketKind,
    StreamInfo,
    VideoInfo,
)
from hardware.camera._factory import BACKENDS, create_camera
from hardware.camera._picamera2 import Picamera2Backend, Picamera2Camera
from hardware.camera._picamera2_sim import simulated_picamera2
from hardware.camera._software import SimulatedCamera, SlateCamera

__all__ = [
    "BACKENDS",
    "VIDEO_TIME_BASE",
    "AudioInfo",
    "Camera",
    "CameraError",
    "CameraSettings",
    "CameraStats",
    "EncodedPacket",
    "Overlay",
    "PacketKind",
    "Picamera2Backend",
    "Picamera2Camera",
    "SimulatedCamera",
    "SlateCamera",
    "StreamInfo",
    "VideoInfo",
    "create_camera",
    "simulated_picamera2",
]
