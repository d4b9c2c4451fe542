"""``nightbox image``: build the box's disk image, and the image's own commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from appliance.errors import NightboxError

# Exit codes: 0 built, 1 the build failed, 2 usage errors (as argparse).
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_commands(commands: Any) -> None:
    """Add ``nightbox image`` and its subcommands to the command's subparsers."""
    from appliance.image._build_tree import DEFAULT_MIRROR
    from appliance.image.build import ARCHITECTURES

    image = commands.add_parser(
        "image", help="build the box's disk image and run the image's own steps"
    )
    image_commands = image.add_subparsers(dest="image_command", required=True)
    build = image_commands.add_parser(
        "build",
        help="build a disk image (boot, read-only root, data) from Debian bookworm",
        description="Build the box's disk image: Debian bookworm from the mirror, "
        "Nightbox and its dependencies in application slot A, the systemd units, "
        "and an MBR disk with a FAT32 boot partition, a read-only ext4 root and "
        "an ext4 data partition. Needs root, mmdebstrap, genimage, dosfstools, "
        "mtools and e2fsprogs (tests/ensure-image-tools installs them), and "
        "binfmt_misc with qemu-user for a foreign architecture. Prints one line "
        "per stage. Exits 0 when built, 1 when a stage fails, 2 for usage errors.",
    )
    build.add_argument(
        "--arch", choices=ARCHITECTURES, required=True, help="the box's architecture"
    )
    build.add_argument(
        "--output",
        type=Path,
        help="the disk image file to write; OUTPUT.lock next to it keeps a "
        "second build from writing the same file at the same time",
    )
    build.add_argument(
        "--rootfs-dir",
        type=Path,
        help="keep the root tree and the data tree in DIR/root and DIR/data "
        "(new or empty folders)",
    )
    build.add_argument(
        "--rootfs-only",
        action="store_true",
        help="stop after the trees in --rootfs-dir; write no disk image",
    )
    build.add_argument(
        "--update-key",
        type=Path,
        help="Ed25519 public key (base64 on one line, from 'nightbox update "
        "keygen') that update bundles must be signed with; without it the image "
        "rejects every update",
    )
    build.add_argument(
        "--extra-apt-source",
        action="append",
        default=[],
        metavar="LINE",
        help="another sources.list line, such as Raspberry Pi's archive for the "
        "camera stack; may be given more than once",
    )
    build.add_argument(
        "--extra-apt-key",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="an OpenPGP key (.asc or .gpg) that signs an --extra-apt-source",
    )
    build.add_argument(
        "--mirror",
        default=DEFAULT_MIRROR,
        help=f"Debian mirror URL (default {DEFAULT_MIRROR})",
    )
    build.add_argument(
        "--security-mirror",
        metavar="URL",
        help="Debian security archive URL for bookworm-security; default: the "
        "--mirror URL with -security appended, which needs a --mirror ending in "
        "/debian",
    )
    build.add_argument(
        "--work-dir",
        type=Path,
        help="build in this folder and keep it (logs, wheelhouse, genimage "
        "configuration); default: a temporary folder, removed at the end, whose "
        "logs are kept in a nightbox-image-logs-* folder when a stage fails",
    )
    first_boot = image_commands.add_parser(
        "first-boot",
        help="create the box's identity, keys, broker files and site file",
        description="Run the box's first boot (nightbox-first-boot.service runs "
        "it as root on every boot): grow the data partition, then write the site "
        "file, the secrets, the broker files and first-boot.json. A second run "
        "changes nothing and says so; a run cut short is completed by the next.",
    )
    first_boot.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the box's state folder (default /var/lib/nightbox)",
    )
    first_boot.add_argument(
        "--no-grow",
        action="store_true",
        help="leave the data partition as it is",
    )
    build.add_argument(
        "--cache-dir",
        type=Path,
        help="keep downloaded Debian packages and pip's downloads here for the "
        "next build",
    )


def run(arguments: argparse.Namespace) -> int:
    """Run ``nightbox image ...``; return the exit code."""
    if arguments.image_command == "build":
        return _build(arguments)
    if arguments.image_command == "first-boot":
        return _first_boot(arguments)
    raise AssertionError(f"unhandled image command {arguments.image_command!r}")


def _first_boot(arguments: argparse.Namespace) -> int:
    from appliance.image.first_boot import run_first_boot
    from appliance.image.layout import STATE_DIR

    state_dir = arguments.state_dir if arguments.state_dir is not None else STATE_DIR
    try:
        result = run_first_boot(state_dir, grow=not arguments.no_grow)
    except NightboxError as err:
        print(f"nightbox image first-boot: {err}", file=sys.stderr)
        return EXIT_FAILED
    for line in result.summary():
        print(line)
    return 0


def _build(arguments: argparse.Namespace) -> int:
    from appliance.image.build import BuildOptions, build, check_options

    options = BuildOptions(
        arch=arguments.arch,
        output=arguments.output,
        rootfs_dir=arguments.rootfs_dir,
        rootfs_only=arguments.rootfs_only,
        update_key=arguments.update_key,
        extra_apt_sources=tuple(arguments.extra_apt_source),
        extra_apt_keys=tuple(arguments.extra_apt_key),
        mirror=arguments.mirror,
        security_mirror=arguments.security_mirror,
        work_dir=arguments.work_dir,
        cache_dir=arguments.cache_dir,
    )
    try:
        check_options(options)
    except NightboxError as err:
        print(f"nightbox image build: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = build(options, progress=lambda line: print(line, flush=True))
    except NightboxError as err:
        print(f"nightbox image build: {err}", file=sys.stderr)
        return EXIT_FAILED
    if result.image is None:
        print(f"trees: root {result.root_dir}, data {result.data_dir}")
        return 0
    size = result.image.stat().st_size
    print(f"image: {result.image} ({size / 2**20:.0f} MiB)")
    for partition in result.partitions:
        boot = ", bootable" if partition.bootable else ""
        print(
            f"  partition {partition.number}: type {partition.type_id}{boot}, "
            f"start {partition.start_bytes // 2**20} MiB, "
            f"size {partition.size_bytes / 2**20:.0f} MiB"
        )
    return 0
