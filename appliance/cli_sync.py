"""``nightbox sync status``: how much of the outbox waits for the upstream broker.

The command reads the box's SQLite store only, so it works while the box
runs, while the upstream broker is down, and on a box without ``[sync]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from appliance._cli_arguments import add_config_option, load_site_config, open_store
from appliance.config import SiteConfig


def add_commands(commands: Any) -> None:
    """Add the ``sync`` command to the ``nightbox`` parser."""
    sync = commands.add_parser(
        "sync", help="store-and-forward of events to the fleet's upstream broker"
    )
    sync_commands = sync.add_subparsers(dest="sync_command", required=True)
    status = sync_commands.add_parser(
        "status",
        help="print the backlog of events not yet acknowledged upstream",
        description="Print how many events the upstream broker has not "
        "acknowledged yet, when the oldest of them happened and when the last "
        "acknowledgement arrived. Reads the box's store only; no broker is needed.",
    )
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")


def run(arguments: argparse.Namespace) -> int:
    """Run a ``sync`` command; return the exit code."""
    config = load_site_config(arguments.config)
    report = sync_report(config)
    if arguments.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def sync_report(config: SiteConfig) -> dict[str, Any]:
    """Read the sync figures of the box's store.

    Raises NightboxError when the box has no store yet.
    """
    store = open_store(config, create=False)
    try:
        oldest = store.query_one(
            "SELECT seq, created_at, clock_trusted FROM outbox"
            " WHERE synced_at IS NULL ORDER BY seq LIMIT 1"
        )
        last = store.query_one("SELECT COUNT(synced_at), MAX(synced_at) FROM outbox")
        backlog = store.unsynced_count()
    finally:
        store.close()
    synced, last_synced_at = last if last is not None else (0, None)
    return {
        "site": config.site_id,
        "box": config.box_id,
        "broker": None if config.sync is None else str(config.sync.broker),
        "backlog": backlog,
        "synced": synced,
        "oldest_unsynced": None
        if oldest is None
        else {
            "seq": oldest[0],
            "created_at": oldest[1],
            "clock_trusted": bool(oldest[2]),
        },
        "last_synced_at": last_synced_at,
    }


def print_report(report: dict[str, Any]) -> None:
    """Print the figures of :func:`sync_report` for people."""
    broker = report["broker"]
    target = (
        "no upstream broker ([sync] is not configured)" if broker is None else broker
    )
    print(f"Sync of box {report['box']} (site {report['site']}) to {target}")
    print(f"  backlog:          {report['backlog']:,} events")
    oldest = report["oldest_unsynced"]
    if oldest is None:
        print("  oldest unsynced:  none")
    else:
        clock = "" if oldest["clock_trusted"] else ", box clock untrusted"
        print(
            f"  oldest unsynced:  {_local_time(oldest['created_at'])} "
            f"(seq {oldest['seq']}{clock})"
        )
    last = report["last_synced_at"]
    last_text = "never" if last is None else _local_time(last)
    print(f"  last synced:      {last_text} ({report['synced']:,} events synced)")


def _local_time(unix_s: float) -> str:
    return dt.datetime.fromtimestamp(unix_s).astimezone().isoformat(timespec="seconds")
