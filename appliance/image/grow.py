"""Grow the data partition and its ext4 file system to the end of the disk.

The image's data partition is small so the image file stays small. On the
box's first boot it is the last partition of a larger SD card, and it is
grown in place. ``sfdisk -N`` extends the MBR entry, ``partx -u`` passes the
new size to the kernel (BLKPG, which works while the partition is mounted),
and ``resize2fs`` grows the file system. A mounted file
system is grown online, which the kernel allows only to a process with
CAP_SYS_RESOURCE; an unmounted one is checked with ``e2fsck -f`` and grown
offline.

A state folder that is not the mount point of a partition of its own (a
container, a test folder) is left alone.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import NightboxError

_LOGGER = logging.getLogger(__name__)

SECTOR_BYTES = 512
# Less free space than this after the partition is not worth a rewrite of
# the partition table: sfdisk aligns partitions to 1 MiB anyway.
MIN_GROWTH_SECTORS = 2048
_MOUNTINFO = Path("/proc/self/mountinfo")
_SYS_DEV_BLOCK = Path("/sys/dev/block")
_DEV = Path("/dev")
# MBR tables hold four primary partitions; growing a logical one would
# also need its extended partition grown.
_MAX_PRIMARY = 4
_COMMAND_TIMEOUT_S = 600.0


class GrowError(NightboxError):
    """The data partition could not be grown; the message names the step and fix."""


class GrowOutcome(enum.Enum):
    """The action that :func:`grow_state_partition` took."""

    GROWN = "grown"
    FILE_SYSTEM_GROWN = "file-system-grown"
    ALREADY_FULL = "already-full"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class BlockPartition:
    """A partition as the kernel reports it in sysfs, sizes in 512-byte sectors."""

    name: str
    number: int
    start: int
    size: int
    disk_name: str
    disk_size: int
    sys_path: Path

    @property
    def device(self) -> Path:
        """The partition's device node."""
        return _DEV / self.name

    @property
    def disk_device(self) -> Path:
        """The device node of the whole disk."""
        return _DEV / self.disk_name

    @property
    def free_after(self) -> int:
        """Sectors between the partition's end and the disk's end."""
        return self.disk_size - (self.start + self.size)


@dataclass(frozen=True, slots=True)
class GrowResult:
    """The outcome and a line for people."""

    outcome: GrowOutcome
    message: str


@dataclass(frozen=True, slots=True)
class _Mount:
    mount_point: Path
    root: str
    major: int
    minor: int
    fs_type: str
    source: str


def grow_state_partition(
    state_dir: Path,
    *,
    mountinfo: Path = _MOUNTINFO,
    sys_dev_block: Path = _SYS_DEV_BLOCK,
) -> GrowResult:
    """Grow the partition mounted at ``state_dir`` and its ext4 file system.

    Skips, with the reason in the result, when ``state_dir`` is not a mount
    point, not ext4, not on a partition, not on the disk's last partition
    or not on an MBR table. Raises GrowError when a tool is missing or
    fails.
    """
    state_dir = state_dir.resolve()
    mount = _find_mount(state_dir, mountinfo)
    if mount is None or mount.mount_point != state_dir or mount.root != "/":
        # A bind mount (root other than "/") shares its file system with
        # other mounts, so it is not a partition of the state folder's own.
        return _skip(f"{state_dir} is not the mount point of a partition of its own")
    if mount.fs_type != "ext4":
        return _skip(f"{state_dir} is a {mount.fs_type} file system, not ext4")
    partition = read_partition(sys_dev_block / f"{mount.major}:{mount.minor}")
    if partition is None:
        return _skip(f"{state_dir} is on {mount.source}, which is not a partition")
    return grow_partition(partition, mounted=True)


