"""``nightbox portal``: the night sign and the band codes for the band printer."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from appliance._cli_arguments import add_config_option, load_site_config, open_store
from appliance.config import SiteConfig
from appliance.errors import ConfigError
from appliance.portal.config import PortalConfig

# More bands than a venue prints in one run; the limit stops a runaway script.
MAX_BANDS = 100_000


def add_commands(commands: Any) -> None:
    """Add ``nightbox portal`` and its sub-commands to the command's subparsers."""
    portal = commands.add_parser(
        "portal",
        help="print the guest portal's night sign and band codes",
        description="Print material for the guest portal of a site with a "
        "[portal] table.",
    )
    actions = portal.add_subparsers(dest="portal_command", required=True)

    sign = actions.add_parser(
        "sign",
        help="render the night sign with the portal's QR codes",
        description="Render the night sign: the site's name, the opt-in QR code "
        "and one QR code per drop with its name, price and opening time. A PDF "
        "holds every page; PNG writes one file per page (NAME.png, NAME-2.png "
        "…).",
    )
    add_config_option(sign)
    sign.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="FILE",
        help="the file to write, ending in .pdf or .png",
    )

    codes = actions.add_parser(
        "band-codes",
        help="print the codes to print on bands, as CSV",
        description="Print band,code,url lines (CSV, with a header line) for the "
        "band printer and register the codes on the box, so the portal accepts "
        "them. The url is the band's QR code: <public_url>/band#<code>.",
    )
    add_config_option(codes)
    codes.add_argument(
        "--band",
        action="append",
        required=True,
        metavar="BAND",
        help="a band id such as ib-100-7 (repeatable)",
    )


def run(arguments: argparse.Namespace) -> int:
    """Run ``nightbox portal <sub-command>``; return its exit code."""
    config = load_site_config(arguments.config)
    portal = _portal_config(config)
    if arguments.portal_command == "sign":
        return _sign(config, portal, arguments.output)
    return _band_codes(config, portal, arguments.band)


def _portal_config(config: SiteConfig) -> PortalConfig:
    portal = config.portal
    if portal is None:
        raise ConfigError(
            "the site has no [portal] table; add one (at least public_url, the "
            "address guests' phones reach the box at) to use the guest portal"
        )
    if portal.port == 0 and not portal.public_url_given:
        # Printed links would point at port 80, where the portal never listens.
        raise ConfigError(
            "the portal's port is 0 (chosen at start), so printed links cannot "
            "name it; set [portal] port or public_url"
        )
    return portal


def _sign(config: SiteConfig, portal: PortalConfig, output: Path) -> int:
    from appliance.portal.sign import render_sign, write_sign

    written = write_sign(render_sign(config, portal).pages, output)
    for path in written:
        print(f"Wrote {path}")
    return 0


def _band_codes(config: SiteConfig, portal: PortalConfig, bands: list[str]) -> int:
    from appliance.portal.band_codes import load_band_key, register_band_codes

    if len(bands) > MAX_BANDS:
        raise ConfigError(f"{len(bands)} bands given; print at most {MAX_BANDS} a run")
    key = load_band_key(config.data_dir)
    store = open_store(config, create=True)
    try:
        codes = register_band_codes(store, key, bands, config.system_clock().now())
    finally:
        store.close()
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["band", "code", "url"])
    for band, code in codes.items():
        writer.writerow([band, code, portal.url(f"/band#{code}")])
    return 0
