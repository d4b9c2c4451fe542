"""Band codes: derived per box, check-summed, accepted only once registered."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from appliance.clock import SystemClock, TimeSource
from appliance.portal.band_codes import (
    KEY_BYTES,
    BandCodeError,
    band_code,
    band_for_code,
    band_key_path,
    is_well_formed,
    load_band_key,
    register_band_codes,
)
from appliance.store import Store

KEY = bytes(range(32))
ALPHABET = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "nightbox.sqlite3", SystemClock(TimeSource.NTP))


def test_code_is_three_groups_of_four() -> None:
    code = band_code(KEY, "ib-1-7")
    groups = code.split("-")
    assert [len(group) for group in groups] == [4, 4, 4]
    assert set("".join(groups)) <= ALPHABET
    assert is_well_formed(code)


def test_code_depends_on_key_and_band() -> None:
    assert band_code(KEY, "ib-1-7") == band_code(KEY, "ib-1-7")
    assert band_code(KEY, "ib-1-7") != band_code(KEY, "ib-1-8")
    assert band_code(KEY, "ib-1-7") != band_code(bytes(32), "ib-1-7")


def test_check_symbol_catches_typing_errors() -> None:
    code = band_code(KEY, "ib-1-7").replace("-", "")
    for position in range(len(code)):
        for replacement in sorted(ALPHABET - {code[position]}):
            typo = code[:position] + replacement + code[position + 1 :]
            assert not is_well_formed(typo), typo
    for position in range(len(code) - 1):
        if code[position] == code[position + 1]:
            continue
        swapped = (
            code[:position] + code[position + 1] + code[position] + code[position + 2 :]
        )
        assert not is_well_formed(swapped), swapped


def test_code_forgives_case_dashes_and_lookalikes() -> None:
    code = band_code(KEY, "ib-1-7")
    assert is_well_formed(code.lower())
    assert is_well_formed(code.replace("-", " "))
    assert is_well_formed(code.replace("0", "O").replace("1", "I"))
    assert not is_well_formed("")
    assert not is_well_formed("x" * 100)
    assert not is_well_formed(code + "0")


def test_invalid_band_id_rejected() -> None:
    with pytest.raises(BandCodeError, match="not a band id"):
        band_code(KEY, "IB 1 7")


def test_registered_code_finds_band(store: Store) -> None:
    codes = register_band_codes(store, KEY, ["ib-1-7", "ib-1-8"], time.time())
    assert band_for_code(store, KEY, codes["ib-1-7"]) == "ib-1-7"
    assert band_for_code(store, KEY, codes["ib-1-8"].lower()) == "ib-1-8"
    rows = store.query("SELECT code_hash, band FROM portal_band_codes ORDER BY band")
    # The store keeps a keyed hash, never the code.
    assert [band for _hash, band in rows] == ["ib-1-7", "ib-1-8"]
    for code_hash, _band in rows:
        assert codes["ib-1-7"].replace("-", "") not in code_hash


def test_unregistered_code_finds_nothing(store: Store) -> None:
    register_band_codes(store, KEY, ["ib-1-7"], time.time())
    assert band_for_code(store, KEY, band_code(KEY, "ib-1-9")) is None


def test_malformed_code_raises_without_echo(store: Store) -> None:
    with pytest.raises(BandCodeError) as caught:
        band_for_code(store, KEY, "<script>")
    assert "<script>" not in str(caught.value)
    assert "12 letters and digits" in str(caught.value)


def test_registering_again_replaces_row(store: Store) -> None:
    register_band_codes(store, KEY, ["ib-1-7"], time.time())
    new_key = bytes(reversed(KEY))
    codes = register_band_codes(store, new_key, ["ib-1-7"], time.time())
    assert band_for_code(store, new_key, codes["ib-1-7"]) == "ib-1-7"
    assert band_for_code(store, KEY, band_code(KEY, "ib-1-7")) is None
    assert store.query("SELECT COUNT(*) FROM portal_band_codes") == [(1,)]


def test_row_without_key_opens_nothing(store: Store) -> None:
    codes = register_band_codes(store, KEY, ["ib-1-7"], time.time())
    with store.transaction() as transaction:
        transaction.execute("UPDATE portal_band_codes SET band = 'ib-6-6'")
    assert band_for_code(store, KEY, codes["ib-1-7"]) is None


def test_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_band_key(tmp_path)
    path = band_key_path(tmp_path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert load_band_key(tmp_path) == key
    assert load_band_key(tmp_path / "other") != key


def test_damaged_key_file_is_named(tmp_path: Path) -> None:
    path = band_key_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("not hex\n")
    with pytest.raises(BandCodeError) as caught:
        load_band_key(tmp_path)
    assert str(path) in str(caught.value)
    assert "move it away" in str(caught.value)
