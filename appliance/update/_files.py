"""Durable file operations of the updater: each either happens whole or not at all.

A power cut may strike between any two calls. Every write goes to a
temporary name, is synced, and is renamed into place, and the folder is
synced after the rename, so the file system contains either the old or
the new version of each file and link.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import orjson


def fsync_folder(folder: Path) -> None:
    """Sync ``folder`` itself, so the renames and removals in it are durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_atomically(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` as JSON through a synced temporary file."""
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    # mkstemp opens with O_EXCL, so a link planted at the temporary name is
    # never followed.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_folder(path.parent)


def replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at the relative ``target`` with one atomic rename."""
    temporary = link.with_name(f".{link.name}.new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)
    fsync_folder(link.parent)


def remove_file(path: Path) -> None:
    """Remove ``path`` if it exists and sync its folder."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fsync_folder(path.parent)


def clear_folder(folder: Path) -> None:
    """Remove everything inside ``folder`` and keep the folder itself."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    fsync_folder(folder)


def remove_tree(folder: Path) -> None:
    """Remove ``folder`` and everything in it, if it exists."""
    if folder.exists():
        shutil.rmtree(folder)
        fsync_folder(folder.parent)


def copy_tree(source: Path, destination: Path) -> None:
    """Copy ``source`` to the new folder ``destination`` as ``cp -a`` would.

    Symbolic links are copied as links, so a venv's ``bin/python`` still
    points at the base Python, and modes and times are kept.
    """
    shutil.copytree(source, destination, symlinks=True)


def tree_bytes(folder: Path) -> int:
    """Return the bytes of the regular files under ``folder``; 0 when it is missing.

    Links are not followed, and files that vanish while it counts are skipped.
    """
    total = 0
    for root, _folders, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                status = os.lstat(os.path.join(root, name))
                if stat.S_ISREG(status.st_mode):
                    total += status.st_size
    return total


def sync_all() -> None:
    """Flush every file system's dirty data to its disk."""
    os.sync()
