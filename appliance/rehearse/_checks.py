"""The context and outcome of a check, and the runner that times each one."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import NightboxError
from appliance.rehearse._link import RehearsalLink
from appliance.rehearse._report import CheckResult
from appliance.rehearse._target import Target

_LOGGER = logging.getLogger(__name__)


@dataclass
class Context:
    """The box under rehearsal, the link to its broker and the listening window.

    ``window_s`` is how long the rehearsal listens to readers and the
    scanner and samples the camera, counted from the link's connection.
    ``scratch`` is a folder for fetched segments and probe files.
    """

    target: Target
    link: RehearsalLink
    window_s: float
    scratch: Path


@dataclass(frozen=True, slots=True)
class Outcome:
    """The finding of one check, whose ``required`` overrides the check's default."""

    ok: bool
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)
    required: bool | None = None


def passed(detail: str, **facts: Any) -> Outcome:
    """Return a passing outcome with the measured ``facts``."""
    return Outcome(True, detail, facts)


def failed(detail: str, **facts: Any) -> Outcome:
    """Return a failing outcome whose detail gives the reason and the fix."""
    return Outcome(False, detail, facts)


CheckFunction = Callable[[Context], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class Check:
    """A named check and whether the night needs it to pass."""

    name: str
    run: CheckFunction
    required: bool = True


async def run_check(check: Check, context: Context) -> CheckResult:
    """Run one check and time it, turning an error it raises into its failure.

    A check that raises is reported as failed with the error's message, so
    one broken part never hides the results of the others.
    """
    started = time.monotonic()
    try:
        outcome = await check.run(context)
    except (NightboxError, OSError, ValueError, TimeoutError) as err:
        _LOGGER.warning("Rehearsal check %s failed with an error: %s", check.name, err)
        outcome = failed(f"the check could not run: {err}")
    except (LookupError, TypeError) as err:
        # A reply without an expected field, such as from a box of another
        # release. The traceback is logged at debug level (-vv).
        _LOGGER.warning(
            "Rehearsal check %s failed on an unexpected reply: %r",
            check.name,
            err,
        )
        _LOGGER.debug("Traceback of rehearsal check %s", check.name, exc_info=True)
        outcome = failed(f"the check could not run: unexpected reply ({err!r})")
    seconds = time.monotonic() - started
    required = check.required if outcome.required is None else outcome.required
    _LOGGER.info(
        "Rehearsal check %s: %s (%s)",
        check.name,
        "passed" if outcome.ok else "failed",
        outcome.detail,
    )
    return CheckResult(
        name=check.name,
        ok=outcome.ok,
        required=required,
        detail=outcome.detail,
        seconds=seconds,
        facts=outcome.facts,
    )
