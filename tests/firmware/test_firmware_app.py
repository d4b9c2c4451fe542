"""The reader app's tasks on real MicroPython: watchdog, uplink, status, batches.

One Node.js process runs every case of ``scenarios/reader_app.py`` against
the stand-ins for the radio, Wi-Fi, umqtt and the watchdog.
"""

from __future__ import annotations

import json

import pytest
from appliance.checkout._batches import parse_batch
from hardware.serial_link import decode_line, encode_frame

from micropython_runner import Results, run_scenario

TOPIC = "nightbox/test/reader/exit-1/"
CLOCK = (
    b'{"v": 1, "id": "c", "ts": 1780000000.5, "src": "box/box-1", '
    b'"data": {"t": 1780000000.5, "trusted": true}}'
)
STATUS_FIELDS = {
    "reader",
    "role",
    "zone",
    "fw",
    "boot",
    "uptime_s",
    "heap_free",
    "heap_min_free",
    "scan_per_min",
    "reconnects",
    "last_error",
    "uplink",
    "ring_used",
    "ring_dropped",
    "scan_restarts",
    "clock_synced",
    "batches_sent",
    "update",
}
SUBSCRIPTIONS = [
    "nightbox/test/clock",
    "nightbox/test/firmware/manifest",
    TOPIC + "firmware/chunk",
    TOPIC + "reply",
]


def _decode_frame(line: str) -> tuple[str, str]:
    # The box's own frame parser checks what the firmware wrote.
    frame = decode_line(line.encode())
    return frame.channel, frame.payload.decode()


SERIAL_INPUT = b"garbage from the line\n" + encode_frame("clock", CLOCK)


@pytest.fixture(scope="module")
def results() -> Results:
    # The serial clock file is read by the serial case.
    files = {"/serial_clock.bin": SERIAL_INPUT.decode("latin-1")}
    return run_scenario("reader_app", files)


def test_watchdog_fed_when_healthy(results: Results) -> None:
    outcome = results["watchdog_healthy"]
    assert outcome["resets"] == []
    assert outcome["feeds"] >= 3
    assert outcome["timeout"] == 1000


def test_watchdog_resets_stuck_task(results: Results) -> None:
    outcome = results["watchdog_stuck_task"]
    assert outcome["fired"] is True
    assert outcome["resets"] == ["watchdog"]
    assert outcome["stuck"] == ["batch"]


def test_watchdog_resets_broken_radio(results: Results) -> None:
    outcome = results["broken_radio_resets"]
    assert outcome["fired"] is True
    assert outcome["resets"] == ["watchdog"]
    assert outcome["stuck"] == ["scan"]
    # Either error may be the latest: the failing restarts go on after the
    # watchdog check reported the stuck task.
    assert outcome["last_error"].startswith(
        ("tasks made no progress: scan", "scan restart failed: OSError(5")
    )


def test_mqtt_last_will_and_login(results: Results) -> None:
    first = results["reconnect_resubscribes"]["connects"][0]
    assert first["client_id"] == "reader-exit-1"
    assert first["user"] == "reader-exit-1"
    assert first["password_set"] is True
    assert first["will"] == [TOPIC + "availability", "offline", True, 1]
    assert first["clean_session"] is True


def test_mqtt_online_retained_on_every_connect(results: Results) -> None:
    outcome = results["reconnect_resubscribes"]
    online = [entry for entry in outcome["availability"] if entry[0] == "online"]
    assert len(online) == len(outcome["connects"])
    assert all(entry[1:] == [True, 1] for entry in online)


def test_mqtt_resubscribes_after_reconnect(results: Results) -> None:
    outcome = results["reconnect_resubscribes"]
    assert outcome["connected"] is True
    assert outcome["first_subscriptions"] == SUBSCRIPTIONS
    assert outcome["reconnected"] is True
    assert outcome["resubscribed"] == SUBSCRIPTIONS
    assert outcome["connects"][1]["clean_session"] is False


