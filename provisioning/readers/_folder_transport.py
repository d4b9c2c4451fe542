"""A host folder that mpremote's mip installer can install packages into.

``mpremote.mip._install_package`` talks to a board through a transport
object. This one serves the calls that the installer makes (mpremote 1.27
to 1.29) from a folder on the host, so the reader bundle gets the same
``lib/`` files that ``mpremote mip install`` would put on a board.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

# The expression that mip evaluates to pick compiled (.mpy) files. Returning
# None makes it install the .py sources, which every MicroPython version runs.
_MPY_VERSION_QUERY = "getattr(sys.implementation, '_mpy', 0) & 0xFF"


class FolderTransport:
    """A board file system kept in the host folder ``root``.

    Board paths are read relative to ``root`` whether or not they start
    with '/'. A path that would leave ``root`` raises ValueError.
    """

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    def _host_path(self, board_path: str) -> Path:
        path = (self._root / board_path.lstrip("/")).resolve()
        if path != self._root and self._root not in path.parents:
            raise ValueError(
                f"board path {board_path!r} leaves the bundle folder {self._root}"
            )
        return path

    def fs_exists(self, board_path: str) -> bool:
        """Return whether the file or folder exists."""
        return self._host_path(board_path).exists()

    def fs_mkdir(self, board_path: str) -> None:
        """Create one folder, as ``os.mkdir`` on the board does."""
        self._host_path(board_path).mkdir()

    def fs_writefile(
        self,
        board_path: str,
        data: bytes,
        chunk_size: int = 256,
        progress_callback: Callable[[int, int], None] | None = None,
    ) -> None:
        """Write ``data`` to the file, replacing it."""
        self._host_path(board_path).write_bytes(data)

    def fs_hashfile(self, board_path: str, algo: str, chunk_size: int = 256) -> bytes:
        """Return the file's digest; raise FileNotFoundError when it is missing."""
        return hashlib.new(algo, self._host_path(board_path).read_bytes()).digest()

    def exec(self, command: str) -> bytes:
        """Accept the one statement mip runs before it queries the .mpy version."""
        if command.strip() != "import sys":
            raise NotImplementedError(f"a host folder cannot run {command!r}")
        return b""

    def eval(self, expression: str) -> object:
        """Return None for mip's .mpy version query, so .py files are installed."""
        if expression.strip() != _MPY_VERSION_QUERY:
            raise NotImplementedError(f"a host folder cannot evaluate {expression!r}")
        return None
