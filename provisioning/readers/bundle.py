"""The reader bundle: everything a blank ESP32 needs, kept on the box.

A bundle is a folder::

    manifest.json       SHA-256 and size of every other file, versions
    main.py             the reader firmware's entry point
    lib/...             the firmware's modules, umqtt.simple, umqtt.robust
    micropython.bin     the MicroPython image for ESP32 (optional)

:func:`build_bundle` makes one where a network link exists (the umqtt
packages come from a mip package index) and :func:`verify_bundle` checks
one against its manifest before any of it goes to a board.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.remote.fleet_client import printable
from provisioning.readers._errors import BundleError
from provisioning.readers._folder_transport import FolderTransport

_LOGGER = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
IMAGE_NAME = "micropython.bin"
MANIFEST_FORMAT = 1
# micropython-lib's index, which `mpremote mip install` uses by default.
DEFAULT_INDEX = "https://micropython.org/pi/v2"
UMQTT_PACKAGES = ("umqtt.simple", "umqtt.robust")
# Every ESP firmware image starts with this byte (esptool's ESPLoader
# ESP_IMAGE_MAGIC).
ESP_IMAGE_MAGIC = 0xE9
# The chip id in an ESP image's extended header (bytes 12-13, little endian)
# for the original ESP32, as esptool 5 writes it.
ESP32_CHIP_ID = 0
# The largest image that fits the 4 MB flash of an ESP32 module, less the
# 0x1000 offset it is written at.
MAX_IMAGE_BYTES = 4 * 1024 * 1024 - 0x1000
# FW_VERSION = "1.0.0" in the firmware package's __init__.py.
_FW_VERSION = re.compile(r"""^FW_VERSION\s*=\s*["']([0-9A-Za-z.+-]{1,32})["']""", re.M)
# The firmware version that a manifest may name: the same characters as above.
_VERSION_TEXT = re.compile(r"^[0-9A-Za-z.+-]{1,32}\Z")
_FW_VERSION_FILE = PurePosixPath("nbreader/__init__.py")
# Firmware files that MicroPython runs from the root of its file system.
_ROOT_FILES = ("main.py", "boot.py")
_SKIPPED_FOLDERS = {"__pycache__", "tests"}
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
# The maximum length of a path that a manifest may list. build_bundle writes
# paths of a few dozen characters, so a longer one comes from an edited manifest.
_MAX_PATH_CHARACTERS = 255
# Manifest text shown in messages is cut to this many characters.
_SHOWN_CHARACTERS = 80
# Package names and versions from the manifest are cut to this many characters.
_PACKAGE_TEXT_CHARACTERS = 40
# A manifest larger than this is not one that build_bundle wrote.
_MAX_MANIFEST_BYTES = 1024 * 1024
# A bundle contains no secret, so every user may read it (mkdtemp creates
# the folder with mode 0700).
_FOLDER_MODE = 0o755
_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One file of a bundle: its path inside the bundle, SHA-256 and size."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class BundleManifest:
    """A verified bundle: its folder, firmware version and files."""

    folder: Path
    firmware_version: str
    packages: dict[str, str]
    files: tuple[BundleFile, ...]
    image: BundleFile | None

    @property
    def board_files(self) -> tuple[BundleFile, ...]:
        """The files that go onto the board's file system, image excluded."""
        return tuple(file for file in self.files if file.path != IMAGE_NAME)


def find_firmware_folder() -> Path:
    """Return the reader firmware's source folder.

    It is ``firmware/`` beside the packages in a source checkout, or
    ``<prefix>/share/nightbox/firmware`` in an installed wheel. Raises
    BundleError when neither exists.
    """
    candidates = [
        Path(__file__).resolve().parents[2] / "firmware",
        Path(sys.prefix) / "share" / "nightbox" / "firmware",
    ]
    for candidate in candidates:
        if (candidate / "main.py").is_file():
            return candidate
    raise BundleError(
        "the reader firmware was not found in "
        + " or ".join(str(path) for path in candidates)
        + "; reinstall Nightbox or run it from its source folder"
    )


def read_firmware_version(firmware: Path) -> str:
    """Return FW_VERSION from the firmware's ``nbreader/__init__.py``.

    The file is read as text, never imported, because it is MicroPython
    code. Raises BundleError when the file or the assignment is missing.
    """
    path = firmware / _FW_VERSION_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BundleError(
            f"cannot read the firmware version from {path}: {err}"
        ) from err
    match = _FW_VERSION.search(text)
    if match is None:
        raise BundleError(
            f'{path} has no line like FW_VERSION = "1.0.0"; the firmware '
            "source is incomplete"
        )
    return match.group(1)


def build_bundle(
    output: Path,
    *,
    index: str = DEFAULT_INDEX,
    image: Path | None = None,
    firmware: Path | None = None,
) -> BundleManifest:
    """Build a bundle in ``output``, replacing the bundle there.

    ``output`` must be missing, an empty folder or a reader bundle.
    ``index`` is a mip package index: a URL or a local folder with
    ``package/py/<name>/latest.json`` and ``file/<hh>/<hash>``. ``image``
    is a MicroPython image for ESP32 (ESP32_GENERIC). The bundle is written
    to a temporary folder beside ``output`` and renamed into place, so a
    failed build leaves the old bundle as it was. Raises BundleError for
    an ``output`` that is something else, a missing firmware, an invalid
    image or a package that cannot be installed.
    """
    output = output.resolve()
    _check_output_folder(output)
    image_bytes = None if image is None else read_image(image)
    firmware = firmware if firmware is not None else find_firmware_folder()
    version = read_firmware_version(firmware)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as err:
        raise BundleError(f"cannot create a folder beside {output}: {err}") from err
    try:
        _copy_firmware(firmware, staging)
        packages = _install_packages(staging, index.rstrip("/"))
        if image_bytes is not None:
            (staging / IMAGE_NAME).write_bytes(image_bytes)
        files = _describe_files(staging)
        manifest = {
            "format": MANIFEST_FORMAT,
            "firmware_version": version,
            "built_at": int(time.time()),
            "index": index,
            "packages": packages,
            "micropython_image": IMAGE_NAME if image_bytes is not None else None,
            "files": {
                file.path: {"sha256": file.sha256, "size": file.size} for file in files
            },
        }
        (staging / MANIFEST_NAME).write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        )
        _set_modes(staging)
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _LOGGER.info("Built reader bundle %s (firmware %s)", output, version)
    return verify_bundle(output)


