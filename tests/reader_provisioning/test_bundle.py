"""The reader bundle, built with mpremote's mip from the real umqtt sources."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance import cli
from provisioning.readers import BundleError, build_bundle, verify_bundle
from provisioning.readers.bundle import find_firmware_folder, read_image
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    mip_index_fixture,
    site_file_fixture,
    umqtt_sources_fixture,
)

TIMEOUT_S = 60.0
# How long a check of a bundle with a named pipe may take before it counts as
# blocked on the pipe.
PIPE_WAIT_S = 10.0
# The first 16 bytes of an ESP32 image header: magic 0xE9, 3 segments, flash
# mode, size and frequency, entry point, then chip id 0 (ESP32) at bytes 12-13.
ESP32_HEADER = bytes.fromhex("e9030220") + bytes(12)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A stand-in for the ESP32_GENERIC download: an ESP32 image header and filler."""
    path = tmp_path / "ESP32_GENERIC-test.bin"
    path.write_bytes(ESP32_HEADER + b"micropython" * 100)
    return path


@pytest.fixture
def bundle(tmp_path: Path, mip_index: Path, image: Path) -> Path:
    """A bundle of the repository's firmware, umqtt from ``mip_index`` and ``image``."""
    output = tmp_path / "reader-bundle"
    build_bundle(output, index=str(mip_index), image=image)
    return output


def firmware_files() -> dict[str, Path]:
    """Return the firmware's .py files by their path in the bundle."""
    root = find_firmware_folder()
    files = {}
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if {"tests", "__pycache__"} & set(relative.parts[:-1]):
            continue
        if relative.as_posix() in ("main.py", "boot.py") or relative.parts[0] == "lib":
            files[relative.as_posix()] = path
        else:
            files[f"lib/{relative.as_posix()}"] = path
    return files


def test_bundle_has_umqtt(bundle: Path, umqtt_sources: dict[str, bytes]) -> None:
    for module, source in umqtt_sources.items():
        assert (bundle / "lib" / module).read_bytes() == source, module


def test_bundle_has_firmware(bundle: Path) -> None:
    files = firmware_files()
    assert "main.py" in files
    assert "lib/nbreader/__init__.py" in files
    for bundle_path, source in files.items():
        assert (bundle / bundle_path).read_bytes() == source.read_bytes(), bundle_path


def test_manifest_lists_every_file(bundle: Path, image: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    on_disk = {
        path.relative_to(bundle).as_posix()
        for path in bundle.rglob("*")
        if path.is_file() and path.name != "manifest.json"
    }
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert entry["size"] == len(data), name
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), name
    assert (bundle / "micropython.bin").read_bytes() == image.read_bytes()
    assert manifest["micropython_image"] == "micropython.bin"


def test_manifest_versions(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    source = (find_firmware_folder() / "nbreader" / "__init__.py").read_text()
    version = re.search(r'^FW_VERSION = "([^"]+)"', source, re.M)
    assert version is not None
    assert manifest["firmware_version"] == version.group(1)
    assert manifest["packages"] == {"umqtt.simple": "1.3.4", "umqtt.robust": "1.0"}
    assert verify_bundle(bundle).firmware_version == version.group(1)


def test_rebuild_replaces_bundle(bundle: Path, mip_index: Path) -> None:
    assert (bundle / "micropython.bin").exists()
    manifest = build_bundle(bundle, index=str(mip_index))
    assert manifest.image is None
    assert not (bundle / "micropython.bin").exists()
    assert [
        path.name for path in bundle.parent.iterdir() if path.name.startswith(".")
    ] == []


def test_failed_build_keeps_bundle(bundle: Path, tmp_path: Path) -> None:
    before = (bundle / "manifest.json").read_bytes()
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    with pytest.raises(BundleError, match=r"installing umqtt\.simple"):
        build_bundle(bundle, index=str(empty_index))
    assert (bundle / "manifest.json").read_bytes() == before
    verify_bundle(bundle)


def test_changed_byte_rejected(bundle: Path) -> None:
    path = bundle / "lib" / "umqtt" / "simple.py"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"lib/umqtt/simple.py has SHA-256"):
        verify_bundle(bundle)


def test_changed_size_rejected(bundle: Path) -> None:
    with (bundle / "main.py").open("a") as file:
        file.write("\nprint('extra')\n")
    with pytest.raises(BundleError, match=r"main.py has \d+ bytes but the manifest"):
        verify_bundle(bundle)


def test_missing_file_rejected(bundle: Path) -> None:
    (bundle / "lib" / "umqtt" / "robust.py").unlink()
    with pytest.raises(BundleError, match=r"robust\.py cannot be read"):
        verify_bundle(bundle)


