"""Build the amd64 disk image with the real tools, check it, and boot it.

The image is built once for the module (the slowest part), from Debian's
archive and PyPI. Its root tree then boots in systemd-nspawn, read-only, with
the data tree bound on /var/lib/nightbox as the data partition would be.
The arm64 root tree is built too where binfmt_misc runs arm64 binaries.
Downloaded packages and wheels are cached in the module's temporary folder,
which is removed at the end. Needs root; tests/ensure-image-tools installs
the tools and prepares binfmt_misc and /run/systemd/nspawn.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.image._build_tools import BINFMT_DIR, missing_tools

REPOSITORY = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("mqtt_probe.py")
UNITS = (
    "nightbox-first-boot.service",
    "nightbox-slot-check.service",
    "nightbox.service",
    "nightbox-tui.service",
    "nightbox-broker-reload.path",
    "nightbox-broker-reload.service",
    "nightbox-update.path",
    "nightbox-update.service",
)
# Bounds for a slow CI machine, not speed targets.
BOOT_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the image build and systemd-nspawn need root"
    ),
]


@dataclass(frozen=True, slots=True)
class BuiltImage:
    image: Path
    root: Path
    data: Path
    output: str


@dataclass(frozen=True, slots=True)
class BootedBox:
    leader: int
    data: Path
    log: Path


def _require_tools() -> None:
    missing = [tool.command for tool in missing_tools()]
    for command in ("sfdisk", "blkid", "systemd-nspawn", "nsenter", "debugfs"):
        if shutil.which(command, path=os.environ["PATH"] + ":/usr/sbin:/sbin") is None:
            missing.append(command)
    assert not missing, f"missing tools {missing}: run 'sh tests/ensure-image-tools'"


def _nightbox(
    *arguments: str, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPOSITORY,
        check=False,
    )


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for the builds and their download cache, removed at the end."""
    folder = tmp_path_factory.mktemp("image")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def built(image_folder: Path) -> BuiltImage:
    _require_tools()
    # A space and quotes in the name, which genimage's configuration cannot hold.
    image = image_folder / 'nightbox "box" amd64.img'
    trees = image_folder / "amd64"
    started = time.monotonic()
    result = _nightbox(
        "image", "build", "--arch", "amd64", "--output", str(image),
        "--rootfs-dir", str(trees), "--cache-dir", str(image_folder / "cache"),
    )  # fmt: skip
    print(f"amd64 image built in {time.monotonic() - started:.0f} s")
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    return BuiltImage(image, trees / "root", trees / "data", result.stdout)


def _partitions(image: Path) -> list[dict[str, object]]:
    listing = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    )
    table = json.loads(listing.stdout)["partitiontable"]
    assert table["label"] == "dos"
    partitions: list[dict[str, object]] = table["partitions"]
    return partitions


