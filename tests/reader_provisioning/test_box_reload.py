"""A running ``nightbox run`` loads a newly provisioned reader's account on SIGHUP."""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bus.broker import BrokerHandle, find_mosquitto, free_port
from appliance.config import load_config
from provisioning.readers import ReaderRequest
from provisioning.readers.registration import (
    ensure_broker_account,
    register_reader,
    reload_box,
    running_box_pid,
    validate_request,
)
from tests.paho_publish import REASON_SUCCESS, publish_with_paho
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    site_file_fixture,
    write_site,
)

START_TIMEOUT_S = 30.0
NOT_AUTHORIZED = 135
NO_MATCHING_SUBSCRIBERS = 16


@pytest.fixture
def running_box(tmp_path: Path) -> Iterator[tuple[Path, BrokerHandle]]:
    """``nightbox run`` on the test site, with mosquitto on a free loopback port."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    port = free_port()
    site_file = write_site(
        tmp_path,
        extra=f'\n[broker]\nmode = "mosquitto"\nhost = "127.0.0.1"\nport = {port}\n',
    )
    box = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(site_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert box.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        started = False
        while not started and time.monotonic() < deadline:
            ready, _, _ = select.select([box.stdout], [], [], 0.5)
            line = box.stdout.readline() if ready else ""
            started = "running" in line
            assert box.poll() is None, f"nightbox run stopped at start: {line}"
        assert started, f"nightbox run did not start within {START_TIMEOUT_S} s"
        yield site_file, BrokerHandle("mosquitto", "127.0.0.1", port)
    finally:
        box.terminate()
        box.wait(timeout=30)


async def login_works(broker: BrokerHandle, username: str, password: str) -> int:
    result = await publish_with_paho(
        broker,
        username,
        password,
        f"nightbox/test/reader/{username[7:]}/sightings",
        b"{}",
    )
    return result.connack


async def test_sighup_loads_new_reader(running_box: tuple[Path, BrokerHandle]) -> None:
    site_file, broker = running_box
    config = load_config(site_file)
    assert running_box_pid(config) is not None
    reader = validate_request(
        ReaderRequest(role="exit", zone="back-door", port="/dev/ttyUSB0"), config
    )
    config, _changed = register_reader(site_file, config, reader)
    account = ensure_broker_account(config, reader.id)
    assert (
        await login_works(broker, account.username, account.password) == NOT_AUTHORIZED
    )

    assert reload_box(config) is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    code = NOT_AUTHORIZED
    while time.monotonic() < deadline:
        try:
            code = await login_works(broker, account.username, account.password)
        except (OSError, TimeoutError):
            code = -1  # The broker is restarting.
        if code == REASON_SUCCESS:
            break
        await asyncio.sleep(0.2)
    assert code == REASON_SUCCESS

    result = await publish_with_paho(
        broker,
        account.username,
        account.password,
        "nightbox/test/reader/exit-3/sightings",
        b"{}",
    )
    assert result.puback in {REASON_SUCCESS, NO_MATCHING_SUBSCRIBERS}
    denied = await publish_with_paho(
        broker,
        account.username,
        account.password,
        "nightbox/test/reader/exit-1/sightings",
        b"{}",
    )
    assert denied.puback == NOT_AUTHORIZED