def test_mqtt_reconnects_after_broker_down(results: Results) -> None:
    outcome = results["reconnect_resubscribes"]
    assert outcome["down"] is True
    assert outcome["back"] is True
    assert outcome["final_subscriptions"] == SUBSCRIPTIONS
    assert outcome["status_reconnects"] == 2
    # ECONNREFUSED (111) from the broker that was down.
    assert "111" in outcome["last_error"]


def test_status_fields(results: Results) -> None:
    statuses = results["status_and_empty_batches"]["status"]
    envelope, retain, qos = statuses[0]
    assert retain is True
    assert qos == 1
    assert envelope["src"] == "reader/exit-1"
    data = envelope["data"]
    assert set(data) == STATUS_FIELDS
    assert data["reader"] == "exit-1"
    assert data["role"] == "exit"
    assert data["zone"] == "main-door"
    assert data["fw"] == "1.0.0"
    assert data["boot"] == "a1b2c3d4"
    assert data["uplink"] == "wifi"
    assert data["clock_synced"] is False
    assert data["heap_free"] > 0
    assert 0 < data["heap_min_free"] <= data["heap_free"]
    assert data["last_error"] is None
    assert data["update"] is None


def test_batches_wait_for_clock(results: Results) -> None:
    assert results["status_and_empty_batches"]["unsynced_batches"] == 0


def test_empty_batches_every_interval(results: Results) -> None:
    outcome = results["status_and_empty_batches"]
    batches = [envelope["data"] for envelope in outcome["sightings"]]
    assert len(batches) >= 8
    assert [batch["seq"] for batch in batches] == list(range(len(batches)))
    for batch in batches:
        parsed = parse_batch("exit-1", batch)
        assert parsed.sightings == ()
        assert parsed.heard == 0
    assert all(flags == [False, 1] for flags in outcome["sightings_flags"])
    times = [batch["t"] for batch in batches]
    assert times == sorted(times)


def test_sightings_filtered_and_aggregated(results: Results) -> None:
    batches = results["sightings_end_to_end"]["batches"]
    assert sum(batch["heard"] for batch in batches) == 10
    sightings = [s for batch in batches for s in batch["sightings"]]
    assert sum(s["n"] for s in sightings) == 5
    assert {s["addr"] for s in sightings} == {"c4:7c:8d:6a:11:07"}
    assert all(s["rssi"] == -48.0 for s in sightings)
    for batch in batches:
        assert parse_batch("exit-1", batch).rejected == ()


def test_wifi_drop_buffers_and_replays(results: Results) -> None:
    outcome = results["wifi_drop_buffers"]
    assert outcome["lost"] is True
    assert outcome["buffered"] >= 3
    assert outcome["back"] is True
    assert outcome["seqs"] == list(range(len(outcome["seqs"])))


def test_serial_hello_and_frames(results: Results) -> None:
    outcome = results["serial_uplink"]
    lines = outcome["output"].splitlines()
    frames = [_decode_frame(line) for line in lines]
    channel, payload = frames[0]
    assert channel == "hello"
    hello = json.loads(payload)
    assert hello["v"] == 1
    assert hello["src"] == "reader/exit-1"
    assert hello["id"] == "a1b2c3d4-hello-1"
    assert hello["data"] == {
        "reader": "exit-1",
        "role": "exit",
        "boot": "a1b2c3d4",
        "fw": "1.0.0",
    }
    assert frames[1] == ("availability", "online")
    channels = {channel for channel, _ in frames}
    assert {"status", "sightings"} <= channels
    sightings = [
        json.loads(payload) for channel, payload in frames if channel == "sightings"
    ]
    assert sightings[0]["data"]["t"] >= 1780000000.5


def test_serial_reads_clock_and_counts_noise(results: Results) -> None:
    outcome = results["serial_uplink"]
    assert outcome["synced"] is True
    assert outcome["counts"] == [1, 1, 0]
