"""``nightbox report`` run as a subprocess against a running box's store.

The box and the command read the same site file. The command opens the
store read-only while the box keeps running, which WAL mode allows.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from analytics_site import (  # noqa: F401 - registers the fixtures
    NIGHT,
    Night,
    config_path_fixture,
    load_json,
    night_fixture,
    site_config_fixture,
    site_toml,
)

from appliance.analytics.figures import night_figures
from appliance.analytics.report import render_html


async def report(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox report`` without blocking the running box."""
    return await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "report",
            "--config",
            str(config),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def written(folder: Path) -> list[str]:
    """Return the names of the report files in ``folder``."""
    return sorted(path.name for path in folder.glob("report-*"))


async def test_report_writes_both_files(
    night: Night, config_path: Path, tmp_path: Path
) -> None:
    for number in range(1, 7):
        await night.top_up(number)
        await night.charge(number, "beer", 450, creator="MAYA")
    output = tmp_path / "reports"

    result = await report(config_path, "--night", NIGHT, "--output", str(output))

    assert result.returncode == 0, result.stderr
    html_file = output / f"report-{NIGHT}.html"
    json_file = output / f"report-{NIGHT}.json"
    assert str(html_file) in result.stdout
    assert load_json(json_file) == night_figures(
        night.box.store, night.box.config, NIGHT
    )
    assert "<svg" in html_file.read_text()
    # The box still runs and writes after the report read its store.
    await night.top_up(7)


async def test_report_bad_date(night: Night, config_path: Path, tmp_path: Path) -> None:
    result = await report(
        config_path, "--night", "2025-06-31", "--output", str(tmp_path)
    )

    assert result.returncode == 2
    assert "must be a date like 2026-12-05 (YYYY-MM-DD), not '2025-06-31'" in (
        result.stderr
    )
    assert written(tmp_path) == []


async def test_report_night_without_data(
    night: Night, config_path: Path, tmp_path: Path
) -> None:
    await night.top_up(1)

    result = await report(
        config_path, "--night", "2025-06-05", "--output", str(tmp_path)
    )

    assert result.returncode == 1
    assert "no views, sales, claims, kits or check-outs" in result.stderr
    assert "2025-06-05" in result.stderr
    assert written(tmp_path) == []


async def test_report_without_store(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(site_toml(tmp_path / "empty"))

    result = await report(config, "--night", NIGHT, "--output", str(tmp_path))

    assert result.returncode == 2
    assert f"no Nightbox store at {tmp_path / 'empty' / 'nightbox.sqlite3'}" in (
        result.stderr
    )


async def test_report_unwritable_output(
    night: Night, config_path: Path, tmp_path: Path
) -> None:
    await night.top_up(1)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    result = await report(
        config_path, "--night", NIGHT, "--output", str(blocker / "reports")
    )

    assert result.returncode == 2
    assert "cannot write the report into" in result.stderr
    assert "--output" in result.stderr


async def test_report_running_night_needs_partial(
    night: Night, config_path: Path, tmp_path: Path
) -> None:
    tonight = night.box.config.commerce.night_of(time.time())

    rejected = await report(config_path, "--night", tonight, "--output", str(tmp_path))
    partial = await report(
        config_path, "--night", tonight, "--output", str(tmp_path), "--partial"
    )

    assert rejected.returncode == 2
    assert f"the night of {tonight} has not ended yet" in rejected.stderr
    assert "pass --partial" in rejected.stderr
    # With --partial the command goes on; this box has no data tonight.
    assert partial.returncode == 1
    assert "no views, sales, claims, kits or check-outs" in partial.stderr
    assert written(tmp_path) == []


async def test_partial_report_marked(night: Night) -> None:
    await night.top_up(1)
    figures = night_figures(night.box.store, night.box.config, NIGHT)

    assert "Partial report" not in render_html(figures)
    assert "Partial report" in render_html({**figures, "partial": True})