def read_image(path: Path) -> bytes:
    """Return the bytes of a MicroPython image for ESP32.

    Raises BundleError unless the file is an ESP image (first byte 0xE9)
    for the original ESP32 that fits its flash.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BundleError(
            f"cannot read the MicroPython image {path}: {err.strerror}"
        ) from err
    if len(data) < 16 or data[0] != ESP_IMAGE_MAGIC:
        raise BundleError(
            f"{path} is not an ESP32 firmware image (it does not start with "
            f"byte 0x{ESP_IMAGE_MAGIC:02X}); download the ESP32_GENERIC .bin "
            "file from micropython.org/download"
        )
    chip_id = int.from_bytes(data[12:14], "little")
    if chip_id != ESP32_CHIP_ID:
        raise BundleError(
            f"{path} is an image for ESP chip id {chip_id}, not the original "
            "ESP32 (chip id 0); download the ESP32_GENERIC .bin file"
        )
    if len(data) > MAX_IMAGE_BYTES:
        raise BundleError(
            f"{path} has {len(data)} bytes, more than the {MAX_IMAGE_BYTES} "
            "that fit a 4 MB ESP32 flash after offset 0x1000"
        )
    return data


def _copy_firmware(firmware: Path, staging: Path) -> None:
    for source in sorted(firmware.rglob("*.py")):
        relative = source.relative_to(firmware)
        if _SKIPPED_FOLDERS.intersection(relative.parts[:-1]):
            continue
        target = staging / _board_path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _board_path(relative: Path) -> PurePosixPath:
    """Map a firmware source path to its path on the board."""
    parts = relative.parts
    if len(parts) == 1 and parts[0] in _ROOT_FILES:
        return PurePosixPath(parts[0])
    if parts[0] == "lib":
        return PurePosixPath(*parts)
    return PurePosixPath("lib", *parts)


def _install_packages(staging: Path, index: str) -> dict[str, str]:
    """Install the umqtt packages into ``staging/lib`` with mpremote's mip."""
    from mpremote.commands import CommandError
    from mpremote.mip import _install_package

    (staging / "lib").mkdir(exist_ok=True)
    transport = FolderTransport(staging)
    versions = {}
    for package in UMQTT_PACKAGES:
        output = io.StringIO()
        try:
            # mip prints each file it installs, and this command's stdout is
            # reserved for its result.
            with contextlib.redirect_stdout(output):
                _install_package(transport, package, index, "lib", None, False)
        except (CommandError, OSError, ValueError) as err:
            raise BundleError(
                f"installing {package} from the package index {index} failed: "
                f"{err}; check the link, or pass --index with a local mip index"
            ) from err
        _LOGGER.debug("mip output for %s: %s", package, output.getvalue().strip())
        versions[package] = _package_version(index, package)
    return versions


