"""``nightbox update``: signed update bundles and the box's two application slots.

``keygen`` and ``bundle`` run on the machine that builds releases.
``apply``, ``status`` and ``boot-check`` run on the box as root, through
``/var/lib/nightbox/app/current/venv/bin/python -m appliance update ...``.

Exit codes:

- 0: success, or nothing to do.
- 1: the update was rejected, failed, or was switched back.
- 2: invalid input, such as an unreadable key or site file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from appliance.config import SiteConfig, load_config
from appliance.errors import ConfigError
from appliance.image.layout import SITE_FILE_NAME, SLOT_NAMES, STATE_DIR
from appliance.update.config import UpdateConfig
from appliance.update.trust import trusted_update_table

_LOGGER = logging.getLogger(__name__)

DEFAULT_SITE_FILE = STATE_DIR / SITE_FILE_NAME


def add_commands(commands: Any) -> None:
    """Add ``nightbox update`` and its subcommands to the ``nightbox`` parser."""
    update = commands.add_parser(
        "update",
        help="build, apply and check signed software updates",
        description="Signed update bundles and the box's two application slots. "
        "See docs/updates.md.",
    )
    actions = update.add_subparsers(dest="update_command", required=True)

    keygen = actions.add_parser(
        "keygen",
        help="create the Ed25519 key pair that signs update bundles",
        description="Write update-key (private, mode 0600) and update-key.pub "
        "(the raw public key as base64) into a folder. Never overwrites a key.",
    )
    keygen.add_argument(
        "--output-dir", type=Path, required=True, help="folder for the two key files"
    )

    bundle = actions.add_parser(
        "bundle",
        help="sign a bundle of wheels and reader firmware",
        description="Write a signed update bundle (.nbu) of Nightbox version V.",
    )
    bundle.add_argument(
        "--key", type=Path, required=True, help="update-key from 'update keygen'"
    )
    bundle.add_argument(
        "--version", required=True, help="Nightbox version of the bundle (PEP 440)"
    )
    bundle.add_argument(
        "--wheel",
        type=Path,
        action="append",
        required=True,
        help="a wheel to install; repeat for dependency or per-architecture wheels",
    )
    bundle.add_argument(
        "--firmware",
        type=Path,
        help="reader firmware folder (main.py and nbreader/*.py); without it the "
        "box keeps its readers' firmware",
    )
    bundle.add_argument(
        "--output", type=Path, required=True, help="the bundle file to write (.nbu)"
    )

    apply = actions.add_parser(
        "apply",
        help="install a bundle into the other slot, switch, and check the box",
        description="Verify a bundle, install it into the inactive slot, switch "
        "to it, restart the box and keep it only when the box reports the new "
        "version on the bus within [update] health_timeout_s. Runs as root.",
    )
    apply.add_argument("bundle", type=Path, nargs="?", help="the .nbu file")
    apply.add_argument(
        "--request",
        action="store_true",
        help="apply the bundle named in updates/request.json (written by the "
        "remote command 'update'), once",
    )
    _site_options(apply)

    status = actions.add_parser(
        "status", help="show the active slot, both slots' versions, the last result"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _site_options(status)

    boot_check = actions.add_parser(
        "boot-check",
        help="return to a complete slot after an interrupted update (once per boot)",
    )
    _site_options(boot_check)


def _site_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_SITE_FILE,
        help=f"site configuration (TOML) with the [update] table (default "
        f"{DEFAULT_SITE_FILE})",
    )
    parser.add_argument(
        "--app-dir",
        type=Path,
        help="application folder with the slots (default: [update] app_dir)",
    )


def run(arguments: argparse.Namespace) -> int:
    """Run an ``update`` subcommand; return the exit code."""
    command = arguments.update_command
    if command in ("apply", "status", "boot-check"):
        # pip and the restart command run in other working folders, and the
        # site file's relative paths resolve from its own folder.
        arguments.config = arguments.config.absolute()
        if arguments.app_dir is not None:
            arguments.app_dir = arguments.app_dir.absolute()
    if command == "keygen":
        return _keygen(arguments)
    if command == "bundle":
        return _bundle(arguments)
    if command == "apply":
        return _apply(arguments)
    if command == "status":
        return _status(arguments)
    return _boot_check(arguments)


def _keygen(arguments: argparse.Namespace) -> int:
    from appliance.update.keys import generate_key_pair

    files = generate_key_pair(arguments.output_dir)
    print(f"Key id:      {files.key_id}")
    print(f"Private key: {files.private_key} (mode 0600; keep it off the boxes)")
    print(f"Public key:  {files.public_key}")
    print(
        "Build images with 'nightbox image build --update-key "
        f"{files.public_key}'; sign bundles with 'nightbox update bundle --key "
        f"{files.private_key}'."
    )
    return 0


def _bundle(arguments: argparse.Namespace) -> int:
    from appliance.update.bundle import write_bundle
    from appliance.update.keys import load_private_key

    private_key = load_private_key(arguments.key)
    manifest = write_bundle(
        arguments.output,
        private_key,
        version=arguments.version,
        wheels=arguments.wheel,
        firmware_dir=arguments.firmware,
    )
    size = arguments.output.stat().st_size
    print(f"Bundle:   {arguments.output} ({size} bytes)")
    print(f"Version:  {manifest.version}")
    print(f"Wheels:   {', '.join(Path(w.path).name for w in manifest.wheels)}")
    print(f"Firmware: {len(manifest.firmware)} files")
    print(f"Manifest: sha256 {manifest.sha256}")
    return 0


def _apply(arguments: argparse.Namespace) -> int:
    from appliance.update.updater import UpdateFailed, Updater

    if arguments.request == (arguments.bundle is not None):
        raise ConfigError("give either a bundle file or --request, not both or neither")
    site = load_config(arguments.config)
    table = trusted_update_table(arguments.config, site.update)
    updater = Updater(_update_config(table, arguments), site)
    try:
        if arguments.request:
            outcome = updater.apply_request()
            if outcome is None:
                print(f"No update request in {updater.config.updates_dir}")
                return 0
        else:
            outcome = updater.apply(arguments.bundle)
    except UpdateFailed as err:
        print(f"nightbox update: {err}", file=sys.stderr)
        return 1
    print(f"Installed Nightbox {outcome.version} in {outcome.seconds:.1f} s")
    status = updater.status()
    print(f"Active slot: {status['state']['active']}")
    return 0


def _status(arguments: argparse.Namespace) -> int:
    from appliance.update.updater import Updater

    config = _update_config(_site_update(arguments.config), arguments)
    updater = Updater(config, None)
    if not any(updater.app.slot(slot).is_dir() for slot in SLOT_NAMES):
        print(
            f"nightbox update: {updater.app.path} has no application slots "
            f"({', '.join(SLOT_NAMES)}), so this is not a box's application "
            "folder; give --app-dir or a site file whose [update] app_dir has them",
            file=sys.stderr,
        )
        return 2
    status = updater.status()
    if arguments.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    state = status["state"] or {}
    print(f"Application folder: {status['app_dir']}")
    print(f"Active slot:        {state.get('active', '?')}")
    print(f"current ->          {status['current'] or 'missing'}")
    if state.get("trying"):
        print(
            f"On trial:           {state['trying']} "
            f"({state.get('trying_version') or '?'})"
        )
    for slot, info in status["slots"].items():
        text = (
            "incomplete"
            if info is None
            else f"{info['version']} (installed {info['installed_at']})"
        )
        print(f"{slot}:             {text}")
    last = status["last_result"]
    if last is None:
        print("Last result:        none")
    else:
        words = [last["result"]]
        if last.get("version"):
            words.append(str(last["version"]))
        reason = f", {last['reason']}" if last.get("reason") else ""
        print(f"Last result:        {' '.join(words)}{reason} at {last.get('at')}")
        if last.get("message"):
            print(f"                    {last['message']}")
    return 0


def _boot_check(arguments: argparse.Namespace) -> int:
    from appliance.update.updater import Updater

    config = _update_config(_site_update(arguments.config), arguments)
    changes = Updater(config, None).boot_check()
    if not changes:
        print("Slots are consistent; nothing changed")
    for change in changes:
        print(change)
    return 0


def _site_update(path: Path) -> UpdateConfig:
    """Return the ``[update]`` table of ``path``, or the defaults when it is unusable.

    ``status`` and ``boot-check`` must work on a box whose site file is
    broken, because the slots do not depend on it.
    """
    try:
        site: SiteConfig = load_config(path)
    except (ConfigError, OSError) as err:
        _LOGGER.warning("Using the default [update] settings: %s", err)
        return UpdateConfig()
    return trusted_update_table(path, site.update)


def _update_config(config: UpdateConfig, arguments: argparse.Namespace) -> UpdateConfig:
    if arguments.app_dir is None:
        return config
    from dataclasses import replace

    return replace(config, app_dir=arguments.app_dir)
