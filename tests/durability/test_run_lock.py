"""One data folder, one box: a second ``nightbox run`` on it stops at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

CONFIG = """
[site]
id = "lock"

[box]
id = "box-1"
data_dir = "data"

[broker]
mode = "auto"

[[readers]]
id = "exit-1"
role = "exit"
"""


def start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_second_run_on_same_folder(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(CONFIG)
    first = start(config)
    try:
        assert first.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while "running" not in line and time.monotonic() < deadline:
            line = first.stdout.readline()
        assert "running" in line, "the first box did not start"

        second = subprocess.run(
            [sys.executable, "-m", "appliance", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    finally:
        first.terminate()
        first.wait(timeout=20)

    assert second.returncode == 2
    assert "is in use by another Nightbox process" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0
