"""``nightbox fleet`` through the fleet's upstream broker to a real box.

The box is ``club/box-1`` with a ``[sync]`` section pointing at the
``upstream`` fixture, so its sync service forwards its availability and
telemetry upstream and passes commands and bundles from there to its
remote management. The operator logs in upstream as ``operator-ops``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import fleet_command
import pytest
import upstream_broker
from fleet_command import fleet_async, operator_options
from upstream_broker import Upstream, fleet_site_config

from appliance.config import SiteConfig
from appliance.remote.config import load_public_key
from appliance.runtime import Box

TIMEOUT_S = 30.0
SITE = "club"
BOX = "box-1"
TOKEN_ID = "9b1d0c7e4f2a4c1e8d3b5a6f7e8d9c0b"
# The fleet broker and keygen fixtures, bound to their fixture names so that
# pytest finds them.
upstream = upstream_broker.upstream
key_folder = fleet_command.key_folder


@pytest.fixture
def site_config(tmp_path: Path, upstream: Upstream, key_folder: Path) -> SiteConfig:
    """The test site as box club/box-1 of the fleet, trusting the operator key."""
    public_key = load_public_key(key_folder / "operator.pub", "test")
    return fleet_site_config(tmp_path / "box", upstream, operator_keys=[public_key])


async def wait_until_upstream(box: Box) -> None:
    """Wait until the box's sync service is connected to the upstream broker."""
    assert box.sync is not None
    deadline = time.monotonic() + TIMEOUT_S
    while not box.sync.state()["connected"]:
        assert time.monotonic() < deadline, "the box did not connect upstream"
        await asyncio.sleep(0.05)


async def test_list_upstream_box(
    box: Box, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    await wait_until_upstream(box)

    code, out, err = await fleet_async(
        capsys, "list", *operator_options(upstream), "--json"
    )

    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(row["site"], row["box"]) for row in rows] == [(SITE, BOX)]
    assert rows[0]["availability"] == "online"
    assert rows[0]["readers"] == 3


async def test_send_status_upstream(
    box: Box,
    upstream: Upstream,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await wait_until_upstream(box)

    code, out, err = await fleet_async(
        capsys,
        "send",
        *operator_options(upstream),
        "--site",
        SITE,
        "--box",
        BOX,
        "--key",
        str(key_folder / "operator.key"),
        "status",
        "--json",
        "--timeout",
        str(TIMEOUT_S),
    )

    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] is True
    assert result["type"] == "status"
    assert result["result"]["kit_stock"] == {"kit-1": {"initial": 5, "remaining": 5}}
    assert box.management.accepted["status"] == 1


async def test_bundle_upstream_then_old_version(
    tmp_path: Path,
    box: Box,
    upstream: Upstream,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await wait_until_upstream(box)
    body = tmp_path / "revocations.json"
    body.write_text(json.dumps({"tokens": [{"id": TOKEN_ID, "reason": "lost"}]}))
    options = [*operator_options(upstream), "--site", SITE]
    options += ["--key", str(key_folder / "operator.key")]
    options += ["--timeout", str(TIMEOUT_S), "--file", str(body)]

    applied = await fleet_async(
        capsys, "bundle", *options, "revocations", "--version", "2"
    )
    stale = await fleet_async(
        capsys, "bundle", *options, "--box", BOX, "revocations", "--version", "1"
    )

    code, out, err = applied
    assert code == 0, err
    first, *rest = out.splitlines()
    assert first == f"{SITE}/{BOX}: bundle revocations ok"
    assert json.loads("\n".join(rest))["revoked"] == 1
    row = box.store.query_one(
        "SELECT reason FROM revoked_tokens WHERE id = ?", (TOKEN_ID,)
    )
    assert row == ("lost",)
    old_code, old_out, old_err = stale
    assert old_code == 1
    assert old_out == ""
    assert f"{SITE}/{BOX} rejected bundle revocations: old-version:" in old_err
