"""``nightbox collect`` as a subprocess: its errors, exit codes and a clean stop.

No output may contain the database password, whatever fails.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres import Postgres, postgres  # noqa: F401
from test_collect import count_rows, eventually, fleet_box, make_event, stored_ids
from upstream_broker import Upstream, upstream  # noqa: F401

from appliance.bus.broker import free_port
from appliance.cli_collect import EXIT_BROKER_REJECTED, EXIT_DATABASE

TIMEOUT_S = 60.0


def nightbox(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox`` with ``arguments`` and return its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class Background:
    """``nightbox`` running as a subprocess, with its output read line by line."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "appliance", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.output: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for_line(self, condition: Callable[[str], bool], what: str) -> str:
        """Return the first output line for which ``condition`` holds."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if condition(line):
                return line
        pytest.fail(f"no output line {what}; output so far:\n{''.join(self.output)}")

    def stop(self) -> int:
        """Send SIGTERM, wait for the exit and collect the rest of the output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(TIMEOUT_S)
        # The readers reach the end of their pipes once the process is gone.
        for reader in self._readers:
            reader.join(TIMEOUT_S)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code

    @property
    def text(self) -> str:
        """All output read so far, stdout and stderr interleaved."""
        return "".join(self.output)


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Return a starter of background ``nightbox`` processes, killed at the end."""
    started: list[Background] = []

    def start(*arguments: str) -> Background:
        process = Background(*arguments)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(TIMEOUT_S)


def collect_arguments(upstream: Upstream, dsn: str) -> list[str]:  # noqa: F811
    """Return the arguments of a collector on the test fleet's broker."""
    return [
        "collect",
        "--broker",
        upstream.url,
        "--ca",
        str(upstream.ca.ca_certificate),
        "--credentials",
        str(upstream.collector_credentials()),
        "--database",
        dsn,
    ]


def test_invalid_broker_url(postgres: Postgres) -> None:  # noqa: F811
    result = nightbox(
        "collect", "--broker", "http://127.0.0.1:1883", "--database", postgres.dsn
    )

    assert result.returncode == 2
    assert "http://127.0.0.1:1883" in result.stderr
    assert postgres.password not in result.stderr + result.stdout


def test_plain_broker_off_loopback(postgres: Postgres) -> None:  # noqa: F811
    result = nightbox(
        "collect", "--broker", "mqtt://broker.invalid:1883", "--database", postgres.dsn
    )

    assert result.returncode == 2
    assert "mqtt://broker.invalid:1883" in result.stderr
    assert "unencrypted" in result.stderr


def test_invalid_database_url() -> None:
    url = "mysql://nightbox:s3cret-pw@127.0.0.1:3306/nightbox"
    result = nightbox("collect", "--broker", "mqtt://127.0.0.1:1883", "--database", url)

    assert result.returncode == 2
    assert "must start with postgresql://" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_database_connection_string_not_shown() -> None:
    dsn = "host=127.0.0.1 port=5432 user=nightbox password=SuperSecret91 dbname=n"
    result = nightbox("collect", "--broker", "mqtt://127.0.0.1:1883", "--database", dsn)

    assert result.returncode == 2
    assert "must start with postgresql://" in result.stderr
    assert "SuperSecret91" not in result.stderr + result.stdout


def test_missing_credentials_file(tmp_path: Path, postgres: Postgres) -> None:  # noqa: F811
    missing = tmp_path / "absent.json"
    result = nightbox(
        "collect",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--database",
        postgres.dsn,
        "--credentials",
        str(missing),
    )

    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "not found" in result.stderr
    assert postgres.password not in result.stderr + result.stdout


def test_unreadable_credentials_file(tmp_path: Path, postgres: Postgres) -> None:  # noqa: F811
    # A folder in place of the file cannot be read, even by root.
    folder = tmp_path / "login.json"
    folder.mkdir()
    not_json = tmp_path / "login.txt"
    not_json.write_text("username=collector")

    unreadable = nightbox(
        "collect",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--database",
        postgres.dsn,
        "--credentials",
        str(folder),
    )
    invalid = nightbox(
        "collect",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--database",
        postgres.dsn,
        "--credentials",
        str(not_json),
    )

    assert unreadable.returncode == 2
    assert f"cannot read credentials file {folder}" in unreadable.stderr
    assert invalid.returncode == 2
    assert f"credentials file {not_json} is not valid JSON" in invalid.stderr
    assert "username=collector" not in invalid.stderr


def test_database_url_with_unencoded_at(postgres: Postgres) -> None:  # noqa: F811
    # libpq ends the user info at the first '@', so it would take
    # "rSecret@127.0.0.1" as the host name and print it.
    server = postgres.server
    url = f"postgresql://nightbox:Sup@rSecret@{server.host}:{server.port}/nightbox"
    result = nightbox("collect", "--broker", "mqtt://127.0.0.1:1883", "--database", url)
    output = result.stderr + result.stdout

    assert result.returncode == 2
    assert "%40" in result.stderr
    assert "rSecret" not in output
    assert "Sup@" not in output


