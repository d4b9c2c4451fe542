"""The box's own BLE scanner: BlueZ through bleak, or a simulator you can drive.

Pick a backend with :func:`create_scanner` (``"bleak"`` or ``"simulator"``),
or with the ``NIGHTBOX_SCANNER`` environment variable, which wins over the
configuration so a technician can force the simulator on a box.
"""

from hardware.scanner._base import Advertisement, Scanner, ScannerError
from hardware.scanner._bleak import BleakBackend, advert_bytes_from_fields
from hardware.scanner._factory import create_scanner
from hardware.scanner._simulated import SimulatedScanner

__all__ = [
    "Advertisement",
    "BleakBackend",
    "Scanner",
    "ScannerError",
    "SimulatedScanner",
    "advert_bytes_from_fields",
    "create_scanner",
]
