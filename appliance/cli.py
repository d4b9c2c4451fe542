"""The ``nightbox`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from appliance.config import load_config
from appliance.errors import NightboxError

_LOGGER = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nightbox", description="Nightbox edge appliance"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv for debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run a simulated night on a real broker")
    demo.add_argument(
        "--guests",
        type=_positive_int,
        default=200,
        help="number of guests (default 200)",
    )
    demo.add_argument(
        "--exits",
        type=_positive_int,
        default=2,
        help="exits with a reader each (default 2)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="random seed; the same seed gives the same night",
    )
    demo.add_argument(
        "--speed",
        type=_positive_float,
        default=120.0,
        help="simulated seconds per real second (default 120)",
    )
    demo.add_argument(
        "--minutes",
        type=_positive_float,
        default=60.0,
        help="length of the night in simulated minutes (default 60)",
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
        type=Path,
        help="keep the box's files here instead of a temporary folder",
    )
    demo.add_argument(
        "--no-stall", action="store_true", help="do not stall a reader's scan mid-night"
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
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"must be a whole number, not {text!r}"
        ) from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from err
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


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
        return _replay(arguments.file, arguments.config)
    except NightboxError as err:
        print(f"nightbox: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _demo(arguments: argparse.Namespace) -> int:
    from appliance.sim.demo import DemoOptions, run_demo

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
    )
    results = asyncio.run(run_demo(options, progress=sys.stderr))
    if arguments.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(_summary(results))
    return 0


def _summary(results: dict[str, object]) -> str:
    lines = [
        f"Night over: {results['guests']} guests, {results['left']} left through "
        f"{results['exits']} exits ({results['broker']}, {results['elapsed_s']} s).",
        f"Check-outs {results['checkouts']}: {results['missed_checkouts']} missed, "
        f"{results['duplicate_checkouts']} duplicate, "
        f"{results['false_checkouts']} false.",
        f"Kits issued {results['kits_issued']}, refused {results['kits_refused']} "
        f"{results['kits_refused_by_reason']}; coupons {results['coupons_issued']}.",
        f"Readers sent {results['sightings']} sightings; "
        f"faults raised {results['faults_raised']}.",
    ]
    return "\n".join(lines)


def _run(config_path: Path) -> int:
    config = load_config(config_path)

    async def serve() -> None:
        from appliance.service_host import serve_box

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        await serve_box(config, stop, announce=lambda line: print(line, flush=True))

    asyncio.run(serve())
    return 0


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
    from appliance.replay import replay

    if config_path is None:
        sample = resources.files("appliance") / "samples" / "site.toml"
        with resources.as_file(sample) as sample_path:
            config = load_config(sample_path)
    else:
        config = load_config(config_path)
    if not path.exists():
        print(f"nightbox replay: capture {path} not found", file=sys.stderr)
        return 2
    checkouts, errors, counters = replay(path, config)
    for error in errors:
        print(f"nightbox replay: skipped {error}", file=sys.stderr)
    for checkout in checkouts:
        print(
            json.dumps(
                {
                    key: checkout[key]
                    for key in ("band", "reader", "seen_at", "rssi_dbm", "format")
                }
            )
        )
    print(json.dumps({"summary": counters}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
