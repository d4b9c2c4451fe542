"""Fixtures: the real umqtt packages from PyPI as a local mip index, and site files.

The umqtt sources are the sdists that micropython-lib published on PyPI,
fetched once through PyPI's JSON API and kept in ``.venv/cache/umqtt``. Their
SHA-256 digests are pinned here, so a changed download fails the tests
instead of passing altered code into a bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import load_config
from hardware.reader_board import BoardSimulator, make_test_image
from provisioning.readers import build_bundle

REPOSITORY = Path(__file__).resolve().parents[2]
CACHE = REPOSITORY / ".venv" / "cache" / "umqtt"
# (PyPI project, version, SHA-256 of the sdist, module inside it, mip package,
# mip dependencies).
UMQTT_SDISTS = (
    (
        "micropython-umqtt.simple",
        "1.3.4",
        "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
        "umqtt/simple.py",
        "umqtt.simple",
        [],
    ),
    (
        "micropython-umqtt.robust",
        "1.0",
        "22a1b8c8e1128281efb13b3020927d07e33c5b747869da2cd77d37983a9ea002",
        "umqtt/robust.py",
        "umqtt.robust",
        [["umqtt.simple", "latest"]],
    ),
)
# micropython-lib's index names each file by the first 8 hex digits of its
# SHA-256.
SHORT_HASH_LENGTH = 8


def _sdist(project: str, version: str, sha256: str) -> bytes:
    cached = CACHE / f"{project}-{version}.tar.gz"
    if cached.exists():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
    # The per-version endpoint /pypi/<project>/<version>/json returns 404 for
    # these old releases, so the release is looked up in the project's JSON.
    with urllib.request.urlopen(
        f"https://pypi.org/pypi/{project}/json", timeout=30
    ) as response:
        release = json.load(response)["releases"][version]
    url = next(item["url"] for item in release if item["packagetype"] == "sdist")
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        pytest.fail(f"{url} has SHA-256 {digest}, not the pinned {sha256}")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(data)
    return data


def _module(sdist: bytes, project: str, version: str, module: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as archive:
        member = archive.extractfile(f"{project}-{version}/{module}")
        assert member is not None, f"{module} is missing from {project} {version}"
        return member.read()


@pytest.fixture(name="umqtt_sources", scope="session")
def umqtt_sources_fixture() -> dict[str, bytes]:
    """The umqtt modules by their path below ``lib/``, such as ``umqtt/simple.py``."""
    sources = {}
    for project, version, sha256, module, _package, _deps in UMQTT_SDISTS:
        sources[module] = _module(
            _sdist(project, version, sha256), project, version, module
        )
    return sources


@pytest.fixture(name="mip_index", scope="session")
def mip_index_fixture(
    tmp_path_factory: pytest.TempPathFactory, umqtt_sources: dict[str, bytes]
) -> Path:
    """A local mip package index with umqtt.simple 1.3.4 and umqtt.robust 1.0."""
    index = tmp_path_factory.mktemp("mip-index")
    for _project, version, _sha256, module, package, deps in UMQTT_SDISTS:
        data = umqtt_sources[module]
        short = hashlib.sha256(data).hexdigest()[:SHORT_HASH_LENGTH]
        file_path = index / "file" / short[:2] / short
        file_path.parent.mkdir(parents=True, exist_ok=True)
        file_path.write_bytes(data)
        description = {"hashes": [[module, short]], "deps": deps, "version": version}
        package_path = index / "package" / "py" / package / "latest.json"
        package_path.parent.mkdir(parents=True, exist_ok=True)
        package_path.write_text(json.dumps(description))
    return index


SITE_UUID_HEX = "426c7565436861726d426561636f6e73"
ALTBEACON_HEX = "0102030405060708090a0b0c0d0e0f10"
NAMESPACE_HEX = "00112233445566778899"
WIFI_PASSWORD = "dance floor 2026"
NETWORK_TABLE = """
[reader_network]
wifi_ssid = "nightbox"
wifi_password_file = "wifi-password.txt"
broker_host = "192.168.4.1"
broker_port = 1883
"""
BASE_SITE = f"""
[site]
id = "test"
name = "Test venue"

[box]
id = "box-1"
data_dir = "box"

[bands]
ibeacon_uuid = "{SITE_UUID_HEX}"
altbeacon_prefix = "{ALTBEACON_HEX}"
eddystone_namespace = "{NAMESPACE_HEX}"

[checkout]
stall_s = 25

[[readers]]
id = "exit-1"
role = "exit"
zone = "main-door"

[[readers]]
id = "exit-2"
role = "exit"

[[readers]]
id = "kit-1"
role = "kit"
kit_stock = 5

[kits]
offline_rule = "issue-once"
"""


def write_site(folder: Path, *, network: bool = True, extra: str = "") -> Path:
    """Write the test site file into ``folder`` and return its path.

    With ``network``, it has a [reader_network] table and a Wi-Fi password file.
    """
    path = folder / "site.toml"
    path.write_text(BASE_SITE + (NETWORK_TABLE if network else "") + extra)
    if network:
        password_file = folder / "wifi-password.txt"
        password_file.write_text(WIFI_PASSWORD + "\n")
        password_file.chmod(0o600)
    return path


@pytest.fixture(name="site_file")
def site_file_fixture(tmp_path: Path) -> Path:
    """The test site with three readers and a reader network, in a fresh folder."""
    return write_site(tmp_path)


@pytest.fixture(name="board_bundle")
def board_bundle_fixture(site_file: Path, mip_index: Path, tmp_path: Path) -> Path:
    """The site's bundle in ``<data_dir>/reader-bundle`` with the simulator's image."""
    image = tmp_path / "ESP32_GENERIC.bin"
    image.write_bytes(make_test_image())
    folder = load_config(site_file).data_dir / "reader-bundle"
    build_bundle(folder, index=str(mip_index), image=image)
    return folder


@pytest.fixture(name="blank_board")
def blank_board_fixture(tmp_path: Path) -> Iterator[BoardSimulator]:
    """A simulated ESP32 with empty flash."""
    with BoardSimulator(tmp_path / "blank-board", micropython=False) as board:
        yield board


@pytest.fixture(name="micropython_board")
def micropython_board_fixture(tmp_path: Path) -> Iterator[BoardSimulator]:
    """A simulated ESP32 that already runs MicroPython, with an empty file system."""
    with BoardSimulator(tmp_path / "mp-board", micropython=True) as board:
        yield board
