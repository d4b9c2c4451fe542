"""Growing the data partition, for real, on a loop device.

Each test builds a disk image file with an MBR like the box's card: a FAT
partition, a root partition and a small ext4 data partition last, with
free space after it. The test attaches the file with ``losetup -P`` and
mounts the data partition. Needs root and loop devices.

An online resize needs CAP_SYS_RESOURCE. Where the test process lacks it
(some container and VM sandboxes), the mounted test checks the error that
names it and then grows the file system offline, as an unmounted partition.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.image.first_boot import run_first_boot
from appliance.image.grow import (
    GrowError,
    GrowOutcome,
    file_system_bytes,
    grow_partition,
    grow_state_partition,
    read_partition,
)
from appliance.image.layout import BoxLayout

MIB = 1 << 20
DISK_MIB = 96
# The data partition's size in the image, before it is grown.
DATA_MIB = 8
CAP_SYS_RESOURCE = 24


@dataclass
class LoopDisk:
    """A disk image attached to a loop device, its data partition mounted."""

    image: Path
    device: Path
    mount_point: Path

    def partition(self, number: int) -> Path:
        """Return the device node of partition ``number``."""
        return Path(f"{self.device}p{number}")

    def sys_partition(self, number: int) -> Path:
        """Return the sysfs folder of partition ``number``."""
        return Path("/sys/class/block") / f"{self.device.name}p{number}"

    def sectors(self, number: int) -> int:
        """Return the kernel's size of partition ``number`` in 512-byte sectors."""
        return int((self.sys_partition(number) / "size").read_text())

    def disk_sectors(self) -> int:
        """Return the disk's size in 512-byte sectors."""
        return int((Path("/sys/class/block") / self.device.name / "size").read_text())