def test_foreign_path_rejected(bundle: Path) -> None:
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../outside.py"] = {"sha256": "0" * 64, "size": 0}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"'\.\./outside\.py'"):
        verify_bundle(bundle)


def test_no_bundle_rejected(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="nightbox reader bundle"):
        verify_bundle(tmp_path / "nothing")


def test_image_not_esp(tmp_path: Path) -> None:
    path = tmp_path / "firmware.uf2"
    path.write_bytes(b"UF2\n" + bytes(100))
    with pytest.raises(BundleError, match="not an ESP32 firmware image"):
        read_image(path)


def test_image_other_chip(tmp_path: Path) -> None:
    path = tmp_path / "ESP32_GENERIC_S3.bin"
    header = bytearray(ESP32_HEADER)
    header[12] = 9  # ESP32-S3
    path.write_bytes(bytes(header) + bytes(100))
    with pytest.raises(BundleError, match="chip id 9"):
        read_image(path)


def test_cli_bundle_json(tmp_path: Path, mip_index: Path, image: Path) -> None:
    output = tmp_path / "cli-bundle"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "reader",
            "bundle",
            "--index",
            str(mip_index),
            "--micropython-image",
            str(image),
            "--output",
            str(output),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["bundle"] == str(output)
    assert summary["micropython_image"] is True
    assert summary["packages"]["umqtt.robust"] == "1.0"
    verify_bundle(output)


