"""The image recipe in image-build/ and the build's option checks.

These run without building an image: they read the recipe's real files, run
``nightbox image build`` with options it must reject before any work, check
the output lock and the logs a failed build keeps, and run genimage on small
trees.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.image import build as build_module
from appliance.image._build_disk import read_partitions, run_genimage
from appliance.image._build_tools import ImageBuildError, find_tool
from appliance.image._build_tree import (
    DEFAULT_MIRROR,
    ENABLED_UNITS,
    TreeSpec,
    apt_sources,
    package_list,
    read_update_key,
)
from appliance.image._build_wheels import platform_tags
from appliance.image.build import BuildOptions, BuildResult, check_options
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


def test_apt_sources_security_mirror() -> None:
    own = TreeSpec(
        "amd64",
        "http://mirror.example/debian-mirror",
        RECIPE,
        security_mirror="http://mirror.example/security/",
    )
    lines = apt_sources(own)
    assert lines[2] == "deb http://mirror.example/security bookworm-security main"
    sibling = apt_sources(TreeSpec("amd64", "file:/srv/mirror/debian/", RECIPE))
    assert sibling[2] == "deb file:/srv/mirror/debian-security bookworm-security main"
    with pytest.raises(ImageBuildError, match="--security-mirror URL"):
        apt_sources(TreeSpec("amd64", "http://mirror.example/debian-mirror", RECIPE))


@pytest.mark.parametrize(
    "line",
    [
        "deb http://archive.raspberrypi.com/debian bookworm main",
        "deb [signed-by=/etc/apt/keyrings/pi.gpg] http://x.example/pi bookworm main",
        "deb-src http://x.example/debian bookworm main contrib",
        "deb file:/srv/flat ./",
    ],
)
def test_extra_apt_source_accepted(line: str, tmp_path: Path) -> None:
    options = BuildOptions(
        "amd64", output=tmp_path / "a.img", extra_apt_sources=(line,)
    )
    check_options(options)


@pytest.mark.parametrize(
    "line",
    [
        "deb garbage",
        "deb http://x.example/debian bookworm",
        "deb x.example/debian bookworm main",
        "rpm http://x.example/debian bookworm main",
    ],
)
def test_extra_apt_source_rejected(line: str, tmp_path: Path) -> None:
    options = BuildOptions(
        "amd64", output=tmp_path / "a.img", extra_apt_sources=(line,)
    )
    expected = re.escape("'deb URL SUITE COMPONENT...'")
    with pytest.raises(ImageBuildError, match=expected):
        check_options(options)


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


def test_build_rejects_output_folder(tmp_path: Path) -> None:
    result = _build("--arch", "amd64", "--output", str(tmp_path))
    assert result.returncode == 2
    assert f"--output {tmp_path} is a folder" in result.stderr


def test_build_rejects_rootfs_dir_file(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("x")
    result = _build(
        "--arch", "amd64", "--output", str(tmp_path / "a.img"),
        "--rootfs-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{tmp_path / 'root'} is not a folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = _build(
        "--arch", "amd64", "--output", str(tmp_path / "a.img"),
        "--rootfs-dir", str(tmp_path / "root"),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--rootfs-dir {tmp_path / 'root'} is not a folder" in result.stderr


def test_build_rejects_mirror_without_security() -> None:
    result = _build(
        "--arch", "amd64", "--output", "x.img",
        "--mirror", "http://mirror.example/debian-mirror",
    )  # fmt: skip
    assert result.returncode == 2
    assert "give it with --security-mirror URL" in result.stderr
    result = _build(
        "--arch", "amd64", "--output", "x.img",
        "--mirror", "http://mirror.example/debian-mirror",
        "--security-mirror", "mirror.example/security",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--security-mirror 'mirror.example/security' is not" in result.stderr


def test_build_rejects_quote_in_rootfs_dir(tmp_path: Path) -> None:
    folder = tmp_path / 'trees "a"'
    result = _build("--arch", "amd64", "--rootfs-only", "--rootfs-dir", str(folder))
    assert result.returncode == 2
    assert "contains a double quote" in result.stderr


def test_output_lock_rejects_second_build(tmp_path: Path) -> None:
    output = tmp_path / "box.img"
    with build_module._output_lock(output):
        holder = (tmp_path / "box.img.lock").read_text().strip()
        assert holder == str(os.getpid())
        second = build_module._output_lock(output)
        with pytest.raises(ImageBuildError, match="another build is writing"), second:
            pass
    with build_module._output_lock(output):
        assert (tmp_path / "box.img.lock").is_file()


def test_install_image_odd_output_name(tmp_path: Path) -> None:
    written = tmp_path / "work" / "nightbox.img"
    written.parent.mkdir()
    written.write_bytes(b"new image")
    output = tmp_path / "my \"box\" 'a'.img"
    output.write_bytes(b"old image")
    build_module._install_image(written, output)
    assert output.read_bytes() == b"new image"
    assert not written.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [output.name, "work"]


def test_failed_build_keeps_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stage that writes its log and fails, as run_mmdebstrap does.
    def failing_stages(
        options: BuildOptions, recipe_dir: Path, update_key: str | None,
        work: Path, logs: Path, progress: object,
    ) -> BuildResult:  # fmt: skip
        log = logs / "mmdebstrap.log"
        log.write_text("E: Malformed entry 7 in list file\n")
        raise ImageBuildError(f"mmdebstrap failed; the whole log is {log}")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(build_module, "_build_in", failing_stages)
    options = BuildOptions("amd64", output=tmp_path / "box.img")
    with pytest.raises(ImageBuildError) as raised:
        build_module.build(options)
    log = Path(str(raised.value).rsplit(" ", 1)[1])
    assert log.read_text() == "E: Malformed entry 7 in list file\n"
    assert log.parent.name.startswith("nightbox-image-logs-")
    # The work folder is gone; the logs folder and the output's lock file stay.
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == ["box.img.lock", log.parent.name]


def test_interrupted_build_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted_stages(
        options: BuildOptions, recipe_dir: Path, update_key: str | None,
        work: Path, logs: Path, progress: object,
    ) -> BuildResult:  # fmt: skip
        (logs / "mmdebstrap.log").write_text("I: downloading packages\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(build_module, "_build_in", interrupted_stages)
    with pytest.raises(KeyboardInterrupt):
        build_module.build(BuildOptions("amd64", output=tmp_path / "box.img"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["box.img.lock"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files their owners needs root")
def test_genimage_data_top_folder(tmp_path: Path) -> None:
    for tool in ("genimage", "mke2fs", "mkfs.vfat", "mcopy", "debugfs", "sfdisk"):
        assert find_tool(tool), f"{tool} missing: run 'sh tests/ensure-image-tools'"
    boot, root, data, work = (tmp_path / name for name in ("boot", "root", "data", "w"))
    for folder in (boot, root, data / "app", work):
        folder.mkdir(parents=True)
    (boot / "cmdline.txt").write_text("root=LABEL=nbroot ro\n")
    (root / "os-release").write_text("ID=debian\n")
    os.chown(data, 0, 4242)
    data.chmod(0o1775)
    written = run_genimage("arm64", RECIPE, work, boot, root, data, work)
    assert written.name == "nightbox.img"
    assert (work / "genimage.log").is_file()
    offset = read_partitions(written)[2].start_bytes
    status = subprocess.run(
        ["debugfs", "-R", "stat /", f"{written}?offset={offset}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert re.search(r"Mode:\s+01775", status), status
    assert re.search(r"User:\s+0\s+Group:\s+4242\b", status), status
    shutil.rmtree(work / "images")
