"""The image recipe in image-build/ and the build's option checks.

These run without building anything: they read the recipe's real files and
run ``nightbox image build`` with options it must reject before any work.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.image._build_tools import ImageBuildError
from appliance.image._build_tree import (
    DEFAULT_MIRROR,
    ENABLED_UNITS,
    TreeSpec,
    apt_sources,
    package_list,
    read_update_key,
)
from appliance.image._build_wheels import platform_tags
from appliance.image.layout import STATE_DIR

REPOSITORY = Path(__file__).resolve().parents[2]
RECIPE = REPOSITORY / "image-build"
UNIT_DIR = RECIPE / "overlay/etc/systemd/system"
APP_PYTHON = "/var/lib/nightbox/app/current/venv/bin/python -m appliance "


def _build(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "image", "build", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPOSITORY,
        check=False,
    )


def _fstab_entries() -> list[list[str]]:
    lines = (RECIPE / "overlay/etc/fstab").read_text().splitlines()
    return [line.split() for line in lines if line and not line.startswith("#")]


def test_package_lists_per_architecture() -> None:
    amd64 = package_list(RECIPE, "amd64")
    arm64 = package_list(RECIPE, "arm64")
    for package in ("systemd", "mosquitto", "python3-venv", "fdisk", "procps"):
        assert package in amd64
        assert package in arm64
    assert "linux-image-amd64" in amd64
    assert "systemd-boot" in amd64
    assert "linux-image-arm64" in arm64
    assert "raspi-firmware" in arm64
    assert "raspi-firmware" not in amd64
    assert not [name for name in amd64 + arm64 if "#" in name or " " in name]
    assert "openssh-server" not in amd64 + arm64


def test_apt_sources_default_and_extra() -> None:
    extra = "deb http://archive.raspberrypi.com/debian bookworm main"
    spec = TreeSpec("arm64", DEFAULT_MIRROR, RECIPE, extra_apt_sources=(extra,))
    lines = apt_sources(spec)
    assert lines[0] == f"deb {DEFAULT_MIRROR} bookworm main non-free-firmware"
    assert lines[2].startswith(f"deb {DEFAULT_MIRROR}-security bookworm-security ")
    assert lines[-1] == extra
    plain = apt_sources(TreeSpec("amd64", DEFAULT_MIRROR, RECIPE))
    assert all(line.endswith(" main") for line in plain)
    assert len(plain) == 3


def test_platform_tags_stop_at_bookworm_glibc() -> None:
    tags = platform_tags("arm64")
    assert "manylinux2014_aarch64" in tags
    assert "manylinux_2_36_aarch64" in tags
    assert "manylinux_2_37_aarch64" not in tags
    assert all(tag.endswith("_x86_64") for tag in platform_tags("amd64"))


def test_units_run_the_current_slot() -> None:
    for unit in sorted(UNIT_DIR.glob("nightbox*.service")):
        text = unit.read_text()
        for line in text.splitlines():
            if line.startswith("ExecStart=") and "appliance" in line:
                assert line.startswith("ExecStart=" + APP_PYTHON), unit.name
    assert "Type=notify" in (UNIT_DIR / "nightbox.service").read_text()
    assert "User=nightbox" in (UNIT_DIR / "nightbox.service").read_text()
    for unit in ENABLED_UNITS:
        if unit.startswith("nightbox"):
            assert (UNIT_DIR / unit).is_file(), unit


def test_bind_mount_sources_are_created() -> None:
    rules = (RECIPE / "overlay/etc/tmpfiles.d/nightbox.conf").read_text()
    created = set(re.findall(r"^d\s+(\S+)", rules, flags=re.MULTILINE))
    binds = [entry for entry in _fstab_entries() if "bind" in entry[3].split(",")]
    assert {entry[1] for entry in binds} == {
        "/var/log/journal",
        "/etc/NetworkManager/system-connections",
        "/var/lib/bluetooth",
    }
    for entry in binds:
        assert entry[0].startswith(f"{STATE_DIR}/")
        assert entry[0] in created, entry[0]


def test_update_key_read(tmp_path: Path) -> None:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_file = tmp_path / "update-key.pub"
    key_file.write_text(base64.b64encode(raw).decode() + "\n")
    assert read_update_key(key_file) == base64.b64encode(raw).decode()
    key_file.write_text(base64.b64encode(raw[:31]).decode())
    with pytest.raises(ImageBuildError, match="not an Ed25519 public key"):
        read_update_key(key_file)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--arch", "amd64", "--rootfs-only"], "--rootfs-only needs --rootfs-dir"),
        (["--arch", "amd64"], "--output FILE.img is required"),
        (
            ["--arch", "amd64", "--output", "/nonexistent-folder/x.img"],
            "/nonexistent-folder does not exist",
        ),
        (
            ["--arch", "amd64", "--output", "x.img", "--mirror", "ftp://mirror"],
            "is not an http, https or file URL",
        ),
        (
            ["--arch", "amd64", "--output", "x.img", "--extra-apt-source", "x y"],
            "is not a sources.list line",
        ),
        (
            ["--arch", "amd64", "--output", "x.img", "--extra-apt-key", "/missing.asc"],
            "--extra-apt-key /missing.asc does not exist",
        ),
        (
            ["--arch", "amd64", "--output", "x.img", "--update-key", "/missing.pub"],
            "cannot read --update-key /missing.pub",
        ),
    ],
)
def test_build_rejects_bad_options(arguments: list[str], message: str) -> None:
    result = _build(*arguments)
    assert result.returncode == 2
    assert message in result.stderr


def test_build_rejects_unknown_architecture() -> None:
    result = _build("--arch", "sparc", "--output", "x.img")
    assert result.returncode == 2
    assert "invalid choice: 'sparc'" in result.stderr


def test_build_rejects_full_rootfs_dir(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "leftover").write_text("x")
    result = _build("--arch", "amd64", "--rootfs-only", "--rootfs-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path / 'root'} is not empty" in result.stderr
