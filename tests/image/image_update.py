"""Signed update bundles for the booted image, and the updater run inside it.

The boot test builds the image with a public key from ``nightbox update
keygen``; these helpers sign bundles of this repository's wheels with the
matching private key, copy them into the data tree's ``updates/`` folder and
run ``nightbox update apply`` with the slot's Python inside the container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.update.update_site import build_wheel

REPOSITORY = Path(__file__).resolve().parents[2]
BOX_PYTHON = "/var/lib/nightbox/app/current/venv/bin/python"
BOX_UPDATES = "/var/lib/nightbox/updates"
# A clean environment for commands run inside the container: the host's
# variables (its PATH, a virtualenv) mean nothing there. Without bytecode
# writes, the updater is the only thing that changes the app folder.
BOX_ENVIRONMENT = (
    "env", "-i",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8", "HOME=/root", "PYTHONDONTWRITEBYTECODE=1",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class UpdateKeys:
    """The key pair whose public half is built into the image."""

    private_key: Path
    public_key: Path


def generate_keys(folder: Path) -> UpdateKeys:
    """Run ``nightbox update keygen`` into ``folder``."""
    subprocess.run(
        [sys.executable, "-m", "appliance", "update", "keygen",
         "--output-dir", str(folder)],
        check=True, capture_output=True, cwd=REPOSITORY, timeout=60,
    )  # fmt: skip
    return UpdateKeys(folder / "update-key", folder / "update-key.pub")


def make_bundle(
    folder: Path, keys: UpdateKeys, version: str, *, broken: bool = False
) -> Path:
    """Build a wheel of ``version`` and sign it into ``folder/nightbox-VERSION.nbu``."""
    wheel = build_wheel(folder, version, broken=broken)
    bundle = folder / f"nightbox-{version}{'-broken' if broken else ''}.nbu"
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "update", "bundle",
         "--key", str(keys.private_key), "--version", version,
         "--wheel", str(wheel), "--output", str(bundle)],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return bundle


def flip_payload_byte(bundle: Path, output: Path) -> Path:
    """Copy ``bundle`` to ``output`` with one byte of its wheel inverted.

    The byte sits in the middle of the wheel's data, after the signed
    manifest, so only the payload's SHA-256 can catch it.
    """
    with tarfile.open(bundle) as archive:
        wheel = next(m for m in archive.getmembers() if m.name.endswith(".whl"))
        offset = wheel.offset_data + wheel.size // 2
    content = bytearray(bundle.read_bytes())
    content[offset] ^= 0xFF
    output.write_bytes(bytes(content))
    return output


def apply_command(leader: int, bundle_name: str) -> list[str]:
    """Return the host command that runs ``update apply`` in the container."""
    return [
        "nsenter", "-t", str(leader), "-a", *BOX_ENVIRONMENT,
        BOX_PYTHON, "-m", "appliance", "update", "apply",
        f"{BOX_UPDATES}/{bundle_name}",
    ]  # fmt: skip


def read_state(data: Path) -> dict[str, object]:
    """Return the data tree's ``app/state.json``."""
    state: dict[str, object] = json.loads((data / "app" / "state.json").read_text())
    return state


def read_current(data: Path) -> str | None:
    """Return the slot that the data tree's ``app/current`` link points at."""
    try:
        return os.readlink(data / "app" / "current")
    except FileNotFoundError:
        # The updater renames a new link over the old one, so it is never
        # missing unless the data tree is damaged.
        return None


def wait_for_trial(data: Path, process: subprocess.Popen[str], timeout_s: float) -> str:
    """Wait until a slot is on trial and ``current`` points at it; return the slot.

    Fails when the update ends, or ``timeout_s`` passes, before a trial starts.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            trying = read_state(data).get("trying")
        except (OSError, ValueError):
            # The updater replaces the file by a rename, so a read sees a
            # whole file. A failed read means it was missing for a moment.
            trying = None
        if isinstance(trying, str) and read_current(data) == trying:
            return trying
        if process.poll() is not None:
            raise AssertionError(
                f"the update ended with {process.returncode} before a trial "
                f"started: {process.communicate()}"
            )
        time.sleep(0.01)
    raise AssertionError(f"no trial started within {timeout_s:g} s")
