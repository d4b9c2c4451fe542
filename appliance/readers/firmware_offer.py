"""The reader firmware that the box offers its Wi-Fi readers over the bus.

The box publishes a retained manifest on ``nightbox/<site>/firmware/manifest``
(the version, the chunk size, and every file's path, size and SHA-256) and
serves each file in chunks of at most :data:`CHUNK_BYTES` on request. A
reader asks on its own ``nightbox/<site>/reader/<id>/firmware/get`` for
one chunk (``{"version", "path", "index"}``) and gets it on its own
``nightbox/<site>/reader/<id>/firmware/chunk`` as base64 in JSON, so it
keeps one small chunk at a time and paces the transfer itself. The
reader's side is ``firmware/nbreader/update.py``.

The files come from the running application slot's ``firmware/`` folder
(``<app_dir>/current/firmware``: ``main.py`` and ``nbreader/*.py``) when
the box runs from a slot, and otherwise from the reader bundle in
``<data_dir>/reader-bundle`` (``main.py`` and ``lib/nbreader/*.py``).
The files are read once at start, so the chunks always match the
manifest, even while the folder is being replaced.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import aiomqtt

from appliance.bus import envelope
from appliance.bus.topics import ROOT
from appliance.errors import NightboxError, PayloadError
from appliance.image.layout import APP_DIR_NAME, CURRENT_LINK_NAME, STATE_DIR
from appliance.remote._sync_inbound import LimitedLog
from provisioning.readers import BundleError, default_bundle_folder, verify_bundle

if TYPE_CHECKING:
    from appliance.bus.client import Bus, Incoming
    from appliance.config import SiteConfig

__all__ = [
    "CHUNK_BYTES",
    "FirmwareFile",
    "FirmwareOffer",
    "FirmwareOfferError",
    "FirmwareRelease",
    "chunk_count",
    "find_firmware_source",
    "load_release",
    "manifest_topic",
]

_LOGGER = logging.getLogger(__name__)

# A chunk's bytes. Base64 and the envelope make its message about 2.8 KB,
# which an ESP32 with umqtt reads into memory without trouble.
CHUNK_BYTES = 2048
# The reader rejects manifests beyond these (nbreader/update.py).
MAX_FILES = 64
MAX_PATH_CHARACTERS = 64
# A reader's file system has about 2 MB for files; one release must fit
# twice, beside the one that runs.
MAX_FILE_BYTES = 256 * 1024
MAX_TOTAL_BYTES = 512 * 1024
# The firmware version, as nbreader/__init__.py sets FW_VERSION.
_FW_VERSION = re.compile(r"""^FW_VERSION\s*=\s*["']([0-9A-Za-z.+-]{1,32})["']""", re.M)
_PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_READER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_SKIPPED_FOLDERS = {"__pycache__", "tests"}
_VERSION_FILE = "nbreader/__init__.py"
_LOG_INTERVAL_S = 60.0
FIRMWARE_FOLDER_NAME = "firmware"
BUNDLE_MANIFEST_NAME = "manifest.json"


class FirmwareOfferError(NightboxError, ValueError):
    """A firmware folder that cannot be offered; the message names the file."""

    def __init__(self, message: str) -> None:
        # The message goes into the box's status on the bus, whose JSON
        # encoder rejects the lone surrogates that stand for file-name bytes
        # that are not UTF-8. Such bytes are shown as \xNN instead.
        super().__init__(_encodable(message))


def _encodable(text: str) -> str:
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class FirmwareFile:
    """One file of a release: its path on the reader, bytes and SHA-256."""

    path: str
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        """The file's length in bytes."""
        return len(self.data)


@dataclass(frozen=True, slots=True)
class FirmwareRelease:
    """The files offered to readers, read from ``folder``."""

    folder: Path
    version: str
    files: tuple[FirmwareFile, ...]

    def manifest_data(self, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
        """Return the manifest's ``data``: version, chunk size and files."""
        return {
            "version": self.version,
            "chunk_bytes": chunk_bytes,
            "files": [
                {"path": file.path, "size": file.size, "sha256": file.sha256}
                for file in self.files
            ],
        }

    def file(self, path: str) -> FirmwareFile | None:
        """Return the file at ``path``, or None when the release has none."""
        return next((file for file in self.files if file.path == path), None)


def manifest_topic(site: str) -> str:
    """Return the retained topic of a site's firmware manifest."""
    return f"{ROOT}/{site}/firmware/manifest"


def chunk_count(size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Return how many chunks a file of ``size`` bytes takes (0 for an empty one)."""
    return -(-size // chunk_bytes)


def find_firmware_source(config: SiteConfig) -> Path | None:
    """Return the folder whose firmware the box offers, or None when it has none.

    The running slot's ``firmware/`` under the ``[update]`` table's
    ``app_dir`` (``/var/lib/nightbox/app`` by default) comes first, then
    the reader bundle in ``<data_dir>/reader-bundle``.
    """
    update = getattr(config, "update", None)
    app_dir = getattr(update, "app_dir", None) or STATE_DIR / APP_DIR_NAME
    slot_firmware = Path(app_dir) / CURRENT_LINK_NAME / FIRMWARE_FOLDER_NAME
    if slot_firmware.is_dir():
        return slot_firmware
    bundle = default_bundle_folder(config)
    if (bundle / BUNDLE_MANIFEST_NAME).is_file():
        return bundle
    return None


def load_release(folder: Path) -> FirmwareRelease:
    """Read the firmware files of ``folder`` into a release.

    ``folder`` is a slot's ``firmware/`` (``main.py``, ``nbreader/``) or a
    reader bundle (``main.py``, ``lib/nbreader/``, ``manifest.json``). Only
    ``main.py`` and the ``nbreader`` package are offered: the umqtt
    packages and the MicroPython image change only with
    ``nightbox reader provision``. Raises FirmwareOfferError naming the
    file for a missing ``main.py`` or ``nbreader/__init__.py``, a file
    that is not a regular file, a path the reader rejects, no
    ``FW_VERSION``, or files beyond the reader's limits.
    """
    if not folder.is_dir():
        raise FirmwareOfferError(
            f"the reader firmware folder {folder} does not exist; build the "
            "reader bundle with 'nightbox reader bundle'"
        )
    package = folder / "nbreader"
    if (folder / BUNDLE_MANIFEST_NAME).is_file():
        # A reader bundle: its own manifest vouches for every file first.
        try:
            verify_bundle(folder)
        except BundleError as err:
            raise FirmwareOfferError(str(err)) from err
        package = folder / "lib" / "nbreader"
    sources: list[tuple[str, Path]] = [("main.py", folder / "main.py")]
    if package.is_dir():
        for path in sorted(package.rglob("*")):
            relative = path.relative_to(package)
            if _SKIPPED_FOLDERS.intersection(relative.parts):
                continue
            if path.is_dir() and not path.is_symlink():
                continue
            # Symlinks are listed so that _read_file rejects them by name.
            if path.suffix == ".py" or path.is_symlink():
                sources.append((str(PurePosixPath("nbreader", *relative.parts)), path))
    if not any(path == _VERSION_FILE for path, _ in sources):
        raise FirmwareOfferError(
            f"{folder} has no nbreader/__init__.py (nor lib/nbreader/__init__.py); "
            "it is not a reader firmware folder or bundle"
        )
    if len(sources) > MAX_FILES:
        raise FirmwareOfferError(
            f"{folder} has {len(sources)} firmware files; readers take at most "
            f"{MAX_FILES}"
        )
    files = tuple(_read_file(path, source) for path, source in sources)
    total = sum(file.size for file in files)
    if total > MAX_TOTAL_BYTES:
        raise FirmwareOfferError(
            f"the firmware in {folder} has {total} bytes; readers take at most "
            f"{MAX_TOTAL_BYTES}"
        )
    version_file = next(file for file in files if file.path == _VERSION_FILE)
    match = _FW_VERSION.search(version_file.data.decode("utf-8", "replace"))
    if match is None:
        raise FirmwareOfferError(
            f'{folder}/.../nbreader/__init__.py has no line like FW_VERSION = "1.0.0"; '
            "the firmware is incomplete"
        )
    return FirmwareRelease(folder=folder, version=match.group(1), files=files)


def _read_file(path: str, source: Path) -> FirmwareFile:
    if len(path) > MAX_PATH_CHARACTERS or not all(
        _PATH_PART.match(part) for part in path.split("/")
    ):
        raise FirmwareOfferError(
            f"the firmware file {source} has the path {path!r}, which readers "
            f"reject (at most {MAX_PATH_CHARACTERS} letters, digits and '_.-'); "
            "rename it"
        )
    try:
        info = source.lstat()
    except FileNotFoundError:
        raise FirmwareOfferError(
            f"the firmware file {source} is missing; build the reader bundle again"
        ) from None
    except OSError as err:
        raise FirmwareOfferError(
            f"cannot read the firmware file {source}: {err.strerror}"
        ) from err
    if not stat.S_ISREG(info.st_mode):
        raise FirmwareOfferError(
            f"the firmware file {source} is not a regular file (a symlink, folder "
            "or device); replace it with the file itself"
        )
    if info.st_size > MAX_FILE_BYTES:
        raise FirmwareOfferError(
            f"the firmware file {source} has {info.st_size} bytes; readers take "
            f"at most {MAX_FILE_BYTES} per file"
        )
    try:
        data = source.read_bytes()
    except OSError as err:
        raise FirmwareOfferError(
            f"cannot read the firmware file {source}: {err.strerror}"
        ) from err
    return FirmwareFile(path=path, data=data, sha256=hashlib.sha256(data).hexdigest())


class FirmwareOffer:
    """Publishes the firmware manifest and answers the readers' chunk requests.

    ``source`` is the folder to offer, or None for a box with no firmware,
    which withdraws any manifest a previous run left retained. A folder
    that cannot be read is logged and counted, and the box offers nothing.
    """

    def __init__(
        self, bus: Bus, source: Path | None, *, chunk_bytes: int = CHUNK_BYTES
    ) -> None:
        self._bus = bus
        self._source = source
        self._chunk_bytes = chunk_bytes
        self._site = bus.settings.site
        self.release: FirmwareRelease | None = None
        self.error: str | None = None
        self.counts: Counter[str] = Counter()
        self._limited = LimitedLog(_LOGGER, _LOG_INTERVAL_S)
        self._prefix = f"{ROOT}/{self._site}/reader/"

    async def start(self) -> None:
        """Read the release, then publish the manifest on every connect."""
        if self._source is not None:
            try:
                self.release = load_release(self._source)
            except FirmwareOfferError as err:
                self.error = str(err)
                self.counts["invalid-folder"] += 1
                _LOGGER.error("Readers get no firmware update: %s", err)
        if self.release is not None:
            _LOGGER.info(
                "Offering reader firmware %s from %s (%d files)",
                self.release.version,
                self.release.folder,
                len(self.release.files),
            )
        self._bus.subscribe(f"{self._prefix}+/firmware/get", self._on_request, qos=1)
        self._bus.on_connect(self.publish_manifest)
        if self._bus.connected.is_set():
            await self.publish_manifest()

    def status(self) -> dict[str, Any]:
        """Return the offered version, its source, errors and request counters."""
        release = self.release
        return {
            "version": None if release is None else release.version,
            "source": None if release is None else str(release.folder),
            "error": self.error,
            "counts": dict(self.counts),
        }

    def manifest_payload(self) -> bytes:
        """Return the retained manifest, or b"" (which clears it) without a release."""
        if self.release is None:
            return b""
        data = self.release.manifest_data(self._chunk_bytes)
        return envelope.encode(self._bus.settings.src, {"data": data})

    async def publish_manifest(self) -> None:
        """Publish the manifest, retained, or clear the one a previous run left."""
        try:
            await self._bus.publish(
                manifest_topic(self._site),
                self.manifest_payload(),
                qos=1,
                retain=True,
                timeout_s=10.0,
            )
        except (aiomqtt.MqttError, TimeoutError) as err:
            _LOGGER.warning("Could not publish the reader firmware manifest: %s", err)

    async def _on_request(self, incoming: Incoming) -> None:
        reader = incoming.topic[len(self._prefix) :].split("/", 1)[0]
        if not _READER_ID.match(reader):
            self.counts["bad-request"] += 1
            return
        try:
            request = envelope.decode(incoming.payload).data
            version = envelope.require(request, "version", str)
            path = envelope.require(request, "path", str)
            index = envelope.require(request, "index", int)
        except PayloadError as err:
            self.counts["bad-request"] += 1
            self._limited.warning(
                f"bad-{reader}", "Invalid firmware request from %s: %s", reader, err
            )
            return
        reply: dict[str, Any] = {"version": version, "path": path, "index": index}
        chunk = self._chunk(version, path, index)
        if isinstance(chunk, str):
            reply["error"] = chunk
            self.counts[chunk] += 1
            self._limited.warning(
                f"{chunk}-{reader}",
                "Firmware request of %s rejected (%s): %s chunk %d of firmware %s",
                reader,
                chunk,
                path[:80],
                index,
                version[:40],
            )
        else:
            reply["data"] = base64.b64encode(chunk).decode("ascii")
            self.counts["chunks"] += 1
        try:
            await self._bus.publish(
                f"{self._prefix}{reader}/firmware/chunk",
                envelope.encode(self._bus.settings.src, {"data": reply}),
                qos=1,
                timeout_s=10.0,
            )
        except (aiomqtt.MqttError, TimeoutError) as err:
            self._limited.warning(
                f"publish-{reader}",
                "Could not send a firmware chunk to %s: %s",
                reader,
                err,
            )

    def _chunk(self, version: str, path: str, index: int) -> bytes | str:
        """Return the chunk's bytes, or the reason it cannot be sent."""
        release = self.release
        if release is None or version != release.version:
            return "not-offered"
        file = release.file(path)
        if file is None:
            return "unknown-file"
        if not 0 <= index < chunk_count(file.size, self._chunk_bytes):
            return "bad-index"
        start = index * self._chunk_bytes
        return file.data[start : start + self._chunk_bytes]
