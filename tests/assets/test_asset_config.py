"""The ``[assets]`` table: defaults without it, every bad value named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asset_folder import write_site_file
from asset_site import write_public_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets.config import (
    DEFAULT_BUDGET_BYTES,
    AssetsConfig,
    parse_assets_config,
)
from appliance.config import load_config
from appliance.errors import ConfigError


def test_defaults_without_table() -> None:
    config = parse_assets_config({})

    assert config == AssetsConfig()
    assert config.budget_bytes == DEFAULT_BUDGET_BYTES == 2 * 1024**3
    assert config.preload_dir is None


def test_values_read_and_dir_resolved(tmp_path: Path) -> None:
    raw = {"assets": {"budget_bytes": 5 * 1024**2, "preload_dir": "usb/night"}}

    config = parse_assets_config(raw, base_dir=tmp_path)

    assert config.budget_bytes == 5 * 1024**2
    assert config.preload_dir == tmp_path / "usb" / "night"


def test_absolute_preload_dir_kept(tmp_path: Path) -> None:
    config = parse_assets_config(
        {"assets": {"preload_dir": "/media/usb"}}, base_dir=tmp_path
    )

    assert config.preload_dir == Path("/media/usb")


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"budget_bytes": "2GiB"}, "assets.budget_bytes = '2GiB' is invalid"),
        ({"budget_bytes": True}, "assets.budget_bytes = True is invalid"),
        ({"budget_bytes": 1.5e9}, "whole number of bytes"),
        ({"budget_bytes": 1000}, "from 1048576 (1 MiB)"),
        ({"budget_bytes": 2**41}, "to 1099511627776 (1 TiB)"),
        ({"preload_dir": ""}, "assets.preload_dir = '' is invalid"),
        ({"preload_dir": 3}, "give the path of the USB folder"),
        ({"preload_dir": "a\x00b"}, "NUL character"),
        ({"budget": 5}, "unknown key 'budget' in [assets]"),
    ],
)
def test_invalid_value_named(table: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_assets_config({"assets": table})

    assert words in str(caught.value)


def test_table_must_be_table() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_assets_config({"assets": "big"})

    assert "[assets] must be a table" in str(caught.value)


def test_site_file_reads_assets(tmp_path: Path) -> None:
    write_public_key(Ed25519PrivateKey.generate(), tmp_path / "operator.pub")
    path = write_site_file(
        tmp_path,
        assets='\n[assets]\nbudget_bytes = 10485760\npreload_dir = "usb"\n',
    )

    config = load_config(path)

    assert config.assets.budget_bytes == 10 * 1024**2
    assert config.assets.preload_dir == tmp_path / "usb"


def test_site_file_rejects_bad_assets(tmp_path: Path) -> None:
    write_public_key(Ed25519PrivateKey.generate(), tmp_path / "operator.pub")
    path = write_site_file(tmp_path, assets="\n[assets]\nbudget_bytes = -1\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert "site.toml" in str(caught.value)
    assert "assets.budget_bytes = -1 is invalid" in str(caught.value)
