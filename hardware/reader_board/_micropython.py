"""Locating and starting the MicroPython WebAssembly interpreter under Node.js."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hardware.reader_board._errors import MicroPythonRuntimeError

PACKAGE = "@micropython/micropython-webassembly-pyscript"
NODE_MODULES_ENV = "NIGHTBOX_NODE_MODULES"
_BOARD_SCRIPT = Path(__file__).with_name("_board.mjs")
_REPOSITORY_NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"

# Exit statuses of _board.mjs.
EXIT_HARD_RESET = 2
EXIT_BOOTLOADER = 3

# machine.reset_cause() values of MicroPython's esp32 port.
PWRON_RESET = 1
SOFT_RESET = 5


@dataclass(frozen=True)
class MicroPythonRuntime:
    """Node.js and the MicroPython WebAssembly module it runs."""

    node: str
    module: Path

    @classmethod
    def locate(cls) -> MicroPythonRuntime:
        """Find Node.js on PATH and the npm package.

        The package is looked up in ``$NIGHTBOX_NODE_MODULES`` when set, else
        in the repository's ``node_modules``. Raises MicroPythonRuntimeError
        naming what to install when either is missing.
        """
        node = shutil.which("node")
        if node is None:
            raise MicroPythonRuntimeError(
                "Node.js not found on PATH: install Node.js 20 or newer "
                "(Debian: apt-get install nodejs) to run the simulated board"
            )
        configured = os.environ.get(NODE_MODULES_ENV)
        node_modules = Path(configured) if configured else _REPOSITORY_NODE_MODULES
        module = node_modules / PACKAGE / "micropython.mjs"
        if not module.is_file():
            raise MicroPythonRuntimeError(
                f"{module} not found: run `npm install {PACKAGE}` in "
                f"{node_modules.parent} (or `make deps`), or point "
                f"{NODE_MODULES_ENV} at a node_modules folder that contains it"
            )
        return cls(node=node, module=module)

    def spawn(
        self, fs_dir: Path, mac: bytes, reset_cause: int
    ) -> subprocess.Popen[bytes]:
        """Start one boot of the interpreter with its filesystem in ``fs_dir``."""
        return subprocess.Popen(
            [
                self.node,
                str(_BOARD_SCRIPT),
                str(self.module),
                str(fs_dir),
                mac.hex(),
                str(reset_cause),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
