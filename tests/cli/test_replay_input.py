"""``nightbox replay`` with hostile captures: each bad line or file is named.

A bad line is skipped with its line number and reason while the rest of the
capture still runs. A file that cannot be read stops the command with exit
code 2, and a capture with no usable line exits 1. None of them may end in
a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import appliance
from appliance.checkout._batches import MAX_SIGHTINGS_PER_BATCH
from appliance.replay import MAX_REPORTED_ERRORS
from appliance.sim import _adverts

SAMPLE_CAPTURE = Path(appliance.__file__).parent / "samples" / "capture.jsonl"
SAMPLE_LINES = SAMPLE_CAPTURE.read_bytes().splitlines()
SAMPLE_BANDS = ["ib-3838-4949", "alt-00010002", "uid-000000000001", "band-eid-1"]
# The iBeacon proximity UUID of the sample site.
SITE_UUID = bytes.fromhex("426c7565436861726d426561636f6e73")
TIMEOUT_S = 60.0


def replay(capture: Path) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox replay`` on ``capture`` with the sample site."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", "replay", str(capture)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    last = result.stderr.strip().splitlines()[-1]
    counters: dict[str, Any] = json.loads(last)["summary"]
    return counters


def skipped(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if " skipped " in line]


def line(**fields: Any) -> bytes:
    """Return a capture line of exit-1 with ``fields`` changed (None drops one)."""
    item: dict[str, Any] = {
        "t": 1518080950.0,
        "reader": "exit-1",
        "addr": "c4:7c:8d:6a:11:01",
        "rssi": -60,
        "adv": "0201061aff4c000215426c7565436861726d426561636f6e730efe1355c5",
    }
    item.update(fields)
    return json.dumps({k: v for k, v in item.items() if v is not None}).encode()


BAD_LINES: list[tuple[str, bytes, str]] = [
    (
        "t-nan",
        b'{"t": NaN, "reader": "exit-1", "rssi": -60, "adv": "0201"}',
        "not JSON",
    ),
    ("t-infinity", line().replace(b"1518080950.0", b"Infinity"), "not JSON"),
    ("t-overflow", line().replace(b"1518080950.0", b"1e400"), "not JSON"),
    ("t-huge", line(t=1e308), "field 't' = 1e+308"),
    ("t-zero", line(t=0), "field 't' = 0"),
    ("t-negative", line(t=-5.5), "field 't' = -5.5"),
    ("t-after-2100", line(t=4102444800), "year 2100"),
    ("t-huge-integer", line().replace(b"1518080950.0", b"9" * 30), "field 't' = 1e+30"),
    ("t-missing", line(t=None), "missing field 't'"),
    ("t-null", line().replace(b"1518080950.0", b"null"), "must be a number, not None"),
    ("t-bool", line(t=True), "field 't' must be a number, not True"),
    ("rssi-high", line(rssi=50), "field 'rssi' = 50.0 dBm is outside -127..20"),
    ("rssi-low", line(rssi=-128), "field 'rssi' = -128.0 dBm is outside -127..20"),
    ("rssi-missing", line(rssi=None), "missing field 'rssi'"),
    ("reader-missing", line(reader=None), "missing field 'reader'"),
    ("reader-number", line(reader=7), "field 'reader' must be a reader id, not 7"),
    ("adv-missing", line(adv=None), "missing field 'adv'"),
    ("adv-empty", line(adv=""), "field 'adv' must be 1-62 bytes"),
    ("adv-too-long", line(adv="00" * 63), "field 'adv' must be 1-62 bytes"),
    ("addr-bad", line(addr="nowhere"), "field 'addr' must be a BLE address"),
    ("not-utf8", line().replace(b"exit-1", b"exit-\xff"), "0xff"),
    ("deep-nesting", b"[" * 2000 + b"]" * 2000, "not JSON"),
    ("array", b"[1, 2, 3]", "JSON object"),
    ("overlong", b'{"pad": "' + b"x" * 10_000 + b'"}', "longer than 4096 bytes"),
]


def test_replay_bad_lines_named(tmp_path: Path) -> None:
    # The bad lines go after the sample, so the sample's line numbers stay.
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"\n".join(SAMPLE_LINES + [bad for _, bad, _ in BAD_LINES]))

    result = replay(capture)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    reports = skipped(result)
    assert len(reports) == len(BAD_LINES), reports
    for index, (name, _bad, expected) in enumerate(BAD_LINES):
        number = len(SAMPLE_LINES) + index + 1
        assert expected in reports[index], name
        assert f"{capture}:{number}: " in reports[index], name
    assert [json.loads(out)["band"] for out in result.stdout.splitlines()] == (
        SAMPLE_BANDS
    )
    counters = summary(result)
    assert counters["lines"] == len(SAMPLE_LINES) + len(BAD_LINES)
    assert counters["accepted_lines"] == len(SAMPLE_LINES)
    assert counters["rejected_lines"] == len(BAD_LINES)


def test_replay_byte_order_mark_accepted(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"\xef\xbb\xbf" + b"\n".join(SAMPLE_LINES))

    result = replay(capture)

    assert result.returncode == 0, result.stderr[-2000:]
    assert summary(result)["rejected_lines"] == 0


def test_replay_blank_lines_not_counted(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"\n\n".join(SAMPLE_LINES) + b"\n   \n")

    result = replay(capture)

    assert result.returncode == 0, result.stderr[-2000:]
    assert summary(result)["lines"] == len(SAMPLE_LINES)


def test_replay_directory(tmp_path: Path) -> None:
    result = replay(tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"capture {tmp_path} is a directory" in result.stderr


def test_replay_path_through_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    capture = tmp_path / "file" / "capture.jsonl"

    result = replay(capture)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot read capture {capture}" in result.stderr


def test_replay_unreadable_file() -> None:
    # A mode-0 file is readable by root, which CI runs as; reading process
    # memory from offset 0 fails with EIO for every user.
    capture = Path("/proc/self/mem")

    result = replay(capture)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot read capture {capture}: Input/output error" in result.stderr


def test_replay_no_line_accepted(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(line(t=1e308) + b"\n" + line(rssi=99) + b"\n")

    result = replay(capture)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"no line of {capture} was accepted" in result.stderr
    counters = summary(result)
    assert counters["lines"] == 2
    assert counters["accepted_lines"] == 0
    assert counters["rejected_lines"] == 2


def test_replay_empty_file(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"")

    result = replay(capture)

    assert result.returncode == 1
    assert f"no line of {capture} was accepted" in result.stderr
    assert summary(result)["lines"] == 0


def test_replay_binary_file(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(bytes(range(256)) * 40)

    result = replay(capture)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert summary(result)["accepted_lines"] == 0


def test_replay_rejections_reported_up_to_limit(tmp_path: Path) -> None:
    bad = MAX_REPORTED_ERRORS + 25
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"\n".join(SAMPLE_LINES + [line(rssi=99)] * bad))

    result = replay(capture)

    assert result.returncode == 0, result.stderr[-2000:]
    assert len(skipped(result)) == MAX_REPORTED_ERRORS + 1
    assert "skipped 25 more lines" in result.stderr
    assert summary(result)["rejected_lines"] == bad


def test_replay_crowded_second_split(tmp_path: Path) -> None:
    # More distinct adverts at one reader in one second than a batch may
    # carry: the replay sends several batches instead of failing.
    adverts = MAX_SIGHTINGS_PER_BATCH + 500
    lines = [
        line(
            t=1518080950.0 + index / adverts,
            rssi=-80,
            adv=_adverts.ibeacon(SITE_UUID, 7, index, -59).hex(),
        )
        for index in range(adverts)
    ]
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"\n".join(lines) + b"\n")

    result = replay(capture)

    assert result.returncode == 0, result.stderr[-2000:]
    counters = summary(result)
    assert counters["accepted_lines"] == adverts
    assert counters["batches"] == 2
    assert counters["sightings"] == adverts
    assert counters["band_sightings"] == adverts
