"""``nightbox collect``: the fleet's upstream collector into PostgreSQL."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from appliance._toml_values import ID_PATTERN
from appliance.bus.url import (
    BrokerUrl,
    client_tls_context,
    is_loopback,
    parse_broker_url,
)
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from appliance.remote.collect import CollectorSettings

# Exit codes besides 0 (stopped by SIGINT or SIGTERM) and 2 (invalid option,
# URL, credentials or CA file).
EXIT_DATABASE = 3
EXIT_BROKER_REJECTED = 4
DATABASE_ENVIRONMENT = "NIGHTBOX_DATABASE_URL"
# A shared subscription's group name is one topic level without wildcards.
_GROUP_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")

_EPILOG = f"""\
exit codes:
  0  stopped by SIGINT (Ctrl-C) or SIGTERM after the batch it was writing
  2  invalid option, broker or database URL, credentials or CA file
  {EXIT_DATABASE}  PostgreSQL unreachable at start, login rejected, or its
     collector tables newer than this nightbox
  {EXIT_BROKER_REJECTED}  the broker rejected the login or the events subscription
     (mosquitto 2.0 grants a subscription its ACL denies, and then
     delivers nothing; the collector warns when the login is not
     "collector")

An unreachable broker is not an error: the collector retries with back-off
and logs each attempt. Once running, it also outlasts PostgreSQL outages: it
acknowledges nothing until a batch is committed, so the broker keeps the
messages.
"""


def add_commands(commands: Any) -> None:
    """Add the ``collect`` command to the ``nightbox`` parser."""
    collect = commands.add_parser(
        "collect",
        help="collect the fleet's events from its broker into PostgreSQL",
        description="Subscribe to the events, availability and telemetry of "
        "every box of a fleet (or of one site) on an MQTT 5 broker and store "
        "them in PostgreSQL, at least once and without duplicates.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    collect.add_argument(
        "--broker",
        required=True,
        help="the fleet broker, mqtts://host:port (plain mqtt:// only on this machine)",
    )
    collect.add_argument(
        "--database",
        default=os.environ.get(DATABASE_ENVIRONMENT),
        help="PostgreSQL URL, postgresql://user@host:port/database; default: "
        f"${DATABASE_ENVIRONMENT}. A password in the URL is visible to other "
        "users in the process list, so prefer PGPASSWORD or ~/.pgpass",
    )
    collect.add_argument(
        "--ca",
        type=Path,
        help="PEM file of the CA that signed the broker's certificate "
        "(default: the system's CAs)",
    )
    collect.add_argument(
        "--credentials",
        type=Path,
        help='JSON file {"username": ..., "password": ...} with the broker '
        "login, mode 0600 (default: connect without a login)",
    )
    collect.add_argument(
        "--site",
        type=_site,
        help="collect only this site's boxes (default: every site)",
    )
    collect.add_argument(
        "--group",
        type=_group,
        help="share the events with the other collectors of this group, "
        "through an MQTT 5 shared subscription ($share/GROUP/...)",
    )
    collect.add_argument(
        "--client-id",
        type=_client_id,
        help="MQTT client id, which names the broker's persistent session; "
        "each running collector needs its own (default: nightbox-collector, "
        "or nightbox-collector-GROUP-HOSTNAME with --group)",
    )


def _site(text: str) -> str:
    if not ID_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"must be a site id (1-32 lowercase letters, digits and '-'), "
            f"not {text!r:.40}"
        )
    return text


def _group(text: str) -> str:
    if not _GROUP_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"must be 1-64 letters, digits, '_' and '-', not {text!r:.80}"
        )
    return text


def _client_id(text: str) -> str:
    if not _CLIENT_ID_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"must be 1-128 letters, digits, '_', '.', ':' and '-', not {text!r:.140}"
        )
    return text


def run(arguments: argparse.Namespace) -> int:
    """Run ``nightbox collect`` until SIGINT or SIGTERM, and return the exit code."""
    from appliance.remote.collect import (
        BrokerRejectedError,
        Collector,
        DatabaseUnavailableError,
    )

    try:
        collector = Collector(
            _settings(arguments), announce=lambda line: print(line, flush=True)
        )
    except ConfigError as err:
        print(f"nightbox collect: {err}", file=sys.stderr)
        return 2

    def on_signal(signal_number: int, frame: FrameType | None) -> None:
        collector.stop()

    previous = {
        number: signal.signal(number, on_signal)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        collector.run()
    except DatabaseUnavailableError as err:
        print(f"nightbox collect: {err}", file=sys.stderr)
        return EXIT_DATABASE
    except BrokerRejectedError as err:
        print(f"nightbox collect: {err}", file=sys.stderr)
        return EXIT_BROKER_REJECTED
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    stats = collector.stats
    print(
        f"nightbox collect: stopped; {stats.events_stored} events stored, "
        f"{stats.duplicates} duplicates, {sum(stats.rejected.values())} "
        "messages rejected",
        file=sys.stderr,
    )
    return 0


def _settings(arguments: argparse.Namespace) -> CollectorSettings:
    from appliance.remote._collect_url import check_database_url
    from appliance.remote.collect import (
        CollectorSettings,
        default_client_id,
        load_login,
    )

    broker = parse_broker_url(arguments.broker)
    _check_plain_broker(broker)
    if arguments.ca is not None and not broker.tls:
        raise ConfigError(
            f"--ca applies to mqtts:// brokers only, and {broker} is plain mqtt://"
        )
    if not arguments.database:
        raise ConfigError(
            f"no database given; pass --database postgresql://... or set "
            f"{DATABASE_ENVIRONMENT}"
        )
    check_database_url(arguments.database)
    login = None if arguments.credentials is None else load_login(arguments.credentials)
    tls = client_tls_context(arguments.ca) if broker.tls else None
    return CollectorSettings(
        broker=broker,
        database_url=arguments.database,
        tls=tls,
        login=login,
        site=arguments.site,
        group=arguments.group,
        client_id=arguments.client_id or default_client_id(arguments.group),
    )


def _check_plain_broker(broker: BrokerUrl) -> None:
    if broker.tls or is_loopback(broker.host):
        return
    raise ConfigError(
        f"broker URL {str(broker)!r} sends events and credentials unencrypted; "
        "use mqtts:// (plain mqtt:// is only for a broker on this machine)"
    )
