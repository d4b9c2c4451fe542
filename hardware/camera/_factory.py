"""Choose a camera backend by name."""

from __future__ import annotations

from hardware.camera._base import Camera, CameraSettings, Overlay
from hardware.camera._picamera2 import Picamera2Camera
from hardware.camera._software import SimulatedCamera

BACKENDS = ("simulator", "picamera2")


def create_camera(
    name: str, settings: CameraSettings, overlay: Overlay | None = None
) -> Camera:
    """Return the camera backend called ``name`` with these settings.

    Raises ValueError naming the value when the backend is unknown or
    cannot record the configured audio.
    """
    if name == "simulator":
        return SimulatedCamera(settings, overlay)
    if name == "picamera2":
        return Picamera2Camera(settings, overlay)
    raise ValueError(f"unknown camera {name!r}; use one of {', '.join(BACKENDS)}")
