"""``nightbox fleet``: the operator's commands for managing boxes from afar.

``keygen``, ``account`` and ``broker-files`` prepare keys and broker
accounts offline. ``list``, ``send``, ``bundle`` and ``tail`` talk to a
broker through :mod:`appliance.remote.fleet_client`: the fleet's upstream
broker, or one box's local broker, which carry the same topics.

Exit codes:

- 0: success.
- 1: a box rejected the document, or ``list`` saw no box.
- 2: invalid input, an unusable key or credentials file, an unknown or
  offline box, or a broker that cannot be used.
- 3: no result within the timeout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance._cli_arguments import seconds_between, whole_number
from appliance._toml_values import ID_PATTERN
from appliance.bus import envelope
from appliance.bus.topics import Topics
from appliance.bus.url import BrokerUrl, parse_broker_url
from appliance.errors import PayloadError
from appliance.remote.document_types import (
    BUILTIN_COMMANDS,
    BUNDLE_TYPES,
    MAX_BUNDLE_BYTES,
    MAX_COMMAND_BYTES,
    REGISTERED_COMMANDS,
)
from appliance.remote.fleet_client import (
    INVALID,
    OFFLINE,
    ONLINE,
    RESULT_FIELDS,
    RETAINED_WAIT_S,
    STATE_FIELDS,
    SYNC_FIELDS,
    BoxView,
    FleetClient,
    FleetError,
    Message,
    await_availability,
    await_results,
    box_filter,
    check_transport,
    checked_field,
    collect_availability,
    load_login,
    parse_box_topic,
    printable,
    read_availability,
    readable_by_others,
    survey_boxes,
)
from appliance.signed_documents import MAX_VALIDITY_S, key_id, sign_document
from provisioning.credentials import SiteCredentials, hash_password
from provisioning.fleet_access import (
    COLLECTOR,
    FleetBox,
    fleet_policy,
    operator_username,
    upstream_box_username,
)
from provisioning.fleet_tls import (
    FleetCa,
    make_fleet_ca,
    reissue_broker_certificate,
    replace_file_keeping_owner,
)
from provisioning.secret_file import write_file_atomically, write_secret_file
from provisioning.site_access import OPERATOR as LOCAL_OPERATOR

_LOGGER = logging.getLogger(__name__)

EXIT_REJECTED = 1
EXIT_NO_BOXES = 1
EXIT_TIMEOUT = 3
PRIVATE_KEY_NAME = "operator.key"
PUBLIC_KEY_NAME = "operator.pub"
PASSWORD_FILE_NAME = "mosquitto.passwd"
ACL_FILE_NAME = "mosquitto.acl"
# The document type pattern that appliance.signed_documents accepts.
_DOCUMENT_TYPE = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")
# A DNS name: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
_ARGUMENT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")
# Defaults, in seconds. A command is meant for now, so it expires soon, but
# a bundle may wait for a box that comes online later in the evening.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_COMMAND_VALIDITY_S = 300.0
DEFAULT_BUNDLE_VALIDITY_S = 24 * 3600.0
MAX_TIMEOUT_S = 3600.0
# The text shown for a field of the wrong type in the table and tail lines.
_INVALID_TEXT = "invalid"


def add_commands(commands: Any) -> None:
    """Add the ``fleet`` command and its subcommands to the ``nightbox`` parser."""
    fleet = commands.add_parser(
        "fleet",
        help="manage boxes from afar: keys, accounts, commands, bundles",
        description="Manage a fleet of boxes: exit 0 on success, 1 when a box "
        "rejected a document or no box was seen, 2 on invalid input or an "
        "unusable broker, key or box, 3 when no result came in time.",
    )
    fleet_commands = fleet.add_subparsers(dest="fleet_command", required=True)
    _add_keygen(fleet_commands)
    _add_ca(fleet_commands)
    _add_account(fleet_commands)
    _add_broker_files(fleet_commands)
    _add_list(fleet_commands)
    _add_send(fleet_commands)
    _add_bundle(fleet_commands)
    _add_assets(fleet_commands)
    _add_tail(fleet_commands)


def _add_keygen(fleet_commands: Any) -> None:
    keygen = fleet_commands.add_parser(
        "keygen",
        help="create the operator's Ed25519 signing key pair",
        description=f"Write {PRIVATE_KEY_NAME} (PKCS8 PEM, mode 0600) and "
        f"{PUBLIC_KEY_NAME} (PEM) into a folder and print the key id. Each box "
        f"lists {PUBLIC_KEY_NAME} in [fleet] operator_keys. An existing "
        f"{PRIVATE_KEY_NAME} is never overwritten.",
    )
    keygen.add_argument(
        "--out", type=Path, required=True, help="folder for the two key files"
    )


def _add_ca(fleet_commands: Any) -> None:
    ca = fleet_commands.add_parser(
        "ca",
        help="create a private CA and the upstream broker's TLS certificate",
        description="Write ca.pem (give it to every box as [sync] ca_file and "
        "to operators as --ca), ca.key (mode 0600, keep it offline), and the "
        "broker's broker.pem and broker.key (mode 0600). An existing ca.key is "
        "never overwritten; --reissue keeps it and issues a new broker "
        "certificate.",
    )
    ca.add_argument("--out", type=Path, required=True, help="folder for the files")
    ca.add_argument(
        "--host",
        action="append",
        required=True,
        type=_host,
        help="DNS name or IP address that boxes and operators use to reach the "
        "broker, repeatable; the certificate is valid for these only",
    )
    ca.add_argument(
        "--reissue",
        action="store_true",
        help="keep the CA in --out (ca.key, ca.pem) and write a new broker.pem "
        "and broker.key for the --host names, so boxes keep their ca_file",
    )


def _add_account(fleet_commands: Any) -> None:
    account = fleet_commands.add_parser(
        "account",
        help="create or reuse an upstream broker account and write its login",
        description="Create an account in the fleet's accounts file (clear "
        "passwords, keep it secret), or reuse the existing one, and write its "
        'login {"username", "password"} with mode 0600. A box reads that file '
        "as [sync] credentials_file; operators pass it as --credentials.",
    )
    account.add_argument(
        "--accounts",
        type=Path,
        required=True,
        help="the fleet's accounts file (JSON, created when missing)",
    )
    account.add_argument(
        "--site", type=_identifier, help="site id of the box (with --box)"
    )
    account_owner = account.add_mutually_exclusive_group(required=True)
    account_owner.add_argument("--box", type=_identifier, help="box id (with --site)")
    account_owner.add_argument("--operator", type=_identifier, help="operator name")
    account_owner.add_argument(
        "--collector", action="store_true", help=f"the collector ({COLLECTOR!r})"
    )
    account.add_argument(
        "--out", type=Path, required=True, help="credentials file to write"
    )


def _add_broker_files(fleet_commands: Any) -> None:
    files = fleet_commands.add_parser(
        "broker-files",
        help="write the upstream mosquitto's password file and ACL file",
        description=f"Write {PASSWORD_FILE_NAME} (password hashes only) and "
        f"{ACL_FILE_NAME} for the listed boxes, operators and collectors, "
        "creating their accounts when missing. Point mosquitto's password_file "
        "and acl_file at them and reload it.",
    )
    files.add_argument(
        "--accounts",
        type=Path,
        required=True,
        help="the fleet's accounts file, which 'nightbox fleet account' creates",
    )
    files.add_argument(
        "--boxes",
        type=_box_list,
        required=True,
        help="comma-separated boxes as site/box, e.g. club/box-1,annex/box-2",
    )
    files.add_argument(
        "--operators",
        type=_name_list,
        default=[],
        help="comma-separated operator names (default: none)",
    )
    files.add_argument(
        "--collectors",
        type=_name_list,
        default=[COLLECTOR],
        help=f"comma-separated collector usernames (default: {COLLECTOR})",
    )
    files.add_argument(
        "--out", type=Path, required=True, help="folder for the two files"
    )


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default=os.environ.get("NIGHTBOX_FLEET_BROKER"),
        help="broker URL, mqtts://host:port (mqtt:// only on this machine); "
        "default: $NIGHTBOX_FLEET_BROKER",
    )
    parser.add_argument(
        "--ca",
        help="CA certificate (PEM) that signed the broker's certificate; "
        "default: $NIGHTBOX_FLEET_CA for an mqtts:// broker, else the system's "
        "CAs; --ca '' ignores $NIGHTBOX_FLEET_CA",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        default=os.environ.get("NIGHTBOX_FLEET_CREDENTIALS"),
        help='login file {"username", "password"} (JSON, mode 0600); '
        "default: $NIGHTBOX_FLEET_CREDENTIALS",
    )


def _add_list(fleet_commands: Any) -> None:
    listing = fleet_commands.add_parser(
        "list",
        help="list boxes with their availability and latest telemetry",
        description="List the boxes whose retained availability or telemetry "
        "the broker holds. Exits 1 when it saw none.",
    )
    _connection_options(listing)
    listing.add_argument("--site", type=_identifier, help="only this site")
    listing.add_argument(
        "--wait",
        type=seconds_between(0.1, 60.0),
        default=RETAINED_WAIT_S,
        help=f"seconds to wait for the retained messages (default {RETAINED_WAIT_S:g})",
    )
    listing.add_argument(
        "--json", action="store_true", help="print one JSON object per box"
    )


def _add_send(fleet_commands: Any) -> None:
    send = fleet_commands.add_parser(
        "send",
        help="sign a command, send it to a box and print its result",
        description="Sign a command with the operator key, send it to one box "
        "and wait for its result. Arguments are key=value; a value that is "
        "JSON (42, true, null, [1,2], {...}, quoted strings) is sent as that "
        "value, any other value as a string. Exits 0 when the box ran it, 1 "
        "when the box rejected it, 3 when no result came in time.",
    )
    _connection_options(send)
    _document_options(send, box_required=True)
    send.add_argument(
        "name",
        metavar="COMMAND",
        type=_document_type,
        help=", ".join((*BUILTIN_COMMANDS, *REGISTERED_COMMANDS)),
    )
    send.add_argument(
        "arguments", metavar="KEY=VALUE", nargs="*", help="command arguments"
    )
    send.add_argument(
        "--validity",
        type=seconds_between(1.0, MAX_VALIDITY_S),
        default=DEFAULT_COMMAND_VALIDITY_S,
        help="seconds the signed command stays valid "
        f"(default {DEFAULT_COMMAND_VALIDITY_S:g})",
    )


def _add_bundle(fleet_commands: Any) -> None:
    bundle = fleet_commands.add_parser(
        "bundle",
        help="sign a bundle and send it to one box or every box of a site",
        description="Sign a versioned bundle with the operator key and send it "
        "to one box (--box) or to every box of the site, then wait for the "
        "results of the boxes that are online. Exits 0 when every one applied "
        "it, 1 when one rejected it, 3 when one gave no result in time.",
    )
    _connection_options(bundle)
    _document_options(bundle, box_required=False)
    bundle.add_argument(
        "name", metavar="TYPE", type=_document_type, help=", ".join(BUNDLE_TYPES)
    )
    bundle.add_argument(
        "--version",
        type=whole_number(1, 2**63 - 1),
        required=True,
        help="bundle version, 1 to 2^63-1; must be newer than the applied one",
    )
    bundle.add_argument(
        "--file",
        required=True,
        help="bundle body: a file with one JSON object, or - for standard input",
    )
    bundle.add_argument(
        "--validity",
        type=seconds_between(1.0, MAX_VALIDITY_S),
        default=DEFAULT_BUNDLE_VALIDITY_S,
        help="seconds the signed bundle stays valid "
        f"(default {DEFAULT_BUNDLE_VALIDITY_S:g})",
    )


def _add_assets(fleet_commands: Any) -> None:
    assets = fleet_commands.add_parser(
        "assets", help="send asset blobs and their signed manifest upstream"
    )
    assets_commands = assets.add_subparsers(dest="assets_command", required=True)
    for name, summary, text in (
        (
            "send",
            "publish a packed folder's blobs, then send its manifest",
            "Publish every blob of a folder packed with `nightbox assets pack` as "
            "retained chunks for the site, then send its manifest.json as an "
            "assets bundle and wait for the boxes' results. Boxes fetch the "
            "blobs they lack, also when they come online later.",
        ),
        (
            "clear",
            "remove a packed folder's retained chunks from the broker",
            "Remove the retained chunks of a packed folder's blobs from the "
            "broker, once no box needs them.",
        ),
    ):
        command = assets_commands.add_parser(name, help=summary, description=text)
        _connection_options(command)
        command.add_argument("folder", type=Path, metavar="FOLDER")
        command.add_argument("--site", type=_identifier, required=True, help="site id")
        if name == "clear":
            continue
        command.add_argument(
            "--box",
            type=_identifier,
            help="send the manifest to this box only (default: every box of the site)",
        )
        command.add_argument(
            "--timeout",
            type=seconds_between(0.1, MAX_TIMEOUT_S),
            default=DEFAULT_TIMEOUT_S,
            help=f"seconds to wait for results (default {DEFAULT_TIMEOUT_S:g})",
        )
        command.add_argument(
            "--queue",
            action="store_true",
            help="send even when the boxes are offline; they fetch the blobs when "
            "they reconnect",
        )
        command.add_argument(
            "--json", action="store_true", help="print each result as one JSON object"
        )


def _document_options(parser: argparse.ArgumentParser, *, box_required: bool) -> None:
    parser.add_argument("--site", type=_identifier, required=True, help="site id")
    parser.add_argument(
        "--box",
        type=_identifier,
        required=box_required,
        help="box id" if box_required else "box id (default: every box of the site)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        required=True,
        help=f"operator private key ({PRIVATE_KEY_NAME} from 'fleet keygen')",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_between(0.1, MAX_TIMEOUT_S),
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for results (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--queue",
        action="store_true",
        help="send even when the box is offline; it runs the document if it "
        "reconnects before it expires and its broker session kept it",
    )
    parser.add_argument(
        "--json", action="store_true", help="print each result as one JSON object"
    )


def _add_tail(fleet_commands: Any) -> None:
    tail = fleet_commands.add_parser(
        "tail",
        help="print telemetry, availability changes and results as they arrive",
        description="Print the retained state first, then every change of "
        "availability, tele/state and tele/sync and every stat/result, one "
        "line each, until Ctrl-C (exit 0) or --count messages.",
    )
    _connection_options(tail)
    tail.add_argument("--site", type=_identifier, help="only this site")
    tail.add_argument("--box", type=_identifier, help="only this box")
    tail.add_argument(
        "--count", type=whole_number(1), help="stop after this many messages"
    )
    tail.add_argument(
        "--json", action="store_true", help="print one JSON object per message"
    )


def _identifier(text: str) -> str:
    if not ID_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r:.40} is invalid; ids are 1-32 lowercase letters, digits "
            "and '-', starting with a letter or digit"
        )
    return text


def _host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r:.70} is neither an IP address nor a DNS name; give a name "
            "like fleet.example.org or an address like 192.0.2.10"
        )
    return text.lower()


def _document_type(text: str) -> str:
    if not _DOCUMENT_TYPE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r:.40} is invalid; names are 1-32 lowercase letters, digits "
            "and '-', starting with a letter"
        )
    return text


def _box_list(text: str) -> list[FleetBox]:
    boxes = []
    for item in _split(text):
        site, _, box = item.partition("/")
        if not ID_PATTERN.match(site) or not ID_PATTERN.match(box):
            raise argparse.ArgumentTypeError(
                f"{item!r:.70} is not site/box; give ids like club/box-1"
            )
        boxes.append(FleetBox(site, box))
    if not boxes:
        raise argparse.ArgumentTypeError("give at least one box as site/box")
    return boxes


def _name_list(text: str) -> list[str]:
    return [_identifier(name) for name in _split(text)]


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def run(arguments: argparse.Namespace) -> int:
    """Run a ``fleet`` subcommand; return the exit code."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "keygen": _keygen,
        "ca": _ca,
        "account": _account,
        "broker-files": _broker_files,
        "list": _list,
        "send": _send,
        "bundle": _bundle,
        "assets": _assets,
        "tail": _tail,
    }
    return handlers[arguments.fleet_command](arguments)


