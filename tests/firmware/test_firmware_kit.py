"""The kit station on real MicroPython: button, lights, replies, offline rule.

One Node.js process runs every case of ``scenarios/kit_station.py``; the
scenario plays the box on the stand-in broker.
"""

from __future__ import annotations

import re

import pytest

from micropython_runner import Results, run_scenario

SITE_UUID_HEX = "426c7565436861726d426561636f6e73"


@pytest.fixture(scope="module")
def results() -> Results:
    return run_scenario("kit_station", timeout_s=90)


def test_kit_request_envelope(results: Results) -> None:
    request = results["kit_green"]["request"]
    assert request["v"] == 1
    assert request["src"] == "reader/kit-1"
    assert request["reply_to"] == "nightbox/test/reader/kit-1/reply"
    assert re.fullmatch(r"[0-9a-f]{1,64}", request["corr"])
    assert request["deadline"] == pytest.approx(request["ts"] + 2)
    assert request["ts"] >= 1780000000.0
    data = request["data"]
    assert data["station"] == "kit-1"
    assert data["adv"].startswith("0201061aff4c000215" + SITE_UUID_HEX + "00010009")
    assert re.fullmatch(r"[A-Za-z0-9._:-]{8,64}", data["idempotency_key"])
    assert "offline_at" not in data


def test_kit_green_for_issued(results: Results) -> None:
    outcome = results["kit_green"]
    assert outcome["green"] == [0, 1, 0]
    assert outcome["red"] == [0]
    assert outcome["outcomes"] == [["ib-1-9", "issued"]]


@pytest.mark.parametrize(
    ("code", "blinks"),
    [
        ("already-issued", 2),
        ("out-of-stock", 3),
        ("not-checked-out", 4),
        ("limit-exceeded", 6),
    ],
)
def test_kit_red_blinks_per_reason(results: Results, code: str, blinks: int) -> None:
    outcome = results["kit_red_reasons"]
    assert outcome["blinks"][code] == [blinks, blinks]


def test_kit_red_never_green(results: Results) -> None:
    assert results["kit_red_reasons"]["green"] == [0]


def test_kit_no_band_nearby(results: Results) -> None:
    outcome = results["kit_no_band"]
    assert outcome["red"] == 1
    assert outcome["requests"] == 0
    assert outcome["outcomes"] == [[None, "no-band"]]


def test_kit_offline_refuse(results: Results) -> None:
    outcome = results["kit_offline_refuse"]
    assert outcome["requests"] == 1
    assert outcome["red"] == 5
    assert outcome["green"] == 0
    assert outcome["outcomes"] == [["ib-1-9", "box-unreachable"]]
    # The light waits for the whole reply window before giving up.
    assert outcome["light_after_ms"] >= 500


def test_kit_offline_issue_once_green_then_red(results: Results) -> None:
    outcome = results["kit_offline_issue_once"]
    assert outcome["queued"] == ["ib-1-9"]
    assert outcome["green"] == [0, 1, 0]
    assert outcome["red"] == 2
    assert outcome["outcomes"][:2] == [
        ["ib-1-9", "issued"],
        ["ib-1-9", "already-issued"],
    ]


def test_kit_offline_replay(results: Results) -> None:
    outcome = results["kit_offline_issue_once"]
    replay = outcome["replay"]
    first = outcome["first"]
    assert replay["data"]["offline_at"] >= 1780000000.0
    assert replay["data"]["adv"] == first["data"]["adv"]
    assert replay["corr"] != first["corr"]
    assert replay["data"]["idempotency_key"] != first["data"]["idempotency_key"]


def test_kit_offline_replay_until_definitive(results: Results) -> None:
    outcome = results["kit_offline_issue_once"]
    assert outcome["kept_after_retryable"] == 1
    assert outcome["queue_after"] == 0
    assert outcome["outcomes"][-1] == ["ib-1-9", "already-issued"]


def test_kit_late_answer_drops_queue(results: Results) -> None:
    outcome = results["kit_late_answer_drops_queue"]
    assert outcome["queue_after"] == 0
    assert outcome["requests_after_clock"] == outcome["requests_before_clock"]
