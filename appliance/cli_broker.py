"""``nightbox broker files``: write the files of the system mosquitto on demand."""

from __future__ import annotations

import argparse
from typing import Any

from appliance._cli_arguments import add_config_option, load_site_config
from appliance.bus._system_broker import site_broker_files


def add_commands(commands: Any) -> None:
    """Add the ``broker`` command to the ``nightbox`` parser."""
    broker = commands.add_parser(
        "broker", help="write the files of the system mosquitto"
    )
    broker_commands = broker.add_subparsers(dest="broker_command", required=True)
    files = broker_commands.add_parser(
        "files",
        help="write mosquitto.conf, its password file and ACL for a system broker",
        description="Write mosquitto.conf, mosquitto.passwd and mosquitto.acl in "
        "broker.config_dir of a site whose [broker] mode is 'system', as "
        "'nightbox run' does at start. A file is replaced only when its content "
        "changed, so the unit that reloads mosquitto runs only then. Missing "
        "broker passwords are generated in <data_dir>/secrets/broker.json.",
    )
    add_config_option(files)


def run(arguments: argparse.Namespace) -> int:
    """Run a ``broker`` command; return the exit code."""
    config = load_site_config(arguments.config)
    result = site_broker_files(config)
    for path in (result.acl, result.passwd, result.conf):
        state = "written" if path in result.changed else "unchanged"
        print(f"{path}: {state}")
    if not result.changed:
        print("The broker files are up to date; mosquitto needs no reload.")
    return 0
