"""Blob files of the asset cache, stored under their SHA-256.

A blob lives at ``<data_dir>/assets/blobs/<first two hex digits>/<sha256>``.
It is written to a temporary file in ``assets/tmp/`` while its SHA-256 is
computed, and flushed to disk with fsync. It is renamed into place only
when its hash and size are the expected ones, so a reader never sees a
partial or wrong blob under a hash. Every function here blocks on the file system;
the cache runs them in a worker thread.

Nothing here follows a symbolic link. Files are opened with ``O_NOFOLLOW``
and must be regular files, so a link, FIFO or device in a USB folder or in
the cache is never read. A link found in the cache's folders is removed as
a link, and its target is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from appliance.errors import NightboxError
from provisioning.secret_file import sync_folder

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


class NotRegularFile(OSError):
    """A link, FIFO, device, socket or folder where a regular file was expected."""

    def __init__(self, path: Path, description: str) -> None:
        super().__init__(errno.EINVAL, f"{path} {description}", str(path))
        self.path = path
        self.description = description

    def __str__(self) -> str:
        return f"{self.path} {self.description}"


@dataclass(slots=True)
class BlobScan:
    """The blob files found in ``blobs/``, and what was removed on the way.

    ``links`` are symbolic links removed as links; ``strays`` are other
    entries that no hash addresses.
    """

    files: dict[str, Path] = field(default_factory=dict)
    links: list[Path] = field(default_factory=list)
    strays: list[Path] = field(default_factory=list)


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

    def prepare(self, *, remove_leftovers: bool = True) -> list[Path]:
        """Create the folders and remove partial files a crash left behind.

        A command run beside the running box passes ``remove_leftovers=False``,
        because the box may be writing a temporary file at that moment.
        Returns the symbolic links that stood in place of a folder; each was
        removed as a link and replaced by an empty folder.
        """
        links: list[Path] = []
        for folder in (self.blobs_dir, self.temporary_dir, self.incoming_dir):
            if _remove_if_link(folder):
                links.append(folder)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not remove_leftovers:
            return links
        for folder in (self.temporary_dir, self.incoming_dir):
            for leftover in folder.iterdir():
                _remove_tree(leftover)
        return links

    def path(self, sha256: str) -> Path:
        """Return the file of blob ``sha256``, which may not exist."""
        return self.blobs_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Return whether blob ``sha256`` has a regular file (a link does not count)."""
        try:
            mode = self.path(sha256).lstat().st_mode
        except FileNotFoundError:
            return False
        return stat.S_ISREG(mode)

    def scan(self) -> BlobScan:
        """Return the hash and file of every blob file on disk.

        A symbolic link anywhere in ``blobs/`` is removed as a link, never
        followed. A file whose name is no hash, or that sits in the wrong
        folder, is removed too, because nothing can address it.
        """
        found = BlobScan()
        if _remove_if_link(self.blobs_dir):
            found.links.append(self.blobs_dir)
            self.blobs_dir.mkdir(mode=0o700, exist_ok=True)
            return found
        if not self.blobs_dir.is_dir():
            return found
        for folder in _sorted_entries(self.blobs_dir):
            if not _keep_entry(folder, found, directory=True):
                continue
            for entry in _sorted_entries(Path(folder.path)):
                if not _keep_entry(entry, found, directory=False):
                    continue
                path = Path(entry.path)
                if SHA256_PATTERN.match(entry.name) and folder.name == entry.name[:2]:
                    found.files[entry.name] = path
                else:
                    _remove_stray(path)
                    found.strays.append(path)
        return found

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

    def copy_path(
        self, source: Path, *, limit: int, identity: tuple[int, int] | None = None
    ) -> Written:
        """Copy a regular file to a temporary file like :meth:`write_temporary`.

        ``identity`` is the ``(st_dev, st_ino)`` that the file had when it was
        listed; a file replaced since then raises NotRegularFile. Links,
        FIFOs and devices raise NotRegularFile without being read.
        """
        with open_regular(source, identity=identity) as opened:
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
            sync_folder(target.parent)
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


def open_regular(path: Path, *, identity: tuple[int, int] | None = None) -> BinaryIO:
    """Open a regular file for reading, without following a symbolic link.

    Raises NotRegularFile, without reading anything, when ``path`` is a
    link, FIFO, device, socket or folder, or when it is no longer the file
    ``identity`` (``(st_dev, st_ino)``) names. A FIFO never blocks the call,
    because the file is opened with ``O_NONBLOCK`` and checked before use.
    """
    listed = path.lstat()
    if not stat.S_ISREG(listed.st_mode):
        raise NotRegularFile(path, _file_kind(listed.st_mode))
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NotRegularFile(path, "is a symbolic link") from err
        raise
    try:
        opened = os.fstat(descriptor)
        if not stat.S_ISREG(opened.st_mode):
            raise NotRegularFile(path, _file_kind(opened.st_mode))
        expected = identity or (listed.st_dev, listed.st_ino)
        if (opened.st_dev, opened.st_ino) != expected:
            raise NotRegularFile(path, "was replaced while it was read")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_limited(path: Path, limit: int) -> bytes:
    """Return the bytes of a regular file, at most ``limit`` + 1 of them.

    A result longer than ``limit`` means the file is too long. Raises
    NotRegularFile like :func:`open_regular`.
    """
    with open_regular(path) as source:
        return source.read(limit + 1)


def hash_file(path: Path) -> tuple[str, int]:
    """Return the SHA-256 (hex) and size of a regular file, read in blocks.

    Raises NotRegularFile for a symbolic link, FIFO, device or folder.
    """
    digest = hashlib.sha256()
    size = 0
    with open_regular(path) as source:
        for block in _blocks(source):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _blocks(source: BinaryIO) -> Iterator[bytes]:
    while block := source.read(READ_BLOCK_BYTES):
        yield block


def _file_kind(mode: int) -> str:
    """Return what a file that is not a regular one is, for messages."""
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_ISDIR(mode):
        return "is a folder, not a regular file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _keep_entry(entry: os.DirEntry[str], found: BlobScan, *, directory: bool) -> bool:
    """Return whether a scanned entry is a real folder (or regular file) to read.

    A link is removed as a link and a wrong kind of entry as a stray; both
    are recorded in ``found``.
    """
    path = Path(entry.path)
    if entry.is_symlink():
        _remove_link(path)
        found.links.append(path)
        return False
    if directory and not entry.is_dir(follow_symlinks=False):
        _remove_stray(path)
        found.strays.append(path)
        return False
    if not directory and not entry.is_file(follow_symlinks=False):
        _remove_stray(path)
        found.strays.append(path)
        return False
    return True


def _remove_if_link(path: Path) -> bool:
    """Remove ``path`` if it is a symbolic link; return whether it was one."""
    if not path.is_symlink():
        return False
    _remove_link(path)
    return True


def _remove_link(path: Path) -> None:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    _LOGGER.warning(
        "Removing symbolic link %s -> %s from the asset cache: the cache does not "
        "follow links, and the link's target was left as it was",
        path,
        target,
    )
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        _LOGGER.error("Could not remove %s from the asset cache: %s", path, err)


def _remove_stray(path: Path) -> None:
    _LOGGER.warning("Removing %s from the asset cache: it is not a blob file", path)
    _remove_tree(path)


def _remove_tree(path: Path) -> None:
    """Remove a file, a link (not its target) or a real folder with its content.

    ``shutil.rmtree`` never follows a link inside the folder, and refuses
    a link given as the folder itself.
    """
    try:
        if stat.S_ISDIR(path.lstat().st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        _LOGGER.error("Could not remove %s from the asset cache: %s", path, err)
