"""The ``nightbox`` command, run as a subprocess: decode, replay, run and demo.

Adverts come from the shared test vectors, so the command is checked against
the same bytes as the decoder.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance.sim import _adverts

VECTORS_PATH = Path(__file__).parent.parent / "vectors" / "adverts.json"
VECTORS = {vector["id"]: vector for vector in json.loads(VECTORS_PATH.read_text())}
SAMPLE_CAPTURE = Path(appliance.__file__).parent / "samples" / "capture.jsonl"
TIMEOUT_S = 60.0
SAMPLE_BANDS = ["ib-3838-4949", "alt-00010002", "uid-000000000001", "band-eid-1"]
# The EID of vector eddystone-eid-02 in a whole EID frame, -20 dBm at 0 m.
EID_ADVERT = _adverts.eddystone_eid(bytes.fromhex("7dd8169dae94258c"), -20).hex()
TLM_ADVERT = _adverts.eddystone_tlm(2950, 21.5, 1234, 5678.9).hex()


def nightbox(
    *arguments: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox`` with ``arguments`` and return its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=cwd,
        check=False,
    )


def decoded_frame(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    output = json.loads(result.stdout)
    assert len(output["frames"]) == 1, output
    frame: dict[str, Any] = output["frames"][0]
    return frame


def test_decode_ibeacon() -> None:
    result = nightbox("decode", VECTORS["ibeacon-15"]["hex"])

    assert result.returncode == 0, result.stderr
    assert decoded_frame(result) == {
        "format": "ibeacon",
        "uuid": "41424344454647484940414243444546",
        "major": 1,
        "minor": 2,
        "measured_power_dbm": -8,
    }
    assert result.stderr == ""


def test_decode_altbeacon() -> None:
    result = nightbox("decode", VECTORS["altbeacon-01"]["hex"])

    assert result.returncode == 0, result.stderr
    frame = decoded_frame(result)
    assert frame["format"] == "altbeacon"
    assert frame["beacon_id"] == "2f234454cf6d4a0fadf2f4911ba9ffa600010002"
    assert frame["manufacturer_id"] == 0x0118
    assert frame["reference_rssi_dbm"] == -59


def test_decode_eddystone_uid() -> None:
    result = nightbox("decode", VECTORS["eddystone-uid-01"]["hex"])

    assert result.returncode == 0, result.stderr
    assert decoded_frame(result) == {
        "format": "eddystone-uid",
        "namespace": "12345678901234678901",
        "instance": "000000000001",
        "tx_power_dbm": -29,
    }


def test_decode_eddystone_eid() -> None:
    result = nightbox("decode", EID_ADVERT)

    assert result.returncode == 0, result.stderr
    assert decoded_frame(result) == {
        "format": "eddystone-eid",
        "eid": "7dd8169dae94258c",
        "tx_power_dbm": -20,
    }


def test_decode_eddystone_tlm() -> None:
    result = nightbox("decode", TLM_ADVERT)

    assert result.returncode == 0, result.stderr
    frame = decoded_frame(result)
    assert frame["format"] == "eddystone-tlm"
    assert frame["battery_mv"] == 2950
    assert frame["temperature_c"] == 21.5
    assert frame["advertising_count"] == 1234
    assert frame["uptime_s"] == 5678.9


def test_decode_uppercase_and_spaces() -> None:
    spaced = " ".join(
        VECTORS["ibeacon-15"]["hex"][index : index + 2].upper()
        for index in range(0, len(VECTORS["ibeacon-15"]["hex"]), 2)
    )

    result = nightbox("decode", spaced)

    assert result.returncode == 0, result.stderr
    assert decoded_frame(result)["minor"] == 2


def test_decode_foreign_advert() -> None:
    result = nightbox("decode", VECTORS["ad-01"]["hex"])

    assert result.returncode == 1
    assert json.loads(result.stdout)["frames"] == []
    assert "not a wristband advert" in result.stderr
    assert "not an iBeacon" in result.stderr


@pytest.mark.parametrize(
    ("text", "named"),
    [("zz12", "'z' at index 0"), ("02011", "odd"), ("0201g6", "'g'")],
)
def test_decode_invalid_hex(text: str, named: str) -> None:
    result = nightbox("decode", text)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid advert hex" in result.stderr
    assert named in result.stderr


def replayed_bands(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [json.loads(line)["band"] for line in result.stdout.splitlines()]


def replay_summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    last = result.stderr.strip().splitlines()[-1]
    summary: dict[str, Any] = json.loads(last)["summary"]
    return summary


def test_replay_sample_capture() -> None:
    result = nightbox("replay", str(SAMPLE_CAPTURE))

    assert result.returncode == 0, result.stderr
    assert replayed_bands(result) == SAMPLE_BANDS
    # A guest who stays 6 m from exit-1 for 20 s (band minor 4950).
    assert "ib-3838-4950" not in result.stdout
    summary = replay_summary(result)
    assert summary["checkouts"] == 4
    assert summary["rejected_lines"] == 0
    # 40 batches each carry the phone and the Tilt hydrometer.
    assert summary["rejected"] == {"not-a-site-band": 40}


def test_replay_checkout_fields() -> None:
    result = nightbox("replay", str(SAMPLE_CAPTURE))

    checkouts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [c["reader"] for c in checkouts] == ["exit-1", "exit-2", "exit-1", "exit-2"]
    assert [c["format"] for c in checkouts] == [
        "ibeacon",
        "altbeacon",
        "eddystone-uid",
        "eddystone-eid",
    ]
    for checkout in checkouts:
        assert checkout["rssi_dbm"] >= -66
        assert set(checkout) == {"band", "reader", "seen_at", "rssi_dbm", "format"}


def test_replay_bad_lines_reported(tmp_path: Path) -> None:
    lines = SAMPLE_CAPTURE.read_text().splitlines()
    bad = {
        3: "not json at all",
        10: json.dumps({"t": "soon", "reader": "exit-1", "rssi": -50, "adv": "02"}),
        20: json.dumps({"t": 1.0, "reader": "exit-1", "rssi": -50, "adv": "zz"}),
        30: json.dumps([1, 2, 3]),
        40: json.dumps({"t": 1.0, "rssi": -50, "adv": "0201"}),
    }
    for number in sorted(bad):
        lines.insert(number - 1, bad[number])
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(lines) + "\n")

    result = nightbox("replay", str(capture))

    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == len(bad)
    for number, line in zip(sorted(bad), skipped, strict=True):
        assert f"{capture}:{number}:" in line
    assert "not JSON" in skipped[0]
    assert "'t'" in skipped[1]
    assert "'adv'" in skipped[2]
    assert "JSON object" in skipped[3]
    assert "'reader'" in skipped[4]
    assert replayed_bands(result) == SAMPLE_BANDS
    assert replay_summary(result)["rejected_lines"] == len(bad)


def test_replay_unknown_reader(tmp_path: Path) -> None:
    stray = {"t": 1518080901.0, "reader": "exit-9", "rssi": -50, "adv": "0201"}
    capture = tmp_path / "capture.jsonl"
    capture.write_text(SAMPLE_CAPTURE.read_text() + json.dumps(stray) + "\n")

    result = nightbox("replay", str(capture))

    assert result.returncode == 0, result.stderr
    line_number = len(SAMPLE_CAPTURE.read_text().splitlines()) + 1
    assert f"capture.jsonl:{line_number}: unknown reader 'exit-9'" in result.stderr
    assert replayed_bands(result) == SAMPLE_BANDS


def test_replay_missing_capture(tmp_path: Path) -> None:
    result = nightbox("replay", str(tmp_path / "absent.jsonl"))

    assert result.returncode == 2
    assert "absent.jsonl" in result.stderr
    assert "not found" in result.stderr


SITE_TOML = """\
[site]
id = "cli-test"
name = "CLI test"

