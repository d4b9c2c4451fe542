"""``nightbox console``: the terminal console's admin PIN and its login file."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from appliance._cli_arguments import add_config_option, load_site_config
from appliance.console.pin import PinFile, pin_path, validate_pin
from appliance.errors import NightboxError
from appliance.service_host import credentials_for
from provisioning.secret_file import write_file_atomically
from provisioning.site_access import CONSOLE, terminal_username

_ANY_ADDRESS = ("0.0.0.0", "::", "")


def add_commands(commands: Any) -> None:
    """Add the ``console`` command to the ``nightbox`` parser."""
    console = commands.add_parser(
        "console", help="set the console's admin PIN, write its login file"
    )
    console_commands = console.add_subparsers(dest="console_command", required=True)
    set_pin = console_commands.add_parser(
        "set-pin",
        help="set the admin PIN that unlocks the terminal console",
        description="Set the console's admin PIN: 6 to 12 digits, not one digit "
        "repeated and not a straight run. Only its scrypt hash is stored, in "
        "<data_dir>/secrets/console.json.",
    )
    add_config_option(set_pin)
    set_pin.add_argument(
        "--pin-stdin",
        action="store_true",
        help="read the PIN from one line of standard input instead of asking twice",
    )
    login = console_commands.add_parser(
        "login-file",
        help="write the console's broker login, for 'nightbox tui' on a laptop",
        description="Write a JSON file with mode 0600 holding the broker URL, "
        "site, box and the console account's password. Keep it like a password.",
    )
    add_config_option(login)
    login.add_argument("--output", type=Path, required=True, help="file to write")
    login.add_argument(
        "--host",
        help="the box's address as the laptop reaches it (default: broker.host of "
        "the site file)",
    )
    login.add_argument(
        "--port",
        type=int,
        help="the broker's port (default: broker.port of the site file)",
    )
    login.add_argument("--force", action="store_true", help="replace an existing file")


def run(arguments: argparse.Namespace) -> int:
    """Run a ``console`` command; return the exit code."""
    config = load_site_config(arguments.config)
    if arguments.console_command == "set-pin":
        pins = PinFile(pin_path(config.data_dir))
        pins.set(_read_pin(from_stdin=arguments.pin_stdin))
        print(f"Console PIN set; its hash is in {pins.path}.")
        return 0
    host = arguments.host or config.broker.host
    port = arguments.port or config.broker.port
    if host in _ANY_ADDRESS:
        raise NightboxError(
            f"broker.host = {host!r} is not an address that a laptop can reach; "
            "pass --host with the box's address on the venue network"
        )
    if not 0 < port < 65536:
        raise NightboxError(
            f"the broker port {port} is not fixed; set broker.port in the site file "
            "or pass --port"
        )
    output: Path = arguments.output
    if output.exists() and not arguments.force:
        raise NightboxError(f"{output} exists; pass --force to replace it")
    username = terminal_username(CONSOLE)
    login = {
        "broker": f"mqtt://{host}:{port}",
        "site": config.site_id,
        "box": config.box_id,
        "username": username,
        "password": credentials_for(config).account(username).password,
    }
    try:
        write_file_atomically(
            output, json.dumps(login, indent=2).encode() + b"\n", 0o600
        )
        output.chmod(0o600)
    except OSError as err:
        raise NightboxError(f"cannot write {output}: {err.strerror}") from err
    print(f"Wrote the console login for {login['broker']} to {output} (mode 0600).")
    return 0


def _read_pin(*, from_stdin: bool) -> str:
    if from_stdin:
        pin = sys.stdin.readline().strip()
        if not pin:
            raise NightboxError(
                "no PIN on standard input; give the PIN as one line, e.g. "
                "'nightbox console set-pin --config FILE --pin-stdin < pin.txt'; "
                "nothing was changed"
            )
        _check(pin)
        return pin
    pin = getpass.getpass("New console PIN: ")
    _check(pin)
    if getpass.getpass("Repeat the PIN: ") != pin:
        raise NightboxError("the two PINs differ; nothing was changed")
    return pin


def _check(pin: str) -> None:
    try:
        validate_pin(pin)
    except ValueError as err:
        raise NightboxError(f"{err}; nothing was changed") from err
