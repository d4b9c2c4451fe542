"""Build the amd64 disk image with the real tools, check it, and boot it.

The image is built once for the module (the slowest part), from Debian's
archive and PyPI. Its root tree then boots in systemd-nspawn, read-only, with
the data tree bound on /var/lib/nightbox as the data partition would be.
The image trusts a key made by ``nightbox update keygen``, so signed update
bundles are applied, switched back and rejected inside the booted container,
and a power cut during a trial is followed by a second boot.
The arm64 root tree is built too where binfmt_misc runs arm64 binaries.
Downloaded packages and wheels are cached in the module's temporary folder,
which is removed at the end. Needs root; tests/ensure-image-tools installs
the tools and prepares binfmt_misc and /run/systemd/nspawn.
"""

from __future__ import annotations

import contextlib
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
from tests.image.image_update import (
    BOX_ENVIRONMENT,
    BOX_PYTHON,
    UpdateKeys,
    apply_command,
    flip_payload_byte,
    generate_keys,
    make_bundle,
    read_current,
    read_state,
    wait_for_trial,
)
from tests.update.update_site import OLDER_VERSION, tree_hash

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
    nspawn: subprocess.Popen[bytes]
    # The leader's start time in clock ticks since boot, so a pid that the
    # kernel has given to another process since is never signalled.
    leader_started: int


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
def update_keys(image_folder: Path) -> UpdateKeys:
    """The key pair whose public key the image trusts for updates."""
    return generate_keys(image_folder / "update-keys")


@pytest.fixture(scope="module")
def built(image_folder: Path, update_keys: UpdateKeys) -> BuiltImage:
    _require_tools()
    # A space and quotes in the name, which genimage's configuration cannot hold.
    image = image_folder / 'nightbox "box" amd64.img'
    trees = image_folder / "amd64"
    started = time.monotonic()
    result = _nightbox(
        "image", "build", "--arch", "amd64", "--output", str(image),
        "--rootfs-dir", str(trees), "--cache-dir", str(image_folder / "cache"),
        "--update-key", str(update_keys.public_key),
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


def _boot(built: BuiltImage, log: Path) -> BootedBox:
    """Boot the root tree read-only in systemd-nspawn with the data tree bound."""
    with log.open("ab") as output:
        nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(built.root), "--read-only",
             f"--bind={built.data}:/var/lib/nightbox", "--boot", "--register=no",
             "--keep-unit", "--private-network", "--console=passive"],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        leader = _container_leader(nspawn.pid)
    except AssertionError:
        nspawn.kill()
        nspawn.wait()
        raise
    return BootedBox(leader, built.data, log, nspawn, _start_time(leader))


def _start_time(pid: int) -> int:
    """Return field 22 of /proc/PID/stat, the start time; -1 once it has ended."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return -1
    # The command name in field 2 may contain spaces, so count after its ")".
    return int(stat_line.rsplit(")", 1)[1].split()[19])


def _stop(box: BootedBox) -> None:
    if box.nspawn.poll() is not None:
        _cut_power(box)
        return
    box.nspawn.send_signal(signal.SIGTERM)
    try:
        box.nspawn.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _cut_power(box)
        pytest.fail(f"the container did not stop within {STOP_TIMEOUT_S} s")


def _cut_power(box: BootedBox) -> None:
    """Kill the container at once, as a power cut stops a box.

    A killed systemd-nspawn leaves its container running, so its systemd
    gets SIGKILL too, which ends every process of the container's PID
    namespace together.
    """
    if _start_time(box.leader) == box.leader_started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(box.leader, signal.SIGKILL)
    box.nspawn.kill()
    box.nspawn.wait(STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _start_time(box.leader) == box.leader_started:
        # systemd-nspawn reaps its child before it exits; an orphan is
        # reaped by the host's init.
        assert time.monotonic() < deadline, (
            f"the container's systemd {box.leader} outlived SIGKILL for "
            f"{STOP_TIMEOUT_S} s"
        )
        time.sleep(0.1)


@pytest.fixture(scope="module")
def booted(built: BuiltImage, image_folder: Path) -> Iterator[BootedBox]:
    box = _boot(built, image_folder / "nspawn.log")
    try:
        yield box
    finally:
        _stop(box)


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


def _wait_running(box: BootedBox) -> BootedBox:
    """Wait until the container's boot finished; fail unless it is "running"."""
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT_S
    while True:
        # Until the container's systemd has created its private socket,
        # systemctl cannot connect and prints nothing on standard output.
        state = _inside(
            box, "systemctl", "is-system-running", "--wait",
            timeout=max(deadline - time.monotonic(), 1),
        )  # fmt: skip
        reached = state.stdout.strip()
        if reached or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"boot reached {reached!r} in {time.monotonic() - started:.0f} s")
    failed = _inside(box, "systemctl", "--failed", "--no-legend", "--plain")
    warnings = _inside(box, "journalctl", "-b", "-p", "warning", "--no-pager")
    assert reached == "running", (
        f"system is {reached!r}; failed units:\n{failed.stdout}\n"
        f"{warnings.stdout[-4000:]}"
    )
    return box


