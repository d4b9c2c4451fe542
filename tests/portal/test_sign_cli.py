"""``nightbox portal sign`` and ``band-codes``: the printed QR codes and codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageChops

from appliance.cli import main
from appliance.clock import SystemClock, TimeSource
from appliance.config import load_config
from appliance.portal.band_codes import band_for_code, load_band_key
from appliance.portal.qr import qr_image
from appliance.portal.sign import (
    OPTIN_LINE,
    _Fonts,
    render_sign,
    sign_drops,
    wrap_text,
)
from appliance.store import Store

PUBLIC_URL = "http://192.168.4.1:8080"
DROP_COUNT = 8


def _site_file(tmp_path: Path, *, portal: bool = True) -> Path:
    drops = "".join(
        f"""
[[drops]]
id = "drop-{index}"
item = "tee"
price = {2000 + index * 100}
quantity = 10
starts_at = 2026-12-05T23:{index:02d}:00
ends_at = 2026-12-06T03:00:00
"""
        for index in range(DROP_COUNT)
    )
    text = f"""
[site]
id = "club"
name = "Club Nord"
timezone = "Europe/Berlin"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"

[[items]]
id = "tee"
name = "Night tee"
price = 3500
{drops}
"""
    if portal:
        text += f'\n[portal]\npublic_url = "{PUBLIC_URL}"\n'
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def _same(image: Image.Image, expected: Image.Image) -> bool:
    return ImageChops.difference(image, expected).getbbox() is None


def _sign(tmp_path: Path, output: Path) -> int:
    """Write the site file in ``tmp_path`` and run ``nightbox portal sign`` on it."""
    config = _site_file(tmp_path)
    return main(["portal", "sign", "--config", str(config), "--output", str(output)])


def test_sign_drops_printed_in_site_money_and_time(tmp_path: Path) -> None:
    config = load_config(_site_file(tmp_path))
    assert config.portal is not None
    drops = sign_drops(config, config.portal)
    assert len(drops) == DROP_COUNT
    assert drops[0].name == "Night tee"
    assert drops[0].price == "20.00 EUR"
    assert drops[3].price == "23.00 EUR"
    assert drops[0].times == "Sat 23:00 to 03:00"
    assert drops[0].url == f"{PUBLIC_URL}/drops/drop-0"


def test_sign_codes_point_at_public_pages(tmp_path: Path) -> None:
    config = load_config(_site_file(tmp_path))
    assert config.portal is not None
    sign = render_sign(config, config.portal)
    assert len(sign.pages) == 2
    for page in sign.pages:
        assert page.size == (1240, 1754)
    urls = [code.url for code in sign.codes]
    assert urls == [f"{PUBLIC_URL}/optin"] + [
        f"{PUBLIC_URL}/drops/drop-{index}" for index in range(DROP_COUNT)
    ]
    assert [code.page for code in sign.codes] == [0] * 7 + [1] * 2
    for code in sign.codes:
        left, top, right, bottom = code.box
        drawn = sign.pages[code.page].crop(code.box)
        assert _same(drawn, qr_image(code.url, right - left)), code.url
        assert bottom - top == right - left


def test_sign_without_drops_has_optin_code(tmp_path: Path) -> None:
    path = _site_file(tmp_path)
    path.write_text(path.read_text().split("[[drops]]")[0] + "[portal]\n")
    config = load_config(path)
    assert config.portal is not None
    sign = render_sign(config, config.portal)
    assert len(sign.pages) == 1
    assert [code.url for code in sign.codes] == ["http://nightbox.local:8080/optin"]


def test_cli_sign_writes_pdf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "sign.pdf"
    code = _sign(tmp_path, output)
    assert code == 0
    data = output.read_bytes()
    assert data.startswith(b"%PDF-")
    assert data.count(b"/Type /Page\n") == 2
    assert f"Wrote {output}" in capsys.readouterr().out


def test_cli_sign_writes_png_pages(tmp_path: Path) -> None:
    output = tmp_path / "sign.png"
    code = _sign(tmp_path, output)
    assert code == 0
    config = load_config(tmp_path / "site.toml")
    assert config.portal is not None
    expected = render_sign(config, config.portal)
    with Image.open(output) as first, Image.open(tmp_path / "sign-2.png") as second:
        assert first.size == (1240, 1754)
        assert _same(first.convert("L"), expected.pages[0])
        assert _same(second.convert("L"), expected.pages[1])
        # PNG stores pixels per metre, so 150 dpi reads back as 150.01.
        assert first.info["dpi"] == pytest.approx((150, 150), abs=0.05)


def test_cli_sign_rejects_other_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _sign(tmp_path, tmp_path / "sign.jpg")
    assert code == 2
    assert ".pdf or .png" in capsys.readouterr().err


def test_cli_needs_portal_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _site_file(tmp_path, portal=False)
    code = main(["portal", "band-codes", "--config", str(path), "--band", "ib-1-7"])
    assert code == 2
    assert "no [portal] table" in capsys.readouterr().err


def test_cli_band_codes_prints_csv_and_registers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _site_file(tmp_path)
    code = main(
        [
            "portal",
            "band-codes",
            "--config",
            str(path),
            "--band",
            "ib-1-7",
            "--band",
            "uid-00000000002a",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "band,code,url"
    rows = [line.split(",") for line in lines[1:]]
    assert [row[0] for row in rows] == ["ib-1-7", "uid-00000000002a"]
    config = load_config(path)
    key = load_band_key(config.data_dir)
    store = Store(config.data_dir / "nightbox.sqlite3", SystemClock(TimeSource.NTP))
    try:
        for band, printed, url in rows:
            assert url == f"{PUBLIC_URL}/band#{printed}"
            assert band_for_code(store, key, printed) == band
    finally:
        store.close()


def test_cli_band_codes_rejects_bad_band(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _site_file(tmp_path)
    code = main(["portal", "band-codes", "--config", str(path), "--band", "Not A Band"])
    assert code == 2
    captured = capsys.readouterr()
    assert "not a band id" in captured.err
    assert captured.out == ""


def test_sign_lines_wrap_without_cutting() -> None:
    fonts = _Fonts.load()
    width = 1240 - 2 * 90
    lines = wrap_text(OPTIN_LINE, fonts.heading, width)
    address = "http://" + "very-long-host-name." * 8 + "example:8080/optin"
    address_lines = wrap_text(address, fonts.small, 300)
    assert len(lines) == 2
    assert " ".join(lines) == OPTIN_LINE
    for line in lines:
        assert fonts.heading.getlength(line) <= width
    assert len(address_lines) > 1
    assert "".join(address_lines) == address
    for line in address_lines:
        assert fonts.small.getlength(line) <= 300


def test_sign_with_long_site_name_keeps_codes(tmp_path: Path) -> None:
    path = _site_file(tmp_path)
    path.write_text(
        path.read_text().replace(
            'name = "Club Nord"',
            'name = "Club Nord at the Old Harbour Warehouse, Hall Two"',
        )
    )
    config = load_config(path)
    assert config.portal is not None
    sign = render_sign(config, config.portal)
    assert [code.url for code in sign.codes][1:] == [
        f"{PUBLIC_URL}/drops/drop-{index}" for index in range(DROP_COUNT)
    ]
    for code in sign.codes:
        left, _top, right, bottom = code.box
        assert bottom <= 1754
        drawn = sign.pages[code.page].crop(code.box)
        assert _same(drawn, qr_image(code.url, right - left)), code.url


@pytest.mark.parametrize("command", ["sign", "band-codes"])
def test_cli_port_zero_without_public_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = _site_file(tmp_path, portal=False)
    path.write_text(path.read_text() + "\n[portal]\nport = 0\n")
    extra = ["--output", str(tmp_path / "sign.png")]
    if command == "band-codes":
        extra = ["--band", "ib-1-7"]
    code = main(["portal", command, "--config", str(path), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert "port is 0" in captured.err
    assert "set [portal] port or public_url" in captured.err
    assert captured.out == ""
    assert not (tmp_path / "sign.png").exists()


def test_cli_port_zero_with_public_url(tmp_path: Path) -> None:
    path = _site_file(tmp_path)
    path.write_text(path.read_text() + "port = 0\n")
    code = main(["portal", "band-codes", "--config", str(path), "--band", "ib-1-7"])
    assert code == 0
