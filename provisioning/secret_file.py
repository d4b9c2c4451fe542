"""Writing the box's secrets: readable by its user only, and never half written."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 in a 0700 folder, atomically.

    The bytes go to a temporary file that is synced and then renamed over
    ``path``, so a power cut leaves the old file or the new one.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file_atomically(path, data, 0o600)


def write_file_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename.

    The temporary file is created with ``mode``, less the process's umask.
    The folder must exist.
    """
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so a rename in it survives a power cut."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
