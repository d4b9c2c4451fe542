"""A box with two application slots, real wheels, a mosquitto and a restart command.

Wheels: :func:`build_wheel` copies this repository's packages into a
temporary folder, sets the version in a copied ``pyproject.toml`` and runs
``pip wheel --no-deps --no-build-isolation``. Test modules build them once
per module.

Slots: on a box each slot's venv contains every dependency, and the updater
installs the new ``nightbox`` wheel ``--no-deps`` into a copy of the active
venv. Here a slot venv is made with ``python -m venv --without-pip`` and
its site-packages gets one ``.pth`` line that points at
:func:`dependencies_folder`: links to everything in the test
environment's site-packages except its own ``nightbox`` (an editable
install of this checkout) and its ``.pth`` files. The slot's Python thus
imports ``appliance`` from the slot alone, and finds pip and the other
dependencies through the link folder, as a box finds them in its venv.

The restart command is ``supervisor.py``, which stops the running
``current/venv/bin/python -m appliance run`` and starts it again from the
new ``current``, on a mosquitto that the test started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from appliance.bus.broker import BrokerHandle
from appliance.config import SiteConfig, load_config
from appliance.update.keys import generate_key_pair
from provisioning import SiteCredentials
from tests.conftest import start_site_broker

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGES = ("appliance", "hardware", "provisioning", "tui")
SUPERVISOR = Path(__file__).with_name("supervisor.py")
OLD_VERSION = "0.1.0"
# A version below the one installed, for the rejection of a downgrade.
OLDER_VERSION = "0.0.9"
# The import of the service host fails in a wheel built with this marker.
# The command line imports it at start-up, so every command of that build
# fails, `python -m appliance --version` included, and the box never starts.
BROKEN_SOURCE = 'raise RuntimeError("this build of Nightbox is broken on purpose")\n'
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")


def build_wheel(folder: Path, version: str, *, broken: bool = False) -> Path:
    """Build a wheel of this repository with ``version``; return its path."""
    source = folder / f"source-{version}{'-broken' if broken else ''}"
    for package in PACKAGES:
        shutil.copytree(REPOSITORY / package, source / package, ignore=_IGNORED)
    shutil.copytree(REPOSITORY / "firmware", source / "firmware", ignore=_IGNORED)
    shutil.copy(REPOSITORY / "README.md", source / "README.md")
    project = (REPOSITORY / "pyproject.toml").read_text()
    assert '\nversion = "' in project
    lines = [
        f'version = "{version}"' if line.startswith("version = ") else line
        for line in project.splitlines()
    ]
    (source / "pyproject.toml").write_text("\n".join(lines) + "\n")
    if broken:
        host = source / "appliance" / "service_host.py"
        host.write_text(host.read_text() + BROKEN_SOURCE)
    output = folder / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(output / source.name),
            str(source),
        ],
        check=True,
        cwd=folder,
    )
    (wheel,) = (output / source.name).glob("nightbox-*.whl")
    return wheel


def dependencies_folder(folder: Path) -> Path:
    """Link everything in the test environment's site-packages but nightbox."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    links = folder / "dependencies"
    links.mkdir()
    for entry in site_packages.iterdir():
        name = entry.name
        if (
            name.startswith(("nightbox", "__editable__"))
            or name.endswith(".pth")
            or name == "__pycache__"
        ):
            continue
        (links / name).symlink_to(entry)
    return links


def make_slot(slot: Path, wheel: Path, version: str, dependencies: Path) -> None:
    """Make a complete slot: a venv with ``wheel`` installed, firmware, slot.json."""
    venv = slot / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True
    )
    (site_packages,) = venv.glob("lib/python3*/site-packages")
    (site_packages / "nightbox-test-dependencies.pth").write_text(f"{dependencies}\n")
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        cwd=slot,
        env=clean_environment(),
    )
    shutil.copytree(REPOSITORY / "firmware", slot / "firmware", ignore=_IGNORED)
    marker = {
        "version": version,
        "complete": True,
        "installed_at": "2027-01-01T00:00:00Z",
    }
    (slot / "slot.json").write_bytes(orjson.dumps(marker))


def make_app_dir(app_dir: Path, wheel: Path, dependencies: Path) -> None:
    """Lay out the image's application folder: slot-a complete, slot-b empty."""
    make_slot(app_dir / "slot-a", wheel, OLD_VERSION, dependencies)
    (app_dir / "slot-b").mkdir()
    (app_dir / "current").symlink_to("slot-a")
    state = {"active": "slot-a", "trying": None, "previous": None}
    (app_dir / "state.json").write_bytes(orjson.dumps(state))


