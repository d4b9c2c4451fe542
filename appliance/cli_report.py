"""``nightbox report``: write a night's figures as an HTML page and a JSON file."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import zoneinfo
from pathlib import Path
from typing import Any

from appliance._cli_arguments import (
    STORE_NAME,
    add_config_option,
    add_night_option,
    load_site_config,
)

# Exit codes: 0 written, 1 no data for the night, 2 usage or configuration
# errors (argparse and the ``nightbox`` command use 2 for those too).
EXIT_NO_DATA = 1
EXIT_USAGE = 2


def add_commands(commands: Any) -> None:
    """Add ``nightbox report`` to the command's subparsers."""
    report = commands.add_parser(
        "report",
        help="write a night's figures as HTML with charts and as JSON",
        description="Write report-<night>.html (charts, no scripts, nothing "
        "loaded from elsewhere) and report-<night>.json with the same figures: "
        "drop funnels, creator uplift, kits and coupons, exits over time. "
        "Groups of fewer than 5 guests are suppressed. Reads the box's store "
        "read-only, also while the box runs, but writes a night that has not "
        "ended only with --partial. Exits 0 when written, 1 when the night has "
        "no data, 2 for usage errors.",
    )
    add_config_option(report)
    add_night_option(report)
    report.add_argument(
        "--output",
        type=Path,
        default=Path("."),
        help="folder to write the two files into (default: the current folder)",
    )
    report.add_argument(
        "--partial",
        action="store_true",
        help="write the report of a night that has not ended yet and mark it "
        "partial; a later report of the same night can be compared with it to "
        "learn the spend of the guests who came in between",
    )


def run(arguments: argparse.Namespace) -> int:
    """Run ``nightbox report``; return the exit code."""
    from appliance.analytics.figures import (
        night_figures,
        night_has_data,
        night_window,
    )
    from appliance.analytics.report import ReadOnlyStore, write_report

    config = load_site_config(arguments.config)
    _, end = night_window(config.commerce, arguments.night)
    running = time.time() < end
    if running and not arguments.partial:
        zone = zoneinfo.ZoneInfo(config.commerce.timezone)
        ends = dt.datetime.fromtimestamp(end, zone).strftime("%Y-%m-%d %H:%M")
        print(
            f"nightbox report: the night of {arguments.night} has not ended yet "
            f"(it ends at {ends}, {config.commerce.timezone}). A report written "
            "now and one written later can be compared, and their difference "
            "may be the spend of one guest. Write the report after the night "
            "ends, or pass --partial to write it now",
            file=sys.stderr,
        )
        return EXIT_USAGE
    store = ReadOnlyStore(config.data_dir / STORE_NAME)
    try:
        if not night_has_data(store, config, arguments.night):
            print(
                f"nightbox report: the store has no views, sales, claims, kits or "
                f"check-outs for the night of {arguments.night}; check the date "
                "(a night starts at site.night_rollover_hour)",
                file=sys.stderr,
            )
            return EXIT_NO_DATA
        figures = night_figures(store, config, arguments.night)
        if running:
            figures["partial"] = True
    finally:
        store.close()
    files = write_report(figures, arguments.output)
    print(f"Wrote {files.html} and {files.json}")
    return 0