def _package_version(index: str, package: str) -> str:
    location = f"{index}/package/py/{package}/latest.json"
    try:
        if location.startswith(("http://", "https://")):
            with urllib.request.urlopen(location, timeout=30) as response:
                description = json.load(response)
        else:
            description = json.loads(Path(location).read_text())
    except (OSError, urllib.error.URLError, json.JSONDecodeError) as err:
        raise BundleError(f"cannot read {location}: {err}") from err
    version = description.get("version") if isinstance(description, dict) else None
    if not isinstance(version, str):
        raise BundleError(f"{location} names no version of {package}")
    return version


def _describe_files(folder: Path) -> list[BundleFile]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            files.append(
                BundleFile(
                    path=path.relative_to(folder).as_posix(),
                    sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data),
                )
            )
    return files


def _set_modes(folder: Path) -> None:
    """Make ``folder`` and its subfolders mode 0755, and its files mode 0644."""
    folder.chmod(_FOLDER_MODE)
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), _FOLDER_MODE)
        for name in files:
            os.chmod(os.path.join(root, name), _FILE_MODE)


def _check_output_folder(output: Path) -> None:
    """Raise BundleError unless ``output`` may be replaced by a new bundle.

    ``output`` is an absolute path without symlinks. It may be missing, an
    empty folder or an earlier bundle (see :func:`_check_earlier_bundle`).
    The root folder and mount points are rejected, because they cannot be
    renamed.
    """
    advice = (
        "give --output a new or empty folder, or the folder of an existing "
        "reader bundle"
    )
    if output == output.parent:
        raise BundleError(
            f"the bundle cannot replace the root folder {output}; {advice}"
        )
    try:
        info = output.lstat()
    except FileNotFoundError:
        return
    except OSError as err:
        raise BundleError(f"cannot use {output} for the bundle: {err}") from err
    if not stat.S_ISDIR(info.st_mode):
        raise BundleError(
            f"{output} exists and is not a folder, so the bundle would replace "
            f"it; {advice}"
        )
    if os.path.ismount(output):
        raise BundleError(
            f"{output} is a mount point, which the bundle cannot replace; {advice}"
        )
    try:
        empty = next(output.iterdir(), None) is None
    except OSError as err:
        raise BundleError(f"cannot list {output}: {err}; {advice}") from err
    if not empty:
        _check_earlier_bundle(output, advice)


def _check_earlier_bundle(folder: Path, advice: str) -> None:
    """Raise BundleError unless ``folder`` contains only an earlier bundle.

    Its manifest must pass every check of :func:`verify_bundle` that does
    not read the listed files, and every file and folder in it must be
    listed (or hold a listed file). The listed files' contents are not
    checked, so a damaged bundle can still be built again in its place.
    """
    refusal = f"so the bundle would delete what it contains; {advice}"
    if not os.path.lexists(folder / MANIFEST_NAME):
        raise BundleError(
            f"{folder} is a folder that is not empty and has no {MANIFEST_NAME} "
            f"of a format {MANIFEST_FORMAT} reader bundle, {refusal}"
        )
    try:
        manifest = _read_manifest(folder)
    except BundleError as err:
        reason = str(err).partition("; build the bundle again")[0]
        raise BundleError(
            f"{folder} is not empty and is not a reader bundle ({reason}), {refusal}"
        ) from err
    try:
        _check_only_listed(folder, manifest, refusal)
    except OSError as err:
        raise BundleError(f"cannot list {folder}: {err}; {advice}") from err