def clean_environment() -> dict[str, str]:
    """Return the environment without variables that would redirect a slot's Python."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME")
    }


def tree_hash(folder: Path) -> str:
    """Hash every name, type, link target and file content under ``folder``."""
    digest = hashlib.sha256()
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(folders + files):
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            digest.update(relative.encode() + b"\0")
            if path.is_symlink():
                digest.update(b"L" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(b"F" + path.read_bytes())
            else:
                digest.update(b"D")
    return digest.hexdigest()


def slot_version(app_dir: Path, slot: str = "current") -> str:
    """Return what ``<slot>/venv/bin/python -m appliance --version`` prints."""
    completed = subprocess.run(
        [
            str(app_dir / slot / "venv" / "bin" / "python"),
            "-m",
            "appliance",
            "--version",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=app_dir,
        env=clean_environment(),
    )
    return completed.stdout.strip()


@dataclass(frozen=True, slots=True)
class BuiltWheels:
    """The wheels of one test module and the dependency link folder."""

    old: Path
    older: Path
    new: Path
    broken: Path
    dependencies: Path
    folder: Path


@dataclass(slots=True)
class UpdateSite:
    """One box's files: site file, app folder, keys, and its broker."""

    root: Path
    site_file: Path
    app_dir: Path
    updates_dir: Path
    usb_dir: Path
    run_dir: Path
    update_key: Path
    broker: BrokerHandle

    @property
    def config(self) -> SiteConfig:
        """The site configuration as the box and the updater read it."""
        return load_config(self.site_file)

    def restart_box(self) -> None:
        """Restart the box from ``current``, as the updater's restart command does."""
        subprocess.run(self.supervisor_command("restart"), check=True)

    def stop_box(self) -> None:
        """Stop the box process, if one runs."""
        subprocess.run(self.supervisor_command("stop"), check=True)

    def supervisor_command(self, action: str) -> list[str]:
        """Return the supervisor's command line for ``action``."""
        return [
            sys.executable,
            str(SUPERVISOR),
            action,
            "--app-dir",
            str(self.app_dir),
            "--config",
            str(self.site_file),
            "--run-dir",
            str(self.run_dir),
        ]

    def box_log(self) -> str:
        """Return what the box processes wrote, for failure messages."""
        path = self.run_dir / "box.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def write_site_file(
    root: Path, port: int, restart_command: list[str], health_timeout_s: float
) -> Path:
    """Write the test site's TOML file for a broker on ``port``."""
    command = ", ".join(f'"{part}"' for part in restart_command)
    text = f"""\
[site]
id = "test"
name = "Update test"

[box]
id = "box-1"
data_dir = "data"

[broker]
mode = "external"
host = "127.0.0.1"
port = {port}

[[readers]]
id = "exit-1"
role = "exit"

[fleet]
operator_keys = ["keys/operator.pub"]
telemetry_interval_s = 1

[update]
app_dir = "app"
public_key = "keys/update-key.pub"
health_timeout_s = {health_timeout_s}
restart_command = [{command}]
updates_dir = "updates"
bundle_dirs = ["updates", "usb"]
"""
    path = root / "site.toml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def update_site(
    root: Path, wheels: BuiltWheels, *, health_timeout_s: float = 60.0
) -> AsyncIterator[UpdateSite]:
    """Lay out a box in ``root`` and start its mosquitto; stop both on exit."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = root / "keys"
    key_files = generate_key_pair(keys)
    operator = Ed25519PrivateKey.generate()
    (keys / "operator.key").write_bytes(
        operator.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (keys / "operator.pub").write_bytes(
        operator.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    app_dir = root / "app"
    make_app_dir(app_dir, wheels.old, wheels.dependencies)
    for folder in ("updates", "usb", "run"):
        (root / folder).mkdir()
    site = UpdateSite(
        root=root,
        site_file=root / "site.toml",
        app_dir=app_dir,
        updates_dir=root / "updates",
        usb_dir=root / "usb",
        run_dir=root / "run",
        update_key=key_files.private_key,
        broker=None,  # type: ignore[arg-type]
    )
    restart = site.supervisor_command("restart")
    # The broker's port is known once it runs, so the file is written twice.
    write_site_file(root, 1, restart, health_timeout_s)
    config = load_config(site.site_file)
    broker = await start_site_broker(
        config, SiteCredentials(config.data_dir / "secrets" / "broker.json")
    )
    site.broker = broker
    write_site_file(root, broker.port, restart, health_timeout_s)
    try:
        yield site
    finally:
        site.stop_box()
        await broker.stop()


def wait_for_version(site: UpdateSite, version: str, timeout_s: float = 60.0) -> None:
    """Wait until the running box publishes telemetry with ``version``.

    Only live messages count, never the retained one, so the version is the
    one of a process running now. Fails with the box's log.
    """
    config = site.config
    accounts = orjson.loads((config.data_dir / "secrets" / "broker.json").read_bytes())
    topic = f"nightbox/{config.site_id}/box/{config.box_id}/tele/state"
    seen: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set("operator", accounts["operator"])

    def on_message(
        client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        if not message.retain:
            data = orjson.loads(message.payload).get("data", {})
            seen.append(str(data.get("version")))

    client.on_message = on_message
    client.on_connect = lambda client, *_: client.subscribe(topic, 1)
    client.connect(site.broker.host, site.broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        while version not in seen[-1:]:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the box never reported version {version} (saw {seen}); its "
                    f"log:\n{site.box_log()}"
                )
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()


def build_wheels(folder: Path) -> BuiltWheels:
    """Build the old, older, new and broken wheels and the dependency links."""
    return BuiltWheels(
        old=build_wheel(folder, OLD_VERSION),
        older=build_wheel(folder, OLDER_VERSION),
        new=build_wheel(folder, "0.2.0"),
        broken=build_wheel(folder, "0.2.0", broken=True),
        dependencies=dependencies_folder(folder),
        folder=folder,
    )