@pytest.fixture(scope="module")
def running(booted: BootedBox) -> BootedBox:
    return _wait_running(booted)


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


# Updates under systemd. They share the booted container and run in this
# order: 0.2.0 installs into slot-b, the broken 0.3.0 is switched back, a
# tampered and an older bundle are rejected, and last a power cut during the
# trial of 0.3.0 leaves the container killed and boots it again.
GOOD_VERSION = "0.2.0"
BROKEN_VERSION = "0.3.0"
# A bound for pip's install into the new slot and the health check.
APPLY_TIMEOUT_S = 300


@dataclass(frozen=True, slots=True)
class UpdateBundles:
    good: str
    broken: str
    tampered: str
    older: str


@pytest.fixture(scope="module")
def update_bundles(
    built: BuiltImage, image_folder: Path, update_keys: UpdateKeys
) -> UpdateBundles:
    """Signed bundles in the data tree's updates/ folder, by file name."""
    folder = image_folder / "bundles"
    folder.mkdir()
    started = time.monotonic()
    good = make_bundle(folder, update_keys, GOOD_VERSION)
    broken = make_bundle(folder, update_keys, BROKEN_VERSION, broken=True)
    older = make_bundle(folder, update_keys, OLDER_VERSION)
    tampered = flip_payload_byte(broken, folder / "nightbox-tampered.nbu")
    print(f"update bundles built in {time.monotonic() - started:.0f} s")
    updates = built.data / "updates"
    updates.mkdir(exist_ok=True)
    for bundle in (good, broken, older, tampered):
        shutil.copy(bundle, updates / bundle.name)
    return UpdateBundles(good.name, broken.name, tampered.name, older.name)


