"""``nightbox rehearse``: the pre-event test of the edge and the stream.

It runs a fixed list of checks against a running box, or against a
simulated box and readers that it starts itself, and reports each check
with its reason. See ``docs/rehearse.md``.
"""

from appliance.rehearse._demo import FAULTS, DemoFaults, demo_box
from appliance.rehearse._demo_log import DemoLog, demo_log
from appliance.rehearse._report import (
    EXIT_FAILED,
    EXIT_PASSED,
    EXIT_USAGE,
    CheckResult,
    Report,
)
from appliance.rehearse._runner import CHECK_NAMES, DEFAULT_WINDOW_S, rehearse
from appliance.rehearse._target import Target, running_box

__all__ = [
    "CHECK_NAMES",
    "DEFAULT_WINDOW_S",
    "EXIT_FAILED",
    "EXIT_PASSED",
    "EXIT_USAGE",
    "FAULTS",
    "CheckResult",
    "DemoFaults",
    "DemoLog",
    "Report",
    "Target",
    "demo_box",
    "demo_log",
    "rehearse",
    "running_box",
]
