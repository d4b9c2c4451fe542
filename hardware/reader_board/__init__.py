"""A simulated ESP32 reader board that esptool and mpremote talk to over TCP.

:class:`BoardSimulator` listens on 127.0.0.1 and is passed to esptool and
mpremote as ``socket://127.0.0.1:<port>``. It behaves as the ESP32 ROM
serial loader (flashing without the stub), as a blank board in its boot
loop, or as MicroPython running on the real MicroPython WebAssembly port
under Node.js. :func:`make_test_image` builds a small image that counts as
MicroPython once written at 0x1000.
"""

from hardware.reader_board._errors import BoardSimulatorError, MicroPythonRuntimeError
from hardware.reader_board._flash import FLASH_SIZE, make_test_image
from hardware.reader_board._simulator import BoardSimulator

__all__ = [
    "FLASH_SIZE",
    "BoardSimulator",
    "BoardSimulatorError",
    "MicroPythonRuntimeError",
    "make_test_image",
]
