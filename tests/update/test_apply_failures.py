"""``update apply`` failures that happen after the bundle was verified.

The slots here hold a ``slot.json`` and a venv whose ``bin/python`` is a
shell script standing in for pip: it records its arguments and fails, so
an install never reaches the restart and the health check.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import zipfile
from collections import namedtuple
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.cli import main
from appliance.config import load_config
from appliance.update.bundle import read_bundle, write_bundle
from appliance.update.keys import (
    generate_key_pair,
    load_private_key,
    load_public_key,
)
from appliance.update.updater import Steps, UpdateFailed, Updater
from provisioning.site_access import OPERATOR

REPOSITORY = Path(__file__).resolve().parents[2]
NEW_VERSION = "0.2.0"

# Records the pip command line next to itself, then fails as pip does.
FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../../../pip-calls.txt"
echo "fake pip: no wheels installed" >&2
exit 1
"""


def site_text(app_dir: str) -> str:
    return f"""\
[site]
id = "test"

[box]
id = "box-1"
data_dir = "data"

[broker]
port = 1883

[[readers]]
id = "exit-1"
role = "exit"

[update]
app_dir = "{app_dir}"
updates_dir = "updates"
public_key = "keys/update-key.pub"
restart_command = ["/bin/true"]
health_timeout_s = 1
"""


