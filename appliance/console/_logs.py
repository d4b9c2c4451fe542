"""The box's last log lines in memory, for ``console/logs``."""

from __future__ import annotations

import collections
import datetime
import logging
from collections.abc import Callable

MAX_LINES = 200


class LogRing(logging.Handler):
    """Keeps the last :data:`MAX_LINES` records as ``HH:MM:SS level logger message``.

    The box installs it on the root logger while it runs. The time is the
    box's clock (``now``, Unix seconds) in the site's time zone when the
    record is emitted, so it matches the console's header even when the
    box's clock differs from the computer's (a simulated night). Records are
    formatted when they are emitted, so a line never changes afterwards.
    """

    def __init__(
        self,
        now: Callable[[], float],
        timezone: datetime.tzinfo = datetime.UTC,
        capacity: int = MAX_LINES,
    ) -> None:
        super().__init__(logging.INFO)
        self._now = now
        self._timezone = timezone
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._root_level = logging.NOTSET
        self._lowered = False
        self._raised: list[tuple[logging.Handler, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` into one line and keep it."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as err:
            message = f"{record.msg!r} (unformattable arguments: {err})"
        stamp = datetime.datetime.fromtimestamp(self._now(), self._timezone).strftime(
            "%H:%M:%S"
        )
        first_line = message.splitlines()[0] if message else ""
        self._lines.append(
            f"{stamp} {record.levelname} {record.name} {first_line[:500]}"
        )

    def lines(self) -> list[str]:
        """Return the kept lines, oldest first."""
        return list(self._lines)

    def install(self) -> None:
        """Start keeping the root logger's records from INFO up.

        The root logger's level is lowered to INFO when it is higher, and the
        handlers that relied on it get that level themselves, so what they
        print does not change.
        """
        root = logging.getLogger()
        self._root_level = root.level
        self._raised = []
        if root.getEffectiveLevel() > logging.INFO:
            for handler in root.handlers:
                if handler.level < root.level:
                    self._raised.append((handler, handler.level))
                    handler.setLevel(root.level)
            root.setLevel(logging.INFO)
            self._lowered = True
        root.addHandler(self)

    def uninstall(self) -> None:
        """Stop keeping records and restore the levels that install changed."""
        root = logging.getLogger()
        root.removeHandler(self)
        if self._lowered and root.level == logging.INFO:
            root.setLevel(self._root_level)
        self._lowered = False
        for handler, level in self._raised:
            handler.setLevel(level)
        self._raised = []
