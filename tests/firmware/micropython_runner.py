"""Run firmware scenarios on the real MicroPython WebAssembly port under Node.js.

A scenario is a MicroPython source file in ``tests/firmware/scenarios`` that
defines ``CASES``, a list of ``(name, function)`` pairs. One Node.js process
runs all cases of a scenario, with ``firmware/nbreader`` and the stand-ins
of ``tests/firmware/standins`` in ``/lib``, and prints one JSON line per
case. ``Results[name]`` returns a case's result or fails the test with the
MicroPython traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
SCENARIOS = HERE / "scenarios"
RUNNER = HERE / "run_micropython.mjs"
RECORD_PREFIX = "@@"
RELAY_PREFIX = "@@relay "
_RUN_CASES = "\nimport harness\nawait harness.run_cases(CASES)\n"


def library() -> dict[str, str]:
    """Return the files for the interpreter's ``/lib``: firmware and stand-ins."""
    files: dict[str, str] = {}
    for path in sorted((FIRMWARE / "nbreader").rglob("*.py")):
        relative = path.relative_to(FIRMWARE).as_posix()
        files[f"/lib/{relative}"] = path.read_text()
    for path in sorted(STANDINS.rglob("*.py")):
        relative = path.relative_to(STANDINS).as_posix()
        files[f"/lib/{relative}"] = path.read_text()
    return files


def node_binary() -> str:
    """Return the path of ``node`` or fail the test with the fix."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; run 'make deps', which installs Node.js")
    return node


class Results:
    """The records of one scenario run, by case name."""

    def __init__(self, records: dict[str, dict[str, Any]], output: str) -> None:
        self.records = records
        self.output = output

    def __getitem__(self, case: str) -> Any:
        record = self.records.get(case)
        if record is None:
            pytest.fail(f"case {case!r} printed no result; output:\n{self.output}")
        if "error" in record:
            pytest.fail(f"case {case!r} failed in MicroPython:\n{record['error']}")
        return record["result"]


@contextmanager
def scenario_spec(
    name: str,
    files: dict[str, str] | None = None,
    *,
    relay: bool = False,
    flash: Path | None = None,
    lib: dict[str, str] | None = None,
) -> Iterator[Path]:
    """Write the runner's spec for scenario ``name`` to a temporary file.

    ``flash`` is a host file that keeps the board's files between runs
    (see run_micropython.mjs); ``lib`` replaces :func:`library`.
    """
    source = (SCENARIOS / f"{name}.py").read_text() + _RUN_CASES
    spec = {
        "lib": library() if lib is None else lib,
        "files": files or {},
        "scenario": source,
        "relay": relay,
        "flash": None if flash is None else str(flash),
    }
    with tempfile.TemporaryDirectory(prefix="nbreader-") as folder:
        path = Path(folder) / "spec.json"
        path.write_text(json.dumps(spec))
        yield path


def parse_records(output: str) -> dict[str, dict[str, Any]]:
    """Return the case records found in the runner's output."""
    records: dict[str, dict[str, Any]] = {}
    for line in output.splitlines():
        if line.startswith(RECORD_PREFIX) and not line.startswith(RELAY_PREFIX):
            record = json.loads(line[len(RECORD_PREFIX) :])
            records[record["case"]] = record
    return records


def run_scenario(
    name: str,
    files: dict[str, str] | None = None,
    *,
    timeout_s: float = 60.0,
    flash: Path | None = None,
) -> Results:
    """Run every case of scenario ``name``; fail when the interpreter fails."""
    with scenario_spec(name, files, flash=flash) as spec:
        try:
            process = subprocess.run(
                [node_binary(), str(RUNNER), str(spec)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=ROOT,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"scenario {name} timed out after {timeout_s} s:\n{err.stdout}")
    if process.returncode != 0:
        pytest.fail(
            f"scenario {name} failed (exit status {process.returncode}):\n"
            f"{process.stderr}\n{process.stdout[-4000:]}"
        )
    return Results(parse_records(process.stdout), process.stdout + process.stderr)