def _warn(text: str) -> None:
    print(f"nightbox fleet: warning: {text}", file=sys.stderr)


def _keygen(arguments: argparse.Namespace) -> int:
    folder: Path = arguments.out
    private_path = folder / PRIVATE_KEY_NAME
    public_path = folder / PUBLIC_KEY_NAME
    if private_path.exists():
        raise FleetError(
            f"{private_path} already exists and keygen never overwrites a key; "
            "choose another --out folder or move the old key away"
        )

    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    try:
        write_secret_file(private_path, private_pem)
        write_file_atomically(public_path, public_pem, 0o644)
    except OSError as err:
        raise FleetError(
            f"cannot write the key files in {folder} ({err.strerror}); choose a "
            "writable --out folder"
        ) from err

    print(f"Key id:     {key_id(private_key.public_key())}")
    print(f"Public key: {public_path}")
    print(
        f"List {PUBLIC_KEY_NAME} in each box's [fleet] operator_keys. Keep "
        f"{PRIVATE_KEY_NAME} secret: it signs commands and bundles."
    )
    return 0


def _ca(arguments: argparse.Namespace) -> int:
    folder: Path = arguments.out
    hosts = list(dict.fromkeys(arguments.host))
    if arguments.reissue:
        files = _reissue(folder, hosts)
    elif (folder / "ca.key").exists():
        raise FleetError(
            f"{folder / 'ca.key'} already exists and ca never overwrites a CA key; "
            "pass --reissue to keep the CA and issue a new broker certificate, "
            "or choose another --out folder"
        )
    else:
        try:
            files = make_fleet_ca(folder, hosts)
        except OSError as err:
            raise FleetError(
                f"cannot write the CA files in {folder} ({err.strerror}); choose "
                "a writable --out folder"
            ) from err

    print(f"CA certificate:     {files.ca_certificate}")
    print(f"Broker certificate: {files.certificate} (for {', '.join(arguments.host)})")
    print(f"Broker key:         {files.key}")
    print(
        f"Give {files.ca_certificate.name} to every box ([sync] ca_file) and "
        f"operator (--ca). Keep {folder / 'ca.key'} offline."
    )
    print("Set in the upstream broker's mosquitto.conf:")
    print("  listener 8883")
    print(f"  certfile {files.certificate.resolve()}")
    print(f"  keyfile {files.key.resolve()}")
    print("  tls_version tlsv1.2")
    if arguments.reissue:
        print(
            "The CA is unchanged, so boxes and operators keep their ca.pem. "
            "Restart the broker to serve the new certificate."
        )
    return 0


