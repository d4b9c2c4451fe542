"""``nightbox reader list``: configured readers and their retained status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from appliance.bus.broker import BrokerHandle
from appliance.cli_reader import _table
from appliance.config import load_config
from provisioning import SiteCredentials
from provisioning.readers.survey import (
    NEVER_SEEN,
    NO_AVAILABILITY,
    OFFLINE,
    ONLINE,
    ReaderSurvey,
    ReaderView,
    survey_readers,
)
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    site_file_fixture,
)

TIMEOUT_S = 60.0
STATUS = {
    "reader": "exit-1",
    "role": "exit",
    "zone": "main-door",
    "fw": "1.0.0",
    "boot": "0a1b2c3d",
    "uptime_s": 3725,
    "heap_free": 81234,
    "heap_min_free": 60000,
    "scan_per_min": 1800,
    "reconnects": 2,
    "last_error": "wifi: lost AP",
    "uplink": "wifi",
    "ring_used": 3,
    "ring_dropped": 0,
    "scan_restarts": 0,
    "clock_synced": True,
    "batches_sent": 3700,
}


def publish_retained(
    broker: BrokerHandle, username: str, password: str, messages: dict[str, bytes]
) -> None:
    """Publish ``messages`` (topic to payload) retained at QoS 1 over MQTT 3.1.1.

    MQTT 3.1.1 is what the readers' umqtt speaks.
    """
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"test-reader-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv311,
    )
    client.username_pw_set(username, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages.items():
            info = client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(timeout=10)
            assert info.is_published(), topic
    finally:
        client.disconnect()
        client.loop_stop()


def envelope(src: str, data: dict[str, Any]) -> bytes:
    body = {"v": 1, "id": uuid.uuid4().hex, "ts": time.time(), "src": src, "data": data}
    return json.dumps(body).encode()


def publish_night(broker: BrokerHandle, credentials: SiteCredentials) -> None:
    """Publish exit-1 online with a status, exit-2 offline, and a box fault."""
    root = "nightbox/test"
    publish_retained(
        broker,
        "reader-exit-1",
        credentials.account("reader-exit-1").password,
        {
            f"{root}/reader/exit-1/availability": b"online",
            f"{root}/reader/exit-1/status": envelope("reader/exit-1", STATUS),
        },
    )
    publish_retained(
        broker,
        "reader-exit-2",
        credentials.account("reader-exit-2").password,
        {f"{root}/reader/exit-2/availability": b"offline"},
    )
    fault = {"reader": "exit-2", "kind": "reader-silent", "since": time.time()}
    publish_retained(
        broker,
        "box-box-1",
        credentials.account("box-box-1").password,
        {
            f"{root}/box/box-1/availability": b"online",
            f"{root}/box/box-1/status": envelope("box/box-1", {"faults": [fault]}),
        },
    )


def nightbox(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


async def test_survey_reads_retained(
    site_file: Path, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    publish_night(mosquitto, credentials)
    survey = survey_readers(load_config(site_file))
    assert survey.problem is None
    assert survey.box_reachable
    assert survey.box_state == ONLINE
    views = {view.reader: view for view in survey.readers}
    assert views["exit-1"].state == ONLINE
    assert views["exit-1"].status["fw"] == "1.0.0"
    assert views["exit-1"].status["uptime_s"] == 3725
    assert views["exit-1"].zone == "main-door"
    assert views["exit-2"].state == OFFLINE
    assert views["exit-2"].faults[0]["kind"] == "reader-silent"
    assert views["kit-1"].state == NEVER_SEEN
    assert views["kit-1"].role == "kit"


async def test_list_json(
    site_file: Path, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    publish_night(mosquitto, credentials)
    result = nightbox("reader", "list", "--config", str(site_file), "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    readers = {reader["reader"]: reader for reader in listing["readers"]}
    assert set(readers) == {"exit-1", "exit-2", "kit-1"}
    status = readers["exit-1"]["status"]
    assert status["heap_free"] == 81234
    assert status["scan_per_min"] == 1800
    assert status["reconnects"] == 2
    assert status["last_error"] == "wifi: lost AP"
    assert status["ring_used"] == 3
    assert readers["exit-1"]["uplink"] == "wifi"
    assert readers["exit-2"]["faults"][0]["kind"] == "reader-silent"
    assert listing["box"] == "online"


async def test_list_table(
    site_file: Path, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    publish_night(mosquitto, credentials)
    result = nightbox("reader", "list", "--config", str(site_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["READER", "ROLE", "ZONE", "UPLINK", "STATE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "online" in rows["exit-1"]
    assert "1h02m" in rows["exit-1"]
    assert "wifi: lost AP" in rows["exit-1"]
    assert "reader-silent" in rows["exit-2"]
    assert "never seen" in rows["kit-1"]


def test_list_without_box(site_file: Path) -> None:
    result = nightbox("reader", "list", "--config", str(site_file))
    assert result.returncode == 0, result.stderr
    assert "The box's broker was not asked" in result.stdout
    assert "start the box" in result.stdout
    for reader in ("exit-1", "exit-2", "kit-1"):
        assert reader in result.stdout


def test_list_box_stopped(site_file: Path) -> None:
    """A box that ran once left its broker's port behind; nothing listens there now."""
    config = load_config(site_file)
    run = config.data_dir / "run"
    run.mkdir(parents=True)
    (run / "mosquitto.conf").write_text("listener 9 127.0.0.1\n")
    SiteCredentials(config.data_dir / "secrets" / "broker.json").account("observer")
    result = nightbox("reader", "list", "--config", str(site_file), "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert not listing["box_reachable"]
    assert "refused" in listing["problem"]
    assert [reader["state"] for reader in listing["readers"]] == ["unknown"] * 3


async def test_status_without_availability(
    site_file: Path, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    publish_retained(
        mosquitto,
        "reader-exit-1",
        credentials.account("reader-exit-1").password,
        {"nightbox/test/reader/exit-1/status": envelope("reader/exit-1", STATUS)},
    )
    survey = survey_readers(load_config(site_file))
    views = {view.reader: view for view in survey.readers}
    assert views["exit-1"].state == NO_AVAILABILITY
    assert views["exit-2"].state == NEVER_SEEN
    result = nightbox("reader", "list", "--config", str(site_file))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "no availability" in rows["exit-1"]
    assert "unknown" not in rows["exit-1"]


async def test_list_odd_status_values(
    site_file: Path, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    status = {
        **STATUS,
        "fw": 7,
        "heap_free": "plenty",
        "reconnects": -2,
        "uptime_s": [1],
        "last_error": "E" * 500,
    }
    publish_retained(
        mosquitto,
        "reader-exit-1",
        credentials.account("reader-exit-1").password,
        {
            "nightbox/test/reader/exit-1/availability": b"online",
            "nightbox/test/reader/exit-1/status": envelope("reader/exit-1", status),
        },
    )
    result = nightbox("reader", "list", "--config", str(site_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("READER "))
    row = next(line for line in lines if line.startswith("exit-1 "))

    def cell(column: str) -> str:
        start = header.index(column)
        return row[start:].split()[0]

    assert cell("FW") == "?"
    assert cell("UPTIME") == "?"
    assert cell("HEAP") == "?"
    assert cell("RECONNECTS") == "?"
    assert cell("SCANS/MIN") == "1800"
    assert cell("LAST ERROR") == "E" * 120


def test_table_out_of_range_numbers() -> None:
    status = {
        **STATUS,
        "uptime_s": 1e300,
        "heap_free": 10**300,
        "reconnects": 10**9 + 1,
        "ring_used": -1,
    }
    view = ReaderView(
        "exit-1", "exit", "main-door", "wifi", state=ONLINE, status=status
    )
    survey = ReaderSurvey(None, True, "online", None, [view])
    header, row = _table(survey).splitlines()

    def cell(column: str) -> str:
        return row[header.index(column) :].split()[0]

    assert cell("UPTIME") == "?"
    assert cell("HEAP") == "?"
    assert cell("RECONNECTS") == "?"
    assert cell("RING") == "?"
    assert cell("SCANS/MIN") == "1800"
    assert len(row) < 200


def test_table_ten_years_uptime() -> None:
    ten_years_s = 10 * 365 * 24 * 3600
    status = {**STATUS, "uptime_s": ten_years_s}
    view = ReaderView(
        "exit-1", "exit", "main-door", "wifi", state=ONLINE, status=status
    )
    header, row = _table(ReaderSurvey(None, True, "online", None, [view])).splitlines()
    assert row[header.index("UPTIME") :].split()[0] == "87600h00m"
