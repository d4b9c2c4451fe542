"""``nightbox image first-boot`` on a temporary state folder.

The state folder replaces the data partition. Growing is covered by
test_grow.py, so these runs pass ``grow=False`` or ``--no-grow`` unless a
test checks that a folder that is no partition is skipped.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from appliance.bus import _system_broker
from appliance.bus.broker import find_mosquitto, free_port
from appliance.cli import main
from appliance.cli_image import EXIT_FAILED
from appliance.config import load_config
from appliance.console.pin import PinFile, pin_path
from appliance.image.first_boot import (
    SITE_FILE_HEADER,
    FirstBootError,
    run_first_boot,
)
from appliance.image.layout import BoxLayout
from appliance.portal.band_codes import load_band_key
from appliance.tokens import load_or_create_key
from provisioning import secret_file, verify_password
from provisioning.site_access import box_username, site_policy
from tui.setup._progress import load_progress, progress_path
from tui.setup._write import overwrite_refusal, write_setup

TIMEOUT_S = 60.0
SECRET_FILES = ("broker.json", "edge-token-key.pem", "portal-band-key")


class PowerCut(BaseException):
    """Stops a run at one write, as a power cut would; nothing catches it."""


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state folder under /tmp that the ``mosquitto`` user may enter."""
    folder = Path(tempfile.mkdtemp(prefix="nightbox-first-boot-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def tree(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Return every path under ``folder`` with its mode, mtime and content."""
    states = {}
    for path in sorted(folder.rglob("*")):
        status = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        states[str(path.relative_to(folder))] = (
            status.st_mode,
            status.st_mtime_ns,
            content,
        )
    return states


def secret_values(layout: BoxLayout) -> list[str]:
    """Return every secret that first boot made, as text that could leak."""
    values = list(json.loads((layout.secrets_dir / "broker.json").read_text()).values())
    values.append((layout.secrets_dir / "portal-band-key").read_text().strip())
    pem = (layout.secrets_dir / "edge-token-key.pem").read_text()
    values += [line for line in pem.splitlines() if not line.startswith("-----")]
    return values


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every file write of a run without changing it."""
    written: list[Path] = []
    atomic = secret_file.write_file_atomically
    broker = _system_broker.write_broker_file

    def record_atomic(path: Path, data: bytes, mode: int) -> None:
        written.append(path)
        atomic(path, data, mode)

    def record_broker(path: Path, data: bytes, owner: int, group: int) -> None:
        written.append(path)
        broker(path, data, owner, group)

    monkeypatch.setattr(secret_file, "write_file_atomically", record_atomic)
    monkeypatch.setattr(_system_broker, "write_broker_file", record_broker)
    return written


def cut_at(monkeypatch: pytest.MonkeyPatch, number: int) -> Callable[[], None]:
    """Make the ``number``-th write leave half a temporary file and stop the run.

    Returns a function that restores the real writers.
    """
    calls = 0
    atomic = secret_file.write_file_atomically
    broker = _system_broker.write_broker_file

    def cut(temporary: Path, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == number:
            temporary.write_bytes(data[: len(data) // 2])
            raise PowerCut(str(temporary))

    def atomic_or_cut(path: Path, data: bytes, mode: int) -> None:
        cut(path.with_suffix(".tmp"), data)
        atomic(path, data, mode)

    def broker_or_cut(path: Path, data: bytes, owner: int, group: int) -> None:
        cut(path.with_name(path.name + ".tmp"), data)
        broker(path, data, owner, group)

    monkeypatch.setattr(secret_file, "write_file_atomically", atomic_or_cut)
    monkeypatch.setattr(_system_broker, "write_broker_file", broker_or_cut)

    def restore() -> None:
        monkeypatch.setattr(secret_file, "write_file_atomically", atomic)
        monkeypatch.setattr(_system_broker, "write_broker_file", broker)

    return restore


def check_complete(layout: BoxLayout) -> None:
    """Check that a first boot left a consistent box behind."""
    config = load_config(layout.site_file)
    marker = json.loads(layout.first_boot_file.read_text())
    assert marker["box_id"] == config.box_id
    assert marker["site_id"] == config.site_id
    progress = load_progress(layout.site_file)
    assert progress is not None
    assert progress.effective_box_id == config.box_id
    accounts = json.loads((layout.secrets_dir / "broker.json").read_text())
    policy = site_policy(config.site_id, config.box_id, [])
    assert box_username(config.box_id) in accounts
    assert set(policy.usernames) <= set(accounts)
    stored = dict(
        line.split(":", 1) for line in layout.broker_passwd.read_text().splitlines()
    )
    for username, password in accounts.items():
        assert verify_password(password, stored[username]), username
    load_or_create_key(layout.secrets_dir / "edge-token-key.pem")
    assert len(load_band_key(layout.data_dir)) == 32
    assert f"listener {config.broker.port} {config.broker.host}" in (
        layout.broker_conf.read_text()
    )
    leftovers = [path for path in layout.state_dir.rglob("*.tmp")]
    assert leftovers == []


def test_first_boot_writes_box_files(state_dir: Path) -> None:
    layout = BoxLayout(state_dir)

    result = run_first_boot(state_dir, grow=False)

    assert not result.already_done
    assert result.box_id.startswith("box-")
    assert result.site_id.startswith("site-")
    check_complete(layout)
    config = load_config(layout.site_file)
    assert config.box_id == result.box_id
    assert config.data_dir == layout.data_dir
    assert config.broker.mode == "system"
    assert config.broker.host == "0.0.0.0"
    assert config.broker.port == 1883
    assert config.broker.config_dir == layout.broker_dir
    assert layout.site_file.read_text().startswith(SITE_FILE_HEADER)
    assert layout.first_boot_file in result.written
    assert result.written[-1] == layout.first_boot_file


def test_first_boot_file_modes(state_dir: Path) -> None:
    layout = BoxLayout(state_dir)

    run_first_boot(state_dir, grow=False)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(layout.data_dir) == 0o700
    assert mode(layout.secrets_dir) == 0o700
    for name in SECRET_FILES:
        assert mode(layout.secrets_dir / name) == 0o600, name
    assert mode(progress_path(layout.site_file)) == 0o600
    assert mode(layout.site_file) == 0o644
    assert mode(layout.first_boot_file) == 0o644
    assert mode(layout.broker_dir) == 0o2750
    for path in (layout.broker_conf, layout.broker_passwd, layout.broker_acl):
        assert mode(path) == 0o640, path
    for folder in (layout.updates_dir, layout.network_dir, layout.bluetooth_dir):
        assert folder.is_dir(), folder
    assert layout.journal_dir.is_dir()


def test_files_given_to_service_user(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine has no user 'nightbox', so one is looked up with an
    # unused uid; root may give files to any uid.
    real_getpwnam = pwd.getpwnam
    service_user = pwd.struct_passwd(
        ("nightbox", "x", 48123, 48123, "", "/nonexistent", "/usr/sbin/nologin")
    )

    def getpwnam(name: str) -> pwd.struct_passwd:
        return service_user if name == "nightbox" else real_getpwnam(name)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    layout = BoxLayout(state_dir)

    run_first_boot(state_dir, grow=False)

    owned = [
        layout.site_file,
        progress_path(layout.site_file),
        layout.data_dir,
        layout.secrets_dir,
        layout.updates_dir,
        *(layout.secrets_dir / name for name in SECRET_FILES),
    ]
    for path in owned:
        assert path.stat().st_uid == 48123, path
    mosquitto_gid = grp.getgrnam("mosquitto").gr_gid
    for path in (layout.broker_dir, layout.broker_conf, layout.broker_passwd):
        assert path.stat().st_uid == 48123, path
        assert path.stat().st_gid == mosquitto_gid, path
    for path in (layout.journal_dir, layout.network_dir, layout.bluetooth_dir):
        assert path.stat().st_uid == 0, path


def test_first_boot_sets_no_pin(state_dir: Path) -> None:
    layout = BoxLayout(state_dir)

    run_first_boot(state_dir, grow=False)

    assert not PinFile(pin_path(layout.data_dir)).exists()


def test_secrets_not_logged_or_printed(
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)

    status = main(["-vv", "image", "first-boot", "--state-dir", str(state_dir)])

    output = capsys.readouterr()
    assert status == 0
    assert "First boot done: box box-" in output.out
    values = secret_values(BoxLayout(state_dir))
    assert len(values) > 5
    for value in values:
        assert value not in caplog.text
        assert value not in output.out
        assert value not in output.err


def test_second_run_changes_nothing(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_first_boot(state_dir, grow=False)
    before = tree(state_dir)

    second = main(["image", "first-boot", "--state-dir", str(state_dir), "--no-grow"])

    output = capsys.readouterr().out
    assert second == 0
    assert f"First boot already done for box {first.box_id}" in output
    assert "nothing to do" in output
    assert tree(state_dir) == before


def test_run_cut_at_every_write(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as counting:
        written = count_writes(counting)
        run_first_boot(state_dir, grow=False)
    total = len(written)
    assert total > 8
    for number in range(1, total + 1):
        folder = state_dir / f"cut-{number}"
        folder.mkdir()
        layout = BoxLayout(folder)
        restore = cut_at(monkeypatch, number)
        with pytest.raises(PowerCut):
            run_first_boot(folder, grow=False)
        assert not layout.first_boot_file.exists(), number
        restore()

        result = run_first_boot(folder, grow=False)

        assert not result.already_done, number
        check_complete(layout)
        assert run_first_boot(folder, grow=False).already_done, number


def test_cut_run_keeps_box_id(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = BoxLayout(state_dir)
    # The site file is the first write and the credentials file a later one.
    restore = cut_at(monkeypatch, 3)
    with pytest.raises(PowerCut):
        run_first_boot(state_dir, grow=False)
    restore()
    box_id = load_config(layout.site_file).box_id

    result = run_first_boot(state_dir, grow=False)

    assert result.box_id == box_id
    accounts = json.loads((layout.secrets_dir / "broker.json").read_text())
    assert box_username(box_id) in accounts


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_state_dir_rejected(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "state"
    if kind == "file":
        target.write_text("not a folder")
    before = tree(tmp_path)

    with pytest.raises(FirstBootError, match=str(target)) as caught:
        run_first_boot(target, grow=False)

    assert "--state-dir" in str(caught.value)
    assert tree(tmp_path) == before


def test_bad_state_dir_cli_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "absent"

    status = main(["image", "first-boot", "--state-dir", str(target)])

    assert status == EXIT_FAILED
    error = capsys.readouterr().err
    assert f"state folder {target} does not exist" in error
    assert not target.exists()


@pytest.mark.parametrize(
    "text",
    [
        "[site\nid = ",
        '[site]\nid = "Bad Id"\n[box]\nscanner = "simulator"\n',
        "\xff\xfe",
    ],
)
def test_corrupt_site_file_changes_nothing(state_dir: Path, text: str) -> None:
    layout = BoxLayout(state_dir)
    layout.site_file.write_bytes(text.encode("latin-1"))
    before = tree(state_dir)

    with pytest.raises(FirstBootError) as caught:
        run_first_boot(state_dir, grow=False)

    message = str(caught.value)
    assert str(layout.site_file) in message
    assert "move it away" in message
    assert tree(state_dir) == before


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broker.json", b"[1, 2]"),
        ("edge-token-key.pem", b"not a key"),
        ("portal-band-key", b"abc\n"),
    ],
)
def test_corrupt_secret_changes_nothing(
    state_dir: Path, name: str, content: bytes
) -> None:
    layout = BoxLayout(state_dir)
    layout.secrets_dir.mkdir(parents=True)
    (layout.secrets_dir / name).write_bytes(content)
    before = tree(state_dir)

    with pytest.raises(FirstBootError) as caught:
        run_first_boot(state_dir, grow=False)

    message = str(caught.value)
    assert str(layout.secrets_dir / name) in message
    assert "move" in message
    assert tree(state_dir) == before


def test_corrupt_marker_changes_nothing(state_dir: Path) -> None:
    run_first_boot(state_dir, grow=False)
    layout = BoxLayout(state_dir)
    layout.first_boot_file.write_text("{not json")
    before = tree(state_dir)

    with pytest.raises(FirstBootError, match=r"first-boot\.json is not valid JSON"):
        run_first_boot(state_dir, grow=False)

    assert tree(state_dir) == before


def test_own_site_file_is_kept(state_dir: Path) -> None:
    layout = BoxLayout(state_dir)
    text = (
        '[site]\nid = "club"\n[box]\nid = "box-own"\ndata_dir = "data"\n'
        '[broker]\nmode = "system"\nport = 1883\nconfig_dir = "broker"\n'
        '[[readers]]\nid = "door"\nrole = "exit"\n'
    )
    layout.site_file.write_text(text)

    result = run_first_boot(state_dir, grow=False)

    assert result.box_id == "box-own"
    assert result.site_id == "club"
    assert layout.site_file.read_text() == text
    assert not progress_path(layout.site_file).exists()
    assert "reader-door" in layout.broker_passwd.read_text()


def test_non_partition_is_skipped(state_dir: Path) -> None:
    result = run_first_boot(state_dir)

    assert result.grow is not None
    assert "not the mount point of a partition of its own" in result.grow.message
    assert result.grow_error is None


def test_setup_wizard_completes(state_dir: Path) -> None:
    layout = BoxLayout(state_dir)
    first = run_first_boot(state_dir, grow=False)
    accounts_before = json.loads((layout.secrets_dir / "broker.json").read_text())
    values = load_progress(layout.site_file)
    assert values is not None
    assert overwrite_refusal(layout.site_file) is None
    values.site_id = "club"
    values.site_name = "Club"
    values.zones = "main"
    values.exits = "door main"
    values.ibeacon_uuid = "426c7565-4368-6172-6d42-6561636f6e73"

    config = write_setup(layout.site_file, values, "480917")

    assert config.box_id == first.box_id
    assert config.site_id == "club"
    assert config.data_dir == layout.data_dir
    assert PinFile(pin_path(layout.data_dir)).verify("480917")
    assert not progress_path(layout.site_file).exists()
    accounts_after = json.loads((layout.secrets_dir / "broker.json").read_text())
    box_account = box_username(first.box_id)
    assert accounts_after[box_account] == accounts_before[box_account]
    assert tomllib.loads(layout.site_file.read_text())["box"]["id"] == first.box_id


def test_rerun_after_wizard_names_site(state_dir: Path) -> None:
    layout = BoxLayout(state_dir)
    first = run_first_boot(state_dir, grow=False)
    values = load_progress(layout.site_file)
    assert values is not None
    values.site_id = "club"
    values.site_name = "Club"
    values.zones = "main"
    values.exits = "door main"
    values.ibeacon_uuid = "426c7565-4368-6172-6d42-6561636f6e73"
    write_setup(layout.site_file, values, "480917")
    layout.first_boot_file.rename(state_dir / "first-boot.moved")

    again = run_first_boot(state_dir, grow=False)
    text = "\n".join(again.summary())

    assert again.box_id == first.box_id
    assert not again.placeholder
    assert "placeholder" not in text
    assert "site club" in text
    assert "setup wizard" not in text


def test_missing_service_user_warned(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_getpwnam = pwd.getpwnam

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name == "nightbox":
            raise KeyError(name)
        return real_getpwnam(name)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    result = run_first_boot(state_dir, grow=False)

    assert len(result.warnings) == 1
    assert "no user 'nightbox'" in result.warnings[0]
    assert any("Warning: there is no user" in line for line in result.summary())
    assert "files stay owned by root" in caplog.text


def start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    """Start mosquitto with the generated ``conf``, as mosquitto.service does."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    process = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        assert process.poll() is None, f"mosquitto exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process that a test started."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_nightbox_run_starts_after_first_boot(state_dir: Path) -> None:
    layout = BoxLayout(state_dir)
    result = run_first_boot(state_dir, grow=False)
    port = free_port()
    # The image's mosquitto listens on every interface on 1883; the test's on
    # a free port of the loopback interface.
    text = layout.site_file.read_text().replace("port = 1883", f"port = {port}")
    layout.site_file.write_text(text.replace('"0.0.0.0"', '"127.0.0.1"'))
    assert main(["broker", "files", "--config", str(layout.site_file)]) == 0
    broker = start_mosquitto(layout.broker_conf, port)
    log_path = state_dir / "run.log"
    box: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log:
            box = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "appliance",
                    "run",
                    "--config",
                    str(layout.site_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + TIMEOUT_S
        while f"Box {result.box_id} of site" not in log_path.read_text():
            assert box.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "nightbox run did not start"
            time.sleep(0.1)
        accounts = json.loads((layout.secrets_dir / "broker.json").read_text())
        status = asyncio.run(
            retained_box_status(
                port, accounts["terminal-console"], result.site_id, result.box_id
            )
        )
        assert status["broker"] == "system"
        box.send_signal(signal.SIGTERM)
        assert box.wait(TIMEOUT_S) == 0
        output = log_path.read_text()
        assert "Broker: system mosquitto on 127.0.0.1" in output
        for value in secret_values(layout):
            assert value not in output
    finally:
        if box is not None:
            stop(box)
        stop(broker)


async def retained_box_status(
    port: int, password: str, site_id: str, box_id: str
) -> dict[str, object]:
    """Return the box's retained status, read with the console's account."""
    topic = f"nightbox/{site_id}/box/{box_id}/status"
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        username="terminal-console",
        password=password,
        identifier=f"test-console-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            async for message in client.messages:
                document = json.loads(bytes(message.payload))
                data: dict[str, object] = document["data"]
                return data
    raise AssertionError(f"no retained status on {topic}")
