"""The BLE scan: an IRQ handler that copies results into a preallocated ring.

The handler does no decoding and needs no heap: it copies the address,
RSSI and advertising data of each scan result into the next fixed-size slot
and sets a flag. The scan task drains the slots later. When the ring is
full, new results are dropped and counted, so the results in the ring
stay in the order they arrived.
"""

import array
import time

from micropython import const

# bluetooth.BLE IRQ events (MicroPython docs, "bluetooth" module).
_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)
# Legacy advertising data is at most 31 bytes. Extended advertising, which
# the ESP32 port can report, is stored up to the 62 bytes a batch carries.
ADV_MAX = const(62)
_ADDRESS_SIZE = const(6)
# Results kept between two drains of the scan task, which runs every 20 ms:
# 64 slots take 3,200 results a second, an estimate with room for a busy exit.
DEFAULT_SLOTS = const(64)
# The scans-per-minute figure sums six buckets of 10 s.
_BUCKET_MS = const(10000)
_BUCKETS = const(6)


class Scanner:
    """The BLE scan with a ring of ``slots`` scan results.

    ``ble`` is a ``bluetooth.BLE`` object. The scan runs passively with
    ``interval_us`` and ``window_us``, so the radio is free for Wi-Fi for
    the rest of each interval. Counters: ``received`` (every result),
    ``dropped`` (ring full), ``scan_restarts`` (stalls and scan ends).
    """

    def __init__(self, ble, interval_us, window_us, stall_s, slots=DEFAULT_SLOTS):
        self._ble = ble
        self._interval_us = interval_us
        self._window_us = window_us
        self._stall_ms = stall_s * 1000
        self._slots = slots
        self._adv = bytearray(slots * ADV_MAX)
        self._adv_length = bytearray(slots)
        self._address = bytearray(slots * _ADDRESS_SIZE)
        self._rssi = array.array("b", [0] * slots)
        self._ticks = array.array("i", [0] * slots)
        self._head = 0
        self._tail = 0
        self._buckets = array.array("i", [0] * _BUCKETS)
        self._bucket_index = 0
        self._bucket_start_ms = 0
        self.pending = False
        self.scan_done = False
        self.received = 0
        self.dropped = 0
        self.scan_restarts = 0
        self.scanning = False
        self._last_result_ms = time.ticks_ms()
        self._stops_pending = 0
        self._handler = self._irq

    def start(self):
        """Switch the radio on and start an endless scan.

        Raises OSError when the BLE stack fails.
        """
        self._ble.active(True)
        self._ble.irq(self._handler)
        self._start_scan()

    def stop(self):
        """Stop the scan; the radio stays on."""
        if self.scanning:
            self.scanning = False
            self._stops_pending += 1
            self._ble.gap_scan(None)

    def _start_scan(self):
        now_ms = time.ticks_ms()
        self._last_result_ms = now_ms
        self._bucket_start_ms = now_ms
        self.scan_done = False
        # Duration 0 scans until stopped; a passive scan sends no scan
        # requests, because the wristbands' advertising data is enough.
        self._ble.gap_scan(0, self._interval_us, self._window_us)
        self.scanning = True

    def _irq(self, event, data):
        if event == _IRQ_SCAN_RESULT:
            _addr_type, addr, _adv_type, rssi, adv_data = data
            head = self._head
            following = head + 1
            if following == self._slots:
                following = 0
            if following == self._tail:
                self.dropped += 1
                return
            length = len(adv_data)
            offset = head * ADV_MAX
            adv = self._adv
            if length > ADV_MAX:
                # Slicing a memoryview allocates, so a long extended advert
                # is copied byte by byte.
                for i in range(ADV_MAX):
                    adv[offset + i] = adv_data[i]
                length = ADV_MAX
            else:
                # NOTE: slice assignment from a memoryview allocates nothing
                # on MicroPython 1.27 (checked with heap_lock). The ESP32
                # runs BLE IRQs as scheduled callbacks, so should an older
                # version allocate a slice object here, that is allowed.
                adv[offset : offset + length] = adv_data
            self._adv_length[head] = length
            offset = head * _ADDRESS_SIZE
            self._address[offset : offset + _ADDRESS_SIZE] = addr
            self._rssi[head] = rssi
            now_ms = time.ticks_ms()
            self._ticks[head] = now_ms
            self._last_result_ms = now_ms
            self._head = following
            self.received = (self.received + 1) & 0x3FFFFFFF
            self.pending = True
        elif event == _IRQ_SCAN_DONE:
            if self._stops_pending:
                # The end of a scan this class stopped itself.
                self._stops_pending -= 1
                return
            self.scan_done = True
            self.scanning = False

    def drain(self, sink):
        """Pass every buffered result to ``sink`` and free its slot.

        ``sink(adv, adv_offset, adv_length, rssi_dbm, address, address_offset,
        ticks_ms)`` reads the slot in place. Returns the number of results.
        """
        self.pending = False
        count = 0
        tail = self._tail
        while tail != self._head:
            sink(
                self._adv,
                tail * ADV_MAX,
                self._adv_length[tail],
                self._rssi[tail],
                self._address,
                tail * _ADDRESS_SIZE,
                self._ticks[tail],
            )
            tail += 1
            if tail == self._slots:
                tail = 0
            self._tail = tail
            count += 1
        self._count_results(count)
        return count

    def _count_results(self, count):
        now_ms = time.ticks_ms()
        while time.ticks_diff(now_ms, self._bucket_start_ms) >= _BUCKET_MS:
            self._bucket_index = (self._bucket_index + 1) % _BUCKETS
            self._buckets[self._bucket_index] = 0
            self._bucket_start_ms = time.ticks_add(self._bucket_start_ms, _BUCKET_MS)
        self._buckets[self._bucket_index] += count

    def results_per_minute(self):
        """Return the scan results of the last minute (six 10 s buckets)."""
        self._count_results(0)
        return sum(self._buckets)

    def check(self, now_ms):
        """Restart the scan when it ended or no result came for ``stall_s``.

        A silent radio at a busy exit is a stalled scan, not an empty room,
        because the ESP32 BLE stack can stop reporting without an error. A
        scan that failed to start is retried the same way. Returns True when
        it restarted the scan; raises OSError when the BLE stack fails.
        """
        stalled = time.ticks_diff(now_ms, self._last_result_ms) >= self._stall_ms
        if not (self.scan_done or stalled):
            return False
        self.stop()
        self.scan_restarts += 1
        self.start()
        return True