def test_database_url_password_parameters(postgres: Postgres) -> None:  # noqa: F811
    server = postgres.server
    url = (
        f"postgresql://nightbox@{server.host}:{server.port}/{postgres.dbname}"
        "?password=a&password=SuperSecret99"
    )
    result = nightbox("collect", "--broker", "mqtt://127.0.0.1:1883", "--database", url)
    output = result.stderr + result.stdout

    assert result.returncode == EXIT_DATABASE
    assert "?password=***&password=***" in result.stderr
    assert "password authentication failed" in result.stderr
    assert "SuperSecret99" not in output
    assert "f***iled" not in output


def test_unreachable_database(postgres: Postgres) -> None:  # noqa: F811
    # Nothing listens on this loopback port.
    url = f"postgresql://nightbox:{postgres.password}@127.0.0.1:{free_port()}/nightbox"
    result = nightbox("collect", "--broker", "mqtt://127.0.0.1:1883", "--database", url)

    assert result.returncode == EXIT_DATABASE
    redacted = url.replace(postgres.password, "***")
    assert f"cannot connect to PostgreSQL at {redacted}" in result.stderr
    assert postgres.password not in result.stderr + result.stdout


def test_database_login_rejected(postgres: Postgres) -> None:  # noqa: F811
    url = postgres.server.dsn(postgres.dbname, password="wrong-pw-123")
    result = nightbox("collect", "--broker", "mqtt://127.0.0.1:1883", "--database", url)

    assert result.returncode == EXIT_DATABASE
    assert "password authentication failed" in result.stderr
    assert "wrong-pw-123" not in result.stderr + result.stdout
    assert postgres.password not in result.stderr + result.stdout


def test_broker_login_rejected(
    tmp_path: Path,
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"username": "collector", "password": "not-it"}))
    wrong.chmod(0o600)
    arguments = collect_arguments(upstream, postgres.dsn)
    arguments[arguments.index("--credentials") + 1] = str(wrong)

    result = nightbox(*arguments)

    assert result.returncode == EXIT_BROKER_REJECTED
    assert "rejected the login of user 'collector'" in result.stderr
    assert result.stderr.count("rejected the login") == 1
    assert "not-it" not in result.stderr + result.stdout


def test_broker_without_login(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    arguments = collect_arguments(upstream, postgres.dsn)
    credentials = arguments.index("--credentials")
    del arguments[credentials : credentials + 2]

    result = nightbox(*arguments)

    assert result.returncode == EXIT_BROKER_REJECTED
    assert "refused a connection without a login" in result.stderr
    assert "give --credentials" in result.stderr
    assert "None" not in result.stderr
    assert result.stderr.count("refused a connection") == 1


def test_box_login_warned(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
    background: Callable[..., Background],
) -> None:
    arguments = collect_arguments(upstream, postgres.dsn)
    box_login = str(upstream.box_credentials())
    arguments[arguments.index("--credentials") + 1] = box_login
    collector = background(*arguments)

    warning = collector.wait_for_line(
        lambda line: "box-club.box-1" in line, "about the box's account"
    )
    # mosquitto 2.0 grants the denied subscription, so the collector starts.
    collector.wait_for_line(
        lambda line: "Collecting the events" in line, "announcing the start"
    )
    code = collector.stop()

    assert "WARNING" in warning
    assert "a box's account, which may not read any events" in warning
    assert "nightbox fleet account --collector" in warning
    assert code == 0


def test_unreachable_broker_retried(
    postgres: Postgres,  # noqa: F811
    background: Callable[..., Background],
) -> None:
    # Nothing listens on this loopback port.
    broker = f"mqtt://127.0.0.1:{free_port()}"
    collector = background("collect", "--broker", broker, "--database", postgres.dsn)

    for _attempt in range(2):
        collector.wait_for_line(
            lambda line: (
                f"Cannot connect to the broker at {broker}" in line
                and "retrying" in line
            ),
            "about a retry",
        )
    code = collector.stop()

    assert code == 0
    assert postgres.password not in collector.text


async def test_collect_until_sigterm(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
    background: Callable[..., Background],
) -> None:
    events = [make_event("box-1", seq) for seq in range(1, 21)]
    collector = background("-v", *collect_arguments(upstream, postgres.dsn))

    started = collector.wait_for_line(
        lambda line: line.startswith("Collecting the events"), "saying it collects"
    )
    with fleet_box(upstream) as box_1:
        box_1.send_events(events)
    await eventually(
        lambda: count_rows(postgres, "events") == 20, "20 events are stored"
    )
    code = collector.stop()

    assert code == 0
    assert "postgresql://nightbox:***@127.0.0.1" in started
    assert (
        "stopped; 20 events stored, 0 duplicates, 0 messages rejected" in collector.text
    )
    assert postgres.password not in collector.text
    assert stored_ids(postgres) == sorted(event["id"] for event in events)