def _reissue(folder: Path, hosts: list[str]) -> FleetCa:
    if not (folder / "ca.key").is_file():
        raise FleetError(
            f"{folder / 'ca.key'} not found, so there is no CA to reissue with; "
            "give the --out folder of the first 'nightbox fleet ca', or leave "
            "out --reissue to create a CA"
        )
    try:
        return reissue_broker_certificate(folder, hosts)
    except OSError as err:
        raise FleetError(
            f"cannot use the CA files in {folder} ({err.strerror}); check that "
            "ca.key and ca.pem are readable and the folder is writable"
        ) from err
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise FleetError(
            f"cannot use the CA in {folder} ({err}); give the folder with the "
            "ca.key and ca.pem that 'nightbox fleet ca' wrote"
        ) from err


def _open_accounts(path: Path) -> tuple[SiteCredentials, set[str]]:
    """Open the fleet's accounts file; also return the usernames it had."""
    try:
        # New passwords for every account would lock every box out until
        # each one gets its new login, so the advice is never to replace it.
        accounts = SiteCredentials(
            path,
            invalid_advice="restore the file from a backup or fix its JSON; "
            "do not replace it, because new passwords would lock out every "
            "box of the fleet",
        )
    except ValueError as err:
        raise FleetError(str(err)) from err
    existing: set[str] = set()
    if path.exists():
        existing = set(json.loads(path.read_text()))
        if readable_by_others(path):
            _warn(
                f"accounts file {path} contains every upstream password in clear "
                f"text and is accessible to other users; run chmod 600 {path}"
            )
    return accounts, existing