def _apply(box: BootedBox, bundle_name: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(
        apply_command(box.leader, bundle_name),
        capture_output=True, text=True, timeout=APPLY_TIMEOUT_S, check=False,
    )  # fmt: skip
    print(f"update apply {bundle_name}: {time.monotonic() - started:.0f} s")
    return result


def _service_state(box: BootedBox) -> str:
    shown = _inside(box, "systemctl", "show", "nightbox.service", "-p", "ActiveState")
    return shown.stdout.strip().removeprefix("ActiveState=")


def _current_version(box: BootedBox) -> str:
    """Return the version that ``app/current`` prints, inside the container."""
    printed = _inside(box, *BOX_ENVIRONMENT, BOX_PYTHON, "-m", "appliance", "--version")
    assert printed.returncode == 0, printed.stderr
    return printed.stdout.split()[-1]


def _bus_version(box: BootedBox) -> str:
    """Return the version in the box's retained telemetry on the bus.

    Reads as the operator account, the one the updater's health check uses,
    because the observer may not read telemetry.
    """
    marker = json.loads((box.data / "first-boot.json").read_text())
    accounts = json.loads((box.data / "data/secrets/broker.json").read_text())
    topic = f"nightbox/{marker['site_id']}/box/{marker['box_id']}/tele/state"
    probe = subprocess.run(
        ["nsenter", "-t", str(box.leader), "-n", sys.executable, str(PROBE),
         "operator", topic, "30"],
        input=accounts["operator"] + "\n", capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    return str(json.loads(probe.stdout)["payload"]["data"]["version"])


def assert_box_serves(box: BootedBox, slot: str, version: str) -> None:
    """Check that ``slot`` is current with no trial and the box runs ``version``."""
    assert os.readlink(box.data / "app" / "current") == slot
    state = read_state(box.data)
    assert state["active"] == slot
    assert state["trying"] is None
    assert _service_state(box) == "active"
    assert _current_version(box) == version
    assert _bus_version(box) == version


def test_update_installs_under_systemd(
    running: BootedBox, update_bundles: UpdateBundles
) -> None:
    result = _apply(running, update_bundles.good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_box_serves(running, "slot-b", GOOD_VERSION)


def test_broken_update_switched_back(
    running: BootedBox, update_bundles: UpdateBundles
) -> None:
    result = _apply(running, update_bundles.broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Nightbox {BROKEN_VERSION} failed its health check" in result.stderr
    assert f"switched back to {GOOD_VERSION}" in result.stderr
    assert_box_serves(running, "slot-b", GOOD_VERSION)


def test_bad_bundles_rejected_in_box(
    running: BootedBox, update_bundles: UpdateBundles
) -> None:
    app = running.data / "app"
    before = tree_hash(app)
    tampered = _apply(running, update_bundles.tampered)
    older = _apply(running, update_bundles.older)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert "hash-mismatch" in tampered.stderr
    assert older.returncode == 1, older.stdout + older.stderr
    assert "old-version" in older.stderr
    assert f"{OLDER_VERSION} <= {GOOD_VERSION}" in older.stderr
    assert tree_hash(app) == before
    assert _service_state(running) == "active"


def test_power_cut_during_trial(
    built: BuiltImage,
    running: BootedBox,
    update_bundles: UpdateBundles,
    image_folder: Path,
) -> None:
    # Kills the module's container, so it runs after every other test of it.
    update = subprocess.Popen(
        apply_command(running.leader, update_bundles.broken),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        trying = wait_for_trial(running.data, update, APPLY_TIMEOUT_S)
        _cut_power(running)
        update.wait(STOP_TIMEOUT_S)
    finally:
        if update.poll() is None:
            update.kill()
            update.wait()
    # The cut came during the trial: current points at the broken version.
    assert trying == "slot-a"
    assert read_state(running.data)["trying"] == "slot-a"
    assert read_current(running.data) == "slot-a"

    started = time.monotonic()
    box = _boot(built, image_folder / "nspawn-after-cut.log")
    try:
        _wait_running(box)
        print(f"boot after the power cut: {time.monotonic() - started:.0f} s")
        logged = _inside(
            box, "journalctl", "-b", "-u", "nightbox-slot-check.service",
            "--no-pager", "-o", "cat",
        )  # fmt: skip
        assert "did not finish; switched back to slot-b" in logged.stdout, logged.stdout
        assert "boot-check with the code of" not in logged.stdout
        # The version on trial cannot run the check that switches it back.
        trial_code = _inside(
            box, *BOX_ENVIRONMENT, "/var/lib/nightbox/app/slot-a/venv/bin/python",
            "-m", "appliance", "update", "status",
        )  # fmt: skip
        assert trial_code.returncode != 0
        assert "broken on purpose" in trial_code.stderr
        assert_box_serves(box, "slot-b", GOOD_VERSION)
    finally:
        _stop(box)


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
