"""Eddystone-EID computation and resolution."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from appliance.wristbands import EidResolver, _eid, compute_eid, compute_temporary_key

VECTORS_PATH = Path(__file__).parent.parent / "vectors" / "adverts.json"
EID_VECTOR = next(
    vector
    for vector in json.loads(VECTORS_PATH.read_text())
    if vector["id"] == "eddystone-eid-02"
)["expected"]
KEY = bytes.fromhex(EID_VECTOR["identity_key"])
OTHER_KEY = bytes(range(16))
OFFSET_S = 1_700_000_000.0
K = 10
PERIOD_S = 1 << K


def _eid_in_period(key: bytes, period_index: int, exponent: int = K) -> bytes:
    return compute_eid(key, period_index << exponent, exponent)


def test_temporary_key_vector() -> None:
    key = compute_temporary_key(KEY, EID_VECTOR["beacon_time_s"])
    assert key.hex() == EID_VECTOR["temporary_key"]


def test_eid_vector() -> None:
    eid = compute_eid(
        KEY, EID_VECTOR["beacon_time_s"], EID_VECTOR["rotation_exponent_K"]
    )
    assert eid.hex() == EID_VECTOR["eid"]


def test_eid_constant_within_period() -> None:
    start = 5 * PERIOD_S
    first = compute_eid(KEY, start, K)
    assert compute_eid(KEY, start + PERIOD_S - 1, K) == first
    assert compute_eid(KEY, start + PERIOD_S, K) != first
    assert compute_eid(KEY, start - 1, K) != first


def test_temporary_key_changes_every_65536_s() -> None:
    first = compute_temporary_key(KEY, 0x12340000)
    assert compute_temporary_key(KEY, 0x1234FFFF) == first
    assert compute_temporary_key(KEY, 0x12350000) != first


def test_eid_depends_on_exponent() -> None:
    assert compute_eid(KEY, 0, 0) != compute_eid(KEY, 0, 15)


@pytest.mark.parametrize(
    ("key", "time_s", "exponent", "message"),
    [
        (KEY[:15], 0, K, "identity key is 15 bytes"),
        (KEY, -1, K, "beacon time -1 s"),
        (KEY, 1 << 32, K, "outside the 32-bit counter range"),
        (KEY, 0, 16, "rotation exponent 16 is outside 0-15"),
        (KEY, 0, -1, "rotation exponent -1"),
    ],
)
def test_compute_eid_invalid(
    key: bytes, time_s: int, exponent: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compute_eid(key, time_s, exponent)


def test_register_invalid_key() -> None:
    with pytest.raises(ValueError, match="identity key is 4 bytes"):
        EidResolver().register("band-1", b"abcd", K, OFFSET_S)


def _resolver() -> EidResolver:
    resolver = EidResolver()
    resolver.register("band-1", KEY, K, OFFSET_S)
    return resolver


def test_resolve_current_period() -> None:
    now_s = OFFSET_S + 5 * PERIOD_S + 3
    assert _resolver().resolve(_eid_in_period(KEY, 5), now_s) == "band-1"


def test_resolve_neighbour_periods() -> None:
    resolver = _resolver()
    now_s = OFFSET_S + 5 * PERIOD_S + 3
    assert resolver.resolve(_eid_in_period(KEY, 4), now_s) == "band-1"
    assert resolver.resolve(_eid_in_period(KEY, 6), now_s) == "band-1"


def test_resolve_rejects_two_periods_away() -> None:
    resolver = _resolver()
    now_s = OFFSET_S + 5 * PERIOD_S + 3
    assert resolver.resolve(_eid_in_period(KEY, 3), now_s) is None
    assert resolver.resolve(_eid_in_period(KEY, 7), now_s) is None


def test_resolve_unknown_eid() -> None:
    assert _resolver().resolve(bytes(8), OFFSET_S + 10) is None


def test_resolve_refreshes_when_period_rolls() -> None:
    resolver = _resolver()
    now_s = OFFSET_S + 5 * PERIOD_S + 3
    assert resolver.resolve(_eid_in_period(KEY, 4), now_s) == "band-1"
    later_s = now_s + PERIOD_S
    assert resolver.resolve(_eid_in_period(KEY, 7), later_s) == "band-1"
    assert resolver.resolve(_eid_in_period(KEY, 4), later_s) is None


def test_resolve_after_clock_steps_back() -> None:
    resolver = _resolver()
    resolver.resolve(bytes(8), OFFSET_S + 50 * PERIOD_S)
    earlier_s = OFFSET_S + 5 * PERIOD_S
    assert resolver.resolve(_eid_in_period(KEY, 5), earlier_s) == "band-1"


def test_lookup_within_period_computes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_compute_eid = _eid.compute_eid

    def counting_compute_eid(key: bytes, time_s: int, exponent: int) -> bytes:
        calls.append(time_s)
        return real_compute_eid(key, time_s, exponent)

    monkeypatch.setattr(_eid, "compute_eid", counting_compute_eid)
    resolver = _resolver()
    now_s = OFFSET_S + 5 * PERIOD_S
    eid = real_compute_eid(KEY, 5 * PERIOD_S, K)
    assert resolver.resolve(eid, now_s) == "band-1"
    assert len(calls) == 3
    for step_s in range(1, PERIOD_S, 97):
        assert resolver.resolve(eid, now_s + step_s) == "band-1"
    assert len(calls) == 3
    resolver.resolve(eid, now_s + PERIOD_S)
    assert len(calls) == 6


def test_resolve_bands_with_different_exponents() -> None:
    resolver = EidResolver()
    resolver.register("slow", KEY, 12, OFFSET_S)
    resolver.register("fast", OTHER_KEY, 4, OFFSET_S + 100)
    now_s = OFFSET_S + 10_000
    slow_period = math.floor((now_s - OFFSET_S) / 4096)
    fast_period = math.floor((now_s - OFFSET_S - 100) / 16)
    assert resolver.resolve(_eid_in_period(KEY, slow_period, 12), now_s) == "slow"
    assert resolver.resolve(_eid_in_period(OTHER_KEY, fast_period, 4), now_s) == "fast"
    # The fast band rolls many times while the slow one stays.
    later_s = now_s + 160
    assert resolver.resolve(_eid_in_period(KEY, slow_period, 12), later_s) == "slow"
    next_fast = _eid_in_period(OTHER_KEY, fast_period + 10, 4)
    assert resolver.resolve(next_fast, later_s) == "fast"


def test_unregister_forgets_band() -> None:
    resolver = _resolver()
    now_s = OFFSET_S + 3
    eid = _eid_in_period(KEY, 0)
    assert resolver.resolve(eid, now_s) == "band-1"
    resolver.unregister("band-1")
    assert resolver.resolve(eid, now_s) is None
    resolver.unregister("never-registered")


def test_register_replaces_key() -> None:
    resolver = _resolver()
    now_s = OFFSET_S + 3
    resolver.register("band-1", OTHER_KEY, K, OFFSET_S)
    assert resolver.resolve(_eid_in_period(KEY, 0), now_s) is None
    assert resolver.resolve(_eid_in_period(OTHER_KEY, 0), now_s) == "band-1"


def test_resolve_before_counter_start() -> None:
    resolver = _resolver()
    # Half a period before the counter started: period -1 has no id, but
    # period 0 is within the skew allowance.
    now_s = OFFSET_S - PERIOD_S / 2
    assert resolver.resolve(_eid_in_period(KEY, 0), now_s) == "band-1"


def test_resolve_non_finite_time() -> None:
    resolver = _resolver()
    assert resolver.resolve(_eid_in_period(KEY, 0), math.nan) is None
    assert resolver.resolve(_eid_in_period(KEY, 0), math.inf) is None
    assert resolver.resolve(_eid_in_period(KEY, 0), OFFSET_S + 1) == "band-1"


def test_collision_keeps_first_band(caplog: pytest.LogCaptureFixture) -> None:
    resolver = EidResolver()
    resolver.register("band-1", KEY, K, OFFSET_S)
    resolver.register("band-2", KEY, K, OFFSET_S)
    with caplog.at_level(logging.WARNING, logger="appliance.wristbands._eid"):
        assert resolver.resolve(_eid_in_period(KEY, 0), OFFSET_S + 1) == "band-1"
    assert "collides" in caplog.text
    assert "band-2" in caplog.text
