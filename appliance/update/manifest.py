"""The manifest of an update bundle: its fields, limits and checks.

:func:`parse_manifest` validates the JSON of ``manifest.json`` (the format
is described in :mod:`appliance.update.bundle`): the version is PEP 440,
every path is a plain relative name under ``wheels/`` or ``firmware/``,
sizes are capped, and every wheel's listed tags match its file name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import orjson
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from appliance.errors import NightboxError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WHEELS_DIR = "wheels"
FIRMWARE_DIR = "firmware"
PROJECT_NAME = "nightbox"
# A bundle carries the box's own wheel, a few dependency wheels and the
# reader firmware: tens of MiB. The caps stop an archive whose headers
# announce more than a box's data partition can spare.
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_FILES = 4096
MAX_PATH_CHARS = 255
_PATH_CHARACTERS = re.compile(r"[A-Za-z0-9._+-]+\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")

REASONS = (
    "unreadable",
    "too-large",
    "malformed",
    "unknown-key",
    "bad-signature",
    "old-version",
    "unsafe-member",
    "unlisted-file",
    "duplicate-file",
    "size-mismatch",
    "hash-mismatch",
    "missing-file",
    "no-wheel",
    "request-mismatch",
)


class BundleRejected(NightboxError, ValueError):
    """A bundle that is not installed; ``reason`` is one word from REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One payload file of a bundle: its path in the archive, size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class WheelEntry:
    """A wheel of the bundle, with the tags from its file name.

    ``python`` is the wheel's Python tag (``py3`` for a wheel that any
    Python 3 runs, ``cp311`` for one built for CPython 3.11).
    """

    path: str
    project: str
    version: str
    python: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """A verified manifest, and ``sha256`` of its exact signed bytes."""

    version: str
    created_at: str
    wheels: tuple[WheelEntry, ...]
    firmware: tuple[str, ...]
    files: tuple[BundleFile, ...]
    sha256: str

    @property
    def parsed_version(self) -> Version:
        """The Nightbox version as a PEP 440 version."""
        return Version(self.version)

    def file(self, path: str) -> BundleFile | None:
        """Return the entry of ``path``, or None when the manifest lists none."""
        return next((entry for entry in self.files if entry.path == path), None)