def grow_partition(partition: BlockPartition, *, mounted: bool) -> GrowResult:
    """Grow ``partition`` to the end of its disk, then its ext4 file system.

    Either step is skipped when already done, so a run cut short between
    them is completed by the next. ``mounted`` selects an online resize;
    an unmounted file system is checked with ``e2fsck -f`` first.
    """
    reason = _why_not_growable(partition)
    if reason is not None:
        return _skip(reason)
    grew_partition = False
    if partition.free_after >= MIN_GROWTH_SECTORS:
        old_size = partition.size
        partition = _extend_partition(partition)
        grew_partition = True
        _LOGGER.info(
            "Grew partition %s from %d to %d MiB",
            partition.device,
            old_size * SECTOR_BYTES >> 20,
            partition.size * SECTOR_BYTES >> 20,
        )
    fs_bytes = file_system_bytes(partition.device)
    partition_bytes = partition.size * SECTOR_BYTES
    # ext4 sizes are whole blocks, so a file system that fills the partition
    # may fall short of it by less than one block (at most 64 KiB).
    if partition_bytes - fs_bytes < 64 * 1024:
        if grew_partition:
            return GrowResult(
                GrowOutcome.GROWN, f"grew {partition.device} to the end of the disk"
            )
        return GrowResult(
            GrowOutcome.ALREADY_FULL,
            f"{partition.device} already fills its disk "
            f"({partition_bytes >> 20} MiB); nothing to grow",
        )
    _resize_file_system(partition.device, mounted=mounted)
    new_bytes = file_system_bytes(partition.device)
    message = (
        f"grew the file system on {partition.device} from {fs_bytes >> 20} to "
        f"{new_bytes >> 20} MiB"
    )
    _LOGGER.info("%s", message[0].upper() + message[1:])
    outcome = GrowOutcome.GROWN if grew_partition else GrowOutcome.FILE_SYSTEM_GROWN
    return GrowResult(outcome, message)


def read_partition(sys_path: Path) -> BlockPartition | None:
    """Return the partition whose sysfs folder is ``sys_path``, or None.

    ``sys_path`` may be the ``/sys/dev/block/MAJOR:MINOR`` link. Returns
    None for a whole disk or a device without a parent disk.
    """
    try:
        real = sys_path.resolve(strict=True)
        number = int((real / "partition").read_text())
    except (OSError, ValueError):
        return None
    disk = real.parent
    try:
        return BlockPartition(
            name=real.name,
            number=number,
            start=int((real / "start").read_text()),
            size=int((real / "size").read_text()),
            disk_name=disk.name,
            disk_size=int((disk / "size").read_text()),
            sys_path=real,
        )
    except (OSError, ValueError) as err:
        raise GrowError(f"cannot read the size of {real} from sysfs: {err}") from err


def file_system_bytes(device: Path) -> int:
    """Return the size of the ext4 file system on ``device`` from its superblock."""
    output = _run(["dumpe2fs", "-h", str(device)], "e2fsprogs")
    fields = dict(_superblock_field(line) for line in output.splitlines())
    try:
        return int(fields["Block count"]) * int(fields["Block size"])
    except (KeyError, ValueError) as err:
        raise GrowError(
            f"dumpe2fs -h {device} printed no block count and block size; is it "
            "an ext4 file system?"
        ) from err


