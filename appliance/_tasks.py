"""Stopping the box's background tasks reliably."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

_LOGGER = logging.getLogger(__name__)

# How long to wait for a cancelled task before cancelling it again, in s:
# long enough for a cancellation that was received to unwind (aiomqtt's
# publish cancels and awaits its inner task), so only a dropped one repeats.
_CANCEL_RETRY_S = 0.25


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and return once it has finished.

    With Python 3.11.7, asyncio.wait_for (which aiomqtt's publish awaits) was
    seen to drop a cancellation that arrived in the same step as the awaited
    result, so a loop task carried on after one cancel and a box hung while
    stopping. The cancel is repeated until the task is done. An exception
    other than the cancellation is raised here.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task], timeout=_CANCEL_RETRY_S)
    while not task.done():
        _LOGGER.warning(
            "Task %s is still running %.2f s after it was cancelled; "
            "cancelling it again",
            task.get_name(),
            _CANCEL_RETRY_S,
        )
        task.cancel()
        await asyncio.wait([task], timeout=_CANCEL_RETRY_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task
