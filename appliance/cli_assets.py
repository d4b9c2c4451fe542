"""``nightbox assets``: pack, import, check and inspect the asset cache.

``pack`` runs on the operator's machine and signs a folder's manifest.
``import``, ``status`` and ``verify`` work on the box's store and its
``<data_dir>/assets/`` folder directly, so they work whether or not the
box runs. A running box reads the manifest and the blobs from the same
store, so it serves what ``import`` stored at once.

Exit codes:

- 0: success.
- 1: ``import`` left listed blobs missing, rejected or over the budget,
  or ``verify`` removed a blob that changed on disk or a symbolic link.
- 2: invalid input: a rejected manifest, an unusable key, folder or
  configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from appliance._cli_arguments import (
    add_config_option,
    load_site_config,
    open_store,
    seconds_between,
    whole_number,
)
from appliance.assets.cache import AssetCache, ImportResult, night_items
from appliance.assets.config import MAX_BUDGET_BYTES, MIN_BUDGET_BYTES
from appliance.assets.manifest import ManifestRejected
from appliance.assets.pack import load_private_key, pack_folder
from appliance.assets.sample import write_sample_model
from appliance.config import SiteConfig
from appliance.errors import NightboxError
from appliance.signed_documents import MAX_BUNDLE_VERSION, MAX_VALIDITY_S

EXIT_INCOMPLETE = 1


def add_commands(commands: Any) -> None:
    """Add the ``assets`` command and its subcommands to the ``nightbox`` parser."""
    assets = commands.add_parser(
        "assets",
        help="the asset cache: pack a USB folder, import it, check stored blobs",
        description="Pack, import and check the signed asset manifest and its "
        "blobs. Exits 0 on success, 1 when blobs are missing or changed, 2 on "
        "invalid input or a rejected manifest.",
    )
    assets_commands = assets.add_subparsers(dest="assets_command", required=True)

    pack = assets_commands.add_parser(
        "pack",
        help="hash the files of FOLDER/assets.toml and write a signed manifest.json",
        description="Read FOLDER/assets.toml ([[assets]] entries of item, name "
        "and file), hash every file, sign the manifest with the operator key "
        "and write FOLDER/manifest.json. Copy the whole folder to a USB stick, "
        "or send it with `nightbox fleet assets send`.",
    )
    pack.add_argument("folder", type=Path, metavar="FOLDER", help="the asset folder")
    pack.add_argument(
        "--key", type=Path, required=True, help="the operator's private key (PEM)"
    )
    pack.add_argument(
        "--site", required=True, help="the site id ([site] id) the manifest is for"
    )
    pack.add_argument(
        "--version",
        type=whole_number(1, MAX_BUNDLE_VERSION),
        required=True,
        help="manifest version; must be higher than the one the box applied",
    )
    pack.add_argument(
        "--budget",
        type=whole_number(MIN_BUDGET_BYTES, MAX_BUDGET_BYTES),
        metavar="BYTES",
        help="the maximum bytes of blobs a box keeps for this manifest, from "
        "1048576 (1 MiB) to 1099511627776 (1 TiB) (default: budget_bytes of "
        "assets.toml, else the box's own)",
    )
    pack.add_argument(
        "--validity",
        type=seconds_between(1.0, MAX_VALIDITY_S),
        default=MAX_VALIDITY_S,
        help=f"seconds the signed manifest stays valid (default {MAX_VALIDITY_S:g}, "
        "a week)",
    )

    imported = assets_commands.add_parser(
        "import",
        help="import a USB folder: its signed manifest.json and the blobs it lists",
        description="Verify FOLDER/manifest.json, apply it, and copy the files "
        "it lists (matched by SHA-256, any names, anywhere under FOLDER) into "
        "the box's asset cache. Works whether or not the box runs. Exits 1 "
        "when listed blobs are still missing, rejected or over the budget.",
    )
    imported.add_argument(
        "folder", type=Path, metavar="FOLDER", help="the folder with manifest.json"
    )
    add_config_option(imported)
    imported.add_argument("--json", action="store_true", help="print one JSON object")

    status = assets_commands.add_parser(
        "status",
        help="print the manifest version, stored and missing blobs and the budget",
    )
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")

    verify = assets_commands.add_parser(
        "verify",
        help="hash every stored blob again; exit 1 if one changed on disk",
        description="Hash every stored blob again. A blob that changed on disk "
        "is removed, so the box fetches or imports it again, and a symbolic link "
        "in the cache is removed as a link; the command then exits 1.",
    )
    add_config_option(verify)
    verify.add_argument("--json", action="store_true", help="print one JSON object")

    sample = assets_commands.add_parser(
        "sample", help="write the sample T-shirt model (GLB) to a file"
    )
    sample.add_argument("output", type=Path, metavar="FILE", help="the .glb to write")


def run(arguments: argparse.Namespace) -> int:
    """Run an ``assets`` subcommand; return the exit code."""
    command = arguments.assets_command
    if command == "pack":
        return _pack(arguments)
    if command == "sample":
        data = write_sample_model(arguments.output)
        print(
            f"Wrote the sample T-shirt model to {arguments.output} ({len(data)} bytes)"
        )
        return 0
    config = load_site_config(arguments.config)
    opened = open_cache(config)
    if command == "import":
        return _import(opened.cache, arguments.folder, as_json=arguments.json)
    if command == "verify":
        return _verify(opened, as_json=arguments.json)
    return _status(opened.cache, as_json=arguments.json)


class OpenedCache(NamedTuple):
    """A cache opened by a command, and the links removed from its folders."""

    cache: AssetCache
    links_removed: list[Path]


def open_cache(config: SiteConfig) -> OpenedCache:
    """Open the asset cache of a box from its configuration, pinned for tonight.

    A symbolic link in place of one of the cache's folders is removed as a
    link and returned.
    """
    store = open_store(config, create=True)
    clock = config.system_clock()
    cache = AssetCache(
        store,
        config.data_dir,
        config.assets,
        clock,
        config.fleet.operator_keys,
        config.site_id,
    )
    cache.pin_items(night_items(config.commerce, clock.now()))
    links = cache.prepare_folders(remove_leftovers=False)
    return OpenedCache(cache, links)


def _pack(arguments: argparse.Namespace) -> int:
    private_key = load_private_key(arguments.key)
    packed, target = pack_folder(
        arguments.folder,
        private_key,
        site=arguments.site,
        version=arguments.version,
        issued_at=time.time(),
        budget_bytes=arguments.budget,
        validity_s=arguments.validity,
    )
    total = sum(asset.size for asset in packed)
    print(
        f"Wrote {target}: version {arguments.version} for site {arguments.site}, "
        f"{len(packed)} assets, {total} bytes"
    )
    for asset in packed:
        print(f"  {asset.sha256[:12]}  {asset.size:>10}  {asset.item:<20} {asset.name}")
    return 0


def _import(cache: AssetCache, folder: Path, *, as_json: bool) -> int:
    try:
        result = asyncio.run(cache.import_folder(folder))
    except ManifestRejected as err:
        raise NightboxError(
            f"the manifest in {folder} was rejected ({err.reason}): {err.message}; "
            "nothing was stored"
        ) from err
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        _print_import(folder, result)
    return 0 if result.complete else EXIT_INCOMPLETE


def _print_import(folder: Path, result: ImportResult) -> None:
    applied = "applied" if result.manifest_applied else "already applied"
    print(f"Manifest version {result.manifest_version} {applied}")
    print(
        f"Blobs: {len(result.stored)} stored, {len(result.present)} already present, "
        f"{len(result.missing)} missing, {len(result.rejected)} rejected, "
        f"{len(result.over_budget)} over budget"
    )
    for sha256, reason in result.rejected.items():
        print(f"  rejected {sha256[:12]}: {reason}")
    for sha256, reason in result.over_budget.items():
        print(f"  not stored {sha256[:12]}: {reason}")
    for entry in result.missing:
        print(
            f"  missing {entry.sha256[:12]} ({entry.size} bytes, item {entry.item}, "
            f"{entry.name}): no file in {folder} has this SHA-256"
        )


def _verify(opened: OpenedCache, *, as_json: bool) -> int:
    result = asyncio.run(opened.cache.verify())
    links = [*opened.links_removed, *result.links_removed]
    if as_json:
        print(
            json.dumps(
                {
                    "checked": result.checked,
                    "removed": result.removed,
                    "adopted": result.adopted,
                    "links_removed": [str(link) for link in links],
                }
            )
        )
    else:
        print(
            f"Checked {result.checked} blobs, removed {len(result.removed)} blobs "
            f"and {len(links)} symbolic links"
        )
        for sha256, reason in result.removed.items():
            print(f"  removed {sha256[:12]}: {reason}")
        for link in links:
            print(f"  removed symbolic link {link} (its target was left as it was)")
    changed = [r for r in result.removed.values() if r != "unrecorded"]
    return EXIT_INCOMPLETE if changed or links else 0


def _status(cache: AssetCache, *, as_json: bool) -> int:
    status = cache.status()
    if as_json:
        print(json.dumps(status))
        return 0
    version = status["manifest_version"]
    print(f"Manifest version: {'none' if version is None else version}")
    print(
        f"Blobs: {status['blobs']} of {status['listed']} listed, {status['bytes']} "
        f"bytes of a {status['budget']}-byte budget"
    )
    print(f"Pinned for tonight: {status['pinned']} ({status['pinned_bytes']} bytes)")
    print(f"Missing: {status['missing']}")
    for entry in cache.missing():
        print(f"  {entry.sha256[:12]}  {entry.size:>10}  {entry.item:<20} {entry.name}")
    return 0
