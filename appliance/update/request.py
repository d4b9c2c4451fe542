"""``updates/request.json``: a bundle the box verified, waiting for the root updater.

The box runs as the unprivileged user ``nightbox`` and cannot install
software. The signed command ``update`` verifies the bundle and writes::

    {"bundle": "/media/usb0/nightbox-0.2.0.nbu", "version": "0.2.0",
     "manifest_sha256": "<64 hex>", "requested_at": "2027-01-15T08:00:00Z"}

``nightbox-update.path`` starts ``nightbox update apply --request`` as root
when the file appears. The updater takes the request by renaming it to
``request.taken.json`` before it works, so it runs once, and checks the
bundle again itself: the file is written by a less trusted user.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.errors import NightboxError
from appliance.image.layout import UPDATE_REQUEST_NAME
from appliance.update._files import fsync_folder, write_json_atomically
from appliance.update.slots import utc_now

TAKEN_NAME = "request.taken.json"
_MAX_BYTES = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class RequestError(NightboxError, ValueError):
    """``request.json`` is unreadable or invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """A queued update: the bundle's path, its version and manifest hash."""

    bundle: Path
    version: str
    manifest_sha256: str
    requested_at: str

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of ``request.json``."""
        return {
            "bundle": str(self.bundle),
            "version": self.version,
            "manifest_sha256": self.manifest_sha256,
            "requested_at": self.requested_at,
        }


def request_path(updates_dir: Path) -> Path:
    """Return the path of ``request.json`` in ``updates_dir``."""
    return updates_dir / UPDATE_REQUEST_NAME


def write_request(
    updates_dir: Path, bundle: Path, version: str, manifest_sha256: str
) -> UpdateRequest:
    """Write ``request.json`` atomically (mode 0644) and return the request."""
    request = UpdateRequest(bundle, version, manifest_sha256, utc_now())
    updates_dir.mkdir(exist_ok=True)
    write_json_atomically(request_path(updates_dir), request.to_json())
    return request


def take_request(updates_dir: Path) -> UpdateRequest | None:
    """Move ``request.json`` aside and return it; None when there is no request.

    Raises RequestError for a request that cannot be used, such as one that
    is not a regular file. It is moved aside all the same, so the path unit
    does not start the updater again.
    """
    source = request_path(updates_dir)
    taken = updates_dir / TAKEN_NAME
    if not os.path.lexists(source):
        return None
    # The folder belongs to the box's user, who may leave anything at the
    # taken name; a folder there would make every rename below fail.
    _remove_any(taken)
    try:
        os.replace(source, taken)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RequestError(
            f"cannot move the update request {source} aside ({err.strerror}); "
            f"remove {source} and {taken} and send the update command again"
        ) from err
    fsync_folder(updates_dir)
    data = _read_regular_file(taken)
    if len(data) > _MAX_BYTES:
        raise RequestError(
            f"the update request {taken} has more than {_MAX_BYTES} bytes"
        )
    return parse_request(data, taken)


def _remove_any(path: Path) -> None:
    """Remove ``path`` whatever it is; a link is removed, never followed."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(status.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def _read_regular_file(path: Path) -> bytes:
    """Return up to ``_MAX_BYTES + 1`` bytes of ``path``, a regular file.

    O_NOFOLLOW: the folder belongs to the box's user, so a link there must
    not make root read another file. O_NONBLOCK: opening a FIFO would wait
    for a writer forever.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RequestError(
                f"the update request {path} is a symbolic link, which the updater "
                "does not follow; send the update command again"
            ) from err
        raise RequestError(
            f"cannot read the update request {path} ({err.strerror})"
        ) from err
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise RequestError(
            f"the update request {path} is not a regular file (a folder, FIFO "
            "or device); send the update command again"
        )
    with os.fdopen(descriptor, "rb") as handle:
        try:
            return handle.read(_MAX_BYTES + 1)
        except OSError as err:
            raise RequestError(
                f"cannot read the update request {path} ({err.strerror})"
            ) from err


def parse_request(data: bytes, where: Path) -> UpdateRequest:
    """Return the request in ``data``; raise RequestError naming the bad field."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise RequestError(f"the update request {where} is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise RequestError(f"the update request {where} is not a JSON object")
    fields = {}
    for name in ("bundle", "version", "manifest_sha256", "requested_at"):
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise RequestError(
                f"the update request {where} has no text field {name!r}; send the "
                "update command again"
            )
        fields[name] = value
    if not _SHA256.match(fields["manifest_sha256"]):
        raise RequestError(
            f"the update request {where} has a manifest_sha256 that is not 64 hex "
            "digits"
        )
    bundle = Path(fields["bundle"])
    if not bundle.is_absolute():
        raise RequestError(
            f"the update request {where} names the relative path {bundle}; the box "
            "writes absolute paths"
        )
    return UpdateRequest(
        bundle, fields["version"], fields["manifest_sha256"], fields["requested_at"]
    )


def bundle_in_folders(path: Path, folders: tuple[Path, ...]) -> Path:
    """Return ``path`` resolved, or raise RequestError unless it is in ``folders``."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:
        raise RequestError(
            f"bundle {path} was not found; copy it to one of "
            f"{', '.join(map(str, folders))} first"
        ) from err
    for folder in folders:
        try:
            root = folder.resolve()
        except (OSError, RuntimeError):
            continue
        if resolved.is_relative_to(root) and resolved != root:
            return resolved
    raise RequestError(
        f"bundle {path} is outside the update folders "
        f"({', '.join(map(str, folders))}); copy it to one of them or list its "
        "folder in [update] bundle_dirs"
    )
