"""The demo box's log file: box lines go to the file, errors stay on the terminal.

Each test puts a handler of its own on the root logger, as ``nightbox``
puts its terminal handler there, and logs through the logger names that the
box and the rehearsal use.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.rehearse import EXIT_USAGE, demo_log


@pytest.fixture
def terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """A root handler writing to a string, with the temporary folder in tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_box_warning_goes_to_file(terminal: io.StringIO) -> None:
    with demo_log() as log:
        logging.getLogger("appliance.bus.client").warning("Rejected message (revoked)")
        log.keep = True
    assert "Rejected message" not in terminal.getvalue()
    assert "WARNING appliance.bus.client: Rejected message (revoked)" in (
        log.path.read_text()
    )


def test_box_error_reaches_terminal(terminal: io.StringIO) -> None:
    with demo_log() as log:
        logging.getLogger("appliance.studio.push").error("push stopped")
        log.keep = True
    assert "ERROR appliance.studio.push: push stopped" in terminal.getvalue()
    assert "push stopped" in log.path.read_text()


def test_rehearsal_warning_reaches_terminal(terminal: io.StringIO) -> None:
    with demo_log():
        logging.getLogger("appliance.rehearse._checks").warning("check failed")
        logging.getLogger("appliance.rehearse").info("rehearsal started")
    output = terminal.getvalue()
    assert "WARNING appliance.rehearse._checks: check failed" in output
    assert "INFO appliance.rehearse: rehearsal started" in output


def test_demo_reader_warning_goes_to_file(terminal: io.StringIO) -> None:
    with demo_log() as log:
        logging.getLogger("appliance.rehearse._demo").warning("reader lost a batch")
        log.keep = True
    assert "reader lost a batch" not in terminal.getvalue()
    assert "reader lost a batch" in log.path.read_text()


def test_lookalike_logger_goes_to_file(terminal: io.StringIO) -> None:
    with demo_log():
        logging.getLogger("appliance.rehearsed").warning("not the rehearsal")
    assert "not the rehearsal" not in terminal.getvalue()


def test_terminal_restored_after_exit(terminal: io.StringIO) -> None:
    root = logging.getLogger()
    handlers = list(root.handlers)
    with demo_log():
        assert len(root.handlers) == len(handlers) + 1
    assert root.handlers == handlers
    logging.getLogger("appliance.bus.client").warning("after the demo")
    assert "WARNING appliance.bus.client: after the demo" in terminal.getvalue()


def test_file_removed_unless_kept(terminal: io.StringIO, tmp_path: Path) -> None:
    with demo_log() as log:
        assert log.path.parent == tmp_path
        assert log.path.exists()
    assert not log.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_file_kept_when_asked(terminal: io.StringIO, tmp_path: Path) -> None:
    with demo_log() as log:
        log.keep = True
    assert list(tmp_path.iterdir()) == [log.path]
    assert log.path.stat().st_mode & 0o077 == 0


def test_file_removed_after_error(terminal: io.StringIO, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="rehearsal broke"), demo_log():
        raise RuntimeError("rehearsal broke")
    assert list(tmp_path.iterdir()) == []
    logging.getLogger("appliance.bus.client").warning("after the error")
    assert "after the error" in terminal.getvalue()


def test_missing_temporary_folder_is_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    assert main(["rehearse", "--demo"]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert f"cannot create the demo box's log file in {missing}" in error
    assert "set TMPDIR to a writable folder" in error
    assert "Traceback" not in error
