"""The system broker mode against a real mosquitto started as systemd would.

Each test writes the broker files with the box's code, then starts
mosquitto with the generated mosquitto.conf, as Debian's mosquitto.service
does. Run as root, mosquitto 2.0 drops to the ``mosquitto`` user before it
reads the password file and ACL, so these tests also check that the files'
mode and group let it read them. The files live in a folder that every
user may enter, because pytest's own temporary folders are private to root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import grp
import json
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import make_site_config
from paho.mqtt.reasoncodes import ReasonCode
from paho_publish import PahoResult, publish_with_paho

from appliance.bus import envelope
from appliance.bus._system_broker import (
    site_access_policy,
    site_broker_files,
    wait_for_system_broker,
)
from appliance.bus.broker import BrokerHandle, find_mosquitto, free_port, start_broker
from appliance.clock import SystemClock, TimeSource
from appliance.config import BrokerConfig, ReaderConfig, SiteConfig, parse_config
from appliance.errors import BrokerUnavailableError, ConfigError
from appliance.runtime import Box
from provisioning import SiteCredentials, verify_password

TIMEOUT_S = 10.0
REASON_SUCCESS = 0
REASON_NO_MATCHING_SUBSCRIBERS = 16
REASON_NOT_AUTHORIZED = 135


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder under /tmp that the ``mosquitto`` user may enter."""
    folder = Path(tempfile.mkdtemp(prefix="nightbox-system-broker-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def system_site(shared_dir: Path, **changes: object) -> SiteConfig:
    """Return the test site in system broker mode on a free loopback port."""
    broker = BrokerConfig(
        mode="system",
        host="127.0.0.1",
        port=free_port(),
        config_dir=shared_dir / "broker",
    )
    return make_site_config(shared_dir / "data", broker=broker, **changes)


def credentials_of(config: SiteConfig) -> SiteCredentials:
    """Return the site's broker credentials, as the box keeps them."""
    return SiteCredentials(config.data_dir / "secrets" / "broker.json")


def start_mosquitto(conf: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    """Start mosquitto with ``conf`` as mosquitto.service does; wait for its port."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    process = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"mosquitto exited with {process.returncode}: {output}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    pytest.fail(f"mosquitto did not listen on {host}:{port}")


def stop_mosquitto(process: subprocess.Popen[bytes]) -> None:
    """Stop a mosquitto that a test started."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture
async def system_mosquitto(
    shared_dir: Path,
) -> AsyncIterator[tuple[SiteConfig, subprocess.Popen[bytes]]]:
    """The site's broker files, and a mosquitto running on them."""
    config = system_site(shared_dir)
    files = site_broker_files(config)
    process = start_mosquitto(files.conf, config.broker.host, config.broker.port)
    try:
        yield config, process
    finally:
        stop_mosquitto(process)


async def publish(
    config: SiteConfig, username: str, password: str, topic: str
) -> PahoResult:
    """Publish one QoS 1 message as ``username`` on the site's system broker."""
    broker = BrokerHandle("system", config.broker.host, config.broker.port)
    payload = envelope.encode(f"test/{username}", {"data": {}})
    return await publish_with_paho(
        broker, username, password, topic, payload, timeout_s=TIMEOUT_S
    )


def file_states(config: SiteConfig) -> dict[str, tuple[int, int]]:
    """Return the inode and modification time of each broker file."""
    states = {}
    for path in sorted(config.broker.config_dir.iterdir()):
        status = path.stat()
        states[path.name] = (status.st_ino, status.st_mtime_ns)
    return states


def test_files_have_mosquitto_access(shared_dir: Path) -> None:
    config = system_site(shared_dir)

    files = site_broker_files(config)

    assert set(files.changed) == {files.conf, files.passwd, files.acl}
    mosquitto_gid = grp.getgrnam("mosquitto").gr_gid
    folder = config.broker.config_dir.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o2750
    assert folder.st_gid == mosquitto_gid
    for path in (files.conf, files.passwd, files.acl):
        status = path.stat()
        assert stat.S_IMODE(status.st_mode) == 0o640, path
        assert status.st_gid == mosquitto_gid, path
    assert not list(config.broker.config_dir.glob("*.tmp"))


def test_conf_keeps_no_private_broker_lines(shared_dir: Path) -> None:
    config = system_site(shared_dir)

    files = site_broker_files(config)

    lines = files.conf.read_text().splitlines()
    assert f"listener {config.broker.port} 127.0.0.1" in lines
    assert f"password_file {files.passwd}" in lines
    assert f"acl_file {files.acl}" in lines
    assert "allow_anonymous false" in lines
    assert "log_dest stderr" in lines
    assert not [line for line in lines if line.startswith("user ")]


def test_password_file_matches_credentials(shared_dir: Path) -> None:
    config = system_site(shared_dir)

    files = site_broker_files(config)

    credentials = credentials_of(config)
    stored = dict(line.split(":", 1) for line in files.passwd.read_text().splitlines())
    usernames = site_access_policy(config).usernames
    assert set(usernames) <= set(stored)
    for username in usernames:
        password = credentials.account(username).password
        assert verify_password(password, stored[username]), username


def test_unchanged_files_not_rewritten(shared_dir: Path) -> None:
    config = system_site(shared_dir)
    site_broker_files(config)
    before = file_states(config)

    again = site_broker_files(config)

    assert again.changed == ()
    assert file_states(config) == before


def test_new_reader_rewrites_passwd_and_acl(shared_dir: Path) -> None:
    config = system_site(shared_dir)
    site_broker_files(config)
    before = file_states(config)
    readers = (*config.readers, ReaderConfig("exit-3", "exit"))

    changed = site_broker_files(dataclasses.replace(config, readers=readers))

    names = sorted(path.name for path in changed.changed)
    assert names == ["mosquitto.acl", "mosquitto.passwd"]
    after = file_states(config)
    assert after["mosquitto.conf"] == before["mosquitto.conf"]
    assert after["mosquitto.acl"] != before["mosquitto.acl"]


def test_port_change_rewrites_conf_only(shared_dir: Path) -> None:
    config = system_site(shared_dir)
    site_broker_files(config)
    moved = dataclasses.replace(
        config, broker=dataclasses.replace(config.broker, port=free_port())
    )

    changed = site_broker_files(moved)

    assert [path.name for path in changed.changed] == ["mosquitto.conf"]
    assert f"listener {moved.broker.port} 127.0.0.1" in changed.conf.read_text()


def test_damaged_passwd_is_rewritten(shared_dir: Path) -> None:
    config = system_site(shared_dir)
    files = site_broker_files(config)
    files.passwd.write_text("box-box-1:$7$101$bm90$bm90\n")

    again = site_broker_files(config)

    assert again.changed == (files.passwd,)
    assert "box-box-1:$7$101$bm90" not in files.passwd.read_text()


def test_wrong_mode_is_repaired(shared_dir: Path) -> None:
    config = system_site(shared_dir)
    files = site_broker_files(config)
    files.acl.chmod(0o600)

    again = site_broker_files(config)

    assert again.changed == ()
    assert stat.S_IMODE(files.acl.stat().st_mode) == 0o640


def test_broker_files_require_system_mode(tmp_path: Path) -> None:
    config = make_site_config(tmp_path / "data")

    with pytest.raises(ConfigError, match=r"broker\.mode = 'system'"):
        site_broker_files(config)


async def test_box_runs_on_system_broker(
    system_mosquitto: tuple[SiteConfig, subprocess.Popen[bytes]],
) -> None:
    config, process = system_mosquitto
    credentials = credentials_of(config)
    policy = site_access_policy(config)
    before = file_states(config)

    handle = await start_broker(
        config.broker, config.data_dir / "run", credentials, policy
    )

    assert handle.kind == "system"
    assert handle.description == f"system mosquitto on 127.0.0.1:{config.broker.port}"
    assert file_states(config) == before
    async with Box(
        config,
        SystemClock(TimeSource.NTP),
        credentials,
        handle.host,
        handle.port,
        broker_kind=handle.kind,
    ) as box:
        await asyncio.wait_for(box.bus.connected.wait(), TIMEOUT_S)
        assert box.status()["broker"] == "system"
    await handle.stop()
    assert process.poll() is None


async def test_reader_cannot_publish_as_another(
    system_mosquitto: tuple[SiteConfig, subprocess.Popen[bytes]],
) -> None:
    config, _process = system_mosquitto
    password = credentials_of(config).account("reader-exit-1").password
    root = f"nightbox/{config.site_id}"

    own = await publish(
        config, "reader-exit-1", password, f"{root}/reader/exit-1/status"
    )
    foreign = await publish(
        config, "reader-exit-1", password, f"{root}/reader/exit-2/sightings"
    )

    assert own.connack == REASON_SUCCESS
    assert own.puback in (REASON_SUCCESS, REASON_NO_MATCHING_SUBSCRIBERS)
    assert foreign.connack == REASON_SUCCESS
    assert foreign.puback == REASON_NOT_AUTHORIZED


async def test_wrong_password_refused(
    system_mosquitto: tuple[SiteConfig, subprocess.Popen[bytes]],
) -> None:
    config, _process = system_mosquitto
    topic = f"nightbox/{config.site_id}/reader/exit-1/status"

    result = await publish(config, "reader-exit-1", "not-the-password", topic)

    assert result.connack == REASON_NOT_AUTHORIZED
    assert result.puback is None
    assert ReasonCode(2, identifier=result.connack).getName() == "Not authorized"


async def test_new_reader_works_after_sighup(
    system_mosquitto: tuple[SiteConfig, subprocess.Popen[bytes]],
) -> None:
    config, process = system_mosquitto
    grown = dataclasses.replace(
        config, readers=(*config.readers, ReaderConfig("exit-3", "exit"))
    )
    site_broker_files(grown)
    password = credentials_of(grown).account("reader-exit-3").password
    topic = f"nightbox/{config.site_id}/reader/exit-3/sightings"

    before_reload = await publish(grown, "reader-exit-3", password, topic)
    process.send_signal(signal.SIGHUP)
    after_reload = await _publish_until_accepted(
        grown, "reader-exit-3", password, topic
    )

    assert before_reload.connack == REASON_NOT_AUTHORIZED
    assert after_reload.connack == REASON_SUCCESS
    assert after_reload.puback in (REASON_SUCCESS, REASON_NO_MATCHING_SUBSCRIBERS)
    assert process.poll() is None


async def _publish_until_accepted(
    config: SiteConfig, username: str, password: str, topic: str
) -> PahoResult:
    # mosquitto reloads its files in its event loop after the signal.
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        result = await publish(config, username, password, topic)
        if result.connack == REASON_SUCCESS or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def test_wait_names_address_and_fix(shared_dir: Path) -> None:
    config = system_site(shared_dir)
    files = site_broker_files(config)
    account = credentials_of(config).account("box-box-1")

    with pytest.raises(BrokerUnavailableError) as caught:
        await wait_for_system_broker(
            "127.0.0.1", config.broker.port, account, files.conf, timeout_s=1.0
        )

    message = str(caught.value)
    assert f"127.0.0.1:{config.broker.port}" in message
    assert "systemctl status mosquitto" in message
    assert account.password not in message


async def test_start_waits_for_late_broker(shared_dir: Path) -> None:
    config = system_site(shared_dir)
    files = site_broker_files(config)
    loop = asyncio.get_running_loop()
    started: list[subprocess.Popen[bytes]] = []
    # mosquitto comes up a second after the box starts waiting, as after a
    # reboot where both units start together.
    loop.call_later(
        1.0,
        lambda: started.append(
            start_mosquitto(files.conf, config.broker.host, config.broker.port)
        ),
    )
    try:
        handle = await start_broker(
            config.broker,
            config.data_dir / "run",
            credentials_of(config),
            site_access_policy(config),
        )
        assert handle.kind == "system"
        assert started
    finally:
        for process in started:
            stop_mosquitto(process)


def test_config_parses_system_mode(tmp_path: Path) -> None:
    raw = {
        "site": {"id": "test"},
        "box": {"scanner": "simulator"},
        "broker": {"mode": "system", "port": 1883, "config_dir": "broker"},
    }

    config = parse_config(raw, base_dir=tmp_path)

    assert config.broker.mode == "system"
    assert config.broker.port == 1883
    assert config.broker.config_dir == tmp_path.resolve() / "broker"


def test_config_system_default_dir(tmp_path: Path) -> None:
    raw = {
        "site": {"id": "test"},
        "box": {"scanner": "simulator"},
        "broker": {"mode": "system", "port": 1883},
    }

    config = parse_config(raw, base_dir=tmp_path)

    assert config.broker.config_dir == Path("/var/lib/nightbox/broker")


@pytest.mark.parametrize(
    ("broker", "message"),
    [
        ({"mode": "system"}, "broker.port is required when broker.mode is 'system'"),
        (
            {"mode": "auto", "config_dir": "broker"},
            "broker.config_dir applies only when broker.mode is 'system'",
        ),
        (
            {"mode": "system", "port": 1883, "config_dir": "site.toml"},
            "is not a directory",
        ),
        ({"mode": "system", "port": 1883, "config_dir": " "}, "broker.config_dir"),
    ],
)
def test_config_rejects_bad_system_broker(
    tmp_path: Path, broker: dict[str, object], message: str
) -> None:
    (tmp_path / "site.toml").write_text("")
    raw = {"site": {"id": "test"}, "box": {"scanner": "simulator"}, "broker": broker}

    with pytest.raises(ConfigError, match=message):
        parse_config(raw, base_dir=tmp_path)


def test_cli_broker_files(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import main

    site = shared_dir / "site.toml"
    port = free_port()
    site.write_text(
        '[site]\nid = "test"\n[box]\nid = "box-1"\ndata_dir = "data"\n'
        f'[broker]\nmode = "system"\nport = {port}\nconfig_dir = "broker"\n'
        '[[readers]]\nid = "exit-1"\nrole = "exit"\n'
    )

    first = main(["broker", "files", "--config", str(site)])
    first_output = capsys.readouterr().out
    second = main(["broker", "files", "--config", str(site)])
    second_output = capsys.readouterr().out

    assert first == 0
    assert f"{shared_dir / 'broker' / 'mosquitto.conf'}: written" in first_output
    assert second == 0
    assert "mosquitto needs no reload" in second_output
    passwords = credentials_of_file(shared_dir / "data" / "secrets" / "broker.json")
    for password in passwords:
        assert password not in first_output


def test_cli_broker_files_rejects_auto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli import main

    site = tmp_path / "site.toml"
    site.write_text(
        '[site]\nid = "test"\n[box]\nscanner = "simulator"\n[broker]\nmode = "auto"\n'
    )

    status = main(["broker", "files", "--config", str(site)])

    assert status == 2
    assert "set broker.mode = 'system'" in capsys.readouterr().err


def credentials_of_file(path: Path) -> list[str]:
    """Return the clear passwords stored in a broker.json file."""
    return list(json.loads(path.read_text()).values())
