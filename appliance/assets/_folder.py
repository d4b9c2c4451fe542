"""The files of a USB folder that may be blobs of a manifest.

Blob files may have any name and sit anywhere under the folder, so they
are matched by SHA-256. Only regular files whose size is the size of a
listed blob are read at all. Symbolic links are not followed, so a folder
cannot make the box read files outside it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

_LOGGER = logging.getLogger(__name__)


@dataclass(slots=True)
class Candidates:
    """Files whose size matches a listed blob, and how many others were skipped.

    ``identities`` maps each file to its ``(st_dev, st_ino)`` when listed,
    so a file swapped for a link or a FIFO before it is read is not read.
    """

    files: list[Path] = field(default_factory=list)
    identities: dict[Path, tuple[int, int]] = field(default_factory=dict)
    skipped: int = 0


def candidate_files(
    folder: Path, sizes: Collection[int], *, skip: Collection[Path] = ()
) -> Candidates:
    """Return the regular files under ``folder`` whose size is one of ``sizes``.

    Raises OSError when ``folder`` itself cannot be read; unreadable
    subfolders and files are logged and skipped.
    """
    found = Candidates()
    skipped_paths = {path.resolve() for path in skip}
    os.listdir(folder)

    def report(error: OSError) -> None:
        _LOGGER.warning(
            "Skipped %s while reading %s: %s", error.filename, folder, error
        )

    for root, folders, names in os.walk(folder, onerror=report, followlinks=False):
        folders.sort()
        for name in sorted(names):
            path = Path(root) / name
            try:
                info = path.lstat()
            except OSError as err:
                report(err)
                continue
            if not stat.S_ISREG(info.st_mode) or path.resolve() in skipped_paths:
                continue
            if info.st_size in sizes:
                found.files.append(path)
                found.identities[path] = (info.st_dev, info.st_ino)
            else:
                found.skipped += 1
    return found