def _probe_file_system(image: Path, start_sector: int) -> dict[str, str]:
    probe = subprocess.run(
        [
            "blkid",
            "-p",
            "-o",
            "export",
            "--offset",
            str(start_sector * 512),
            str(image),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)


def test_build_prints_stage_lines(built: BuiltImage) -> None:
    stages = [line for line in built.output.splitlines() if line.startswith("[")]
    names = [line.split("]", 1)[1].split(":", 1)[0].strip() for line in stages]
    assert names == ["tools", "wheels", "packages", "app", "system", "trees", "image"]
    assert f"image: {built.image}" in built.output


def test_partition_table(built: BuiltImage) -> None:
    partitions = _partitions(built.image)
    assert [part["type"] for part in partitions] == ["ef", "83", "83"]
    assert partitions[0].get("bootable") is True
    boot_size_mib = int(str(partitions[0]["size"])) * 512 // 2**20
    assert boot_size_mib == 256
    expected = [("vfat", "NBBOOT"), ("ext4", "nbroot"), ("ext4", "nbdata")]
    found = []
    for part in partitions:
        probe = _probe_file_system(built.image, int(str(part["start"])))
        found.append((probe.get("TYPE"), probe.get("LABEL")))
    assert found == expected


def test_data_partition_holds_slot_a(built: BuiltImage) -> None:
    data = _partitions(built.image)[2]
    offset = int(str(data["start"])) * 512
    listing = subprocess.run(
        ["debugfs", "-R", "cat /app/state.json", f"{built.image}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(listing.stdout) == {
        "active": "slot-a",
        "trying": None,
        "previous": None,
    }


def test_data_partition_top_folder(built: BuiltImage) -> None:
    data = _partitions(built.image)[2]
    offset = int(str(data["start"])) * 512
    status = subprocess.run(
        ["debugfs", "-R", "stat /", f"{built.image}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups = (built.root / "etc/group").read_text().splitlines()
    nightbox_gid = next(
        line.split(":")[2] for line in groups if line.startswith("nightbox:")
    )
    # As image-build/overlay/etc/tmpfiles.d/nightbox.conf gives it.
    assert re.search(r"Mode:\s+01775\b", status), status
    assert re.search(rf"User:\s+0\s+Group:\s+{nightbox_gid}\b", status), status


def test_slot_files(built: BuiltImage) -> None:
    app = built.data / "app"
    assert os.readlink(app / "current") == "slot-a"
    marker = json.loads((app / "slot-a" / "slot.json").read_text())
    assert marker["version"] == "0.1.0"
    assert marker["complete"] is True
    assert marker["installed_at"].endswith("Z")
    assert (app / "slot-a" / "firmware" / "main.py").is_file()
    assert (app / "slot-a" / "firmware" / "nbreader").is_dir()
    assert (app / "slot-b").is_dir()
    assert list((app / "slot-b").iterdir()) == []
    assert list((built.root / "var/lib/nightbox").iterdir()) == []


def test_no_password_anywhere(built: BuiltImage) -> None:
    for line in (built.root / "etc/shadow").read_text().splitlines():
        user, password = line.split(":")[:2]
        assert password.startswith(("!", "*")), f"{user} has a password or none"
    assert not (built.root / "usr/sbin/sshd").exists()


def test_root_mounted_read_only(built: BuiltImage) -> None:
    fields = [
        line.split()
        for line in (built.root / "etc/fstab").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    by_mount = {entry[1]: entry for entry in fields}
    assert by_mount["/"][0] == "LABEL=nbroot"
    assert "ro" in by_mount["/"][3].split(",")
    assert by_mount["/var/lib/nightbox"][0] == "LABEL=nbdata"
    assert by_mount["/boot/firmware"][0] == "LABEL=NBBOOT"
    assert by_mount["/var/log/journal"][0] == "/var/lib/nightbox/journal"


def test_units_enabled(built: BuiltImage) -> None:
    unit_dir = built.root / "etc/systemd/system"
    for unit in UNITS:
        assert (unit_dir / unit).is_file(), unit
    wants = unit_dir / "multi-user.target.wants"
    for unit in ("nightbox.service", "nightbox-first-boot.service",
                 "nightbox-slot-check.service", "nightbox-update.path",
                 "nightbox-broker-reload.path", "mosquitto.service"):  # fmt: skip
        assert (wants / unit).is_symlink(), unit
    assert os.readlink(unit_dir / "getty@tty1.service") == "/dev/null"


@pytest.fixture(scope="module")
def booted(built: BuiltImage, image_folder: Path) -> Iterator[BootedBox]:
    log = image_folder / "nspawn.log"
    with log.open("wb") as output:
        nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(built.root), "--read-only",
             f"--bind={built.data}:/var/lib/nightbox", "--boot", "--register=no",
             "--keep-unit", "--private-network", "--console=passive"],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        leader = _container_leader(nspawn.pid)
        yield BootedBox(leader, built.data, log)
    finally:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait()
            pytest.fail(f"the container did not stop within {STOP_TIMEOUT_S} s")


def _container_leader(nspawn_pid: int) -> int:
    """Return the pid of the container's systemd: the child of systemd-nspawn."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children")
        pids = children.read_text().split() if children.exists() else []
        for pid in pids:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            if name == "systemd":
                return int(pid)
        time.sleep(0.2)
    raise AssertionError("systemd-nspawn started no container systemd within 30 s")


def _inside(
    box: BootedBox, *command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(box.leader), "-a", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def running(booted: BootedBox) -> BootedBox:
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT_S
    while True:
        # Until the container's systemd has created its private socket,
        # systemctl cannot connect and prints nothing on standard output.
        state = _inside(
            booted, "systemctl", "is-system-running", "--wait",
            timeout=max(deadline - time.monotonic(), 1),
        )  # fmt: skip
        reached = state.stdout.strip()
        if reached or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"boot reached {reached!r} in {time.monotonic() - started:.0f} s")
    failed = _inside(booted, "systemctl", "--failed", "--no-legend", "--plain")
    warnings = _inside(booted, "journalctl", "-b", "-p", "warning", "--no-pager")
    assert reached == "running", (
        f"system is {reached!r}; failed units:\n{failed.stdout}\n"
        f"{warnings.stdout[-4000:]}"
    )
    return booted


def test_units_verify(running: BootedBox) -> None:
    # Inside the container, where the data partition with the slots' Python
    # is mounted, so systemd-analyze also checks every ExecStart= command.
    units = [str(Path("/etc/systemd/system") / unit) for unit in UNITS]
    result = _inside(running, "systemd-analyze", "verify", "--man=no", *units)
    assert result.returncode == 0, result.stderr


def test_box_service_ready_under_systemd(running: BootedBox) -> None:
    shown = _inside(
        running, "systemctl", "show", "nightbox.service",
        "-p", "ActiveState", "-p", "SubState", "-p", "Type", "-p", "WatchdogUSec",
        "-p", "User",
    )  # fmt: skip
    properties = dict(line.split("=", 1) for line in shown.stdout.splitlines())
    assert properties["Type"] == "notify"
    assert properties["ActiveState"] == "active"
    assert properties["SubState"] == "running"
    assert properties["WatchdogUSec"] == "30s"
    assert properties["User"] == "nightbox"


def test_first_boot_results(running: BootedBox) -> None:
    data = running.data
    marker = json.loads((data / "first-boot.json").read_text())
    assert marker["box_id"]
    assert (data / "site.toml").is_file()
    broker = data / "broker"
    # The setgid bit gives files written there the group mosquitto.
    assert stat.S_IMODE(broker.stat().st_mode) == 0o2750
    for name in ("mosquitto.conf", "mosquitto.passwd", "mosquitto.acl"):
        assert stat.S_IMODE((broker / name).stat().st_mode) == 0o640, name
    group = _inside(running, "stat", "-c", "%U:%G", "/var/lib/nightbox/broker")
    assert group.stdout.strip() == "nightbox:mosquitto"
    secrets = data / "data" / "secrets"
    assert stat.S_IMODE((secrets / "broker.json").stat().st_mode) == 0o600
    accounts = json.loads((secrets / "broker.json").read_text())
    assert "observer" in accounts
    for unit in ("nightbox-first-boot.service", "nightbox-slot-check.service"):
        result = _inside(running, "systemctl", "show", unit, "-p", "Result")
        assert result.stdout.strip() == "Result=success", unit


def test_box_answers_on_bus(running: BootedBox) -> None:
    marker = json.loads((running.data / "first-boot.json").read_text())
    accounts = json.loads((running.data / "data/secrets/broker.json").read_text())
    topic = f"nightbox/{marker['site_id']}/box/{marker['box_id']}/status"
    probe = subprocess.run(
        ["nsenter", "-t", str(running.leader), "-n", sys.executable, str(PROBE),
         "observer", topic, "30"],
        input=accounts["observer"] + "\n", capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    message = json.loads(probe.stdout)
    assert message["topic"] == topic
    assert message["retain"] is True
    assert "broker" in message["payload"]["data"]


def test_journal_is_persistent(running: BootedBox) -> None:
    logged = _inside(
        running, "journalctl", "-u", "nightbox.service", "--no-pager", "-o", "cat"
    )
    assert logged.stdout.strip(), "journald holds no line of nightbox.service"
    _inside(running, "journalctl", "--flush")
    journals = list((running.data / "journal").glob("*/*.journal"))
    assert journals, "no journal file on the data partition"


def test_root_is_read_only(running: BootedBox) -> None:
    write = _inside(running, "touch", "/nightbox-write-test")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    assert not (running.data.parent / "root" / "nightbox-write-test").exists()


ARM64_SKIP_REASON = (
    "binfmt_misc does not run arm64 binaries here (no qemu-aarch64 entry); "
    "run 'sh tests/ensure-image-tools' to register it"
)


@pytest.mark.skipif(
    not (BINFMT_DIR / "qemu-aarch64").exists(), reason=ARM64_SKIP_REASON
)
def test_arm64_root_tree_runs_nightbox(image_folder: Path) -> None:
    _require_tools()
    trees = image_folder / "arm64"
    started = time.monotonic()
    result = _nightbox(
        "image", "build", "--arch", "arm64", "--rootfs-only",
        "--rootfs-dir", str(trees), "--cache-dir", str(image_folder / "cache"),
    )  # fmt: skip
    print(f"arm64 root tree built in {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, result.stderr
    assert "[6/7] trees:" in result.stdout
    assert "[7/7]" not in result.stdout
    root, data = trees / "root", trees / "data"
    assert (root / "usr/lib/aarch64-linux-gnu").is_dir()
    # raspi-firmware installs the Pi's firmware; the initramfs, and the
    # config.txt written with it, come only with the image stage.
    assert (root / "boot/firmware/start4.elf").is_file()
    assert not list((root / "boot").glob("initrd.img-*"))
    python = "/var/lib/nightbox/app/current/venv/bin/python"
    check = (
        "import platform, appliance.cli, appliance.image.layout; "
        "print(platform.machine())"
    )
    run = subprocess.run(
        ["systemd-nspawn", "--quiet", "-D", str(root), "--read-only",
         f"--bind={data}:/var/lib/nightbox", "--register=no", "--keep-unit",
         "--private-network", python, "-c", check],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "aarch64"
