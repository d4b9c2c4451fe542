"""The console's admin PIN: its rules and its hash file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from appliance.console.pin import (
    PinFile,
    PinFileError,
    generate_pin,
    pin_path,
    validate_pin,
)


@pytest.mark.parametrize("pin", ["480213", "902817364512", "112358", "135790"])
def test_validate_pin_accepts(pin: str) -> None:
    validate_pin(pin)


@pytest.mark.parametrize(
    ("pin", "reason"),
    [
        ("", "digits 0-9 only"),
        ("12a456", "digits 0-9 only"),
        ("\uff14\uff18\uff10\uff12\uff11\uff13", "digits 0-9 only"),
        (" 480213", "digits 0-9 only"),
        ("48021", "has 5 digits"),
        ("4802134802134", "has 13 digits"),
        ("000000", "one digit repeated"),
        ("7777777777", "one digit repeated"),
        ("123456", "straight run"),
        ("654321", "straight run"),
        ("3456789", "straight run"),
    ],
)
def test_validate_pin_rejects(pin: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_pin(pin)


def test_generated_pins_are_valid() -> None:
    pins = {generate_pin() for _ in range(50)}
    for pin in pins:
        validate_pin(pin)
        assert len(pin) == 6
    assert len(pins) > 1


def test_pin_path_in_secrets(tmp_path: Path) -> None:
    assert pin_path(tmp_path) == tmp_path / "secrets" / "console.json"


def test_pin_file_set_and_verify(tmp_path: Path) -> None:
    pins = PinFile(pin_path(tmp_path))
    assert not pins.exists()
    pins.set("480213")
    assert pins.exists()
    assert pins.verify("480213")
    assert not pins.verify("480214")
    assert not pins.verify("")
    assert not pins.verify("\uff14\uff18\uff10\uff12\uff11\uff13")


def test_pin_file_mode_and_content(tmp_path: Path) -> None:
    path = pin_path(tmp_path)
    PinFile(path).set("480213")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert "480213" not in text
    record = json.loads(text)
    assert record["kdf"] == "scrypt"
    assert record["n"] >= 2**14
    assert len(record["salt"]) > 0


def test_pin_file_new_salt_each_set(tmp_path: Path) -> None:
    path = pin_path(tmp_path)
    pins = PinFile(path)
    pins.set("480213")
    first = json.loads(path.read_text())
    pins.set("480213")
    second = json.loads(path.read_text())
    assert first["salt"] != second["salt"]
    assert first["hash"] != second["hash"]
    assert pins.verify("480213")


def test_pin_file_set_rejects_weak_pin(tmp_path: Path) -> None:
    pins = PinFile(pin_path(tmp_path))
    with pytest.raises(ValueError, match="straight run"):
        pins.set("123456")
    assert not pins.exists()


def test_pin_file_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PinFile(pin_path(tmp_path)).verify("480213")


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"kdf": "md5"}', '{"kdf": "scrypt", "salt": "x"}']
)
def test_pin_file_invalid_names_file(tmp_path: Path, content: str) -> None:
    path = pin_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(PinFileError, match=r"console\.json"):
        PinFile(path).verify("480213")