def test_cli_bundle_bad_image(site_file: Path, tmp_path: Path, mip_index: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not firmware")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "reader",
            "bundle",
            "--config",
            str(site_file),
            "--index",
            str(mip_index),
            "--micropython-image",
            str(text),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 2
    assert "notes.txt is not an ESP32 firmware image" in result.stderr
    assert not (tmp_path / "box" / "reader-bundle").exists()


def add_manifest_entry(bundle: Path, name: str, data: bytes) -> None:
    """List ``name`` in the bundle's manifest with the SHA-256 and size of ``data``."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    manifest_path.write_text(json.dumps(manifest))


def test_output_with_data_rejected(tmp_path: Path, mip_index: Path) -> None:
    output = tmp_path / "data"
    output.mkdir()
    (output / "nightbox.sqlite3").write_bytes(b"the night's store")
    with pytest.raises(BundleError) as caught:
        build_bundle(output, index=str(mip_index))
    assert str(output) in str(caught.value)
    assert "give --output a new or empty folder" in str(caught.value)
    assert (output / "nightbox.sqlite3").read_bytes() == b"the night's store"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_output_file_rejected(tmp_path: Path, mip_index: Path) -> None:
    output = tmp_path / "notes.txt"
    output.write_text("keep me")
    with pytest.raises(BundleError, match="exists and is not a folder"):
        build_bundle(output, index=str(mip_index))
    assert output.read_text() == "keep me"


def test_output_root_rejected(mip_index: Path) -> None:
    with pytest.raises(BundleError, match="cannot replace the root folder /"):
        build_bundle(Path("/"), index=str(mip_index))


def test_output_empty_folder_used(tmp_path: Path, mip_index: Path) -> None:
    output = tmp_path / "empty"
    output.mkdir()
    manifest = build_bundle(output, index=str(mip_index))
    assert manifest.folder == output
    assert (output / "manifest.json").is_file()


def test_output_other_manifest_rejected(tmp_path: Path, mip_index: Path) -> None:
    output = tmp_path / "other"
    output.mkdir()
    (output / "manifest.json").write_text('{"name": "a web app"}')
    with pytest.raises(BundleError, match="is not a format 1 reader bundle manifest"):
        build_bundle(output, index=str(mip_index))
    assert (output / "manifest.json").read_text() == '{"name": "a web app"}'


def test_cli_bundle_output_kept(tmp_path: Path, mip_index: Path) -> None:
    output = tmp_path / "box"
    output.mkdir()
    (output / "nightbox.sqlite3").write_bytes(b"store")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "reader",
            "bundle",
            "--index",
            str(mip_index),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 2, result.stderr
    assert f"nightbox reader bundle: {output} is a folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert (output / "nightbox.sqlite3").read_bytes() == b"store"


@pytest.mark.parametrize(
    "name", ["", ".", "lib", "lib/", "lib/./a.py", "lib/a\x00b", "lib/" + "a" * 5000]
)
def test_malformed_entry_rejected(bundle: Path, name: str) -> None:
    add_manifest_entry(bundle, name, b"")
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle)
    message = str(caught.value)
    assert "lists '" in message
    assert "build the bundle again" in message
    assert "\x00" not in message
    assert len(message) < 400


def test_symlinked_file_rejected(bundle: Path, tmp_path: Path) -> None:
    secret = tmp_path / "broker.json"
    secret.write_text('{"observer": "secret"}')
    (bundle / "lib" / "secret.json").symlink_to(secret)
    add_manifest_entry(bundle, "lib/secret.json", secret.read_bytes())
    with pytest.raises(BundleError, match=r"secret\.json is a symlink, not a regular"):
        verify_bundle(bundle)


def test_symlinked_folder_rejected(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.py").write_text("print(1)\n")
    (bundle / "lib" / "linked").symlink_to(outside)
    add_manifest_entry(bundle, "lib/linked/x.py", b"print(1)\n")
    with pytest.raises(BundleError, match=r"lib/linked is a symlink"):
        verify_bundle(bundle)


def test_pipe_rejected(bundle: Path) -> None:
    pipe = bundle / "lib" / "pipe.py"
    os.mkfifo(pipe)
    add_manifest_entry(bundle, "lib/pipe.py", b"")
    errors: list[Exception] = []

    def verify() -> None:
        try:
            verify_bundle(bundle)
        except Exception as err:
            errors.append(err)

    worker = threading.Thread(target=verify, daemon=True)
    worker.start()
    worker.join(timeout=PIPE_WAIT_S)
    blocked = worker.is_alive()
    if blocked:
        # Opening the pipe for writing releases a reader that waits for one.
        with contextlib.suppress(OSError):
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=PIPE_WAIT_S)
    assert not blocked, "verify_bundle waited for a writer on the pipe"
    assert len(errors) == 1
    assert isinstance(errors[0], BundleError)
    assert "pipe.py is a device, pipe or socket" in str(errors[0])


def test_version_with_escape_rejected(bundle: Path) -> None:
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["firmware_version"] = "1.0\x1b[2J"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle)
    assert "firmware version '1.0\\x1b[2J'" in str(caught.value)
    assert "\x1b" not in str(caught.value)


def test_package_text_escaped(bundle: Path) -> None:
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["packages"]["umqtt.simple"] = "1.3.4\x1b]0;title\x07"
    manifest_path.write_text(json.dumps(manifest))
    packages = verify_bundle(bundle).packages
    assert packages["umqtt.simple"] == "1.3.4\\x1b]0;title\\x07"


def test_image_name_other_file(bundle: Path) -> None:
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["micropython_image"] = "main.py"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"names the image 'main\.py', not"):
        verify_bundle(bundle)


def test_output_with_fake_manifest_rejected(tmp_path: Path, mip_index: Path) -> None:
    output = tmp_path / "photos"
    output.mkdir()
    (output / "manifest.json").write_text('{"format": 1}')
    (output / "party.jpg").write_bytes(b"a photo")
    with pytest.raises(BundleError) as caught:
        build_bundle(output, index=str(mip_index))
    assert f"{output} is not empty and is not a reader bundle" in str(caught.value)
    assert "lists no files" in str(caught.value)
    assert (output / "party.jpg").read_bytes() == b"a photo"
    assert (output / "manifest.json").read_text() == '{"format": 1}'


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("notes.txt", "also contains notes.txt,"),
        ("lib/notes.txt", "also contains lib/notes.txt,"),
        ("photos/party.jpg", "also contains the folder photos,"),
    ],
)
def test_bundle_with_extra_file_kept(
    bundle: Path, mip_index: Path, image: Path, extra: str, named: str
) -> None:
    path = bundle / extra
    path.parent.mkdir(exist_ok=True)
    path.write_text("keep me")
    with pytest.raises(BundleError) as caught:
        build_bundle(bundle, index=str(mip_index), image=image)
    assert named in str(caught.value)
    assert path.read_text() == "keep me"


def test_damaged_bundle_rebuilt(bundle: Path, mip_index: Path, image: Path) -> None:
    (bundle / "main.py").write_text("# damaged\n")
    with pytest.raises(BundleError, match="changed or damaged"):
        verify_bundle(bundle)
    build_bundle(bundle, index=str(mip_index), image=image)
    verify_bundle(bundle)


def test_bundle_modes(tmp_path: Path, mip_index: Path) -> None:
    previous = os.umask(0o077)
    try:
        output = tmp_path / "bundle"
        build_bundle(output, index=str(mip_index))
    finally:
        os.umask(previous)
    assert output.stat().st_mode & 0o777 == 0o755
    for path in output.rglob("*"):
        expected = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == expected, path


def test_cli_bundle_empty_output(
    site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["reader", "bundle", "--config", str(site_file), "--output", ""])
    assert caught.value.code == 2
    assert "--output: must name a folder" in capsys.readouterr().err
