"""Stand-in for MicroPython's ``bluetooth`` module with a scan driver.

``BLE()`` returns one shared radio, like the real module. The firmware's
``gap_scan`` calls are recorded in ``scans``; a test injects scan results
with ``inject`` (as memoryviews, like the real port) or stalls the radio.
"""

_IRQ_SCAN_RESULT = 5
_IRQ_SCAN_DONE = 6


class BLE:
    """The radio: ``active``, ``irq`` and ``gap_scan`` as in MicroPython."""

    _shared = None

    def __new__(cls):
        if BLE._shared is None:
            radio = object.__new__(cls)
            radio._clear()
            BLE._shared = radio
        return BLE._shared

    def __init__(self):
        pass

    def _clear(self):
        self.is_active = False
        self.handler = None
        self.scans = []
        self.scanning = False
        self.stalled = False
        self.broken = False
        self.ignored = 0

    def active(self, value=None):
        if value is None:
            return self.is_active
        self.is_active = bool(value)

    def irq(self, handler):
        self.handler = handler

    def gap_scan(self, duration_ms, interval_us=1280000, window_us=11250, active=False):
        """Record the scan call; ``None`` stops the scan and reports its end."""
        self.scans.append((duration_ms, interval_us, window_us, active))
        if duration_ms is None:
            if self.scanning:
                self.scanning = False
                self.handler(_IRQ_SCAN_DONE, ())
            return
        if not self.is_active:
            raise OSError(19)
        if self.broken:
            raise OSError(5)
        self.scanning = True
        self.stalled = False

    def inject(self, address, rssi, adv, addr_type=0, adv_type=0):
        """Deliver one scan result; return False when no scan would hear it."""
        if not self.scanning or self.stalled:
            self.ignored += 1
            return False
        data = (addr_type, memoryview(address), adv_type, rssi, memoryview(adv))
        self.handler(_IRQ_SCAN_RESULT, data)
        return True

    def break_radio(self):
        """Make every scan start fail with OSError, as a crashed BLE stack does."""
        self.broken = True

    def stall(self):
        """Stop reporting results without ending the scan, as a hung stack does."""
        self.stalled = True

    def end_scan(self):
        """End the scan from the radio's side."""
        self.scanning = False
        self.handler(_IRQ_SCAN_DONE, ())


def clear():
    """Reset the shared radio."""
    BLE()._clear()
