"""The operator's side of blob delivery: a packed folder, ready to publish.

``nightbox fleet assets send`` publishes every blob of a packed folder as
retained chunks (:mod:`appliance.assets.delivery`) and then the folder's
signed ``manifest.json`` as an ``assets`` bundle. This module reads and
checks the folder; the command does the publishing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.assets._blobs import hash_file
from appliance.assets._folder import candidate_files
from appliance.assets.delivery import chunk_count, chunk_messages
from appliance.assets.manifest import (
    BUNDLE_TYPE,
    DESCRIPTION_NAME,
    MANIFEST_NAME,
    Manifest,
    manifest_from_body,
)
from appliance.errors import NightboxError
from appliance.remote._bundle_bodies import InvalidBundle

__all__ = ["PreparedSend", "SendError", "chunk_messages", "prepare_send"]


class SendError(NightboxError, ValueError):
    """A folder that cannot be sent as it is; the message names the fix."""


@dataclass(frozen=True, slots=True)
class PreparedSend:
    """A packed folder: its signed manifest and the file of every listed blob."""

    document: dict[str, Any]
    payload: bytes
    manifest: Manifest
    files: dict[str, Path]

    @property
    def chunks(self) -> int:
        """The number of chunk messages of every blob together."""
        return sum(chunk_count(entry.size) for entry in self.manifest.entries)


def prepare_send(folder: Path, site: str) -> PreparedSend:
    """Read ``folder``'s manifest for ``site`` and find the file of each blob.

    Raises SendError when the manifest is missing, unreadable, for another
    site, or when a listed blob has no file in the folder.
    """
    path = folder / MANIFEST_NAME
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise SendError(
            f"cannot read {path} ({err.strerror}); run `nightbox assets pack "
            f"{folder} ...` first"
        ) from err
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise SendError(
            f"{path} is not valid JSON ({err}); pack the folder again"
        ) from err
    if (
        not isinstance(document, dict)
        or document.get("type") != BUNDLE_TYPE
        or not isinstance(document.get("body"), dict)
        or not isinstance(document.get("version"), int)
    ):
        raise SendError(
            f"{path} is not a signed assets manifest; pack the folder again with "
            "`nightbox assets pack`"
        )
    if document.get("site") != site:
        raise SendError(
            f"{path} is signed for site {document.get('site')!r:.40}, not {site!r}; "
            "pack the folder for this site"
        )
    try:
        manifest = manifest_from_body(document["version"], document["body"])
    except InvalidBundle as err:
        raise SendError(f"{path}: {err}; pack the folder again") from err
    files = _blob_files(folder, manifest, skip=(path, folder / DESCRIPTION_NAME))
    missing = [entry for entry in manifest.entries if entry.sha256 not in files]
    if missing:
        listed = ", ".join(f"{entry.name} ({entry.sha256[:12]})" for entry in missing)
        raise SendError(
            f"{folder} has no file with the content of {listed}; put the packed "
            "files back, or pack the folder again"
        )
    return PreparedSend(document, payload, manifest, files)


def _blob_files(
    folder: Path, manifest: Manifest, *, skip: tuple[Path, ...]
) -> dict[str, Path]:
    listed = {entry.sha256 for entry in manifest.entries}
    sizes = {entry.size for entry in manifest.entries}
    found: dict[str, Path] = {}
    for path in candidate_files(folder, sizes, skip=skip).files:
        sha256, _size = hash_file(path)
        if sha256 in listed:
            found.setdefault(sha256, path)
    return found
