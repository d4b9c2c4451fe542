"""``nightbox guest erase``: erase a guest's contact details from the box's store."""

from __future__ import annotations

import argparse
import json
from typing import Any

from appliance._cli_arguments import add_config_option, load_site_config, open_store


def add_commands(commands: Any) -> None:
    """Add ``nightbox guest`` to the command's subparsers."""
    guest = commands.add_parser("guest", help="a guest's personal data on the box")
    guest_commands = guest.add_subparsers(dest="guest_command", required=True)
    erase = guest_commands.add_parser(
        "erase",
        help="erase a guest's contact details on request",
        description="Erase the email address or wallet id a guest gave at "
        "opt-in, with the opt-in and its consent, from every table of the box's "
        "store, then rebuild the database files so the bytes are gone. Works "
        "while the box runs. The guest can opt in again with new consent. "
        "Prints how many rows changed, never the contact.",
    )
    add_config_option(erase)
    target = erase.add_mutually_exclusive_group(required=True)
    target.add_argument("--band", help="the guest's band id, such as ib-1-7")
    target.add_argument("--email", help="the email address the guest gave")
    target.add_argument("--wallet-id", help="the wallet id the guest gave")
    erase.add_argument("--json", action="store_true", help="print JSON")


def run(arguments: argparse.Namespace) -> int:
    """Run ``nightbox guest erase``; return the exit code."""
    from appliance.analytics.erasure import (
        ContactSelector,
        check_selector,
        erase_contact,
        scrub_files,
    )

    config = load_site_config(arguments.config)
    # A PayloadError names the option's field; the command prints it and
    # exits 2 like any other usage error.
    selector = check_selector(
        ContactSelector(
            band=arguments.band, email=arguments.email, wallet_id=arguments.wallet_id
        )
    )
    store = open_store(config, create=False)
    try:
        with store.transaction() as transaction:
            erasure = erase_contact(
                transaction, selector, config.system_clock().now(), "cli"
            )
        scrubbed = scrub_files(store)
    finally:
        store.close()
    if arguments.json:
        print(json.dumps({**erasure.to_json(), "files_scrubbed": scrubbed}))
    else:
        print(
            f"Erasure {erasure.id}: {erasure.rows} rows changed for "
            f"{erasure.bands} bands."
        )
        if not scrubbed:
            print(
                "The write-ahead log is emptied at the box's next checkpoint, "
                "because another connection was reading."
            )
    return 0