def make_slot(app_dir: Path, name: str, version: str) -> None:
    python = app_dir / name / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (app_dir / name / "firmware").mkdir()
    marker = {
        "version": version,
        "complete": True,
        "installed_at": "2027-01-01T00:00:00Z",
    }
    (app_dir / name / "slot.json").write_bytes(orjson.dumps(marker))


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A box folder: slot-a with 0.1.0 active, slot-b empty, keys and a bundle."""
    app_dir = tmp_path / "app"
    make_slot(app_dir, "slot-a", "0.1.0")
    (app_dir / "slot-b").mkdir()
    (app_dir / "current").symlink_to("slot-a")
    (app_dir / "state.json").write_bytes(
        orjson.dumps({"active": "slot-a", "trying": None, "previous": None})
    )
    secrets = tmp_path / "data" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "broker.json").write_text(orjson.dumps({OPERATOR: "pw"}).decode())
    keys = generate_key_pair(tmp_path / "keys")
    wheel = tmp_path / "input" / f"nightbox-{NEW_VERSION}-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("content.txt", b"wheel bytes " * 1000)
    write_bundle(
        tmp_path / "usb" / f"nightbox-{NEW_VERSION}.nbu",
        load_private_key(keys.private_key),
        version=NEW_VERSION,
        wheels=[wheel],
        firmware_dir=REPOSITORY / "firmware",
    )
    (tmp_path / "site.toml").write_text(site_text(str(app_dir)))
    return tmp_path


def bundle_of(box: Path) -> Path:
    return box / "usb" / f"nightbox-{NEW_VERSION}.nbu"


def updater(box: Path, steps: Steps | None = None) -> Updater:
    site = load_config(box / "site.toml")
    return Updater(site.update, site, steps=steps)


def last_result(box: Path) -> dict[str, Any]:
    document = orjson.loads((box / "updates" / "results.json").read_bytes())
    last: dict[str, Any] = document["last"]
    return last


def folder_listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def no_space(path: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class DiskFullAt(Steps):
    """Runs step ``name`` for real, then fails it as a full disk does."""

    def __init__(self, name: str, error: OSError) -> None:
        super().__init__()
        self.name = name
        self.error = error

    def run(self, name: str, action: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().run(name, action, *args, **kwargs)
        if name == self.name:
            raise self.error
        return result


def test_disk_full_during_copy_recorded(box: Path) -> None:
    app_dir = box / "app"
    active_before = folder_listing(app_dir / "slot-a")
    # shutil.copytree reports every file it could not copy in one shutil.Error.
    full = shutil.Error(
        [
            (source, f"slot-b/{source}", str(no_space(f"slot-b/{source}")))
            for source in ("venv/bin/python", "venv/lib/x.py")
        ]
    )

    with pytest.raises(UpdateFailed) as failure:
        updater(box, DiskFullAt("copy venv", full)).apply(bundle_of(box))

    assert failure.value.reason == "no-space"
    assert "venv/bin/python" in failure.value.message
    assert "1 more files" in failure.value.message
    last = last_result(box)
    assert last["result"] == "failed"
    assert last["reason"] == "no-space"
    assert last["version"] == NEW_VERSION
    assert folder_listing(app_dir / "slot-b") == []
    assert folder_listing(app_dir / "slot-a") == active_before
    assert os.readlink(app_dir / "current") == "slot-a"
    assert not [path for path in app_dir.iterdir() if path.name.startswith(".")]


def test_write_error_recorded_as_io_error(box: Path) -> None:
    broken = OSError(errno.EIO, "Input/output error", str(box / "app" / "slot-b"))

    with pytest.raises(UpdateFailed) as failure:
        updater(box, DiskFullAt("copy venv", broken)).apply(bundle_of(box))

    assert failure.value.reason == "io-error"
    assert last_result(box)["reason"] == "io-error"
    assert folder_listing(box / "app" / "slot-b") == []


def test_too_little_space_rejected_first(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (box / "app" / "slot-b" / "old.txt").write_bytes(b"x" * 1000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 4096))

    with pytest.raises(UpdateFailed) as failure:
        updater(box).apply(bundle_of(box))

    assert failure.value.reason == "no-space"
    assert "MiB" in failure.value.message
    assert "free" in failure.value.message
    assert last_result(box)["reason"] == "no-space"
    # Nothing was cleared: the check comes before the inactive slot is touched.
    assert (box / "app" / "slot-b" / "old.txt").exists()
    assert not (box / "app" / "pip-calls.txt").exists()


def test_relative_paths_resolved(
    box: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (box / "site.toml").write_text(site_text("app"))
    monkeypatch.chdir(box.parent)
    relative_site = Path(box.name) / "site.toml"

    code = main(
        ["update", "apply", str(bundle_of(box)), "--config", str(relative_site)]
    )
    error = capsys.readouterr().err

    # pip ran (the fake one fails), so the slot's Python was found.
    assert code == 1
    assert "nightbox update: install-failed" in error
    assert "fake pip" in error
    assert (box / "app" / "pip-calls.txt").exists()
    assert last_result(box)["reason"] == "install-failed"
    assert folder_listing(box / "app" / "slot-b") == []


def test_relative_app_dir_resolved(
    box: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(box)
    arguments = ["update", "apply", str(bundle_of(box))]
    arguments += ["--config", str(box / "site.toml"), "--app-dir", "app"]

    code = main(arguments)

    assert code == 1
    assert "install-failed" in capsys.readouterr().err
    assert (box / "app" / "pip-calls.txt").exists()


def test_undecodable_file_name_in_message(box: Path) -> None:
    name = os.fsdecode(b"slot-b/x\xff.py")
    broken = OSError(errno.EIO, "Input/output error", name)

    with pytest.raises(UpdateFailed) as failure:
        updater(box, DiskFullAt("copy venv", broken)).apply(bundle_of(box))

    assert "x\\xff.py" in failure.value.message
    failure.value.message.encode("utf-8")
    assert "x\\xff.py" in last_result(box)["message"]


def apply_request(box: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["update", "apply", "--request", "--config", str(box / "site.toml")])
    return code, capsys.readouterr().err


def write_request(box: Path, **changes: str) -> Path:
    bundle = box / "updates" / bundle_of(box).name
    bundle.parent.mkdir(exist_ok=True)
    shutil.copyfile(bundle_of(box), bundle)
    keys = box / "keys"
    verified = read_bundle(bundle, load_public_key(keys / "update-key.pub"))
    request = {
        "bundle": str(bundle),
        "version": NEW_VERSION,
        "manifest_sha256": verified.manifest.sha256,
        "requested_at": "2027-01-15T08:00:00Z",
        **changes,
    }
    path = box / "updates" / "request.json"
    path.write_bytes(orjson.dumps(request))
    return path


@pytest.mark.parametrize("leftover", ["folder", "file"])
def test_request_with_taken_leftover(
    box: Path, capsys: pytest.CaptureFixture[str], leftover: str
) -> None:
    updates = box / "updates"
    updates.mkdir()
    taken = updates / "request.taken.json"
    if leftover == "folder":
        (taken / "inner").mkdir(parents=True)
    else:
        taken.write_text("{}")
    request = write_request(box)

    code, error = apply_request(box, capsys)

    # The request was taken and reached the install, where the fake pip fails.
    assert code == 1
    assert "install-failed" in error
    assert not request.exists()
    assert taken.is_file()


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_request_not_regular_file_rejected(
    box: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    updates = box / "updates"
    updates.mkdir()
    request = updates / "request.json"
    if kind == "folder":
        request.mkdir()
        expected = "is not a regular file"
    else:
        request.symlink_to(box / "site.toml")
        expected = "is a symbolic link, which the updater does not follow"
    (updates / "request.taken.json").write_text("{}")

    code, error = apply_request(box, capsys)
    second, _ = apply_request(box, capsys)

    assert code == 1
    assert "invalid-request" in error
    assert expected in error
    assert not error.rstrip().endswith(": 3")
    assert not os.path.lexists(request)
    assert second == 0
    assert last_result(box)["reason"] == "invalid-request"


def test_request_fifo_does_not_block(box: Path) -> None:
    updates = box / "updates"
    updates.mkdir()
    os.mkfifo(updates / "request.json")

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "update",
            "apply",
            "--request",
            "--config",
            str(box / "site.toml"),
        ],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=60,
    )

    assert completed.returncode == 1
    assert "invalid-request" in completed.stderr
    assert "is not a regular file" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_request_version_must_match_bundle(
    box: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_request(box, version="9.9.9")

    code, error = apply_request(box, capsys)

    assert code == 1
    assert "request-mismatch" in error
    assert "9.9.9" in error
    assert last_result(box)["reason"] == "request-mismatch"
    assert not (box / "app" / "pip-calls.txt").exists()


def test_small_partition_rejected_before_copy(box: Path) -> None:
    # A real 4 MiB tmpfs in a mount namespace of its own stands for a full
    # data partition; the update needs more than its free space.
    small = box / "small-app"
    small.mkdir()
    script = (
        f"mount -t tmpfs -o size=4m nightbox-test {small} && "
        f"cp -a {box / 'app'}/. {small}/ && "
        f"{sys.executable} -m appliance update apply {bundle_of(box)} "
        f"--config {box / 'site.toml'} --app-dir {small}; "
        f"code=$?; ls -A {small / 'slot-b'} > {box / 'slot-b-after.txt'}; exit $code"
    )

    completed = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=120,
    )

    assert completed.returncode == 1, completed.stderr
    assert "nightbox update: no-space:" in completed.stderr
    assert "MiB free" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert last_result(box)["reason"] == "no-space"
    assert (box / "slot-b-after.txt").read_text() == ""
    assert not os.path.ismount(small)
