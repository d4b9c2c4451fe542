"""``nightbox sync``: the outbox's sync backlog, and sending events again.

``status`` prints how much of the outbox waits for the upstream broker.
``resend`` marks acknowledged events unsynced again, after an upstream
broker lost them in a crash. Both work on the box's SQLite store only, so
they work while the box runs, while the upstream broker is down, and on a
box without ``[sync]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from appliance._cli_arguments import (
    add_config_option,
    load_site_config,
    open_store,
    whole_number,
)
from appliance.config import SiteConfig
from appliance.errors import NightboxError


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

    resend = sync_commands.add_parser(
        "resend",
        help="mark acknowledged events unsynced so the box sends them again",
        description="Mark the outbox events from a point on as unsynced, so "
        "the running box sends them to the upstream broker again within about "
        "5 seconds, or at its next start. Use it after the upstream broker "
        "lost events it had acknowledged (a crash before it saved them). The "
        "collector stores each event id once, so events it already has change "
        "nothing.",
    )
    add_config_option(resend)

    start = resend.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--from-seq",
        type=whole_number(1),
        metavar="N",
        help="send again every event from outbox seq N on",
    )
    start.add_argument(
        "--since",
        type=_iso_time,
        metavar="ISO-TIME",
        help="send again every event the upstream broker acknowledged at or "
        "after this time, by the box's clock (e.g. 2026-12-04T22:00:00+01:00; "
        "without an offset, the local time zone)",
    )
    resend.add_argument(
        "--yes", action="store_true", help="mark the events without asking"
    )


def _iso_time(text: str) -> float:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 time such as 2026-12-04T22:00:00+01:00, "
            f"not {text!r:.60}"
        ) from err
    return parsed.astimezone().timestamp()


def run(arguments: argparse.Namespace) -> int:
    """Run a ``sync`` command; return the exit code."""
    config = load_site_config(arguments.config)
    if arguments.sync_command == "resend":
        return resend(
            config,
            from_seq=arguments.from_seq,
            synced_since=arguments.since,
            confirmed=arguments.yes,
        )
    report = sync_report(config)
    if arguments.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def resend(
    config: SiteConfig,
    *,
    from_seq: int | None,
    synced_since: float | None,
    confirmed: bool,
) -> int:
    """Mark synced events of a range unsynced, after asking unless ``confirmed``.

    Returns 1 when the operator did not confirm. Raises NightboxError when the
    box has no store, or when confirmation is needed and standard input is
    not a terminal.
    """
    store = open_store(config, create=False)
    try:
        count, lowest, highest = store.synced_range(
            from_seq=from_seq, synced_since=synced_since
        )
        if from_seq is not None:
            scope = f"from seq {from_seq} on"
        else:
            scope = f"acknowledged since {_local_time(synced_since or 0.0)}"
        if count == 0:
            print(f"Box {config.box_id} has no synced events {scope}; nothing to do.")
            return 0
        print(
            f"Box {config.box_id} (site {config.site_id}) has {count:,} synced "
            f"events {scope} (seq {lowest} to {highest}). Marking them unsynced "
            "sends them to the upstream broker again."
        )
        if not confirmed and not _confirm():
            print("Nothing marked.")
            return 1
        marked = store.mark_unsynced(from_seq=from_seq, synced_since=synced_since)
    finally:
        store.close()
    print(
        f"Marked {marked:,} events unsynced. A running box sends them within "
        "about 5 seconds, a stopped one at its next start; the collector stores "
        "each event id once."
    )
    return 0


def _confirm() -> bool:
    if not sys.stdin.isatty():
        raise NightboxError(
            "standard input is not a terminal, so nightbox cannot ask for "
            "confirmation; pass --yes to mark the events"
        )
    answer = input("Mark them unsynced? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


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
