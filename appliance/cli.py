"""The ``nightbox`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from appliance import (
    cli_assets,
    cli_broker,
    cli_collect,
    cli_console,
    cli_economy,
    cli_fleet,
    cli_guest,
    cli_image,
    cli_portal,
    cli_reader,
    cli_rehearse,
    cli_report,
    cli_sync,
    cli_update,
)
from appliance._cli_arguments import STORE_NAME, whole_number
from appliance.config import SiteConfig, load_config
from appliance.errors import ConfigError, NightboxError
from appliance.remote.telemetry import software_version
from tui import cli as cli_tui

_LOGGER = logging.getLogger(__name__)

# Simulated bands number guests in the 16-bit iBeacon minor, and a busy
# exit's batch must stay under the bus's 256 KiB payload limit. At 5,000
# guests the largest batch of a 60-minute night is about 55 KB (seed 1, one
# exit, measured from NightPlan.hear).
MAX_DEMO_GUESTS = 5000
# Far more exits than a small venue has. The limit stops a typo such as
# --exits 1000 from starting a thousand reader clients.
MAX_DEMO_EXITS = 16
# Guests arrive in the first 35 % of the night and stay at least a minute,
# so a shorter night cannot fit an arrival and a departure.
MIN_DEMO_MINUTES = 5.0
MAX_DEMO_MINUTES = 24 * 60.0
# The exit codes of a process stopped by SIGINT (Ctrl-C) or SIGTERM.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
# The exit code of a process whose output pipe was closed, as SIGPIPE gives.
EXIT_SIGPIPE = 128 + signal.SIGPIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nightbox", description="Nightbox edge appliance"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv for debug)"
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"nightbox {software_version()}",
        help="print the installed Nightbox version and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="run a simulated night on a real broker",
        description="Run a simulated night on a real broker and score it. "
        f"Ctrl-C or SIGTERM stops it cleanly (exit code {EXIT_SIGINT} or "
        f"{EXIT_SIGTERM}), stopping its broker and removing its temporary folder.",
    )
    demo.add_argument(
        "--guests",
        type=whole_number(1, MAX_DEMO_GUESTS),
        default=200,
        help=f"number of guests, 1 to {MAX_DEMO_GUESTS} (default 200)",
    )
    demo.add_argument(
        "--exits",
        type=whole_number(1, MAX_DEMO_EXITS),
        default=2,
        help=f"exits with a reader each, 1 to {MAX_DEMO_EXITS} (default 2)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="random seed; the same seed gives the same night (default 1)",
    )
    demo.add_argument(
        "--speed",
        type=_speed,
        default=120.0,
        help="simulated seconds per real second, above 0 (default 120)",
    )
    demo.add_argument(
        "--minutes",
        type=_minutes,
        default=60.0,
        help=f"length of the night in simulated minutes, {MIN_DEMO_MINUTES:.0f} "
        f"to {MAX_DEMO_MINUTES:.0f} (default 60)",
    )
    demo.add_argument("--headless", action="store_true", help="no live progress")
    demo.add_argument(
        "--json", action="store_true", help="print one JSON object with the results"
    )
    demo.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="which broker to start (default: mosquitto if installed)",
    )
    demo.add_argument(
        "--data-dir",
        type=_empty_folder,
        help="keep the box's files in this empty or new folder instead of a "
        "temporary one, with the site file DIR/site.toml for the --config "
        "option of nightbox report, portal and guest erase",
    )
    demo.add_argument(
        "--no-stall",
        action="store_true",
        help="do not stall an exit reader's scan for 20 s mid-night",
    )
    demo.add_argument(
        "--console-file",
        type=Path,
        help="once the box is up, write the terminal console's login (broker, "
        "password and a random admin PIN) to this file with mode 0600, for "
        "'nightbox tui'; removed when the demo ends",
    )
    demo.add_argument(
        "--portal-file",
        type=Path,
        help="once the guest portal is up, write its address and one simulated "
        "guest's band code and times, and until when the guest's drop is open, "
        "for a browser test, to this file with mode 0600; removed when the demo "
        "ends",
    )
    demo.add_argument(
        "--hold",
        action="store_true",
        help="after the night, keep the box and its portal running until Ctrl-C "
        "or SIGTERM, then print the results",
    )

    run = commands.add_parser(
        "run", help="run the box's services from a configuration file"
    )
    run.add_argument(
        "--config", type=Path, required=True, help="site configuration (TOML)"
    )

    decode = commands.add_parser("decode", help="decode advertising data given in hex")
    decode.add_argument(
        "hex", help="advertising data (AD structures) as a scanner reports them, in hex"
    )

    replay = commands.add_parser(
        "replay", help="run recorded sightings through the check-out pipeline"
    )
    replay.add_argument(
        "file", type=Path, help="capture in JSON Lines (see docs/mqtt.md)"
    )
    replay.add_argument(
        "--config", type=Path, help="site configuration (default: the sample site)"
    )
    cli_economy.add_commands(commands)
    cli_fleet.add_commands(commands)
    cli_collect.add_commands(commands)
    cli_sync.add_commands(commands)
    cli_reader.add_commands(commands)
    cli_console.add_commands(commands)
    cli_rehearse.add_commands(commands)
    cli_portal.add_commands(commands)
    cli_assets.add_commands(commands)
    cli_report.add_commands(commands)
    cli_guest.add_commands(commands)
    cli_tui.add_commands(commands)
    cli_update.add_commands(commands)
    cli_broker.add_commands(commands)
    cli_image.add_commands(commands)
    return parser


def _finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from err
    # float() reads "inf" and "nan", and nan passes no comparison.
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def _speed(text: str) -> float:
    value = _finite_number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _minutes(text: str) -> float:
    value = _finite_number(text)
    if not MIN_DEMO_MINUTES <= value <= MAX_DEMO_MINUTES:
        raise argparse.ArgumentTypeError(
            f"must be from {MIN_DEMO_MINUTES:.0f} to {MAX_DEMO_MINUTES:.0f}, not {text}"
        )
    return value


def _empty_folder(text: str) -> Path:
    """Return the path if it names an empty or missing folder."""
    path = Path(text)
    try:
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(
                f"{text!r} exists and is not a folder; give an empty or new folder"
            )
        if (path / STORE_NAME).exists():
            raise argparse.ArgumentTypeError(
                f"{text!r} contains a Nightbox store ({STORE_NAME}) of an earlier "
                "night or of a box; give an empty or new folder"
            )
        if path.is_dir() and any(path.iterdir()):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not empty; give an empty or new folder"
            )
    except OSError as err:
        raise argparse.ArgumentTypeError(
            f"cannot use {text!r}: {err.strerror}"
        ) from err
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nightbox`` command; return the process exit code."""
    arguments = _parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(arguments.verbose, 2)]
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if arguments.command == "demo":
            return _demo(arguments)
        if arguments.command == "run":
            return _run(arguments.config)
        if arguments.command == "decode":
            return _decode(arguments.hex)
        if arguments.command in ("token", "wallet"):
            return cli_economy.run(arguments)
        if arguments.command == "fleet":
            return cli_fleet.run(arguments)
        if arguments.command == "collect":
            return cli_collect.run(arguments)
        if arguments.command == "sync":
            return cli_sync.run(arguments)
        if arguments.command == "reader":
            return cli_reader.run(arguments)
        if arguments.command == "console":
            return cli_console.run(arguments)
        if arguments.command == "tui":
            return cli_tui.run(arguments)
        if arguments.command == "rehearse":
            return cli_rehearse.run(arguments)
        if arguments.command == "portal":
            return cli_portal.run(arguments)
        if arguments.command == "assets":
            return cli_assets.run(arguments)
        if arguments.command == "report":
            return cli_report.run(arguments)
        if arguments.command == "guest":
            return cli_guest.run(arguments)
        if arguments.command == "update":
            return cli_update.run(arguments)
        if arguments.command == "broker":
            return cli_broker.run(arguments)
        if arguments.command == "image":
            return cli_image.run(arguments)
        return _replay(arguments.file, arguments.config)
    except NightboxError as err:
        print(f"nightbox: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except BrokenPipeError:
        # The reader of the output (`| head`) closed the pipe. Output still
        # buffered would raise again when Python flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SIGPIPE


def _demo(arguments: argparse.Namespace) -> int:
    from appliance.console.pin import generate_pin
    from appliance.sim.demo import DemoOptions, NightHold, run_demo

    if arguments.data_dir is not None:
        try:
            arguments.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(
                f"nightbox demo: cannot create --data-dir {arguments.data_dir}: "
                f"{err.strerror}",
                file=sys.stderr,
            )
            return 2
    hold = NightHold(sys.stderr) if arguments.hold else None
    options = DemoOptions(
        guests=arguments.guests,
        exits=arguments.exits,
        seed=arguments.seed,
        speed=arguments.speed,
        duration_s=arguments.minutes * 60.0,
        headless=arguments.headless,
        broker_mode=arguments.broker,
        data_dir=arguments.data_dir,
        stall=not arguments.no_stall,
        console_file=arguments.console_file,
        console_pin=None if arguments.console_file is None else generate_pin(),
        portal_file=arguments.portal_file,
        after_night=hold,
    )
    terminated = False

    async def night() -> dict[str, Any]:
        # asyncio.run turns Ctrl-C into a cancellation, and SIGTERM does the
        # same here, so run_demo's cleanup stops the broker and removes the
        # temporary folder either way.
        demo = asyncio.ensure_future(run_demo(options, progress=sys.stderr))

        def on_sigterm() -> None:
            nonlocal terminated
            if hold is not None and hold.holding:
                hold.release()
                return
            terminated = True
            demo.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        return await demo

    try:
        results = asyncio.run(night())
    except asyncio.CancelledError:
        if not terminated:
            raise
        print("nightbox demo: stopped by SIGTERM", file=sys.stderr)
        return EXIT_SIGTERM
    if arguments.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(_summary(results))
    return 0


def _summary(results: dict[str, object]) -> str:
    lines = [
        f"Night over: {results['guests']} guests, {results['left']} left through "
        f"{results['exits']} exits ({results['broker']} broker, "
        f"{results['elapsed_s']} s).",
        f"Check-outs {results['checkouts']}: {results['missed_checkouts']} missed, "
        f"{results['duplicate_checkouts']} duplicate, "
        f"{results['false_checkouts']} false.",
        f"Kits issued {results['kits_issued']}, refused {results['kits_refused']} "
        f"{results['kits_refused_by_reason']}; coupons {results['coupons_issued']}.",
        f"Readers sent {results['sightings']} sightings; "
        f"faults raised {results['faults_raised']}.",
        f"Wallets: {results['topups']} top-ups ({_euros(results['topped_up'])}), "
        f"{results['charges']} bar charges ({_euros(results['charged'])}), "
        f"{results['drop_sold']} drop tees sold; refused "
        f"{results['economy_refused_by_reason']}; ledger balanced: "
        f"{results['ledger_ok']}.",
    ]
    from appliance.sim.demo import stream_summary

    stream = results.get("stream")
    lines.append(stream_summary(stream if isinstance(stream, dict) else None))
    return "\n".join(lines)


def _euros(cents: object) -> str:
    value = cents if isinstance(cents, int) else 0
    return f"{value // 100}.{value % 100:02d} EUR"


def _run(config_path: Path) -> int:
    config = load_config(config_path)

    def announce(line: str) -> None:
        print(line, flush=True)

    async def serve() -> None:
        from appliance.service_host import serve_box

        stop = asyncio.Event()
        reload = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        # SIGHUP to the pid in <data_dir>/nightbox.lock reloads the file, so a
        # newly provisioned reader gets its broker account and ACL.
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        current = config
        # A signed restart command or SIGHUP makes serve_box return True, and
        # the box then starts again in this process with the file as it is
        # now.
        while await serve_box(
            current, stop, announce, config_path=config_path, reload=reload
        ):
            reload.clear()
            current = _reload_config(config_path, current, announce)

    asyncio.run(serve())
    return 0


def _reload_config(
    config_path: Path, current: SiteConfig, announce: Callable[[str], None]
) -> SiteConfig:
    """Return the configuration in ``config_path``, or ``current`` if it is invalid."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        _LOGGER.error("Restarting with the previous configuration: %s", err)
        announce(f"Restarting with the previous configuration: {err}")
        return current
    announce(f"Restarting with the configuration in {config_path}.")
    return config


def _decode(text: str) -> int:
    from appliance.wristbands import (
        AdvertError,
        AltBeacon,
        EddystoneEid,
        EddystoneTlm,
        EddystoneUid,
        IBeacon,
        advert_from_hex,
        decode_advert,
    )

    wristband_frames = (IBeacon, AltBeacon, EddystoneUid, EddystoneEid, EddystoneTlm)

    try:
        raw = advert_from_hex(text)
    except AdvertError as err:
        print(f"nightbox decode: {err}", file=sys.stderr)
        return 2
    advert = decode_advert(raw)
    print(json.dumps(advert.to_json(), indent=2, sort_keys=True))
    if not any(isinstance(frame, wristband_frames) for frame in advert.frames):
        print(
            f"nightbox decode: not a wristband advert: {advert.reason}", file=sys.stderr
        )
        return 1
    return 0


def _replay(path: Path, config_path: Path | None) -> int:
    from appliance.replay import CaptureError, replay

    if config_path is None:
        sample = resources.files("appliance") / "samples" / "site.toml"
        with resources.as_file(sample) as sample_path:
            config = load_config(sample_path)
    else:
        config = load_config(config_path)
    try:
        checkouts, errors, counters = replay(path, config)
    except CaptureError as err:
        print(f"nightbox replay: {err}", file=sys.stderr)
        return 2
    for error in errors:
        print(f"nightbox replay: skipped {error}", file=sys.stderr)
    unreported = counters["rejected_lines"] - len(errors)
    if unreported:
        print(
            f"nightbox replay: skipped {unreported} more lines; "
            "fix the ones above and run it again to see the rest",
            file=sys.stderr,
        )
    for checkout in checkouts:
        print(
            json.dumps(
                {
                    key: checkout[key]
                    for key in ("band", "reader", "seen_at", "rssi_dbm", "format")
                }
            )
        )
    if not counters["accepted_lines"]:
        print(
            f"nightbox replay: no line of {path} was accepted; each line must be "
            "a JSON object like those in appliance/samples/capture.jsonl",
            file=sys.stderr,
        )
    # The summary stays the last line of stderr, for scripts.
    print(json.dumps({"summary": counters}), file=sys.stderr)
    return 0 if counters["accepted_lines"] else 1


if __name__ == "__main__":
    sys.exit(main())