def _account(arguments: argparse.Namespace) -> int:
    if arguments.box is not None:
        if arguments.site is None:
            raise FleetError("--box needs --site; give the box's site id")
        username = upstream_box_username(arguments.site, arguments.box)
    elif arguments.site is not None:
        raise FleetError("--site belongs to --box; leave it out here")
    elif arguments.operator is not None:
        username = operator_username(arguments.operator)
    else:
        username = COLLECTOR
    accounts, existing = _open_accounts(arguments.accounts)
    try:
        account = accounts.account(username)
        login = {"username": account.username, "password": account.password}
        write_secret_file(arguments.out, json.dumps(login).encode())
    except OSError as err:
        raise FleetError(
            f"cannot write {err.filename or arguments.out} ({err.strerror}); "
            "check the path and its folder's permissions"
        ) from err
    if username in existing:
        print(
            f"Account {username} already exists in {arguments.accounts}; its "
            "password is unchanged."
        )
    else:
        print(f"Created account {username} in {arguments.accounts}.")
    print(f"Wrote its login to {arguments.out} (mode 0600).")
    if arguments.box is not None:
        print(
            "Copy the file to the box and set [sync] credentials_file to its "
            "path (default <data_dir>/secrets/upstream.json)."
        )
    if username not in existing:
        print(
            "Run 'nightbox fleet broker-files' again and reload the broker, so "
            "it accepts the new account."
        )
    return 0


