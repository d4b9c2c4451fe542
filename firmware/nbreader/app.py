"""The reader application: asyncio tasks and the hardware watchdog.

The tasks: ``scan`` drains the scan ring into the aggregator and restarts
a stalled scan. ``batch`` closes an interval every ``batch_ms`` into the
replay ring. ``uplink`` connects, delivers incoming messages and sends the
ring once the clock is synced. ``status`` publishes health every
``status_s`` and after every new session. ``kit`` serves the button on a
kit reader. Each task bumps a progress counter on every loop. The
``machine.WDT`` is fed only when every task made progress since the last
check, so a task that hangs or dies gets the board reset by the hardware.
"""

import asyncio
import binascii
import json
import time

from micropython import const

from .adverts import SiteFilter
from .aggregate import Aggregator
from .batches import Batch, render
from .clock import Clock, ClockError
from .config import ConfigError, load
from .health import Health
from .ring import Ring
from .scanner import Scanner

_SCAN_STEP_MS = const(20)
_UPLINK_STEP_MS = const(20)
_MAX_STEP_MS = const(500)
_BATCHES_PER_STEP = const(10)
_RETRY_FIRST_MS = const(1000)
_RETRY_MAX_MS = const(30000)
_LOG_REPEAT_MS = const(10000)
_SCAN_FAILURES_BEFORE_RESET = const(3)


def new_boot_id():
    """Return 8 random lowercase hex digits, new at every boot."""
    try:
        import os

        raw = os.urandom(4)
    except (ImportError, AttributeError):
        import random

        raw = random.getrandbits(32).to_bytes(4, "big")
    return binascii.hexlify(raw).decode()