[box]
data_dir = "box"

[broker]
mode = "embedded"

[bands]
ibeacon_uuid = "426c7565-4368-6172-6d42-6561636f6e73"

[[readers]]
id = "exit-1"
role = "exit"

[[readers]]
id = "kit-1"
role = "kit"
kit_stock = 3
"""

DUPLICATE_READER = """
[[readers]]
id = "exit-1"
role = "exit"
"""


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ('name = "CLI test"', 'name = "CLI test"\ncolour = "red"', "'colour'"),
        (
            'ibeacon_uuid = "426c7565-4368-6172-6d42-6561636f6e73"',
            'ibeacon_uuid = "426c7565-4368-6172"',
            "bands.ibeacon_uuid",
        ),
        ("kit_stock = 3\n", "kit_stock = 3\n" + DUPLICATE_READER, "'exit-1'"),
        ('mode = "embedded"', 'mode = "external"', "broker.port"),
        ('mode = "embedded"', 'mode = "cloud"', "broker.mode"),
        ("kit_stock = 3", "kit_stock = -3", "readers[1].kit_stock"),
    ],
    ids=[
        "unknown-key",
        "uuid-length",
        "duplicate-reader",
        "external-no-port",
        "broker-mode",
        "negative-stock",
    ],
)
def test_run_invalid_config(tmp_path: Path, old: str, new: str, named: str) -> None:
    assert old in SITE_TOML
    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML.replace(old, new))

    result = nightbox("run", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""  # nothing was started
    assert result.stderr.startswith("nightbox: ")
    assert str(path) in result.stderr
    assert named in result.stderr
    assert not (tmp_path / "box").exists()


def test_run_config_directory(tmp_path: Path) -> None:
    result = nightbox("run", "--config", str(tmp_path))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"configuration file {tmp_path} is a directory" in result.stderr


def test_run_config_binary(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(bytes(range(256)))

    result = nightbox("run", "--config", str(path))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path} is not UTF-8 text" in result.stderr


def test_run_missing_config(tmp_path: Path) -> None:
    result = nightbox("run", "--config", str(tmp_path / "absent.toml"))

    assert result.returncode == 2
    assert "absent.toml" in result.stderr
    assert "not found" in result.stderr


DEMO_USAGE_ERRORS: list[tuple[str, list[str], str]] = [
    ("guests-zero", ["--guests", "0"], "must be from 1 to 5000, not 0"),
    ("guests-many", ["--guests", "5001"], "must be from 1 to 5000, not 5001"),
    ("guests-text", ["--guests", "many"], "must be a whole number, not 'many'"),
    ("exits-many", ["--exits", "17"], "must be from 1 to 16, not 17"),
    ("speed-zero", ["--speed", "0"], "must be above 0, not 0"),
    ("speed-inf", ["--speed", "inf"], "must be a finite number, not 'inf'"),
    ("speed-nan", ["--speed", "nan"], "must be a finite number, not 'nan'"),
    ("minutes-text", ["--minutes", "fast"], "must be a number, not 'fast'"),
    ("minutes-short", ["--minutes", "4.5"], "must be from 5 to 1440, not 4.5"),
    ("minutes-long", ["--minutes", "1e308"], "must be from 5 to 1440, not 1e308"),
    ("minutes-nan", ["--minutes", "nan"], "must be a finite number, not 'nan'"),
    ("broker", ["--broker", "cloud"], "invalid choice: 'cloud'"),
]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [(arguments, named) for _name, arguments, named in DEMO_USAGE_ERRORS],
    ids=[name for name, _arguments, _named in DEMO_USAGE_ERRORS],
)
def test_demo_usage_error(arguments: list[str], named: str) -> None:
    result = nightbox("demo", "--headless", *arguments)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: nightbox demo" in result.stderr
    assert f"argument {arguments[0]}: {named}" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_data_dir_with_store(tmp_path: Path) -> None:
    (tmp_path / "nightbox.sqlite3").write_bytes(b"")

    result = nightbox("demo", "--headless", "--data-dir", str(tmp_path))

    assert result.returncode == 2
    assert "argument --data-dir" in result.stderr
    assert f"{str(tmp_path)!r} contains a Nightbox store (nightbox.sqlite3)" in (
        result.stderr
    )
    assert "empty or new folder" in result.stderr
    assert (tmp_path / "nightbox.sqlite3").read_bytes() == b""


def test_demo_data_dir_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep")

    result = nightbox("demo", "--headless", "--data-dir", str(tmp_path))

    assert result.returncode == 2
    assert f"{str(tmp_path)!r} is not empty" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_demo_data_dir_is_file(tmp_path: Path) -> None:
    path = tmp_path / "night"
    path.write_text("")

    result = nightbox("demo", "--headless", "--data-dir", str(path))

    assert result.returncode == 2
    assert f"{str(path)!r} exists and is not a folder" in result.stderr


def test_demo_data_dir_under_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "night"

    result = nightbox("demo", "--headless", "--data-dir", str(path))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot create --data-dir {path}" in result.stderr


def test_demo_help_names_signal_exit_codes() -> None:
    result = nightbox("demo", "--help")

    assert result.returncode == 0
    assert "SIGTERM" in result.stdout
    assert "143" in result.stdout


def read_until(path: Path, text: str, process: subprocess.Popen[bytes]) -> str:
    """Return the contents of ``path`` once they hold ``text``; fail on timeout."""
    deadline = time.monotonic() + TIMEOUT_S
    contents = ""
    while time.monotonic() < deadline and process.poll() is None:
        contents = path.read_text(errors="replace")
        if text in contents:
            return contents
        time.sleep(0.05)
    pytest.fail(f"{text!r} not printed; output: {contents[-2000:]}")


def test_run_announces_data_folder(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML)
    output_path = tmp_path / "run.out"
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(path)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        announced = read_until(output_path, "running", process)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT_S)

    data_dir = tmp_path / "box"
    secrets_path = data_dir / "secrets" / "broker.json"
    assert returncode == 0, output_path.read_text()
    assert f"data folder {data_dir}" in announced
    assert f"broker credentials in {secrets_path}" in announced
    for password in json.loads(secrets_path.read_text()).values():
        assert password not in announced


def test_command_without_arguments() -> None:
    result = nightbox()

    assert result.returncode == 2
    assert "usage: nightbox" in result.stderr
