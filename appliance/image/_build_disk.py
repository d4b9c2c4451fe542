"""The disk image: root and data trees, the boot partition, and genimage.

The finished root tree is split in two: everything under
``/var/lib/nightbox`` moves to the data tree (the ``nbdata`` partition), and
the root tree keeps the empty mount point. genimage then writes the three
file systems and the MBR partition table from ``image-build/genimage.cfg.in``.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

from appliance.image._build_tools import ImageBuildError
from appliance.image.layout import STATE_DIR

MIB = 1024 * 1024
# Partition types in the MBR: the EFI system partition that a PC's UEFI
# firmware looks for, and FAT32 with LBA, which a Raspberry Pi boots from.
BOOT_PARTITION_TYPES = {"amd64": "0xEF", "arm64": "0x0C"}
# Free space on the root file system (fsck, a few files of a later package
# change) and on the data partition before first boot grows it.
ROOT_HEADROOM = 128 * MIB
DATA_HEADROOM = 256 * MIB
_VERSION_RE = re.compile(r"(\d+)")
# genimage writes the disk under this fixed name, which its configuration
# syntax takes as is; the build then moves the file to --output.
GENIMAGE_IMAGE_NAME = "nightbox.img"


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of the written image, as ``sfdisk --json`` reports it."""

    number: int
    start_bytes: int
    size_bytes: int
    type_id: str
    bootable: bool


def split_trees(root: Path, data: Path) -> None:
    """Move ``root``'s ``/var/lib/nightbox`` into the empty folder ``data``.

    The top folder's owner and mode go with it, because they are the data
    partition's root folder (run_genimage gives them to the file system);
    the root tree keeps an empty mount point.
    """
    state = root / STATE_DIR.relative_to("/")
    data.mkdir(parents=True, exist_ok=True)
    if any(data.iterdir()):
        raise ImageBuildError(f"data tree {data} is not empty: choose an empty folder")
    for entry in state.iterdir():
        shutil.move(entry, data / entry.name)
    status = state.stat()
    os.chown(data, status.st_uid, status.st_gid)
    data.chmod(status.st_mode & 0o7777)
    os.chown(state, 0, 0)
    state.chmod(0o755)


def prepare_boot_dir(arch: str, root: Path, recipe_dir: Path, boot: Path) -> None:
    """Fill ``boot`` with the boot partition's files for ``arch``."""
    boot.mkdir(parents=True, exist_ok=True)
    # NOTE: booting a real Raspberry Pi or PC from this partition is untested.
    # The tests boot the root tree in systemd-nspawn, which uses no firmware,
    # boot loader, kernel or initrd.
    if arch == "amd64":
        _prepare_efi_partition(root, recipe_dir / "boot" / "amd64", boot)
    else:
        _prepare_raspberry_pi_partition(root, recipe_dir / "boot" / "arm64", boot)


def _prepare_efi_partition(root: Path, recipe: Path, boot: Path) -> None:
    kernel, initrd = _newest_kernel(root / "boot")
    loader = root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    if not loader.is_file():
        raise ImageBuildError(
            f"systemd-boot's loader {loader} is missing: the package list for amd64 "
            "must include systemd-boot"
        )
    for target in ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"):
        (boot / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(loader, boot / target)
    shutil.copyfile(kernel, boot / kernel.name)
    shutil.copyfile(initrd, boot / initrd.name)
    entries = boot / "loader" / "entries"
    entries.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe / "loader.conf", boot / "loader" / "loader.conf")
    template = string.Template(
        (recipe / "nightbox.conf.in").read_text(encoding="utf-8")
    )
    entry = template.substitute(kernel=kernel.name, initrd=initrd.name)
    (entries / "nightbox.conf").write_text(entry, encoding="utf-8")


