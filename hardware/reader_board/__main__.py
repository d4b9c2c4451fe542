"""Run one simulated reader board until Ctrl-C.

    python -m hardware.reader_board --state DIR [--micropython] [--port N]

prints the board's URL, for example ``socket://127.0.0.1:40411``, to pass
as ``--port`` to ``nightbox reader provision``, esptool or mpremote.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from hardware.reader_board._errors import BoardSimulatorError
from hardware.reader_board._simulator import BoardSimulator


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hardware.reader_board",
        description="Simulated ESP32 reader board on a loopback TCP port.",
    )
    parser.add_argument(
        "--state",
        type=Path,
        required=True,
        help="folder that keeps the board's flash.bin and fs/ between runs",
    )
    parser.add_argument(
        "--micropython",
        action="store_true",
        help="start with a MicroPython test image in flash instead of a blank board",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="TCP port on 127.0.0.1 (default: any free port)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every connection")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start a board simulator, print its URL and serve until SIGINT or SIGTERM."""
    args = _parse_arguments(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    done = threading.Event()
    # Both signals get a handler of their own, because a shell that starts
    # a program in the background makes it ignore SIGINT.
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: done.set())

    try:
        sim = BoardSimulator(args.state, micropython=args.micropython, port=args.port)
        sim.start()
    except (BoardSimulatorError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    try:
        kind = "MicroPython" if sim.has_micropython else "blank flash"
        print(f"{sim.url}  ({kind}; Ctrl-C to stop)", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
