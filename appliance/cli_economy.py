"""``nightbox token`` and ``nightbox wallet``: the economy's operator commands."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from typing import Any

from appliance._cli_arguments import (
    add_config_option,
    add_night_option,
    load_site_config,
    open_store,
)
from appliance._toml_values import ID_PATTERN
from appliance.config import SiteConfig
from appliance.errors import NightboxError
from appliance.store import Store
from provisioning.site_access import DESK

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z")
_TOKEN_ID = re.compile(r"^[0-9a-f]{32}\Z")


def add_commands(commands: Any) -> None:
    """Add the ``token`` and ``wallet`` commands to the ``nightbox`` parser."""
    token = commands.add_parser("token", help="issue, list and revoke edge tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser(
        "issue",
        help="issue a token to a terminal and print it with its QR code",
        description="Issue a scoped, short-lived edge token. The token is a "
        "bearer secret: hand it to the terminal only.",
    )
    add_config_option(issue)
    issue.add_argument(
        "--subject", required=True, help="terminal id that will present the token"
    )
    issue.add_argument(
        "--scope",
        action="append",
        required=True,
        help="scope to grant, repeatable (e.g. pos:charge); see 'token scopes'",
    )
    issue.add_argument(
        "--ttl",
        type=_duration,
        default=8 * 3600.0,
        help="lifetime like 8h, 90m or 1h30m (default 8h)",
    )
    issue.add_argument("--no-qr", action="store_true", help="print no QR code")
    issue.add_argument(
        "--json", action="store_true", help="print one JSON object, no QR code"
    )
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    add_config_option(revoke)
    revoke.add_argument("token_id", metavar="ID", help="token id (jti), 32 hex digits")
    revoke.add_argument(
        "--reason", default="revoked by the operator", help="reason to record"
    )
    listing = token_commands.add_parser("list", help="list issued tokens")
    add_config_option(listing)
    listing.add_argument(
        "--json", action="store_true", help="print one JSON object per token"
    )
    token_commands.add_parser("scopes", help="list the scopes a token can carry")

    wallet = commands.add_parser("wallet", help="wallet reports")
    wallet_commands = wallet.add_subparsers(dest="wallet_command", required=True)
    report = wallet_commands.add_parser(
        "report",
        help="print the reconciliation of a night",
        description="Print totals by item, terminal, creator and payment method, "
        "and prove the ledger. Exits 1 when the ledger check fails.",
    )
    add_config_option(report)
    add_night_option(report)
    report.add_argument("--json", action="store_true", help="print JSON")


def _duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(
            f"must be a duration like 8h, 90m, 45s or 1h30m, not {text!r}"
        )
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0 s, not {text!r}")
    return float(total)


def run(arguments: argparse.Namespace) -> int:
    """Run a ``token`` or ``wallet`` command; return the exit code."""
    if arguments.command == "token" and arguments.token_command == "scopes":
        from appliance.tokens import SCOPES

        for scope, meaning in SCOPES.items():
            print(f"{scope:<16} {meaning}")
        return 0
    config = load_site_config(arguments.config)
    if arguments.command == "wallet":
        return _report(config, arguments)
    store = open_store(config, create=arguments.token_command == "issue")
    try:
        if arguments.token_command == "issue":
            return _issue(config, store, arguments)
        if arguments.token_command == "revoke":
            return _revoke(config, store, arguments)
        return _list(store, as_json=arguments.json)
    finally:
        store.close()


def _issue(config: SiteConfig, store: Store, arguments: argparse.Namespace) -> int:
    from appliance.tokens import TokenError, box_tokens

    terminals = [DESK, *config.commerce.terminals]
    if not ID_PATTERN.match(arguments.subject):
        raise NightboxError(
            f"subject {arguments.subject!r:.40} is not a terminal id; terminal ids "
            "are 1-32 lowercase letters, digits and '-' "
            f"(this site has {', '.join(terminals)})"
        )
    if arguments.subject not in terminals:
        raise NightboxError(
            f"subject {arguments.subject!r:.40} is not a terminal of this site "
            f"({', '.join(terminals)}); add [[terminals]] id = "
            f"{arguments.subject!r:.40} to the configuration and restart the box"
        )
    tokens = box_tokens(config, store, config.system_clock())
    try:
        issued = tokens.issue(arguments.subject, arguments.scope, arguments.ttl)
    except TokenError as err:
        raise NightboxError(err.message) from err
    claims = issued.claims
    expires = dt.datetime.fromtimestamp(claims.expires_at, dt.UTC)
    if arguments.json:
        print(
            json.dumps(
                {
                    "token": issued.token,
                    "token_id": claims.token_id,
                    "subject": claims.subject,
                    "scopes": sorted(claims.scopes),
                    "expires_at": claims.expires_at,
                }
            )
        )
        return 0
    print(f"Token id: {claims.token_id}")
    print(f"Subject:  {claims.subject}")
    print(f"Scopes:   {' '.join(sorted(claims.scopes))}")
    print(f"Expires:  {expires:%Y-%m-%d %H:%M:%S} UTC")
    print()
    print(issued.token)
    if not arguments.no_qr:
        import qrcode

        code = qrcode.QRCode(
            border=2, error_correction=qrcode.constants.ERROR_CORRECT_L
        )
        code.add_data(issued.token)
        code.make(fit=True)
        print()
        code.print_ascii(out=sys.stdout, invert=True)
    return 0


def _revoke(config: SiteConfig, store: Store, arguments: argparse.Namespace) -> int:
    from appliance.tokens import box_tokens

    token_id = arguments.token_id.strip().lower()
    if not _TOKEN_ID.match(token_id):
        raise NightboxError(
            f"token id {arguments.token_id!r:.60} is invalid; it is the 32 hex "
            "digits that 'nightbox token issue' printed (see 'nightbox token list')"
        )
    if store.query_one("SELECT 1 FROM edge_tokens WHERE id = ?", (token_id,)) is None:
        raise NightboxError(
            f"token {token_id} was not issued by this box; 'nightbox token list' "
            "shows the issued tokens"
        )
    tokens = box_tokens(config, store, config.system_clock())
    if tokens.revoke(token_id, arguments.reason):
        print(f"Revoked token {token_id}; the box rejects it from its next request.")
    else:
        print(f"Token {token_id} was already revoked.")
    return 0


def _list(store: Store, *, as_json: bool) -> int:
    rows = store.query(
        "SELECT t.id, t.subject, t.scopes, t.expires_at, r.revoked_at"
        " FROM edge_tokens t LEFT JOIN revoked_tokens r ON r.id = t.id"
        " ORDER BY t.issued_at"
    )
    if as_json:
        for token_id, subject, scopes, expires_at, revoked_at in rows:
            record = {
                "token_id": token_id,
                "subject": subject,
                "scopes": scopes.split(),
                "expires_at": expires_at,
                "revoked_at": revoked_at,
            }
            print(json.dumps(record))
        return 0
    for token_id, subject, scopes, expires_at, revoked_at in rows:
        expires = dt.datetime.fromtimestamp(expires_at, dt.UTC)
        state = "revoked" if revoked_at is not None else "active"
        print(
            f"{token_id}  {subject:<16} {state:<8} expires "
            f"{expires:%Y-%m-%d %H:%M} UTC  {scopes}"
        )
    if not rows:
        print("No tokens issued yet.")
    return 0


def _report(config: SiteConfig, arguments: argparse.Namespace) -> int:
    from appliance.wallet.report import format_report, night_report

    store = open_store(config, create=False)
    try:
        report = night_report(store, arguments.night, config.commerce.wallet.currency)
    finally:
        store.close()
    if arguments.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(format_report(report))
    return 0 if report["ledger_check"]["ok"] else 1