def parse_manifest(data: bytes) -> Manifest:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleRejected(
            "malformed",
            f"{MANIFEST_NAME} is not UTF-8 text (invalid byte at offset "
            f"{err.start}); write bundles with 'nightbox update bundle'",
        ) from err
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise BundleRejected(
            "malformed", f"{MANIFEST_NAME} is not JSON ({err})"
        ) from err
    if not isinstance(document, dict):
        raise BundleRejected("malformed", f"{MANIFEST_NAME} must be a JSON object")
    if document.get("format") != FORMAT_VERSION or isinstance(
        document.get("format"), bool
    ):
        raise BundleRejected(
            "malformed",
            f"manifest format {document.get('format')!r:.20} is not supported; this "
            f"box reads format {FORMAT_VERSION}",
        )
    version_text = _field(document, "version", str)
    try:
        version = Version(version_text)
    except InvalidVersion as err:
        raise BundleRejected(
            "malformed", f"version {version_text!r:.40} is not a PEP 440 version"
        ) from err
    created_at = _field(document, "created_at", str)
    files = tuple(_file_entry(item) for item in _field(document, "files", list))
    if len(files) > MAX_FILES:
        raise BundleRejected(
            "too-large",
            f"the manifest lists {len(files)} files; the maximum is {MAX_FILES}",
        )
    paths = [entry.path for entry in files]
    if len(set(paths)) != len(paths):
        raise BundleRejected("duplicate-file", "the manifest lists a path twice")
    if sum(entry.size for entry in files) > MAX_BUNDLE_BYTES:
        raise BundleRejected(
            "too-large",
            f"the files add up to more than the maximum of {MAX_BUNDLE_BYTES} bytes",
        )
    wheels = tuple(_listed_wheel(item) for item in _field(document, "wheels", list))
    firmware = tuple(
        _listed_firmware(item) for item in _field(document, "firmware", list)
    )
    payload = {wheel.path for wheel in wheels} | set(firmware)
    if payload != set(paths):
        odd = sorted(payload.symmetric_difference(paths))[0]
        raise BundleRejected(
            "malformed",
            f"{odd!r:.80} must be listed both in 'files' and in 'wheels' or 'firmware'",
        )
    check_nightbox_wheels(
        list(wheels),
        version,
        _rejected_malformed,
        "the bundle was built from mismatched inputs; build it again with "
        "'nightbox update bundle'",
    )
    return Manifest(
        version=str(version),
        created_at=created_at,
        wheels=wheels,
        firmware=firmware,
        files=files,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _rejected_malformed(message: str) -> BundleRejected:
    return BundleRejected("no-wheel", message)


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    if not isinstance(value, kind):
        raise BundleRejected(
            "malformed",
            f"manifest field {name!r} is missing or not a {kind.__name__}",
        )
    return value


def _file_entry(item: Any) -> BundleFile:
    if not isinstance(item, dict) or set(item) != {"path", "size", "sha256"}:
        raise BundleRejected(
            "malformed",
            "each entry of 'files' must be an object with exactly path, size and "
            "sha256",
        )
    path = item["path"]
    size = item["size"]
    digest = item["sha256"]
    if not isinstance(path, str):
        raise BundleRejected("malformed", "a file path in 'files' is not a string")
    check_member_name(path)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BundleRejected(
            "malformed",
            f"{path}: size {size!r:.30} is not a whole number of bytes from 0 to the "
            f"maximum of {MAX_FILE_BYTES}",
        )
    if size > MAX_FILE_BYTES:
        raise BundleRejected(
            "too-large",
            f"{path}: size {size} bytes is above the maximum of {MAX_FILE_BYTES} "
            "bytes per file",
        )
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise BundleRejected(
            "malformed", f"{path}: sha256 must be 64 lowercase hex digits"
        )
    return BundleFile(path, size, digest)


def _listed_wheel(item: Any) -> WheelEntry:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise BundleRejected(
            "malformed", "each entry of 'wheels' must be an object with a path"
        )
    entry = wheel_entry(item["path"])
    if entry is None:
        raise BundleRejected(
            "malformed",
            f"wheel path {item['path']!r:.80} is not wheels/<a wheel file name>",
        )
    listed = (item.get("project"), item.get("python"), item.get("tags"))
    if listed != (entry.project, entry.python, list(entry.tags)):
        raise BundleRejected(
            "malformed",
            f"the project, python or tags listed for {entry.path} differ from its "
            "file name",
        )
    return entry


def wheel_entry(path: str) -> WheelEntry | None:
    folder, _, name = path.partition("/")
    if folder != WHEELS_DIR or "/" in name or not name.endswith(".whl"):
        return None
    try:
        project, version, _build, tags = parse_wheel_filename(name)
    except InvalidWheelFilename:
        return None
    pythons = sorted({tag.interpreter for tag in tags})
    return WheelEntry(
        path=path,
        project=str(project),
        version=str(version),
        python=".".join(pythons),
        tags=tuple(sorted(str(tag) for tag in tags)),
    )


def _listed_firmware(item: Any) -> str:
    if not isinstance(item, str):
        raise BundleRejected("malformed", "each entry of 'firmware' must be a path")
    parts = PurePosixPath(item).parts
    allowed = parts == (FIRMWARE_DIR, "main.py") or (
        len(parts) == 3
        and parts[:2] == (FIRMWARE_DIR, "nbreader")
        and parts[2].endswith(".py")
    )
    if not allowed:
        raise BundleRejected(
            "malformed",
            f"firmware path {item!r:.80} is not firmware/main.py or "
            "firmware/nbreader/<module>.py",
        )
    return item


def check_nightbox_wheels(
    wheels: list[WheelEntry],
    version: Version,
    error: Any,
    fix: str = "build the wheel with that version or give the matching --version",
) -> None:
    """Raise ``error`` unless the wheels include a nightbox wheel of ``version``.

    ``fix`` ends the message with what the reader of the message can do.
    """
    own = [wheel for wheel in wheels if wheel.project == PROJECT_NAME]
    if not own:
        raise error(
            f"the bundle carries no {PROJECT_NAME} wheel; add the .whl of version "
            f"{version}"
        )
    for wheel in own:
        if Version(wheel.version) != version:
            raise error(
                f"the {PROJECT_NAME} wheel {wheel.path} has version {wheel.version}, "
                f"not the bundle's version {version}; {fix}"
            )


def check_member_name(name: str) -> None:
    """Raise BundleRejected unless ``name`` is a plain relative path of the payload."""
    problem = None
    parts = name.split("/")
    if not name or len(name) > MAX_PATH_CHARS:
        problem = f"is empty or longer than {MAX_PATH_CHARS} characters"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif ".." in parts:
        problem = "climbs out of the archive with '..'"
    elif any(part in ("", ".") for part in parts):
        problem = "has an empty or '.' path component"
    elif not all(_PATH_CHARACTERS.match(part) for part in parts):
        problem = "has characters outside A-Z, a-z, 0-9 and ._+-"
    elif parts[0] not in (WHEELS_DIR, FIRMWARE_DIR) or len(parts) < 2:
        problem = f"is outside the {WHEELS_DIR}/ and {FIRMWARE_DIR}/ folders"
    if problem is not None:
        raise BundleRejected("unsafe-member", f"archive member {name!r:.80} {problem}")


def compatible_wheels(
    manifest: Manifest, supported_tags: Iterable[str]
) -> list[WheelEntry]:
    """Return the wheels of ``manifest`` that run with ``supported_tags``.

    A project with wheels for several platforms installs only the one that
    fits. Raises BundleRejected (``no-wheel``) when a project has none.
    """
    supported = set(supported_tags)
    chosen: dict[str, WheelEntry] = {}
    projects: list[str] = []
    for wheel in manifest.wheels:
        if wheel.project not in projects:
            projects.append(wheel.project)
        if wheel.project not in chosen and supported.intersection(wheel.tags):
            chosen[wheel.project] = wheel
    for project in projects:
        if project not in chosen:
            offered = ", ".join(
                tag
                for wheel in manifest.wheels
                if wheel.project == project
                for tag in wheel.tags
            )
            raise BundleRejected(
                "no-wheel",
                f"no wheel of {project} runs on this box (the bundle has {offered}); "
                "add a wheel built for this box's Python and architecture",
            )
    return [chosen[project] for project in projects]
