"""A log file for the simulated box of ``nightbox rehearse --demo``.

The demo box runs in the rehearsal's own process, so its log lines would
reach the terminal between the command and the report. Most of them are
expected outcomes of the checks, such as the box rejecting a token that the
rehearsal revoked on purpose. While the demo runs, every log line goes to a
file, and the terminal gets only errors and the rehearsal's own lines. The
file is removed when every required check passed and is kept, for the
command to name, when one failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Lines of this logger and its children stay on the terminal at every level,
# because they come from the rehearsal itself, not from the box.
_REHEARSAL_LOGGER = "appliance.rehearse"
_DEMO_LOGGER = "appliance.rehearse._demo"
# The format of the log lines that ``nightbox`` prints.
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(slots=True)
class DemoLog:
    """The demo box's log file, removed at the end unless ``keep`` is set."""

    path: Path
    keep: bool = False


@contextlib.contextmanager
def demo_log() -> Iterator[DemoLog]:
    """Send log lines to a new file in the system's temporary folder until exit.

    The root logger's handlers (the terminal) then show only records of
    level ERROR and above and the rehearsal's own records. Raises OSError
    when the file cannot be created.
    """
    descriptor, name = tempfile.mkstemp(prefix="nightbox-rehearsal-", suffix=".log")
    log = DemoLog(Path(name))
    root = logging.getLogger()
    terminals = list(root.handlers)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            file_handler = logging.StreamHandler(stream)
            file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
            for handler in terminals:
                handler.addFilter(_shown_on_terminal)
            root.addHandler(file_handler)
            try:
                yield log
            finally:
                root.removeHandler(file_handler)
                for handler in terminals:
                    handler.removeFilter(_shown_on_terminal)
                file_handler.close()
    finally:
        if not log.keep:
            log.path.unlink(missing_ok=True)


def _shown_on_terminal(record: logging.LogRecord) -> bool:
    """Return whether a record reaches the terminal while the demo box runs."""
    if record.levelno >= logging.ERROR:
        return True
    # The demo's simulated readers are part of the box being rehearsed.
    if record.name == _DEMO_LOGGER:
        return False
    return record.name == _REHEARSAL_LOGGER or record.name.startswith(
        f"{_REHEARSAL_LOGGER}."
    )
