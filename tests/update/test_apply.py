"""``nightbox update apply``: real wheels, slot venvs, a running box and its broker.

The updater runs as on a box, from ``app/current/venv/bin/python -m
appliance``, and restarts the box with the tests' supervisor script.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.update.bundle import write_bundle
from appliance.update.keys import load_private_key
from appliance.update.updater import Steps, Updater
from tests.update.update_site import (
    OLD_VERSION,
    OLDER_VERSION,
    REPOSITORY,
    BuiltWheels,
    UpdateSite,
    build_wheels,
    clean_environment,
    slot_version,
    tree_hash,
    update_site,
    wait_for_version,
)

NEW_VERSION = "0.2.0"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> BuiltWheels:
    """Wheels 0.1.0, 0.2.0 and a broken 0.2.0 of this repository, built once."""
    return build_wheels(tmp_path_factory.mktemp("wheels"))


@pytest.fixture
async def site(tmp_path: Path, wheels: BuiltWheels) -> AsyncIterator[UpdateSite]:
    """A box running 0.1.0 from slot-a, on its own mosquitto."""
    async with update_site(tmp_path / "box", wheels, health_timeout_s=20) as running:
        running.restart_box()
        await asyncio.to_thread(wait_for_version, running, OLD_VERSION)
        yield running


def make_bundle(site: UpdateSite, wheel: Path, version: str, name: str) -> Path:
    output = site.usb_dir / name
    write_bundle(
        output,
        load_private_key(site.update_key),
        version=version,
        wheels=[wheel],
        firmware_dir=REPOSITORY / "firmware",
    )
    return output


def nightbox(site: UpdateSite, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``current/venv/bin/python -m appliance ARGUMENTS`` as the box's units do."""
    python = site.app_dir / "current" / "venv" / "bin" / "python"
    return subprocess.run(
        [str(python), "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        cwd=site.root,
        env=clean_environment(),
        timeout=300,
    )


def state(site: UpdateSite) -> dict[str, object]:
    return orjson.loads((site.app_dir / "state.json").read_bytes())


def results(site: UpdateSite) -> dict[str, object]:
    return orjson.loads((site.updates_dir / "results.json").read_bytes())


async def test_good_bundle_switches_slots(
    site: UpdateSite, wheels: BuiltWheels
) -> None:
    bundle = make_bundle(site, wheels.new, NEW_VERSION, "nightbox-0.2.0.nbu")

    started = time.monotonic()
    applied = await asyncio.to_thread(
        nightbox, site, "update", "apply", str(bundle), "--config", str(site.site_file)
    )
    elapsed = time.monotonic() - started

    assert applied.returncode == 0, applied.stderr + site.box_log()
    assert f"Installed Nightbox {NEW_VERSION}" in applied.stdout
    assert (site.app_dir / "current").readlink() == Path("slot-b")
    assert state(site) == {"active": "slot-b", "trying": None, "previous": "slot-a"}
    marker = orjson.loads((site.app_dir / "slot-b" / "slot.json").read_bytes())
    assert marker["version"] == NEW_VERSION
    assert marker["complete"] is True
    assert slot_version(site.app_dir) == f"nightbox {NEW_VERSION}"
    assert (site.app_dir / "slot-b" / "venv" / "bin" / "python").is_symlink()
    assert (site.app_dir / "slot-b" / "firmware" / "main.py").read_bytes() == (
        REPOSITORY / "firmware" / "main.py"
    ).read_bytes()
    assert not list(site.app_dir.glob(".incoming-*"))
    await asyncio.to_thread(wait_for_version, site, NEW_VERSION)
    last = results(site)["last"]
    assert last["result"] == "installed"  # type: ignore[index]
    print(f"update took {elapsed:.1f} s; steps {last['steps']}")  # type: ignore[index]

    status = nightbox(site, "update", "status", "--config", str(site.site_file))
    assert status.returncode == 0, status.stderr
    assert "Active slot:        slot-b" in status.stdout
    assert f"slot-a:             {OLD_VERSION}" in status.stdout
    assert f"slot-b:             {NEW_VERSION}" in status.stdout
    assert "Last result:        installed 0.2.0" in status.stdout


async def test_unhealthy_version_switched_back(
    site: UpdateSite, wheels: BuiltWheels
) -> None:
    bundle = make_bundle(site, wheels.broken, NEW_VERSION, "nightbox-0.2.0-broken.nbu")
    old_pid = (site.run_dir / "box.pid").read_text()

    applied = await asyncio.to_thread(
        nightbox, site, "update", "apply", str(bundle), "--config", str(site.site_file)
    )

    assert applied.returncode == 1, applied.stdout
    assert "Nightbox 0.2.0 failed its health check" in applied.stderr
    assert f"switched back to {OLD_VERSION}" in applied.stderr
    assert "never 0.2.0" in applied.stderr or "no telemetry" in applied.stderr
    assert (site.app_dir / "current").readlink() == Path("slot-a")
    assert state(site) == {"active": "slot-a", "trying": None, "previous": None}
    assert slot_version(site.app_dir) == f"nightbox {OLD_VERSION}"
    assert (site.run_dir / "box.pid").read_text() != old_pid
    await asyncio.to_thread(wait_for_version, site, OLD_VERSION)
    last = results(site)["last"]
    assert last["result"] == "switched-back"  # type: ignore[index]
    assert last["reason"] == "health-check"  # type: ignore[index]
    assert "this build of Nightbox is broken on purpose" in site.box_log()
    print(f"switch-back took {last['seconds']} s; steps {last['steps']}")  # type: ignore[index]


def tampered_copy(bundle: Path, member: str, output: Path) -> Path:
    """Copy ``bundle`` with one byte of ``member`` flipped in place."""
    import tarfile

    data = bytearray(bundle.read_bytes())
    with tarfile.open(bundle) as tar:
        info = tar.getmember(member)
    # The signature file is JSON: a byte inside the base64 keeps it parseable.
    offset = info.offset_data + (
        info.size - 10 if member == "manifest.sig" else info.size // 2
    )
    data[offset] = ord("A") if data[offset] != ord("A") else ord("B")
    output.write_bytes(bytes(data))
    return output


async def test_rejected_bundles_change_nothing(
    site: UpdateSite, wheels: BuiltWheels
) -> None:
    good = make_bundle(site, wheels.new, NEW_VERSION, "nightbox-0.2.0.nbu")
    wheel_member = f"wheels/{wheels.new.name}"
    other_key = site.root / "other-keys"
    from appliance.update.keys import generate_key_pair

    generate_key_pair(other_key)
    foreign = site.usb_dir / "foreign.nbu"
    write_bundle(
        foreign,
        load_private_key(other_key / "update-key"),
        version=NEW_VERSION,
        wheels=[wheels.new],
    )
    cases = {
        "payload byte": (
            tampered_copy(good, wheel_member, site.usb_dir / "a.nbu"),
            "hash-mismatch",
        ),
        "manifest byte": (
            tampered_copy(good, "manifest.json", site.usb_dir / "b.nbu"),
            "bad-signature",
        ),
        "signature byte": (
            tampered_copy(good, "manifest.sig", site.usb_dir / "c.nbu"),
            "bad-signature",
        ),
        "other key": (foreign, "unknown-key"),
        "same version": (
            make_bundle(site, wheels.old, OLD_VERSION, "same.nbu"),
            "old-version",
        ),
    }
    cases["older version"] = (
        make_bundle(site, wheels.older, OLDER_VERSION, "older.nbu"),
        "old-version",
    )
    before = tree_hash(site.app_dir)

    for name, (bundle, reason) in cases.items():
        applied = await asyncio.to_thread(
            nightbox,
            site,
            "update",
            "apply",
            str(bundle),
            "--config",
            str(site.site_file),
        )

        assert applied.returncode == 1, name
        assert f"nightbox update: {reason}:" in applied.stderr, (name, applied.stderr)
        assert tree_hash(site.app_dir) == before, name
        last = results(site)["last"]
        assert last["reason"] == reason, name  # type: ignore[index]

    same = cases["same version"][0]
    applied = nightbox(
        site, "update", "apply", str(same), "--config", str(site.site_file)
    )
    assert f"({OLD_VERSION} <= {OLD_VERSION})" in applied.stderr
    counts = results(site)["counts"]
    assert counts["bad-signature"] == 2  # type: ignore[index]
    assert counts["old-version"] == 3  # type: ignore[index]
    assert slot_version(site.app_dir) == f"nightbox {OLD_VERSION}"


async def test_hostile_archive_changes_nothing(site: UpdateSite) -> None:
    import base64
    import hashlib
    import io
    import tarfile

    from appliance.signed_documents import key_id

    key = load_private_key(site.update_key)
    wheel_name = "nightbox-0.2.0-py3-none-any.whl"
    payload = b"not really a wheel"
    manifest = orjson.dumps(
        {
            "format": 1,
            "version": NEW_VERSION,
            "created_at": "2027-01-15T08:00:00Z",
            "wheels": [
                {
                    "path": f"wheels/{wheel_name}",
                    "project": "nightbox",
                    "python": "py3",
                    "tags": ["py3-none-any"],
                }
            ],
            "firmware": [],
            "files": [
                {
                    "path": f"wheels/{wheel_name}",
                    "size": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                }
            ],
        }
    )
    signature = orjson.dumps(
        {
            "key": key_id(key.public_key()),
            "sig": base64.b64encode(key.sign(manifest)).decode(),
        }
    )
    archive = site.usb_dir / "hostile.nbu"
    with tarfile.open(archive, "w") as tar:
        for name, data in (
            ("manifest.json", manifest),
            ("manifest.sig", signature),
            (f"wheels/{wheel_name}", payload),
            ("../../escaped.py", b"print('escaped')"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    before = tree_hash(site.app_dir)

    applied = await asyncio.to_thread(
        nightbox, site, "update", "apply", str(archive), "--config", str(site.site_file)
    )

    assert applied.returncode == 1
    assert "unsafe-member" in applied.stderr
    assert "'..'" in applied.stderr
    assert tree_hash(site.app_dir) == before
    assert not list(site.root.rglob("escaped.py"))


class PowerCut(BaseException):
    """The power went off: nothing in the updater may catch this."""


class CutSteps(Steps):
    """Steps that stop for good at step ``cut_at`` (counted from 1)."""

    def __init__(self, cut_at: int) -> None:
        super().__init__()
        self.cut_at = cut_at
        self.count = 0
        self.names: list[str] = []

    def run(self, name: str, action: Any, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        self.names.append(name)
        if self.count >= self.cut_at:
            raise PowerCut(f"power cut at step {self.count} ({name})")
        return super().run(name, action, *args, **kwargs)


async def test_power_cut_at_every_step(site: UpdateSite, wheels: BuiltWheels) -> None:
    bundle = make_bundle(site, wheels.new, NEW_VERSION, "nightbox-0.2.0.nbu")
    pristine = site.root / "pristine-app"
    shutil.copytree(site.app_dir, pristine, symlinks=True)
    versions = {f"nightbox {OLD_VERSION}", f"nightbox {NEW_VERSION}"}
    cut_steps: list[str] = []

    for cut_at in range(1, 100):
        shutil.rmtree(site.app_dir)
        shutil.copytree(pristine, site.app_dir, symlinks=True)
        steps = CutSteps(cut_at)
        updater = Updater(site.config.update, site.config, steps=steps, settle_s=1.0)
        try:
            outcome = await asyncio.to_thread(updater.apply, bundle)
        except PowerCut:
            pass
        else:
            # No step was cut: the update ran to its end.
            assert outcome.result == "installed"
            assert cut_at == len(steps.names) + 1
            break
        cut_steps.append(steps.names[cut_at - 1])

        checked = nightbox(
            site, "update", "boot-check", "--config", str(site.site_file)
        )

        assert checked.returncode == 0, (cut_at, checked.stderr)
        current = (site.app_dir / "current").readlink().name
        marker = orjson.loads((site.app_dir / current / "slot.json").read_bytes())
        assert marker["complete"] is True, cut_at
        assert slot_version(site.app_dir) in versions, cut_at
        assert state(site)["trying"] is None, cut_at
        assert not list(site.app_dir.glob(".incoming-*")), cut_at

        again = Updater(site.config.update, site.config, settle_s=1.0)
        outcome = await asyncio.to_thread(again.apply, bundle)

        assert outcome.result == "installed", cut_at
        assert slot_version(site.app_dir) == f"nightbox {NEW_VERSION}", cut_at
    else:
        pytest.fail("the update never ran to its end")

    assert cut_steps[:4] == [
        "create extraction folder",
        "verify bundle",
        "check free space",
        "unmark slot",
    ]
    assert {"install wheels", "switch current", "restart", "health check"} <= set(
        cut_steps
    )
    assert cut_steps[-1] == "confirm slot"
    await asyncio.to_thread(wait_for_version, site, NEW_VERSION)


def operator_login(site: UpdateSite) -> Path:
    accounts = orjson.loads(
        (site.config.data_dir / "secrets" / "broker.json").read_bytes()
    )
    path = site.root / "operator.json"
    path.write_bytes(
        orjson.dumps({"username": "operator", "password": accounts["operator"]})
    )
    path.chmod(0o600)
    return path


def fleet_send(site: UpdateSite, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox fleet send ... update ARGUMENTS`` as the operator."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "fleet",
            "send",
            "--broker",
            f"mqtt://127.0.0.1:{site.broker.port}",
            "--credentials",
            str(operator_login(site)),
            "--site",
            "test",
            "--box",
            "box-1",
            "--key",
            str(site.root / "keys" / "operator.key"),
            "--json",
            "update",
            *arguments,
        ],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=120,
    )


async def test_remote_command_queues_bundle(
    site: UpdateSite, wheels: BuiltWheels
) -> None:
    good = make_bundle(site, wheels.new, NEW_VERSION, "nightbox-0.2.0.nbu")
    tampered = tampered_copy(
        good, f"wheels/{wheels.new.name}", site.usb_dir / "tampered.nbu"
    )
    outside = site.root / "outside.nbu"
    shutil.copy(good, outside)
    request = site.updates_dir / "request.json"

    rejected = await asyncio.to_thread(fleet_send, site, f"bundle={tampered}")
    elsewhere = await asyncio.to_thread(fleet_send, site, f"bundle={outside}")
    queued = await asyncio.to_thread(fleet_send, site, f"bundle={good}")
    busy = await asyncio.to_thread(fleet_send, site, f"bundle={good}")

    assert rejected.returncode == 1, rejected.stderr
    assert "hash-mismatch" in rejected.stdout
    assert elsewhere.returncode == 1
    assert "outside the update folders" in elsewhere.stdout
    assert queued.returncode == 0, queued.stdout + queued.stderr
    result = orjson.loads(queued.stdout.splitlines()[-1])
    assert result["ok"] is True
    assert result["result"]["queued"] is True
    assert result["result"]["version"] == NEW_VERSION
    assert result["result"]["active_version"] == OLD_VERSION
    assert busy.returncode == 1
    assert "busy" in busy.stdout
    written = orjson.loads(request.read_bytes())
    assert written["bundle"] == str(good)
    assert written["version"] == NEW_VERSION

    applied = await asyncio.to_thread(
        nightbox, site, "update", "apply", "--request", "--config", str(site.site_file)
    )
    second = await asyncio.to_thread(
        nightbox, site, "update", "apply", "--request", "--config", str(site.site_file)
    )

    assert applied.returncode == 0, applied.stderr + site.box_log()
    assert not request.exists()
    assert (site.app_dir / "current").readlink() == Path("slot-b")
    await asyncio.to_thread(wait_for_version, site, NEW_VERSION)
    assert second.returncode == 0
    assert "No update request" in second.stdout
    assert results(site)["counts"] == {"installed": 1}
