"""``nightbox fleet`` run in the test process, and the operator's options.

A test module that uses the ``key_folder`` fixture binds it to that name
(``key_folder = fleet_command.key_folder``), so that pytest finds it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

import pytest
from upstream_broker import Upstream

from appliance.cli import main


class Outcome(NamedTuple):
    """The exit code and output of one ``nightbox fleet`` run."""

    code: int
    out: str
    err: str


def fleet(capsys: pytest.CaptureFixture[str], *arguments: str) -> Outcome:
    """Run ``nightbox fleet ARGUMENTS`` in this process and capture its output."""
    capsys.readouterr()
    code = main(["fleet", *arguments])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


async def fleet_async(capsys: pytest.CaptureFixture[str], *arguments: str) -> Outcome:
    """Run ``nightbox fleet`` in a thread, so brokers and boxes keep running."""
    return await asyncio.to_thread(fleet, capsys, *arguments)


@pytest.fixture
def key_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The folder with operator.key and operator.pub from ``fleet keygen``."""
    code, _out, err = fleet(capsys, "keygen", "--out", str(tmp_path / "keys"))
    assert code == 0, err
    return tmp_path / "keys"


def operator_options(upstream: Upstream) -> list[str]:
    """Return the options that log the operator ``ops`` in to ``upstream``."""
    return [
        "--broker",
        upstream.url,
        "--ca",
        str(upstream.ca.ca_certificate),
        "--credentials",
        str(upstream.operator_credentials()),
    ]