def run(*command: str, stdin: str | None = None) -> str:
    """Run a command, failing the test with its output when it fails."""
    completed = subprocess.run(
        command, input=stdin, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, f"{command}: {completed.stderr}"
    return completed.stdout


def has_capability(bit: int) -> bool:
    """Return whether this process has capability ``bit`` in its effective set."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def df_bytes(path: Path) -> int:
    """Return the size of the file system mounted at ``path``."""
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[LoopDisk]:
    """A 96 MiB disk whose third and last partition (ext4, 8 MiB) is mounted."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.fail("growing needs root and losetup (util-linux); run as root")
    image = tmp_path / "card.img"
    with image.open("wb") as handle:
        handle.truncate(DISK_MIB * MIB)
    table = (
        "label: dos\n"
        "start=2048, size=16MiB, type=c\n"
        "size=16MiB, type=83\n"
        f"size={DATA_MIB}MiB, type=83\n"
    )
    run("sfdisk", "--quiet", str(image), stdin=table)
    device = Path(run("losetup", "--find", "--show", "--partscan", str(image)).strip())
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    disk = LoopDisk(image, device, mount_point)
    try:
        _wait_for_partitions(disk)
        run("mkfs.ext4", "-q", "-L", "nbdata", str(disk.partition(3)))
        run("mkfs.ext4", "-q", "-L", "nbroot", str(disk.partition(2)))
        run("mount", str(disk.partition(3)), str(mount_point))
        yield disk
    finally:
        subprocess.run(["umount", "-R", str(mount_point)], capture_output=True)
        subprocess.run(["losetup", "--detach", str(device)], capture_output=True)


def _wait_for_partitions(disk: LoopDisk) -> None:
    # Some kernels attach a loop device without scanning its table in
    # time; partx adds the partitions from the table itself.
    deadline = time.monotonic() + 5
    while not disk.sys_partition(3).exists():
        if time.monotonic() > deadline:
            run("partx", "--add", str(disk.device))
            break
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while not disk.partition(3).exists():
        assert time.monotonic() < deadline, f"no device node {disk.partition(3)}"
        time.sleep(0.1)


def test_grow_mounted_partition(loop_disk: LoopDisk) -> None:
    start = int((loop_disk.sys_partition(3) / "start").read_text())
    before_fs = file_system_bytes(loop_disk.partition(3))
    assert loop_disk.sectors(3) * 512 == DATA_MIB * MIB

    if has_capability(CAP_SYS_RESOURCE):
        result = grow_state_partition(loop_disk.mount_point)
        assert result.outcome is GrowOutcome.GROWN
        assert df_bytes(loop_disk.mount_point) > 4 * DATA_MIB * MIB
    else:
        with pytest.raises(GrowError, match="CAP_SYS_RESOURCE"):
            grow_state_partition(loop_disk.mount_point)
        assert file_system_bytes(loop_disk.partition(3)) == before_fs

    assert loop_disk.sectors(3) == loop_disk.disk_sectors() - start
    dump = run("sfdisk", "--dump", str(loop_disk.image))
    assert f"size={loop_disk.disk_sectors() - start}," in dump.replace(" ", "")


def test_grow_unmounted_partition(loop_disk: LoopDisk) -> None:
    run("umount", str(loop_disk.mount_point))
    partition = read_partition(loop_disk.sys_partition(3))
    assert partition is not None

    result = grow_partition(partition, mounted=False)

    assert result.outcome is GrowOutcome.GROWN
    grown_bytes = loop_disk.sectors(3) * 512
    assert grown_bytes == (DISK_MIB - 1 - 16 - 16) * MIB
    fs_bytes = file_system_bytes(loop_disk.partition(3))
    assert grown_bytes - fs_bytes < 64 * 1024
    dumpe2fs = run("dumpe2fs", "-h", str(loop_disk.partition(3)))
    assert "Filesystem volume name:   nbdata" in dumpe2fs
    run("mount", str(loop_disk.partition(3)), str(loop_disk.mount_point))
    assert df_bytes(loop_disk.mount_point) > 4 * DATA_MIB * MIB
    again = grow_state_partition(loop_disk.mount_point)
    assert again.outcome is GrowOutcome.ALREADY_FULL


def test_grown_partition_then_file_system(loop_disk: LoopDisk) -> None:
    # A run cut after the partition grew leaves the file system small; the
    # next run grows only the file system.
    run("umount", str(loop_disk.mount_point))
    start = int((loop_disk.sys_partition(3) / "start").read_text())
    run(
        "sfdisk",
        "--quiet",
        "--no-reread",
        "--no-tell-kernel",
        "-N",
        "3",
        str(loop_disk.device),
        stdin=", +\n",
    )
    run("partx", "-u", "--nr", "3", str(loop_disk.device))
    assert loop_disk.sectors(3) == loop_disk.disk_sectors() - start
    partition = read_partition(loop_disk.sys_partition(3))
    assert partition is not None

    result = grow_partition(partition, mounted=False)

    assert result.outcome is GrowOutcome.FILE_SYSTEM_GROWN
    assert file_system_bytes(loop_disk.partition(3)) > 4 * DATA_MIB * MIB


def test_first_boot_grows_or_reports(loop_disk: LoopDisk) -> None:
    result = run_first_boot(loop_disk.mount_point)

    start = int((loop_disk.sys_partition(3) / "start").read_text())
    assert loop_disk.sectors(3) == loop_disk.disk_sectors() - start
    if has_capability(CAP_SYS_RESOURCE):
        assert result.grow is not None
        assert result.grow.outcome is GrowOutcome.GROWN
        assert result.grow_error is None
    else:
        assert result.grow_error is not None
        assert "CAP_SYS_RESOURCE" in result.grow_error
    # The box's files are written whether or not the file system grew.
    assert BoxLayout(loop_disk.mount_point).first_boot_file.exists()


def test_not_last_partition_skipped(loop_disk: LoopDisk, tmp_path: Path) -> None:
    other = tmp_path / "root"
    other.mkdir()
    run("mount", str(loop_disk.partition(2)), str(other))
    try:
        before = loop_disk.sectors(2)

        result = grow_state_partition(other)

        assert result.outcome is GrowOutcome.SKIPPED
        assert "is not the last partition" in result.message
        assert loop_disk.sectors(2) == before
    finally:
        run("umount", str(other))


def test_subfolder_of_mount_skipped(loop_disk: LoopDisk) -> None:
    folder = loop_disk.mount_point / "inner"
    folder.mkdir()

    result = grow_state_partition(folder)

    assert result.outcome is GrowOutcome.SKIPPED
    assert "not the mount point of a partition of its own" in result.message
    assert loop_disk.sectors(3) * 512 == DATA_MIB * MIB


def test_bind_mount_skipped(loop_disk: LoopDisk, tmp_path: Path) -> None:
    inner = loop_disk.mount_point / "inner"
    inner.mkdir()
    bound = tmp_path / "bound"
    bound.mkdir()
    run("mount", "--bind", str(inner), str(bound))
    try:
        result = grow_state_partition(bound)
    finally:
        run("umount", str(bound))

    assert result.outcome is GrowOutcome.SKIPPED
    assert loop_disk.sectors(3) * 512 == DATA_MIB * MIB


def test_mountinfo_escapes_and_tmpfs(tmp_path: Path) -> None:
    state = tmp_path / "with space"
    state.mkdir()
    escaped = str(state).replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
        f"40 22 0:45 / {escaped} rw,relatime shared:9 - tmpfs tmpfs rw\n"
    )

    result = grow_state_partition(state, mountinfo=mountinfo)

    assert result.outcome is GrowOutcome.SKIPPED
    assert "tmpfs file system, not ext4" in result.message


def test_whole_disk_skipped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"40 22 7:0 / {state} rw - ext4 /dev/loop0 rw\n")
    sys_dev_block = tmp_path / "sys"
    disk = sys_dev_block / "7:0"
    disk.mkdir(parents=True)
    (disk / "size").write_text("2048\n")

    result = grow_state_partition(
        state, mountinfo=mountinfo, sys_dev_block=sys_dev_block
    )

    assert result.outcome is GrowOutcome.SKIPPED
    assert "/dev/loop0, which is not a partition" in result.message