def _check_only_listed(folder: Path, manifest: BundleManifest, refusal: str) -> None:
    """Raise BundleError naming the first entry of ``folder`` that ``manifest`` lacks.

    Raises OSError when a subfolder cannot be listed.
    """
    listed = {MANIFEST_NAME, *(file.path for file in manifest.files)}
    listed_folders = {
        str(parent)
        for file in manifest.files
        for parent in PurePosixPath(file.path).parents
        if str(parent) != "."
    }

    def stop(err: OSError) -> None:
        raise err

    for root, folders, files in os.walk(folder, onerror=stop):
        relative_root = PurePosixPath(Path(root).relative_to(folder).as_posix())
        for name in sorted(folders):
            path = (relative_root / name).as_posix()
            if path not in listed_folders:
                raise BundleError(
                    f"{folder} is a reader bundle but also contains the folder "
                    f"{_cut(path)}, which its {MANIFEST_NAME} does not list, {refusal}"
                )
        for name in sorted(files):
            path = (relative_root / name).as_posix()
            if path not in listed:
                raise BundleError(
                    f"{folder} is a reader bundle but also contains {_cut(path)}, "
                    f"which its {MANIFEST_NAME} does not list, {refusal}"
                )


def _replace_folder(staging: Path, output: Path) -> None:
    """Rename ``staging`` to ``output``, removing the bundle there after."""
    _check_output_folder(output)
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
        os.rmdir(old)
        os.replace(output, old)
    try:
        os.replace(staging, output)
    except OSError:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def verify_bundle(folder: Path) -> BundleManifest:
    """Check every file of the bundle in ``folder`` against its manifest.

    Raises BundleError naming the first missing file, the first that is a
    symlink or not a regular file, or the first whose size or SHA-256
    differs, so nothing of a damaged or altered bundle reaches a board.
    """
    manifest = _read_manifest(folder)
    for file in manifest.files:
        _check_file_data(folder, file)
    return manifest


def _read_manifest(folder: Path) -> BundleManifest:
    """Read and check the manifest of the bundle in ``folder``.

    The files it lists are not read, so the returned sizes and SHA-256
    digests are the manifest's. Raises BundleError when the manifest is
    missing, unreadable or invalid.
    """
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(
            f"no reader bundle in {folder} ({MANIFEST_NAME} not found); build "
            "one with 'nightbox reader bundle'"
        )
    try:
        data = _read_regular_file(manifest_path, _MAX_MANIFEST_BYTES)
        manifest = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(
            f"cannot read {manifest_path}: {err}; build the bundle again"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BundleError(
            f"{manifest_path} is not a format {MANIFEST_FORMAT} reader bundle "
            "manifest; build the bundle again with this version of Nightbox"
        )
    files = tuple(
        _listed_file(folder, path, entry)
        for path, entry in _entries(manifest, manifest_path)
    )
    if not any(file.path == "main.py" for file in files):
        raise BundleError(f"{manifest_path} lists no main.py; build the bundle again")
    image_name = manifest.get("micropython_image")
    if image_name not in (None, IMAGE_NAME):
        raise BundleError(
            f"{manifest_path} names the image {_shown(image_name)}, not "
            f"{IMAGE_NAME}; build the bundle again"
        )
    image = next((file for file in files if file.path == image_name), None)
    if image_name is not None and image is None:
        raise BundleError(
            f"{manifest_path} names the image {_shown(image_name)} but does not "
            "list it; build the bundle again"
        )
    version = manifest.get("firmware_version")
    packages = manifest.get("packages")
    if not isinstance(version, str) or not isinstance(packages, dict):
        raise BundleError(
            f"{manifest_path} lacks the firmware version or the package "
            "versions; build the bundle again"
        )
    if not _VERSION_TEXT.match(version):
        raise BundleError(
            f"{manifest_path} names the firmware version {_shown(version)}, which "
            "is not 1-32 letters, digits and '.+-'; build the bundle again"
        )
    return BundleManifest(
        folder=folder,
        firmware_version=version,
        packages={
            _package_text(name): _package_text(value)
            for name, value in packages.items()
        },
        files=files,
        image=image,
    )


def read_bundle_file(folder: Path, file: BundleFile) -> bytes:
    """Return the bytes of a verified bundle file, checked against the manifest again.

    Raises BundleError when the file was changed since it was verified, or
    is no longer a regular file.
    """
    data = _read_bundle_data(folder, file.path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise BundleError(
            f"bundle file {file.path} changed after it was verified; build the "
            "bundle again"
        )
    return data


def _shown(text: object) -> str:
    """Return manifest text for a message: cut short, quoted and escaped."""
    value = str(text)
    if len(value) > _SHOWN_CHARACTERS:
        value = value[: _SHOWN_CHARACTERS - 3] + "..."
    return repr(value)


def _cut(text: str) -> str:
    """Return manifest text for a message without quotes: escaped and cut short."""
    value = printable(text)
    if len(value) > _SHOWN_CHARACTERS:
        value = value[: _SHOWN_CHARACTERS - 3] + "..."
    return value


def _package_text(value: object) -> str:
    return printable(str(value))[:_PACKAGE_TEXT_CHARACTERS]


def _entries(manifest: dict[str, Any], manifest_path: Path) -> list[tuple[str, Any]]:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{manifest_path} lists no files; build the bundle again")
    return sorted(files.items())


def _listed_file(folder: Path, path: Any, entry: Any) -> BundleFile:
    if not _is_bundle_path(path):
        raise BundleError(
            f"the bundle manifest in {folder} lists {_shown(path)}, which is not "
            "main.py, boot.py, lib/... or the image; build the bundle again"
        )
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("sha256"), str)
        or not _SHA256_HEX.match(entry["sha256"])
        or not isinstance(entry.get("size"), int)
    ):
        raise BundleError(
            f"the bundle manifest in {folder} has no valid sha256 and size for "
            f"{_shown(path)}; build the bundle again"
        )
    return BundleFile(path=path, sha256=entry["sha256"], size=entry["size"])


