"""The outcome of a rehearsal: one result per check, as text or JSON.

A check is ``required`` when the night cannot run well without it; the
rehearsal fails when any required check fails. Optional checks (the sync
link, for one) are reported but never fail the rehearsal.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Exit codes of ``nightbox rehearse``: 2 is argparse's code for usage errors.
EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The result of one check.

    ``detail`` gives what was measured when the check passed, and otherwise
    the reason it failed and the fix. ``facts`` carries the measured
    figures for the JSON report.
    """

    name: str
    ok: bool
    required: bool
    detail: str
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    """Every check of one rehearsal, in the order they ran."""

    target: str
    checks: tuple[CheckResult, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        """Whether every required check passed."""
        return all(check.ok for check in self.checks if check.required)

    @property
    def exit_code(self) -> int:
        """The process exit code: 0 when passed, 1 when a required check failed."""
        return EXIT_PASSED if self.passed else EXIT_FAILED

    def to_json(self) -> str:
        """Return the report as one JSON document."""
        document = {
            "target": self.target,
            "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "failed_required": [
                check.name for check in self.checks if check.required and not check.ok
            ],
            "checks": [
                asdict(check) | {"seconds": round(check.seconds, 2)}
                for check in self.checks
            ],
        }
        return json.dumps(document, indent=2, sort_keys=True, default=str)

    def to_text(self) -> str:
        """Return the report as lines for a terminal, failures with their reason."""
        width = max((len(check.name) for check in self.checks), default=0)
        lines = [f"Rehearsal of {self.target}"]
        for check in self.checks:
            if check.ok:
                mark = "PASS"
            elif check.required:
                mark = "FAIL"
            else:
                mark = "WARN"
            suffix = "" if check.required else " (optional)"
            lines.append(
                f"  {mark}  {check.name:<{width}}  {check.detail}{suffix} "
                f"[{check.seconds:.1f} s]"
            )
        failed = [c.name for c in self.checks if c.required and not c.ok]
        if failed:
            lines.append(
                f"Rehearsal failed: {len(failed)} required check(s) failed "
                f"({', '.join(failed)}) in {self.seconds:.1f} s."
            )
        else:
            lines.append(
                f"Rehearsal passed: {len(self.checks)} checks in {self.seconds:.1f} s."
            )
        return "\n".join(lines)