class App:
    """The reader: scanner, aggregator, replay ring, uplink, kit and watchdog.

    ``ble``, ``machine_module`` and ``uplink`` default to the board's
    ``bluetooth.BLE()``, ``machine`` and the uplink named in the config. A
    given uplink gets its ``on_message`` set to this app.
    """

    def __init__(self, config, ble=None, machine_module=None, uplink=None, boot=None):
        if ble is None:
            import bluetooth

            ble = bluetooth.BLE()
        if machine_module is None:
            import machine as machine_module
        self.config = config
        self.machine = machine_module
        self.boot = boot if boot is not None else new_boot_id()
        self.clock = Clock()
        self.filter = SiteFilter(
            config.ibeacon_uuid,
            config.altbeacon_prefix,
            config.eddystone_namespace,
            config.eid,
        )
        self.scanner = Scanner(
            ble, config.scan_interval_us, config.scan_window_us, config.stall_s
        )
        self.aggregator = Aggregator(self.filter)
        self.ring = Ring(config.ring_batches)
        if uplink is None:
            uplink = self._default_uplink()
        else:
            uplink.on_message = self._on_message
        self.uplink = uplink
        self.health = Health(
            config, self.boot, self.scanner, self.ring, self.clock, uplink
        )
        self._status_due = False
        # Firmware updates come over the MQTT uplink only; serial readers
        # are updated by `nightbox reader provision`.
        self.updater = None
        if getattr(uplink, "firmware_updates", False):
            from .update import Updater

            self.updater = Updater(
                config.reader,
                self.boot,
                self._send_request,
                self._poll_uplink,
                self._reset_for_update,
                self._update_changed,
            )
            self.health.updater = self.updater
            if self.updater.state is not None:
                self._update_changed()
        self.kit = None
        if config.role == "kit":
            from .kit import KitStation

            self.kit = KitStation(
                config,
                self.boot,
                self.clock,
                machine_module,
                self._send_request,
                self._poll_uplink,
                self._uplink_connected,
                "nightbox/%s/reader/%s/reply" % (config.site, config.reader),
            )
        self.progress = {"scan": 0, "batch": 0, "uplink": 0, "status": 0}
        if self.kit is not None:
            self.progress["kit"] = 0
        if self.updater is not None:
            self.progress["update"] = 0
        self.tasks = {}
        self.wdt = None
        self.stuck = []
        self._seq = 0
        self._status_count = 0
        self._sessions_reported = 0
        self._last_log_ms = None
        self._last_log_text = None
        # A bound method allocates when it is looked up, so the scan sink
        # is looked up once here and not for every drain.
        self._sink = self._on_result
        # Every task loops at least this often, so the watchdog check, four
        # times per timeout, finds progress from each of them.
        self._step_ms = min(_MAX_STEP_MS, config.watchdog_ms // 8)

    def _default_uplink(self):
        if self.config.uplink == "serial":
            from .uplink_serial import SerialUplink

            return SerialUplink(self.config, self.boot, self._on_message)
        from .uplink_mqtt import MqttUplink

        return MqttUplink(self.config, self._on_message)

    # The scan path runs for every scan result and needs no heap: a test
    # runs it with the heap locked.

    def _on_result(
        self, adv, offset, length, rssi_dbm, address, address_offset, ticks_ms
    ):
        entry = self.aggregator.add(
            adv, offset, length, rssi_dbm, address, address_offset, ticks_ms
        )
        if entry >= 0 and self.kit is not None:
            self.kit.near.note(
                self.aggregator.key, rssi_dbm, ticks_ms, adv, offset, length
            )

    def process_scan(self):
        """Drain the scan ring into the aggregator; return the result count."""
        return self.scanner.drain(self._sink)

    # Messages from the box.

    def _on_message(self, channel, payload):
        if channel == "clock":
            try:
                self.clock.update(payload)
            except ClockError as err:
                self.log_error("clock message rejected: %s" % err)
                return
            if self.kit is not None:
                # Replayed by the kit task: publishing from inside umqtt's
                # message callback could consume the PUBACK that an outer
                # publish is waiting for.
                self.kit.replay_due = True
        elif channel == "reply" and self.kit is not None:
            self.kit.on_reply(payload)
        elif channel == "firmware-manifest" and self.updater is not None:
            error = self.updater.on_manifest(payload)
            if error is not None:
                self.log_error("firmware manifest rejected: %s" % error)
        elif channel == "firmware-chunk" and self.updater is not None:
            self.updater.on_chunk(payload)

    def _update_changed(self):
        updater = self.updater
        if updater.state in ("failed", "rolled-back"):
            self.health.note_error("firmware update: %s" % updater.error)
        # Sent by the status task: this may run inside umqtt's callback.
        self._status_due = True

    def _reset_for_update(self):
        # A clean disconnect publishes "offline" at once, instead of the
        # last will after the broker's keepalive runs out.
        self.uplink.close()
        self.machine.reset()

    def _send_request(self, channel, payload):
        if not self.uplink.connected:
            raise OSError("uplink %s is down" % self.uplink.name)
        self.uplink.publish(channel, payload, False, 1)

    def _poll_uplink(self):
        if self.uplink.connected:
            try:
                self.uplink.poll()
            except OSError as err:
                self.log_error("uplink %s lost: %s" % (self.uplink.name, err))

    def _uplink_connected(self):
        return self.uplink.connected

    def log_error(self, text):
        """Record an error for the status and print it, repeats at most every 10 s."""
        self.health.note_error(text)
        now_ms = time.ticks_ms()
        if (
            text != self._last_log_text
            or self._last_log_ms is None
            or time.ticks_diff(now_ms, self._last_log_ms) >= _LOG_REPEAT_MS
        ):
            self._last_log_text = text
            self._last_log_ms = now_ms
            print("nbreader %s: %s" % (self.config.reader, text))

    # Batches.

    def close_batch(self, end_ticks=None):
        """Close the current interval into batches on the replay ring.

        Returns the first batch. When the interval's sightings do not fit in
        one payload of the uplink (``max_payload`` bytes), it becomes several
        batches, each with its own ``seq``. The serial line carries at most
        3072 bytes per payload.
        """
        self.process_scan()
        if end_ticks is None:
            end_ticks = time.ticks_ms()
        heard, sightings = self.aggregator.take()
        base = self.clock.base if self.clock.synced else None
        first = None
        for part in _split(sightings, getattr(self.uplink, "max_payload", None)):
            batch = Batch(self._seq, end_ticks, heard, part, base)
            # The interval's adverts are counted once, in its first batch.
            heard = 0
            self._seq += 1
            self.ring.push(batch)
            if first is None:
                first = batch
        self.health.sample_heap()
        return first

    def send_batches(self, limit=_BATCHES_PER_STEP):
        """Publish up to ``limit`` ring batches, oldest first; return how many.

        Nothing is sent before the first clock message, because the box
        rejects batches whose times are far from its own. Raises OSError
        when the uplink fails; the failed batch stays first in the ring.
        """
        sent = 0
        while sent < limit and self.clock.synced and self.uplink.connected:
            batch = self.ring.peek()
            if batch is None:
                break
            payload = render(batch, self.config.reader, self.boot, self.clock)
            try:
                self.uplink.publish("sightings", payload, False, 1)
            except ValueError as err:
                # A payload the uplink cannot carry would block the ring
                # for good, so it is dropped and counted.
                self.ring.pop()
                self.ring.dropped += 1
                self.log_error("batch %d dropped: %s" % (batch.seq, err))
                continue
            self.ring.pop()
            self.health.batches_sent += 1
            sent += 1
        return sent

    def send_status(self):
        """Publish the status message, retained, if the uplink is up."""
        if not self.uplink.connected:
            return False
        self._status_count += 1
        payload = '{"v":1,"id":"%s-s%d","ts":%s,"src":%s,"data":%s}' % (
            self.boot,
            self._status_count,
            self.clock.now_text(),
            json.dumps("reader/" + self.config.reader),
            json.dumps(self.health.data()),
        )
        self.uplink.publish("status", payload, True, 1)
        self._sessions_reported = self.uplink.sessions
        self._status_due = False
        if self.updater is not None:
            # Connected and reported: a firmware on trial is healthy.
            self.updater.confirm()
        return True

    # Tasks.

    def _bump(self, name):
        self.progress[name] = (self.progress[name] + 1) & 0x3FFFFFFF

    async def _scan_task(self):
        failures = 0
        while True:
            # A radio that failed to restart this many times in a row stops
            # the progress count, so the watchdog resets the board.
            if failures < _SCAN_FAILURES_BEFORE_RESET:
                self._bump("scan")
            self.process_scan()
            try:
                if self.scanner.check(time.ticks_ms()):
                    failures = 0
                    self.log_error(
                        "scan restarted (%d restarts)" % self.scanner.scan_restarts
                    )
            except OSError as err:
                failures += 1
                self.log_error("scan restart failed: %r" % (err,))
            await asyncio.sleep_ms(_SCAN_STEP_MS)

    async def _batch_task(self):
        batch_ms = self.config.batch_ms
        due_ms = time.ticks_add(time.ticks_ms(), batch_ms)
        while True:
            self._bump("batch")
            wait_ms = time.ticks_diff(due_ms, time.ticks_ms())
            if wait_ms > 0:
                await asyncio.sleep_ms(min(wait_ms, self._step_ms))
                continue
            self.close_batch(due_ms)
            due_ms = time.ticks_add(due_ms, batch_ms)
            if time.ticks_diff(time.ticks_ms(), due_ms) > batch_ms:
                # Far behind (the loop was blocked): skip the missed
                # intervals; their adverts are in the next batch.
                due_ms = time.ticks_add(time.ticks_ms(), batch_ms)

    async def _uplink_task(self):
        retry_ms = _RETRY_FIRST_MS
        next_try_ms = time.ticks_ms()
        while True:
            self._bump("uplink")
            uplink = self.uplink
            try:
                if not uplink.connected:
                    due = time.ticks_diff(time.ticks_ms(), next_try_ms) >= 0
                    if due and uplink.connect():
                        retry_ms = _RETRY_FIRST_MS
                else:
                    uplink.poll()
                    self.send_batches()
            except Exception as err:
                # OSError from the socket, MQTTException from umqtt: the
                # connection is retried after a growing pause.
                self.log_error("uplink %s failed: %r" % (uplink.name, err))
                next_try_ms = time.ticks_add(time.ticks_ms(), retry_ms)
                retry_ms = min(2 * retry_ms, _RETRY_MAX_MS)
            await asyncio.sleep_ms(_UPLINK_STEP_MS)

    async def _status_task(self):
        due_ms = time.ticks_ms()
        while True:
            self._bump("status")
            now_ms = time.ticks_ms()
            new_session = self.uplink.sessions != self._sessions_reported
            due = self._status_due or time.ticks_diff(now_ms, due_ms) >= 0
            if new_session or due:
                try:
                    if self.send_status():
                        due_ms = time.ticks_add(now_ms, self.config.status_s * 1000)
                except Exception as err:
                    self.log_error("status not sent: %r" % (err,))
            await asyncio.sleep_ms(self._step_ms)

    def _kit_progress(self):
        self._bump("kit")

    def _update_progress(self):
        self._bump("update")

    def check_progress(self, last):
        """Return the names of tasks whose counter equals ``last`` (a dict)."""
        return [name for name in self.progress if self.progress[name] == last.get(name)]

    async def _watchdog_task(self):
        self.wdt = self.machine.WDT(timeout=self.config.watchdog_ms)
        step_ms = self.config.watchdog_ms // 4
        last = {}
        while True:
            await asyncio.sleep_ms(step_ms)
            stuck = self.check_progress(last)
            if stuck:
                self.stuck = stuck
                self.log_error("tasks made no progress: %s" % ", ".join(stuck))
            else:
                self.wdt.feed()
            last = dict(self.progress)

    async def run(self):
        """Start scanning and run every task until cancelled."""
        try:
            self.scanner.start()
        except OSError as err:
            # The scan task retries after stall_s, and the watchdog resets
            # the board after repeated failures.
            self.log_error("scan start failed: %r" % (err,))
        self.tasks["scan"] = asyncio.create_task(self._scan_task())
        self.tasks["batch"] = asyncio.create_task(self._batch_task())
        self.tasks["uplink"] = asyncio.create_task(self._uplink_task())
        self.tasks["status"] = asyncio.create_task(self._status_task())
        if self.kit is not None:
            self.tasks["kit"] = asyncio.create_task(self.kit.run(self._kit_progress))
        if self.updater is not None:
            self.tasks["update"] = asyncio.create_task(
                self.updater.run(self._update_progress)
            )
        try:
            await self._watchdog_task()
        finally:
            for task in self.tasks.values():
                task.cancel()
            self.scanner.stop()


# Envelope and batch fields around the sightings, with room for long ids.
_BATCH_OVERHEAD_BYTES = const(320)
# A sighting's time, '{"t":' and the comma that separates it.
_SIGHTING_OVERHEAD_BYTES = const(22)


def _split(sightings, max_payload):
    if max_payload is None:
        return [sightings]
    parts = [[]]
    size = _BATCH_OVERHEAD_BYTES
    for sighting in sightings:
        length = _SIGHTING_OVERHEAD_BYTES + len(sighting[2])
        if parts[-1] and size + length > max_payload:
            parts.append([])
            size = _BATCH_OVERHEAD_BYTES
        parts[-1].append(sighting)
        size += length
    return parts


def _signal_config_error(path):
    # A kit station shows a bad file on its red light: 10 quick blinks, 3
    # times. An exit reader has no light, so the printed message is all.
    try:
        with open(path) as file:
            document = json.loads(file.read())
        kit = document.get("kit") if document.get("role") == "kit" else None
        red_pin = kit.get("red_pin", 26) if type(kit) is dict else None
    except (OSError, ValueError, AttributeError):
        return
    if type(red_pin) is not int:
        return
    import machine

    red = machine.Pin(red_pin, machine.Pin.OUT, value=0)
    for _ in range(3):
        for _ in range(10):
            red.value(1)
            time.sleep_ms(100)
            red.value(0)
            time.sleep_ms(100)
        time.sleep_ms(1000)


def main(path="/reader.json"):
    """Boot entry: load the configuration and run the reader.

    With an invalid configuration it prints the error, signals it on a kit
    station's red light and returns without scanning.
    """
    try:
        config = load(path)
    except ConfigError as err:
        print("nbreader: invalid %s: %s" % (path, err))
        _signal_config_error(path)
        return
    asyncio.run(App(config).run())