def _broker_files(arguments: argparse.Namespace) -> int:
    if not arguments.accounts.is_file():
        raise FleetError(
            f"accounts file {arguments.accounts} not found; give the fleet's "
            "existing accounts file, or create accounts first with 'nightbox "
            f"fleet account --accounts {arguments.accounts} ...'"
        )

    policy = fleet_policy(arguments.boxes, arguments.operators, arguments.collectors)
    accounts, existing = _open_accounts(arguments.accounts)
    folder: Path = arguments.out
    password_path = folder / PASSWORD_FILE_NAME
    acl_path = folder / ACL_FILE_NAME
    password_lines = []
    created_paths: list[Path] = []
    try:
        for username in policy.usernames:
            password = accounts.account(username).password
            password_lines.append(f"{username}:{hash_password(password)}\n")
        if not folder.is_dir():
            folder.mkdir(mode=0o700, parents=True)
            folder.chmod(0o700)
            created_paths.append(folder)
        for path, data in (
            (password_path, "".join(password_lines).encode()),
            (acl_path, policy.render_mosquitto().encode()),
        ):
            if replace_file_keeping_owner(path, data):
                created_paths.append(path)
    except OSError as err:
        raise FleetError(
            f"cannot write {err.filename or folder} ({err.strerror}); check the "
            "path and its folder's permissions, and run as the owner of the "
            "existing files or as root"
        ) from err

    created = [name for name in policy.usernames if name not in existing]
    if created:
        print(f"Created accounts in {arguments.accounts}: {', '.join(created)}")
    left_out = sorted(existing - set(policy.usernames))
    if left_out:
        _warn(
            f"accounts in {arguments.accounts} left out of the broker files, so "
            f"they cannot log in: {', '.join(left_out)}; add them to --boxes, "
            "--operators or --collectors to keep them"
        )
    for path in (password_path, acl_path):
        if path in created_paths:
            print(f"Wrote {path} (mode 0600).")
        else:
            print(f"Wrote {path} (owner, group and mode kept).")

    if created_paths and os.geteuid() == 0:
        # mosquitto started as root drops to the 'mosquitto' user, which
        # could not read root's 0600 files after a reload.
        command = shlex.join(["chown", "mosquitto:", *map(str, created_paths)])
        print("Give the new files to the user mosquitto runs as:")
        print(f"  {command}")
    print("Set in the upstream broker's mosquitto.conf, then reload it:")
    print(f"  password_file {password_path.resolve()}")
    print(f"  acl_file {acl_path.resolve()}")
    return 0


def _open_client(arguments: argparse.Namespace) -> FleetClient:
    if not arguments.broker:
        raise FleetError(
            "no broker given; pass --broker mqtts://host:port or set "
            "NIGHTBOX_FLEET_BROKER"
        )
    broker = parse_broker_url(arguments.broker)
    ca_file = _ca_file(arguments.ca, broker)
    check_transport(broker, ca_file)
    if arguments.credentials is None:
        raise FleetError(
            "no credentials given; pass --credentials FILE (the JSON login that "
            "'nightbox fleet account' writes) or set NIGHTBOX_FLEET_CREDENTIALS"
        )
    path = Path(arguments.credentials)
    login = load_login(path)
    if readable_by_others(path):
        _warn(
            f"credentials file {path} is accessible to other users; run chmod "
            f"600 {path}"
        )
    if not _is_operator_account(login.username):
        # mosquitto 2.0 grants a subscription that its ACL denies and then
        # delivers nothing, so the commands would only see no boxes.
        _warn(
            f"{path} logs in as {login.username!r}, which is not an operator "
            f"account ({operator_username('<name>')} upstream, "
            f"{LOCAL_OPERATOR} on a box's local broker); with another account "
            "the broker may deliver few or none of the boxes' topics"
        )
    return FleetClient(broker, login, ca_file=ca_file)


def _ca_file(option: str | None, broker: BrokerUrl) -> Path | None:
    """Return the CA file from ``--ca``, else from $NIGHTBOX_FLEET_CA.

    An empty ``--ca`` means the system's CAs. The environment's CA is for
    the upstream broker, so it is ignored for a plain ``mqtt://`` broker,
    such as a box's local one. An explicit ``--ca`` is kept, so that
    check_transport rejects it with mqtt://.
    """
    if option is not None:
        return Path(option) if option else None
    from_environment = os.environ.get("NIGHTBOX_FLEET_CA")
    if not from_environment:
        return None
    if not broker.tls:
        _LOGGER.info(
            "Ignored NIGHTBOX_FLEET_CA=%s, because broker %s does not use TLS",
            from_environment,
            broker,
        )
        return None
    return Path(from_environment)