def _superblock_field(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def _skip(reason: str) -> GrowResult:
    _LOGGER.info("Not growing the data partition: %s", reason)
    return GrowResult(GrowOutcome.SKIPPED, reason)


def _why_not_growable(partition: BlockPartition) -> str | None:
    ends = [
        _partition_end(sibling)
        for sibling in partition.sys_path.parent.iterdir()
        if (sibling / "partition").exists()
    ]
    if _partition_end(partition.sys_path) < max(ends):
        return (
            f"{partition.device} is not the last partition of {partition.disk_device}"
        )
    if partition.number > _MAX_PRIMARY:
        return f"{partition.device} is a logical partition; only primary ones are grown"
    label = _table_type(partition.disk_device)
    if label != "dos":
        return (
            f"{partition.disk_device} has a {label} partition table; only MBR (dos) "
            "tables are grown"
        )
    return None


def _partition_end(sys_path: Path) -> int:
    return int((sys_path / "start").read_text()) + int((sys_path / "size").read_text())


def _table_type(disk: Path) -> str:
    output = _run(["sfdisk", "--dump", str(disk)], "fdisk")
    match = re.search(r"^label:\s*(\S+)", output, re.MULTILINE)
    return match.group(1) if match else "unknown"


def _extend_partition(partition: BlockPartition) -> BlockPartition:
    # ", +" keeps the start and type and gives the partition all the space
    # after it. The disk is in use, so sfdisk needs --force. partx then
    # updates the kernel's entry of this one partition, because a re-read of
    # the whole table fails while a partition is mounted.
    _run(
        [
            "sfdisk",
            "--force",
            "--no-reread",
            "--no-tell-kernel",
            "-N",
            str(partition.number),
            str(partition.disk_device),
        ],
        "fdisk",
        stdin=", +\n",
    )
    _run(
        ["partx", "-u", "--nr", str(partition.number), str(partition.disk_device)],
        "util-linux",
    )
    grown = read_partition(partition.sys_path)
    if grown is None or grown.size <= partition.size:
        raise GrowError(
            f"the kernel still reports {partition.device} with {partition.size} "
            "sectors after partx -u; reboot the box to load the new partition table"
        )
    return grown


def _resize_file_system(device: Path, *, mounted: bool) -> None:
    # NOTE: test_grow.py checks a successful online resize only where the
    # test process has CAP_SYS_RESOURCE; elsewhere it checks the error below
    # and the offline resize.
    if not mounted:
        _run(["e2fsck", "-f", "-p", str(device)], "e2fsprogs")
    try:
        _run(["resize2fs", str(device)], "e2fsprogs")
    except GrowError as err:
        if mounted and "Permission denied" in str(err):
            raise GrowError(
                f"resize2fs could not grow the mounted file system on {device}: the "
                "kernel allows an online resize only to a process with the "
                "capability CAP_SYS_RESOURCE; run 'nightbox image first-boot' as "
                "root outside a restricted container, or resize2fs the partition "
                "while it is unmounted"
            ) from err
        raise


def _run(command: list[str], package: str, *, stdin: str | None = None) -> str:
    binary = shutil.which(command[0]) or next(
        (
            str(folder / command[0])
            for folder in (Path("/usr/sbin"), Path("/sbin"))
            if os.access(folder / command[0], os.X_OK)
        ),
        None,
    )
    if binary is None:
        raise GrowError(
            f"{command[0]} not found; install it (apt-get install {package})"
        )
    try:
        completed = subprocess.run(
            [binary, *command[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise GrowError(
            f"{' '.join(command)} did not finish within {_COMMAND_TIMEOUT_S:.0f} s"
        ) from err
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise GrowError(
            f"{' '.join(command)} failed with exit code {completed.returncode}: "
            f"{' / '.join(detail[-3:]) or 'no output'}"
        )
    return completed.stdout


def _find_mount(path: Path, mountinfo: Path) -> _Mount | None:
    """Return the mount that contains ``path``: the longest matching mount point."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as err:
        raise GrowError(f"cannot read {mountinfo}: {err}") from err
    best: _Mount | None = None
    for line in lines:
        mount = _parse_mountinfo_line(line)
        if mount is None or not path.is_relative_to(mount.mount_point):
            continue
        if best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts):
            # A later line with the same mount point is mounted on top.
            best = mount
    return best


def _parse_mountinfo_line(line: str) -> _Mount | None:
    # proc(5): ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS [TAGS...] - TYPE
    # SOURCE SUPER-OPTIONS, with spaces and backslashes in paths as octal.
    before, separator, after = line.partition(" - ")
    fields = before.split()
    rest = after.split()
    if not separator or len(fields) < 6 or len(rest) < 2:
        return None
    try:
        major, minor = (int(part) for part in fields[2].split(":"))
    except ValueError:
        return None
    return _Mount(
        Path(_unescape(fields[4])),
        _unescape(fields[3]),
        major,
        minor,
        rest[0],
        _unescape(rest[1]),
    )


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)
