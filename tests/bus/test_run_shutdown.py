"""``nightbox run`` stopped by a signal to its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.bus.broker import free_port
from provisioning.secret_file import write_secret_file

SITE_TOML = """\
[site]
id = "club"
name = "Club"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"
"""
TIMEOUT_S = 60.0


def test_group_sigterm_logs_no_warning(tmp_path: Path) -> None:
    # A terminal's Ctrl-C and `kill -- -PGID` signal every process of the
    # group, as the box's own mosquitto was before it got a session of its own.
    # Sync to a port where nothing listens makes the box's stop take longer
    # than mosquitto's, as a busy box's does.
    config = tmp_path / "site.toml"
    config.write_text(
        SITE_TOML + f'\n[sync]\nbroker = "mqtt://127.0.0.1:{free_port()}"\n'
    )
    login = b'{"username": "box-club.box-1", "password": "unused"}'
    write_secret_file(tmp_path / "data" / "secrets" / "upstream.json", login)
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        # The sync service's first failed attempt shows that it runs.
        while "cannot reach upstream broker" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "nightbox run did not start"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT_S)
    output = log_path.read_text()

    assert code == 0, output
    assert "Stopped." in output
    assert "lost the broker" not in output
