"""Blob files of the asset cache, stored under their SHA-256.

A blob lives at ``<data_dir>/assets/blobs/<first two hex digits>/<sha256>``.
It is written to a temporary file in ``assets/tmp/`` while its SHA-256 is
computed, and flushed to disk with fsync. It is renamed into place only
when its hash and size are the expected ones, so a reader never sees a
partial or wrong blob under a hash. Every function here blocks on the file system;
the cache runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.errors import NightboxError

_LOGGER = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
# Files are read and hashed in blocks of this size.
READ_BLOCK_BYTES = 1024 * 1024
# The digits of a hash that logs and messages show: enough to tell blobs
# apart, short enough to keep lines readable.
HASH_PREFIX_DIGITS = 12


def short_hash(sha256: str) -> str:
    """Return the first digits of a hash, as logs and messages show it."""
    return sha256[:HASH_PREFIX_DIGITS]


class BlobRejected(NightboxError, ValueError):
    """A blob whose content is not what the manifest lists; nothing was kept.

    ``reason`` is ``hash-mismatch`` or ``size-mismatch``.
    """

    def __init__(self, reason: str, sha256: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.sha256 = sha256
        self.message = message


@dataclass(frozen=True, slots=True)
class Written:
    """A temporary file that was written and synced, with its hash and size."""

    path: Path
    sha256: str
    size: int


class BlobStore:
    """The blob files under ``root`` (``<data_dir>/assets``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.temporary_dir = root / "tmp"
        self.incoming_dir = root / "incoming"

    def prepare(self, *, remove_leftovers: bool = True) -> None:
        """Create the folders and remove partial files a crash left behind.

        A command run beside the running box passes ``remove_leftovers=False``,
        because the box may be writing a temporary file at that moment.
        """
        for folder in (self.blobs_dir, self.temporary_dir, self.incoming_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not remove_leftovers:
            return
        for folder in (self.temporary_dir, self.incoming_dir):
            for leftover in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def path(self, sha256: str) -> Path:
        """Return the file of blob ``sha256``, which may not exist."""
        return self.blobs_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Return whether blob ``sha256`` has a file."""
        return self.path(sha256).is_file()

    def stored_files(self) -> Iterator[tuple[str, Path]]:
        """Yield the hash and file of every blob file on disk.

        A file whose name is no hash, or that sits in the wrong folder, is
        removed, because nothing can address it.
        """
        if not self.blobs_dir.is_dir():
            return
        for folder in sorted(self.blobs_dir.iterdir()):
            if not folder.is_dir():
                _remove_stray(folder)
                continue
            for path in sorted(folder.iterdir()):
                name = path.name
                if (
                    path.is_file()
                    and SHA256_PATTERN.match(name)
                    and folder.name == name[:2]
                ):
                    yield name, path
                else:
                    _remove_stray(path)

    def write(
        self, expected_sha256: str, expected_size: int, chunks: Iterable[bytes]
    ) -> Path:
        """Store the bytes of ``chunks`` as blob ``expected_sha256``.

        Stops reading as soon as more than ``expected_size`` bytes arrive.
        Raises BlobRejected, keeping nothing, when the hash or size differs.
        """
        written = self.write_temporary(chunks, limit=expected_size)
        return self.commit(written, expected_sha256, expected_size)

    def write_temporary(self, chunks: Iterable[bytes], *, limit: int) -> Written:
        """Write ``chunks`` to a temporary file, hashing them, and sync it.

        Reading stops after ``limit`` + 1 bytes, so the returned size exceeds
        ``limit`` exactly when the source was too long.
        """
        path = self.temporary_dir / f"{secrets.token_hex(8)}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(path, "xb") as output:
                os.fchmod(output.fileno(), 0o600)
                for chunk in chunks:
                    room = limit + 1 - size
                    piece = chunk[:room]
                    output.write(piece)
                    digest.update(piece)
                    size += len(piece)
                    if size > limit:
                        break
                output.flush()
                os.fsync(output.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        return Written(path, digest.hexdigest(), size)

    def copy_path(self, source: Path, *, limit: int) -> Written:
        """Copy a file to a temporary file like :meth:`write_temporary`."""
        with open(source, "rb") as opened:
            return self.write_temporary(_blocks(opened), limit=limit)

    def commit(
        self, written: Written, expected_sha256: str, expected_size: int
    ) -> Path:
        """Rename a temporary file to blob ``expected_sha256`` if it matches.

        Raises BlobRejected after removing the temporary file when its size
        or hash is not the expected one.
        """
        try:
            if written.size != expected_size:
                found = (
                    "more bytes than"
                    if written.size > expected_size
                    else f"{written.size} bytes, not"
                )
                raise BlobRejected(
                    "size-mismatch",
                    expected_sha256,
                    f"blob {short_hash(expected_sha256)} has {found} the "
                    f"{expected_size} bytes its manifest lists; copy the file "
                    "again from the operator's folder",
                )
            if written.sha256 != expected_sha256:
                raise BlobRejected(
                    "hash-mismatch",
                    expected_sha256,
                    f"blob {short_hash(expected_sha256)} arrived with SHA-256 "
                    f"{short_hash(written.sha256)}..., so its content is not the "
                    "listed one; copy the file again from the operator's folder",
                )
            target = self.path(expected_sha256)
            target.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(written.path, target)
            _sync_folder(target.parent)
            return target
        finally:
            with contextlib.suppress(FileNotFoundError):
                written.path.unlink()

    def discard(self, written: Written) -> None:
        """Remove a temporary file that is not kept."""
        with contextlib.suppress(FileNotFoundError):
            written.path.unlink()

    def adopt(self, part: Path, expected_sha256: str, expected_size: int) -> Path:
        """Hash a file assembled elsewhere and rename it to its blob if it matches.

        ``part`` must be on the same file system (``assets/incoming/``).
        Raises BlobRejected after removing ``part`` when it does not match.
        """
        try:
            sha256, size = hash_file(part)
            with open(part, "rb+") as synced:
                os.fsync(synced.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        return self.commit(Written(part, sha256, size), expected_sha256, expected_size)

    def remove(self, sha256: str) -> bool:
        """Remove blob ``sha256``; return whether a file was removed."""
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True


def hash_file(path: Path) -> tuple[str, int]:
    """Return the SHA-256 (hex) and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        for block in _blocks(source):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _blocks(source: BinaryIO) -> Iterator[bytes]:
    while block := source.read(READ_BLOCK_BYTES):
        yield block


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries, so a rename survives a power cut."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_stray(path: Path) -> None:
    _LOGGER.warning("Removing %s from the asset cache: it is not a blob file", path)
    try:
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                _remove_stray(child)
            path.rmdir()
        else:
            path.unlink()
    except OSError as err:
        _LOGGER.error("Could not remove %s from the asset cache: %s", path, err)