def _prepare_raspberry_pi_partition(root: Path, recipe: Path, boot: Path) -> None:
    firmware = root / "boot" / "firmware"
    if not (firmware / "config.txt").is_file():
        raise ImageBuildError(
            f"{firmware} has no config.txt: raspi-firmware and linux-image-arm64 "
            "must be in the arm64 package list, and the non-free-firmware "
            "component reachable on the mirror"
        )
    shutil.copytree(firmware, boot, dirs_exist_ok=True)
    # Debian's generated cmdline.txt mounts the root read-write by device name;
    # the image's mounts the root read-only by label.
    shutil.copyfile(recipe / "cmdline.txt", boot / "cmdline.txt")
    # The root tree keeps an empty mount point for the boot partition.
    for entry in firmware.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _newest_kernel(boot: Path) -> tuple[Path, Path]:
    kernels = sorted(boot.glob("vmlinuz-*"), key=_version_key)
    if not kernels:
        raise ImageBuildError(
            f"no kernel in {boot}: the package list must include linux-image-amd64"
        )
    kernel = kernels[-1]
    initrd = boot / ("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.is_file():
        raise ImageBuildError(f"{initrd} is missing: initramfs-tools did not build it")
    return kernel, initrd


def _version_key(path: Path) -> list[int]:
    return [int(number) for number in _VERSION_RE.findall(path.name)]


def tree_size(path: Path) -> int:
    """Return the bytes the files under ``path`` take on disk, folders included."""
    total = 0
    for folder, folders, files in os.walk(path):
        for name in folders + files:
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total + os.lstat(path).st_blocks * 512


def file_system_size(used: int, headroom: int) -> int:
    """Return a file system size for ``used`` bytes: a quarter more, then headroom.

    The quarter covers ext4's inode tables and journal; the result is rounded
    up to whole MiB.
    """
    size = used + used // 4 + headroom
    return -(-size // MIB) * MIB


def run_genimage(
    arch: str,
    recipe_dir: Path,
    work: Path,
    boot: Path,
    root: Path,
    data: Path,
    log_dir: Path,
) -> Path:
    """Write the disk image with genimage; return its path inside ``work``.

    genimage's configuration and log go to ``log_dir``.

    ``mke2fs -d`` (e2fsprogs 1.47.0) gives the file system's top folder
    ``0755 root:root`` whatever ``data`` has, so the data file system gets
    ``data``'s owner from mke2fs's ``root_owner`` and its mode from debugfs.
    """
    data_status = data.stat()
    template = string.Template(
        (recipe_dir / "genimage.cfg.in").read_text(encoding="utf-8")
    )
    config = template.substitute(
        boot_dir=boot,
        root_dir=root,
        data_dir=data,
        root_size=file_system_size(tree_size(root), ROOT_HEADROOM),
        data_size=file_system_size(tree_size(data), DATA_HEADROOM),
        boot_type=BOOT_PARTITION_TYPES[arch],
        image_name=GENIMAGE_IMAGE_NAME,
        data_owner=f"{data_status.st_uid}:{data_status.st_gid}",
        data_mode=f"{data_status.st_mode:o}",
    )
    config_file = log_dir / "genimage.cfg"
    config_file.write_text(config, encoding="utf-8")
    empty_root = work / "genimage-root"
    empty_root.mkdir(exist_ok=True)
    temporary = work / "genimage-tmp"
    if temporary.exists():
        shutil.rmtree(temporary)
    output = work / "images"
    output.mkdir(exist_ok=True)
    log = log_dir / "genimage.log"
    with log.open("wb") as stream:
        result = subprocess.run(
            ["genimage", "--config", str(config_file), "--rootpath", str(empty_root),
             "--tmppath", str(temporary), "--inputpath", str(output),
             "--outputpath", str(output)],
            stdout=stream, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise ImageBuildError(
            f"genimage failed (exit code {result.returncode}); the last lines of "
            f"{log}:\n" + "\n".join(tail) + f"\nThe configuration is {config_file}"
        )
    shutil.rmtree(temporary, ignore_errors=True)
    return output / GENIMAGE_IMAGE_NAME


def read_partitions(image: Path) -> list[Partition]:
    """Return the partitions of ``image`` from its MBR, through ``sfdisk --json``."""
    result = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ImageBuildError(f"sfdisk cannot read {image}: {result.stderr.strip()}")
    table = orjson.loads(result.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    partitions = []
    for number, entry in enumerate(table.get("partitions", []), start=1):
        partitions.append(
            Partition(
                number=number,
                start_bytes=int(entry["start"]) * sector,
                size_bytes=int(entry["size"]) * sector,
                type_id=str(entry["type"]),
                bootable=bool(entry.get("bootable", False)),
            )
        )
    return partitions
