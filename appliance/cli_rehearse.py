"""``nightbox rehearse``: run the pre-event checks and print the report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from appliance._cli_arguments import (
    add_config_option,
    load_site_config,
    seconds_between,
)
from appliance.errors import NightboxError

if TYPE_CHECKING:
    from appliance.rehearse import Report, Target

# The exit code of a process stopped by SIGTERM, as ``nightbox demo`` uses it.
EXIT_SIGTERM = 128 + signal.SIGTERM

# Bounds of the listening window. Two seconds still contain several batches
# of every reader, because ESP32 readers send one a second by default.
MIN_SECONDS = 2.0
MAX_SECONDS = 600.0


def add_commands(commands: Any) -> None:
    """Add ``nightbox rehearse`` to the command's subparsers."""
    from appliance.rehearse import DEFAULT_WINDOW_S, FAULTS

    rehearse = commands.add_parser(
        "rehearse",
        help="run the pre-event test of the edge and the stream",
        description="Check the broker and its ACLs, readers, the box's scanner, "
        "the camera, the HLS stream, a clip, storage, time, the sync link and a "
        "voided wallet transaction. Exits 0 when every required check passed, "
        "1 when one failed, 2 for usage errors.",
    )
    add_config_option(rehearse)
    rehearse.add_argument(
        "--demo",
        action="store_true",
        help="start a simulated box and readers and rehearse against them",
    )
    rehearse.add_argument(
        "--json", action="store_true", help="print the report as one JSON document"
    )
    rehearse.add_argument(
        "--seconds",
        type=seconds_between(MIN_SECONDS, MAX_SECONDS),
        default=DEFAULT_WINDOW_S,
        help="how long to listen to readers and the box's scanner, in seconds "
        f"({MIN_SECONDS:.0f} to {MAX_SECONDS:.0f}, default {DEFAULT_WINDOW_S:.0f})",
    )
    rehearse.add_argument(
        "--demo-fault",
        action="append",
        choices=FAULTS,
        default=[],
        metavar="FAULT",
        help="with --demo, break one part of the simulated box on purpose "
        f"(repeatable): {', '.join(FAULTS)}",
    )


def run(arguments: argparse.Namespace) -> int:
    """Run ``nightbox rehearse``; return its exit code."""
    from appliance.rehearse import (
        EXIT_USAGE,
        DemoFaults,
        demo_box,
        rehearse,
        running_box,
    )

    if arguments.demo_fault and not arguments.demo:
        print("nightbox rehearse: --demo-fault needs --demo", file=sys.stderr)
        return EXIT_USAGE
    if arguments.demo and arguments.config is not None:
        print(
            "nightbox rehearse: give either --demo or --config, not both",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def against_demo() -> Report:
        faults = DemoFaults.from_names(arguments.demo_fault)
        async with demo_box(faults) as target:
            return await rehearse(target, arguments.seconds)

    async def against_box(target: Target) -> Report:
        return await rehearse(target, arguments.seconds)

    try:
        if arguments.demo:
            report = _run_demo(against_demo(), verbose=arguments.verbose > 0)
        else:
            config = load_site_config(arguments.config)
            target = running_box(config, arguments.config)
            try:
                report = asyncio.run(_stoppable(against_box(target)))
            finally:
                target.store.close()
    except _Terminated:
        print("nightbox rehearse: stopped by SIGTERM", file=sys.stderr)
        return EXIT_SIGTERM
    print(report.to_json() if arguments.json else report.to_text())
    return report.exit_code


def _run_demo(work: Coroutine[Any, Any, Report], *, verbose: bool) -> Report:
    """Run a rehearsal of the demo box with the box's log lines in a file.

    The terminal then shows the report, errors and the rehearsal's own log
    lines. The file is kept and named when a required check failed. With
    ``--verbose`` every line goes to the terminal, as against a running box.
    """
    from appliance.rehearse import demo_log

    if verbose:
        return asyncio.run(_stoppable(work))
    with contextlib.ExitStack() as stack:
        try:
            log = stack.enter_context(demo_log())
        except OSError as err:
            work.close()
            raise NightboxError(
                "cannot create the demo box's log file in "
                f"{tempfile.gettempdir()}: {err.strerror}; set TMPDIR to a "
                "writable folder"
            ) from err
        report = asyncio.run(_stoppable(work))
        log.keep = not report.passed
    if log.keep:
        print(
            f"nightbox rehearse: the demo box's log lines are in {log.path}",
            file=sys.stderr,
        )
    return report


class _Terminated(Exception):
    """SIGTERM stopped the rehearsal."""


async def _stoppable(work: Coroutine[Any, Any, Report]) -> Report:
    """Run ``work``; SIGTERM cancels it, so the demo box and its broker stop cleanly.

    asyncio.run already turns Ctrl-C into a cancellation.
    """
    task = asyncio.ensure_future(work)
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await task
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