def _check_file_data(folder: Path, file: BundleFile) -> None:
    data = _read_bundle_data(folder, file.path)
    if len(data) != file.size:
        raise BundleError(
            f"bundle file {file.path} has {len(data)} bytes but the manifest lists "
            f"{file.size}; the bundle was changed or damaged, so build it again"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise BundleError(
            f"bundle file {file.path} has SHA-256 {digest[:16]}... but the manifest "
            f"lists {file.sha256[:16]}...; the bundle was changed or damaged, so "
            "build it again"
        )


def _is_bundle_path(path: Any) -> bool:
    """Return whether ``path`` is a normal relative path that a bundle may list."""
    if (
        not isinstance(path, str)
        or not 0 < len(path) <= _MAX_PATH_CHARACTERS
        or not path.isprintable()
    ):
        return False
    if path in (*_ROOT_FILES, IMAGE_NAME):
        return True
    parts = path.split("/")
    return (
        len(parts) >= 2
        and parts[0] == "lib"
        and all(part not in ("", ".", "..") and "\\" not in part for part in parts)
    )


def _read_bundle_data(folder: Path, path: str) -> bytes:
    """Read a listed file, which must be a regular file and have no symlink on its way.

    A symlink could make the bundle copy any file of the box, such as its
    broker passwords, to a board.
    """
    current = folder
    for part in PurePosixPath(path).parts[:-1]:
        current = current / part
        try:
            is_link = current.is_symlink()
        except OSError:
            is_link = False
        if is_link:
            raise BundleError(
                f"bundle folder {current} is a symlink; a bundle contains only "
                "regular files and folders, so build the bundle again"
            )
    try:
        return _read_regular_file(folder / path, MAX_IMAGE_BYTES)
    except _NotRegularFileError as err:
        raise BundleError(
            f"bundle file {folder / path} is {err}, not a regular file; a bundle "
            "contains only regular files, so build the bundle again"
        ) from err
    except OSError as err:
        raise BundleError(
            f"bundle file {folder / _cut(path)} cannot be read ({err.strerror}); "
            "build the bundle again"
        ) from err


class _NotRegularFileError(OSError):
    """A path names a symlink, folder, device or pipe instead of a regular file."""


def _read_regular_file(path: Path, max_bytes: int) -> bytes:
    """Return the bytes of the regular file ``path``, never following a symlink.

    Raises _NotRegularFileError for anything else, and OSError when the
    file cannot be read or is larger than ``max_bytes``.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _NotRegularFileError("a symlink") from err
        raise
    with os.fdopen(descriptor, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
            raise _NotRegularFileError(kind)
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes")
    return data