def _is_operator_account(username: str) -> bool:
    prefix = operator_username("")
    return username == LOCAL_OPERATOR or (
        username.startswith(prefix) and len(username) > len(prefix)
    )


def _list(arguments: argparse.Namespace) -> int:
    with _open_client(arguments) as client:
        survey = survey_boxes(client, arguments.site, arguments.wait)
    for problem in survey.unreadable:
        _warn(f"skipped a retained message: {printable(problem)}")
    if not survey.boxes:
        where = box_filter(arguments.site, None, "#")
        print(
            f"nightbox fleet list: no boxes seen on {client.broker} under {where} "
            f"within {arguments.wait:g} s; check --site, or wait until a box "
            "has connected once, or the account may not read these topics",
            file=sys.stderr,
        )
        return EXIT_NO_BOXES
    if arguments.json:
        for view in survey.boxes:
            # ensure_ascii escapes C1 and bidi characters as well as C0.
            print(json.dumps(view.to_json(), sort_keys=True, ensure_ascii=True))
        return 0
    print(_table(survey.boxes))
    return 0


def _table(views: Iterable[BoxView]) -> str:
    header = ("SITE", "BOX", "STATE", "LAST TELEMETRY", "GUESTS", "BACKLOG", "READERS")
    rows = [header]
    for view in views:
        readers = "-"
        readers_online = view.state_field("readers_online")
        if readers_online is not None:
            readers = f"{_text(readers_online)}/{_text(view.state_field('readers'))}"
        rows.append(
            (
                # The ids come from the topic, which a box chooses.
                printable(view.site),
                printable(view.box),
                view.availability or "unknown",
                _time(view.telemetry_at),
                _text(view.state_field("guests_in")),
                _text(view.sync_backlog()),
                readers,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _text(value: Any) -> str:
    """Format a checked field for the table: a value, "-" or "invalid"."""
    if value is None:
        return "-"
    if value is INVALID:
        return _INVALID_TEXT
    return printable(str(value))


def _time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    try:
        moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (OverflowError, OSError, ValueError):
        # A box's clock or message may carry a time beyond year 9999.
        return _INVALID_TEXT
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the operator's private key; the error never quotes the file."""
    hint = f"give the {PRIVATE_KEY_NAME} that 'nightbox fleet keygen' wrote"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FleetError(
            f"cannot read key file {path} ({err.strerror}); {hint}"
        ) from err
    if b"PUBLIC KEY-----" in data:
        raise FleetError(
            f"key file {path} is a public key; sign with the private key, {hint}"
        )
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise FleetError(
            f"key file {path} is encrypted; {hint} (unencrypted, mode 0600)"
        ) from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise FleetError(f"key file {path} is not a PEM private key; {hint}") from err
    if not isinstance(private_key, Ed25519PrivateKey):
        raise FleetError(
            f"key file {path} is not an Ed25519 key; boxes verify Ed25519 "
            f"signatures only, so {hint}"
        )
    if readable_by_others(path):
        _warn(f"key file {path} is accessible to other users; run chmod 600 {path}")
    return private_key


# Values starting like a JSON object, array, string or number, or the JSON
# literals, are read as JSON. Anything else, and a number-like start that is
# not JSON, is plain text.
_JSON_START = re.compile(r"\s*([{\[\"\-0-9]|(true|false|null)\s*\Z)")
_JSON_STRUCTURE = re.compile(r"\s*[{\[\"]")


def _command_body(items: list[str], box: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not _ARGUMENT_KEY.match(key):
            raise FleetError(
                f"argument {item!r:.60} is not key=value; give arguments like "
                "key=site.name value='\"Club\"'"
            )
        if key == "box":
            raise FleetError(
                f"argument {item!r:.60} is reserved: the box comes from --box"
            )
        if key in body:
            raise FleetError(f"argument {key!r} is given twice; give it once")
        body[key] = _argument_value(key, text)
    body["box"] = box
    return body


def _argument_value(key: str, text: str) -> Any:
    """Read an argument's value: JSON when it looks like JSON, else plain text.

    The standard json module keeps big integers exact and reads escaped
    surrogates, so the signer can refuse them by name instead of a value
    turning silently into a float or into its own JSON text.
    """
    if not _JSON_START.match(text):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if not _JSON_STRUCTURE.match(text):
            # An id such as 0f1e… or 2026-tee starts like a number.
            return text
        raise FleetError(
            f"argument {key!r} looks like JSON but is invalid ({err.msg} at "
            f"character {err.pos}); quote text as '\"text\"'"
        ) from None


def _read_bundle_body(source: str) -> dict[str, Any]:
    name = "standard input" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as err:
        raise FleetError(
            f"cannot read bundle body {name} ({err.strerror}); give a JSON file "
            "or - for standard input"
        ) from err
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise FleetError(f"bundle body {name} is not valid JSON ({err})") from err
    if not isinstance(body, dict):
        raise FleetError(
            f"bundle body {name} is a JSON {type(body).__name__}; it must be one "
            "JSON object"
        )
    return body


def _encode_document(document: dict[str, Any]) -> bytes:
    """Return the document as JSON; raise when a box would reject its size."""
    payload = orjson.dumps(document)
    limit = MAX_BUNDLE_BYTES if document["kind"] == "bundle" else MAX_COMMAND_BYTES
    if len(payload) > limit:
        raise FleetError(
            f"the signed {document['kind']} is {len(payload)} bytes, above the "
            f"box's limit of {limit} bytes; split the body into smaller documents"
        )
    return payload


def _require_online(
    client: FleetClient, arguments: argparse.Namespace, kind: str
) -> None:
    """Raise unless the target box announced itself and is online (or --queue)."""
    site, box = arguments.site, arguments.box
    topics = Topics(site)
    availability = await_availability(
        client, topics.availability("box", box), RETAINED_WAIT_S
    )
    if availability is None:
        raise FleetError(
            f"box {box!r} of site {site!r} has never announced itself on "
            f"{client.broker}, or the account may not read these topics, so "
            f"nothing was sent; check the ids with 'nightbox fleet list --site "
            f"{site}' and log in with an operator account"
        )
    if availability == OFFLINE:
        if not arguments.queue:
            raise FleetError(
                f"box {site}/{box} is offline on {client.broker}, so nothing was "
                f"sent; pass --queue to send the {kind} anyway"
            )
        _warn(
            f"box {site}/{box} is offline; the {kind} is sent, and the box runs it "
            "if it reconnects before the document expires and its broker "
            "session kept it"
        )


def _signed(private_key: Ed25519PrivateKey, **fields: Any) -> dict[str, Any]:
    """Sign a document; a value that cannot be signed is a FleetError."""
    try:
        return sign_document(private_key, **fields)
    except ValueError as err:
        raise FleetError(f"cannot sign the {fields['kind']}: {err}") from None


def _send(arguments: argparse.Namespace) -> int:
    private_key = _load_private_key(arguments.key)
    document = _signed(
        private_key,
        kind="command",
        document_type=arguments.name,
        site=arguments.site,
        body=_command_body(arguments.arguments, arguments.box),
        issued_at=time.time(),
        validity_s=arguments.validity,
    )
    payload = _encode_document(document)
    topics = Topics(arguments.site)
    with _open_client(arguments) as client:
        # The result topic is subscribed before the command is published, so
        # a fast result cannot be missed.
        client.subscribe(
            [
                topics.availability("box", arguments.box),
                topics.command_result(arguments.box),
            ]
        )
        _require_online(client, arguments, "command")
        client.publish(topics.command(arguments.box, arguments.name), payload)
        deadline = time.monotonic() + arguments.timeout
        results = await_results(
            client, arguments.site, document["nonce"], {arguments.box}, deadline
        )
    return _report(arguments, document, [arguments.box], results)


def _bundle(arguments: argparse.Namespace) -> int:
    private_key = _load_private_key(arguments.key)
    site = arguments.site
    document = _signed(
        private_key,
        kind="bundle",
        document_type=arguments.name,
        site=site,
        body=_read_bundle_body(arguments.file),
        issued_at=time.time(),
        validity_s=arguments.validity,
        version=arguments.version,
    )
    payload = _encode_document(document)
    topics = Topics(site)
    with _open_client(arguments) as client:
        targets = _bundle_targets(client, arguments)
        client.publish(topics.bundle(arguments.box, arguments.name), payload)
        deadline = time.monotonic() + arguments.timeout
        results = await_results(client, site, document["nonce"], set(targets), deadline)
    return _report(arguments, document, targets, results)


def _assets(arguments: argparse.Namespace) -> int:
    """Publish a packed folder's blobs as retained chunks, then its manifest."""
    from appliance.assets.fleet_send import chunk_messages, prepare_send

    site = arguments.site
    prepared = prepare_send(arguments.folder, site)
    topics = Topics(site)
    with _open_client(arguments) as client:
        if arguments.assets_command == "clear":
            for sha256, path in prepared.files.items():
                for topic, _payload in chunk_messages(site, sha256, path):
                    client.publish(topic, b"", retain=True)
            print(f"Removed the retained chunks of {len(prepared.files)} blobs")
            return 0
        targets = _bundle_targets(client, arguments)
        # Chunks first, so that a box that applies the manifest finds them.
        for sha256, path in prepared.files.items():
            for topic, payload in chunk_messages(site, sha256, path):
                client.publish(topic, payload, retain=True)
        print(
            f"Published {len(prepared.files)} blobs in {prepared.chunks} retained "
            f"chunks ({prepared.manifest.total_bytes} bytes) for site {site}"
        )
        client.publish(topics.bundle(arguments.box, "assets"), prepared.payload)
        deadline = time.monotonic() + arguments.timeout
        results = await_results(
            client, site, prepared.document["nonce"], set(targets), deadline
        )
    return _report(arguments, prepared.document, targets, results)


def _bundle_targets(client: FleetClient, arguments: argparse.Namespace) -> list[str]:
    """Subscribe to the results of a bundle and return the boxes it goes to.

    With ``--box``, that box, which must be online unless ``--queue`` is
    given; without it, the online boxes of the site.
    """
    topics = Topics(arguments.site)
    if arguments.box is not None:
        client.subscribe(
            [
                topics.availability("box", arguments.box),
                topics.command_result(arguments.box),
            ]
        )
        _require_online(client, arguments, "bundle")
        return [arguments.box]
    client.subscribe(
        [
            box_filter(arguments.site, None, "availability"),
            box_filter(arguments.site, None, "stat/result"),
        ]
    )
    return _online_boxes(client, arguments)


def _online_boxes(client: FleetClient, arguments: argparse.Namespace) -> list[str]:
    """Return the online boxes of the site; raise when no box ever announced."""
    site = arguments.site
    states = collect_availability(client, site, RETAINED_WAIT_S)
    if not states:
        raise FleetError(
            f"no box of site {site!r} has announced itself on {client.broker}, "
            "or the account may not read these topics, so nothing was sent; "
            "check the site id with 'nightbox fleet list' and log in with an "
            "operator account"
        )
    online = sorted(box for box, state in states.items() if state == ONLINE)
    offline = sorted(box for box, state in states.items() if state != ONLINE)
    if not online and not arguments.queue:
        raise FleetError(
            f"every box of site {site!r} is offline on {client.broker} "
            f"({', '.join(offline)}), so nothing was sent; pass --queue to send "
            "the bundle anyway"
        )
    if offline:
        _warn(
            f"offline boxes get the bundle only if they reconnect before it "
            f"expires and their broker session kept it: {', '.join(offline)}"
        )
    return online


def _report(
    arguments: argparse.Namespace,
    document: dict[str, Any],
    targets: list[str],
    results: dict[str, dict[str, Any]],
) -> int:
    """Print each box's result and return 0, EXIT_REJECTED or EXIT_TIMEOUT."""
    site, kind, name = arguments.site, document["kind"], document["type"]
    rejected = missing = False
    for box in targets:
        result = results.get(box)
        if result is None:
            missing = True
            expires = _time(float(document["expires_at"]))
            print(
                f"nightbox fleet: no result from {site}/{box} within "
                f"{arguments.timeout:g} s; the {kind} (nonce {document['nonce']}) "
                f"stays valid until {expires}, so the box may still run it; "
                f"watch with 'nightbox fleet tail --site {site} --box {box}'",
                file=sys.stderr,
            )
            continue
        if arguments.json:
            record = {"site": site, "box": box, **result}
            print(json.dumps(record, sort_keys=True, ensure_ascii=True))
        if result.get("ok") is True:
            if not arguments.json:
                print(f"{site}/{box}: {kind} {name} ok")
                if result.get("result"):
                    print(
                        json.dumps(
                            result["result"],
                            indent=2,
                            sort_keys=True,
                            ensure_ascii=True,
                        )
                    )
            continue
        rejected = True
        reason = printable(str(result.get("reason", "unknown")))
        message = printable(str(result.get("message", "")))
        print(
            f"nightbox fleet: {site}/{box} rejected {kind} {name}: {reason}: {message}",
            file=sys.stderr,
        )

    if not targets:
        print(
            f"Sent {kind} {name} (nonce {document['nonce']}) to site {site}; no box "
            "is online to report a result."
        )
    if rejected:
        return EXIT_REJECTED
    return EXIT_TIMEOUT if missing else 0


def _tail(arguments: argparse.Namespace) -> int:
    filters = [
        box_filter(arguments.site, arguments.box, suffix)
        for suffix in ("availability", "tele/state", "tele/sync", "stat/result")
    ]
    printed = 0
    with _open_client(arguments) as client:
        client.subscribe(filters)
        try:
            while arguments.count is None or printed < arguments.count:
                message = client.receive(1.0)
                if message is None:
                    continue
                line = _tail_line(message, time.time(), as_json=arguments.json)
                if line is None:
                    continue
                print(line, flush=True)
                printed += 1
        except KeyboardInterrupt:
            return 0
    return 0


def _tail_line(message: Message, received_at: float, *, as_json: bool) -> str | None:
    """Format one message for ``tail``; None for a cleared retained message."""
    parsed = parse_box_topic(message.topic)
    if parsed is None or not message.payload:
        return None
    record: dict[str, Any] = {
        "site": parsed.site,
        "box": parsed.box,
        "topic": parsed.suffix,
        "retained": message.retain,
        "received_at": round(received_at, 3),
    }

    timestamp = received_at
    try:
        if parsed.suffix == "availability":
            record["availability"] = read_availability(message.payload)
        else:
            decoded = envelope.decode(message.payload)
            timestamp = record["ts"] = decoded.ts
            record["data"] = decoded.data
    except PayloadError as err:
        record["error"] = str(err)

    if as_json:
        # ensure_ascii escapes C1 and bidi characters as well as C0.
        return json.dumps(record, sort_keys=True, ensure_ascii=True)
    if "error" in record:
        details = f"{parsed.suffix} unreadable: {record['error']}"
    elif parsed.suffix == "availability":
        details = record["availability"]
    elif parsed.suffix == "tele/state":
        details = "state " + _fields(record["data"], STATE_FIELDS)
    elif parsed.suffix == "stat/result":
        details = "result " + _fields(record["data"], RESULT_FIELDS)
    else:
        details = "sync " + _fields(record["data"], SYNC_FIELDS)

    retained = " (retained)" if message.retain else ""
    # Every part but the time comes from the network: escape the whole line.
    line = f"{parsed.site}/{parsed.box} {details}{retained}"
    return f"{_time(timestamp)} {printable(line)}"


def _fields(data: dict[str, Any], checks: dict[str, Callable[[Any], bool]]) -> str:
    """Format the fields of ``checks`` that ``data`` has as ``key=value``."""
    return " ".join(
        f"{key}={_field_text(checked_field(data, key, checks))}"
        for key in checks
        if key in data
    )


def _field_text(value: Any) -> str:
    if value is INVALID:
        return _INVALID_TEXT
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=True)
