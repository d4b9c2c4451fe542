"""The reader firmware's parts on real MicroPython: scan, aggregation, batches.

One Node.js process runs every case of ``scenarios/parts.py``, and the
checks here read its results. Batches are checked with the box's own
parser and frames with zlib.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from appliance.checkout._batches import parse_batch
from hardware.serial_link import decode_line

from micropython_runner import Results, run_scenario

SITE_UUID_HEX = "426c7565436861726d426561636f6e73"


def _frame(channel: str, payload: bytes) -> bytes:
    crc = zlib.crc32(channel.encode() + b" " + payload)
    return b"NB1 %s %d %08x %s\n" % (channel.encode(), len(payload), crc, payload)


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "v": 1,
        "site": "test",
        "reader": "exit-1",
        "role": "exit",
        "uplink": "wifi",
        "wifi": {"ssid": "nightbox", "password": "wifi-secret"},
        "broker": {
            "host": "127.0.0.1",
            "port": 1883,
            "username": "reader-exit-1",
            "password": "broker-secret",
        },
        "bands": {"ibeacon_uuid": SITE_UUID_HEX},
    }
    document.update(changes)
    return document


CLOCK = (
    b'{"v": 1, "id": "c", "ts": 1780000000.5, "src": "box/box-1", '
    b'"data": {"t": 1780000000.5, "trusted": true}}'
)
TO_DECODE = {
    "clock": _frame("clock", CLOCK),
    "reply": _frame("reply", b'{"v": 1, "ok": true, "corr": "ab"}'),
    "noise": b"MicroPython v1.27.0 on 2025-12-10; ESP32 module\n",
    "bad-crc": _frame("clock", CLOCK).replace(b" {", b" {", 1)[:-3] + b"X}\n",
    "bad-length": b"NB1 clock 5 00000000 {}\n",
    "wrong-channel": _frame("sightings", b"{}"),
    "not-json": _frame("reply", b"{nope"),
    "not-utf8": _frame("reply", b'"\xff"'),
    "oversize": b"NB1 reply " + b"x" * 4100 + b"\n",
    "missing-field": b"NB1 clock 2 {}\n",
}
CONFIGS = {
    "valid": _document(),
    "defaults-kit": _document(role="kit"),
    "serial": {
        key: value
        for key, value in _document(uplink="serial").items()
        if key not in ("wifi", "broker")
    },
    "bad-version": _document(v=2),
    "bad-role": _document(role="door"),
    "bad-batch": _document(batch_ms=5),
    "bad-uuid": _document(bands={"ibeacon_uuid": "42-6c"}),
    "unknown-key": _document(batchms=1000),
    "window-longer": _document(scan_window_us=200000),
    "bad-kit-rule": _document(role="kit", kit={"offline_rule": "maybe"}),
    "kit-on-exit": _document(kit={}),
    "no-bands": _document(bands={"eid": False}),
    "short-watchdog": _document(batch_ms=5000, watchdog_ms=6000),
    "missing-broker": {
        key: value for key, value in _document().items() if key != "broker"
    },
    "bad-reader-id": _document(reader="Exit 1"),
    "answer-too-slow": _document(role="kit", kit={"answer_ms": 1500}),
    "wifi-with-serial": _document(uplink="serial"),
}
INPUTS = {
    "to_encode": [
        ["sightings", '{"v":1,"data":{}}'],
        ["availability", "online"],
        ["status", '{"v":1,"data":{"reader":"exit-1","note":"caf\u00e9"}}'],
    ],
    "to_decode": [frame.hex() for frame in TO_DECODE.values()],
    "configs": {name: json.dumps(document) for name, document in CONFIGS.items()},
}


@pytest.fixture(scope="module")
def results() -> Results:
    return run_scenario("parts", {"/parts.json": json.dumps(INPUTS)})


def test_scan_irq_and_drain_need_no_heap(results: Results) -> None:
    outcome = results["irq_and_drain_heap_locked"]
    assert outcome["failures"] == []
    assert outcome["received"] == 40
    assert outcome["drained"] == 40
    assert outcome["heard"] == 40


def test_scan_filters_to_site_bands(results: Results) -> None:
    outcome = results["irq_and_drain_heap_locked"]
    # Every fourth advert carries another site's UUID as ib-1-1; the site's
    # own adverts cover minors 0 to 4.
    assert outcome["bands"] == ["ib-1-0", "ib-1-1", "ib-1-2", "ib-1-3", "ib-1-4"]


def test_kit_nearest_band_heap_locked(results: Results) -> None:
    band, adv = results["irq_and_drain_heap_locked"]["nearest"]
    assert band.startswith("ib-1-")
    assert adv.startswith("0201061aff4c000215" + SITE_UUID_HEX)


def test_scan_ring_drops_newest_when_full(results: Results) -> None:
    outcome = results["scan_ring_overflow"]
    assert outcome["seen"] == [0, 1, 2]
    assert outcome["dropped"] == 3
    assert outcome["received"] == 3


def test_aggregate_mean_count_and_last(results: Results) -> None:
    outcome = results["aggregate_maths"]
    assert outcome["heard"] == 6
    first_ticks, first_band, first_tail = outcome["sightings"][0]
    assert first_band == "ib-1-7"
    assert first_ticks == 1250
    sighting = json.loads('{"t":0' + first_tail)
    assert sighting["rssi"] == -61.3
    assert sighting["n"] == 3
    assert sighting["addr"] == "c4:7c:8d:6a:11:03"
    assert sighting["adv"] == outcome["adv_7"]


def test_aggregate_table_bound(results: Results) -> None:
    outcome = results["aggregate_maths"]
    assert [entry[1] for entry in outcome["sightings"]] == ["ib-1-7", "ib-1-8"]
    assert outcome["bands_dropped"] == 1


def test_aggregate_starts_empty_after_take(results: Results) -> None:
    assert results["aggregate_maths"]["again"] == [0, 0]


def test_aggregate_mean_rounding(results: Results) -> None:
    assert results["aggregate_maths"]["means"] == ["-60.3", "-60.5", "-60.0", "2.5"]


def test_batch_accepted_by_box_parser(results: Results) -> None:
    envelope = json.loads(results["batch_render"]["full"])
    assert envelope["id"] == "a1b2c3d4-0"
    assert envelope["src"] == "reader/exit-1"
    batch = parse_batch("exit-1", envelope["data"])
    assert batch.rejected == ()
    assert batch.boot == "a1b2c3d4"
    assert batch.seq == 0
    assert batch.t == 1780000001.25
    assert batch.heard == 5
    assert [(s.count, s.rssi_dbm) for s in batch.sightings] == [(3, -51.0), (1, -70.0)]
    assert all(1780000000.25 <= s.t <= batch.t for s in batch.sightings)


def test_batch_empty_still_sent(results: Results) -> None:
    envelope = json.loads(results["batch_render"]["empty"])
    batch = parse_batch("exit-1", envelope["data"])
    assert batch.seq == 1
    assert batch.sightings == ()
    assert batch.heard == 0
    assert batch.t == 1780000002.25


def test_ring_bound_and_drop_count(results: Results) -> None:
    outcome = results["ring_bound"]
    assert outcome["order"] == [2, 3, 4]
    assert outcome["dropped"] == 2
    assert outcome["popped"] == [2, 3]
    assert outcome["rest"] == [4, 9]
    assert outcome["length"] == 2


def test_ring_replay_in_order_with_original_times(results: Results) -> None:
    outcome = results["replay_keeps_seq_and_t"]
    assert outcome["sent"] == 3
    assert outcome["dropped"] == 2
    assert outcome["published"] == outcome["before"]
    seqs = [json.loads(text)["data"]["seq"] for text in outcome["published"]]
    times = [json.loads(text)["data"]["t"] for text in outcome["published"]]
    assert seqs == [2, 3, 4]
    assert times == [1780000003.0, 1780000004.0, 1780000005.0]


def test_batches_held_until_clock(results: Results) -> None:
    outcome = results["hold_until_synced"]
    assert outcome["before"] == 0
    assert outcome["after"] == 1
    assert outcome["published"][0]["data"]["seq"] == 0


def test_clock_formats_from_ints(results: Results) -> None:
    outcome = results["clock_from_ints"]
    assert outcome["synced_before"] is False
    assert outcome["synced"] is True
    assert outcome["trusted"] is True
    assert outcome["base"] == [1780000123, 456]
    assert outcome["plus_1544"] == "1780000125.000"
    assert outcome["minus_457"] == "1780000122.999"
    assert outcome["plus_0"] == "1780000123.456"
    assert outcome["parsed"] == [[1780000123, 400], [1780000123, 0], [17, 987]]


def test_clock_rejects_bad_messages(results: Results) -> None:
    outcome = results["clock_from_ints"]
    problems = outcome["problems"]
    assert problems[0] == "clock message is not JSON"
    assert problems[1] == "clock message has no data.t"
    assert "-5.0" in problems[2]
    assert "1.7e9" in problems[3]
    assert outcome["rejected"] == 4


def test_frames_encoded_in_micropython_decode_in_cpython(results: Results) -> None:
    encoded = results["frames_both_ways"]["encoded"]
    for line, (channel, payload) in zip(encoded, INPUTS["to_encode"], strict=True):
        raw = line.encode()
        magic, name, length, crc, body = raw[:-1].split(b" ", 4)
        assert magic == b"NB1"
        assert raw.endswith(b"\n")
        assert name.decode() == channel
        assert int(length) == len(payload.encode())
        assert body == payload.encode()
        assert crc == b"%08x" % zlib.crc32(name + b" " + body)


def test_frames_encoded_in_cpython_decode_in_micropython(results: Results) -> None:
    decoded = dict(zip(TO_DECODE, results["frames_both_ways"]["decoded"], strict=True))
    assert decoded["clock"] == ["clock", CLOCK.decode()]
    assert decoded["reply"] == ["reply", '{"v": 1, "ok": true, "corr": "ab"}']
    for name in TO_DECODE:
        if name not in ("clock", "reply"):
            assert decoded[name] is None, name


def test_frames_counted_by_kind(results: Results) -> None:
    frames, noise, corrupt, oversize = results["frames_both_ways"]["counts"]
    assert frames == 2
    assert noise == 1
    assert corrupt == 6
    assert oversize == 1


def test_frames_encode_rejects_bad_input(results: Results) -> None:
    errors = results["frames_both_ways"]["errors"]
    assert "'nope' is unknown" in errors[0]
    assert "3073 bytes" in errors[1]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("bad-version", "'v'"),
        ("bad-role", "'role'"),
        ("bad-batch", "'batch_ms'"),
        ("bad-uuid", "'bands.ibeacon_uuid'"),
        ("unknown-key", "'batchms'"),
        ("window-longer", "'scan_window_us'"),
        ("bad-kit-rule", "'kit.offline_rule'"),
        ("kit-on-exit", "'kit'"),
        ("no-bands", "'bands'"),
        ("short-watchdog", "'watchdog_ms'"),
        ("missing-broker", "'broker'"),
        ("bad-reader-id", "'reader'"),
        ("answer-too-slow", "'kit.answer_ms'"),
        ("wifi-with-serial", "'wifi'"),
    ],
)
def test_config_invalid_names_key(results: Results, name: str, key: str) -> None:
    outcome = results["config_checks"][name]
    assert outcome["ok"] is False
    assert key in outcome["error"]


def test_config_valid_with_defaults(results: Results) -> None:
    outcomes = results["config_checks"]
    assert outcomes["valid"] == {
        "ok": True,
        "batch_ms": 1000,
        "eid": True,
        "kit": False,
    }
    assert outcomes["defaults-kit"]["kit"] is True
    assert outcomes["serial"]["ok"] is True


def test_config_error_hides_secrets(results: Results) -> None:
    for outcome in results["config_checks"].values():
        assert "broker-secret" not in outcome.get("error", "")
        assert "wifi-secret" not in outcome.get("error", "")


def test_scan_stall_restart(results: Results) -> None:
    outcome = results["stall_and_scan_done"]
    assert outcome["early"] is False
    assert outcome["stalled"] is True
    assert outcome["scanning_after_restart"] is True
    assert outcome["calm"] is False


def test_scan_done_restart(results: Results) -> None:
    outcome = results["stall_and_scan_done"]
    assert outcome["ended"] is True
    assert outcome["calm_again"] is False
    assert outcome["restarts"] == 2


def test_scan_duty_cycle(results: Results) -> None:
    outcome = results["stall_and_scan_done"]
    assert outcome["active"] is True
    starts = [scan for scan in outcome["scans"] if scan[0] is not None]
    assert starts == [[0, 100000, 30000, False]] * 3
    stops = [scan for scan in outcome["scans"] if scan[0] is None]
    assert len(stops) == 1


def test_main_invalid_file_does_not_scan(results: Results) -> None:
    outcomes = results["main_rejects_invalid_file"]
    for role in ("exit", "kit"):
        assert outcomes[role]["scans"] == 0, role
        assert outcomes[role]["radio_active"] is False, role
        assert outcomes[role]["watchdogs"] == 0, role


def test_main_invalid_file_blinks_kit_red(results: Results) -> None:
    outcomes = results["main_rejects_invalid_file"]
    assert outcomes["exit"]["red_blinks"] == 0
    assert outcomes["kit"]["red_blinks"] == 30


def test_serial_batch_split_to_fit_frames(results: Results) -> None:
    outcome = results["serial_split"]
    frames = [decode_line(line.encode()) for line in outcome["output"].splitlines()]
    batches = [
        json.loads(frame.payload)["data"]
        for frame in frames
        if frame.channel == "sightings"
    ]
    assert outcome["sent"] == len(batches)
    assert len(batches) >= 3
    assert outcome["dropped"] == 0
    assert [batch["seq"] for batch in batches] == list(range(len(batches)))
    assert sum(batch["heard"] for batch in batches) == 40
    minors = sorted(
        int(sighting["adv"][-6:-2], 16)
        for batch in batches
        for sighting in batch["sightings"]
    )
    assert minors == list(range(40))
    for batch in batches:
        assert parse_batch("exit-1", batch).rejected == ()
