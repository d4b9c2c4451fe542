"""The reader's status message: what staff and the box see of its health."""

import gc
import time

from . import FW_VERSION


class Health:
    """Collects the status fields from the reader's parts.

    ``last_error`` is the latest error text (or None); ``note_error`` sets
    it and counts repeats in ``errors``.
    """

    def __init__(self, config, boot, scanner, ring, clock, uplink):
        self._config = config
        self._boot = boot
        self._scanner = scanner
        self._ring = ring
        self._clock = clock
        self._uplink = uplink
        # Uptime is summed from short steps, because a single ticks_diff
        # wraps after about 6 days on an ESP32 (ticks period 2**30 ms).
        self._uptime_ms = 0
        self._uptime_ticks = time.ticks_ms()
        self.last_error = None
        self.errors = 0
        self.batches_sent = 0
        self.heap_min_free = gc.mem_free()
        # The firmware updater (nbreader.update), on readers that have one.
        self.updater = None

    def note_error(self, text):
        """Record an error message for the next status."""
        self.last_error = text
        self.errors += 1

    def sample_heap(self):
        """Update the lowest free heap seen; return the current free bytes."""
        free = gc.mem_free()
        if free < self.heap_min_free:
            self.heap_min_free = free
        return free

    def uptime_s(self):
        """Return whole seconds since boot; call it at least every few days."""
        now = time.ticks_ms()
        self._uptime_ms += time.ticks_diff(now, self._uptime_ticks)
        self._uptime_ticks = now
        return self._uptime_ms // 1000

    def data(self):
        """Return the status fields (docs/mqtt.md reader status) as a dict."""
        heap_free = self.sample_heap()
        return {
            "reader": self._config.reader,
            "role": self._config.role,
            "zone": self._config.zone,
            "fw": FW_VERSION,
            "boot": self._boot,
            "uptime_s": self.uptime_s(),
            "heap_free": heap_free,
            "heap_min_free": self.heap_min_free,
            "scan_per_min": self._scanner.results_per_minute(),
            "reconnects": self._uplink.reconnects,
            "last_error": self.last_error,
            "uplink": self._config.uplink,
            "ring_used": len(self._ring),
            "ring_dropped": self._ring.dropped,
            "scan_restarts": self._scanner.scan_restarts,
            "clock_synced": self._clock.synced,
            "batches_sent": self.batches_sent,
            "update": None if self.updater is None else self.updater.data(),
        }
