"""The updater: install a bundle into the inactive slot, switch, check, or switch back.

``apply`` runs these steps, each one durable before the next starts:

1. verify the bundle (signature, version, file hashes) into a temporary
   folder inside the application folder;
2. prepare the inactive slot: remove its ``slot.json``, clear it, copy the
   active slot's venv, install the bundle's wheels with the slot's own pip,
   copy the firmware, sync, and write ``slot.json`` last;
3. record the trial in ``state.json`` (``trying``);
4. switch ``current`` to the new slot and run the restart command;
5. wait for the health check: the box must report the new version on the
   bus within ``health_timeout_s``;
6. healthy: make the new slot active. Unhealthy: switch ``current`` back,
   restore ``state.json``, restart again and report why.

A power cut can stop it between any two steps. ``boot_check``, run once per
boot before the box starts, then returns to the previous slot and repairs
``current`` and ``state.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from packaging import tags

from appliance.config import SiteConfig
from appliance.errors import ConfigError, NightboxError
from appliance.image.layout import SLOT_NAMES
from appliance.update import _files
from appliance.update.bundle import VerifiedBundle, read_bundle
from appliance.update.config import UpdateConfig
from appliance.update.health import (
    SETTLE_S,
    HealthResult,
    broker_login,
    watch_box,
)
from appliance.update.keys import UpdateKeyError, load_public_key
from appliance.update.manifest import (
    FIRMWARE_DIR,
    WHEELS_DIR,
    BundleRejected,
    compatible_wheels,
)
from appliance.update.request import RequestError, bundle_in_folders, take_request
from appliance.update.results import UpdateResult, read_results, record_result
from appliance.update.slots import (
    FIRMWARE_NAME,
    INCOMING_PREFIX,
    VENV_NAME,
    AppDir,
    SlotError,
    SlotState,
    marker_document,
    other_slot,
    utc_now,
)

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# The last lines of pip's or the restart command's output that an error shows.
_OUTPUT_TAIL_CHARS = 600
# Variables that would make a slot's Python import another installation.
_FOREIGN_PYTHON_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
# An installed wheel takes more room than the compressed wheel. This factor
# is an estimate (pure-Python wheels unpack to about 2 to 3 times their size).
_WHEEL_UNPACKED_FACTOR = 3
# Room left free after the new slot is written, for the journal and the
# SQLite store that share the data partition.
_SPARE_BYTES = 16 * 1024 * 1024


class UpdateFailed(NightboxError, RuntimeError):
    """An update that did not happen or was switched back; ``reason`` is one word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Steps:
    """Runs the updater's durable steps one at a time and times each one."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    def run(self, name: str, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``action(*args, **kwargs)`` as step ``name``; return its result."""
        started = time.monotonic()
        result = action(*args, **kwargs)
        elapsed = time.monotonic() - started
        self.durations[name] = self.durations.get(name, 0.0) + elapsed
        _LOGGER.info("Update step %s took %.2f s", name, elapsed)
        return result


class Updater:
    """Applies bundles to the slots of ``config.app_dir`` and checks them.

    ``site`` is the box's site configuration, which the health check needs
    to find the broker and the box's telemetry. ``steps`` runs every write
    (tests replace it to cut the power at any step), and ``settle_s`` is
    how long the box must stay up after it reports the new version.
    """

    def __init__(
        self,
        config: UpdateConfig,
        site: SiteConfig | None,
        *,
        steps: Steps | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        # pip runs inside the slot, so a path relative to the caller's
        # working folder would point nowhere there.
        self.config = dataclasses.replace(
            config,
            app_dir=Path(os.path.abspath(config.app_dir)),
            updates_dir=Path(os.path.abspath(config.updates_dir)),
            public_key=Path(os.path.abspath(config.public_key)),
        )
        self.site = site
        self.app = AppDir(self.config.app_dir)
        self.steps = steps or Steps()
        self.settle_s = settle_s

    # apply

    def apply(
        self,
        bundle_path: Path,
        *,
        manifest_sha256: str | None = None,
        request_version: str | None = None,
    ) -> UpdateResult:
        """Install the bundle at ``bundle_path`` and keep it if the box stays healthy.

        ``manifest_sha256`` and ``request_version``, from a request, must
        match the bundle's manifest. Raises UpdateFailed naming the bundle's
        version and why it was rejected, failed or was switched back; the
        record in ``results.json`` counts every outcome.
        """
        started = time.monotonic()
        version: str | None = None
        try:
            with self._locked():
                active = self._repair_before_apply()
                active_info = self.app.slot_info(active)
                assert active_info is not None  # _repair_before_apply checks it
                key = load_public_key(self.config.public_key)
                site = self._require_site()
                login = broker_login(site)
                bundle = self._verify(
                    bundle_path,
                    key,
                    active_info.version,
                    manifest_sha256,
                    request_version,
                )
                version = bundle.manifest.version
                try:
                    target = other_slot(active)
                    self.steps.run(
                        "check free space", self._check_free_space, active, bundle
                    )
                    self._prepare_slot(target, active, bundle)
                finally:
                    assert bundle.folder is not None
                    self.steps.run(
                        "remove extraction folder", _files.remove_tree, bundle.folder
                    )
                outcome = self._switch_and_check(site, login, active, target, version)
        except (
            BundleRejected,
            UpdateKeyError,
            ConfigError,
            SlotError,
            UpdateFailed,
            OSError,
        ) as err:
            reason, result = _failure_kind(err)
            message = _printable(getattr(err, "message", None) or _error_text(err))
            failed = UpdateResult(
                result,
                version,
                reason,
                message,
                time.monotonic() - started,
                dict(self.steps.durations),
            )
            _LOGGER.error(
                "Update %s from %s failed: %s: %s",
                version or "(version unknown)",
                _printable(str(bundle_path)),
                reason,
                message,
            )
            record_result(self.config.updates_dir, failed)
            if isinstance(err, UpdateFailed) and message == err.message:
                raise
            raise UpdateFailed(reason, _with_version(version, message)) from err
        outcome.seconds = time.monotonic() - started
        outcome.steps = dict(self.steps.durations)
        record_result(self.config.updates_dir, outcome)
        _LOGGER.info("Installed Nightbox %s in %.1f s", version, outcome.seconds)
        return outcome

    def apply_request(self) -> UpdateResult | None:
        """Apply the bundle of ``updates/request.json`` once; None without a request."""
        try:
            request = take_request(self.config.updates_dir)
            if request is None:
                return None
            bundle = bundle_in_folders(request.bundle, self.config.bundle_dirs)
        except (RequestError, OSError) as err:
            message = _printable(_error_text(err))
            record_result(
                self.config.updates_dir,
                UpdateResult("rejected", None, "invalid-request", message),
            )
            _LOGGER.error("Rejected the update request: %s", message)
            raise UpdateFailed("invalid-request", message) from err
        _LOGGER.info("Applying requested update %s from %s", request.version, bundle)
        return self.apply(
            bundle,
            manifest_sha256=request.manifest_sha256,
            request_version=request.version,
        )

    def _verify(
        self,
        bundle_path: Path,
        key: Any,
        active_version: str,
        manifest_sha256: str | None,
        request_version: str | None,
    ) -> VerifiedBundle:
        folder = self.steps.run(
            "create extraction folder",
            tempfile.mkdtemp,
            prefix=INCOMING_PREFIX,
            dir=self.app.path,
        )
        try:
            bundle = self.steps.run(
                "verify bundle",
                read_bundle,
                bundle_path,
                key,
                active_version=active_version,
                extract_to=Path(folder),
            )
            if (
                manifest_sha256 is not None
                and bundle.manifest.sha256 != manifest_sha256
            ):
                raise BundleRejected(
                    "request-mismatch",
                    f"{bundle_path} changed after the box verified it (its manifest "
                    "differs from the request's); send the update command again",
                )
            if (
                request_version is not None
                and bundle.manifest.version != request_version
            ):
                raise BundleRejected(
                    "request-mismatch",
                    f"the request names version {request_version:.40}, but "
                    f"{bundle_path} holds {bundle.manifest.version}; send the "
                    "update command again",
                )
            # A bundle without a wheel for this box is rejected before the
            # inactive slot is touched.
            compatible_wheels(bundle.manifest, _supported_tags())
        except Exception:
            self.steps.run("remove extraction folder", _files.remove_tree, Path(folder))
            raise
        return bundle

    def _check_free_space(self, active: str, bundle: VerifiedBundle) -> None:
        """Raise UpdateFailed ``no-space`` unless the new slot fits the partition.

        The inactive slot is cleared first, so its files count as free. The
        need is an estimate: the active venv, the wheels unpacked, the
        firmware, and a spare for the journal and the store.
        """
        target = self.app.slot(other_slot(active))
        wheel_bytes = sum(
            entry.size
            for entry in bundle.manifest.files
            if entry.path.startswith(f"{WHEELS_DIR}/")
        )
        firmware_bytes = sum(
            entry.size
            for entry in bundle.manifest.files
            if entry.path.startswith(f"{FIRMWARE_DIR}/")
        )
        needed = (
            _files.tree_bytes(self.app.slot(active) / VENV_NAME)
            + wheel_bytes * _WHEEL_UNPACKED_FACTOR
            + firmware_bytes
            + _SPARE_BYTES
        )
        available = shutil.disk_usage(self.app.path).free + _files.tree_bytes(target)
        if needed > available:
            raise UpdateFailed(
                "no-space",
                f"the new slot needs about {_mebibytes(needed)} but {self.app.path} "
                f"has {_mebibytes(available)} free (counting {target.name}); free "
                "space on the data partition, such as old journal files, and try "
                "again",
            )

    def _prepare_slot(self, target: str, active: str, bundle: VerifiedBundle) -> None:
        """Install the bundle into ``target``; on failure, leave it cleared."""
        try:
            self._fill_slot(target, active, bundle)
        except (OSError, UpdateFailed):
            # A half-written slot only takes space: clear it, so the data
            # partition is as free as before the update.
            try:
                self.steps.run("clear slot", _files.clear_folder, self.app.slot(target))
            except OSError as err:
                _LOGGER.error(
                    "Could not clear %s after the failed install: %s", target, err
                )
            raise

    def _fill_slot(self, target: str, active: str, bundle: VerifiedBundle) -> None:
        slot = self.app.slot(target)
        version = bundle.manifest.version
        _LOGGER.info("Installing Nightbox %s into %s", version, target)
        self.steps.run("unmark slot", _files.remove_file, self.app.marker(target))
        self.steps.run("clear slot", _files.clear_folder, slot)
        self.steps.run(
            "copy venv",
            _files.copy_tree,
            self.app.slot(active) / VENV_NAME,
            slot / VENV_NAME,
        )
        wheels = [
            bundle.local_path(wheel.path)
            for wheel in compatible_wheels(bundle.manifest, _supported_tags())
        ]
        self.steps.run("install wheels", self._install_wheels, target, wheels)
        self.steps.run("copy firmware", self._copy_firmware, target, active, bundle)
        self.steps.run("sync slot", _files.sync_all)
        self.steps.run(
            "mark slot complete",
            _files.write_json_atomically,
            self.app.marker(target),
            marker_document(version),
        )

    def _install_wheels(self, target: str, wheels: list[Path]) -> None:
        command = [
            str(self.app.venv_python(target)),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--force-reinstall",
            "--no-warn-script-location",
            *map(str, wheels),
        ]
        environment = slot_environment()
        environment["PIP_CONFIG_FILE"] = os.devnull
        environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        environment["PIP_NO_INPUT"] = "1"
        # The slot, never a source checkout: `python -m` puts the working
        # folder first on sys.path, where pip would see another nightbox.
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=environment,
            cwd=self.app.slot(target),
            check=False,
        )
        if completed.returncode != 0:
            raise UpdateFailed(
                "install-failed",
                f"pip could not install the wheels into {target} (exit "
                f"{completed.returncode}): {_output_tail(completed)}",
            )

    def _copy_firmware(self, target: str, active: str, bundle: VerifiedBundle) -> None:
        destination = self.app.slot(target) / FIRMWARE_NAME
        if not bundle.manifest.firmware:
            # A bundle without firmware keeps the readers' current firmware.
            source = self.app.slot(active) / FIRMWARE_NAME
            if source.is_dir():
                _files.copy_tree(source, destination)
            else:
                destination.mkdir()
            return
        for member in bundle.manifest.firmware:
            relative = Path(*Path(member).parts[1:])
            target_file = destination / relative
            target_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.local_path(member), target_file)

    def _switch_and_check(
        self,
        site: SiteConfig,
        login: Any,
        active: str,
        target: str,
        version: str,
    ) -> UpdateResult:
        trial = SlotState(
            active=active,
            trying=target,
            previous=active,
            trying_version=version,
            trial_started_at=utc_now(),
        )
        self.steps.run("record trial", self._write_state, trial)
        self.steps.run(
            "switch current", _files.replace_symlink, self.app.current_link, target
        )
        with watch_box(site, login) as watch:
            watch.restarting()
            health = self._restart()
            if health is None:
                health = self.steps.run(
                    "health check",
                    watch.wait_healthy,
                    version,
                    self.config.health_timeout_s,
                    self.settle_s,
                )
        if health.ok:
            confirmed = SlotState(active=target, trying=None, previous=active)
            self.steps.run("confirm slot", self._write_state, confirmed)
            return UpdateResult("installed", version)
        return self._switch_back(active, target, version, health)

    def _switch_back(
        self, active: str, target: str, version: str, health: HealthResult
    ) -> UpdateResult:
        old = self.app.slot_info(active)
        old_version = old.version if old is not None else "?"
        _LOGGER.error(
            "Nightbox %s failed its health check (%s); switching back to %s",
            version,
            health.reason,
            old_version,
        )
        self.steps.run(
            "switch back", _files.replace_symlink, self.app.current_link, active
        )
        self.steps.run("restore state", self._write_state, SlotState(active=active))
        restarted = self._restart()
        if restarted is not None:
            _LOGGER.error(
                "Restarting %s after the switch back failed: %s",
                old_version,
                restarted.reason,
            )
        raise UpdateFailed(
            "health-check",
            f"Nightbox {version} failed its health check and the box was switched "
            f"back to {old_version}: {health.reason}",
        )

    def _restart(self) -> HealthResult | None:
        """Run the restart command; return a failed HealthResult when it fails."""
        command = list(self.config.restart_command)
        started = time.monotonic()
        reset = systemd_reset_command(command)
        if reset is not None:
            # A version that crashed over and over may have reached the
            # unit's start limit, which would make the restart back fail.
            subprocess.run(reset, capture_output=True, check=False)
        try:
            completed = self.steps.run(
                "restart",
                subprocess.run,
                command,
                capture_output=True,
                text=True,
                timeout=self.config.health_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return HealthResult(
                False,
                f"the restart command {' '.join(command)} did not finish within "
                f"{self.config.health_timeout_s:g} s",
                time.monotonic() - started,
            )
        except OSError as err:
            return HealthResult(
                False,
                f"the restart command {' '.join(command)} could not run: {err}",
                time.monotonic() - started,
            )
        if completed.returncode != 0:
            return HealthResult(
                False,
                f"the restart command {' '.join(command)} exited with "
                f"{completed.returncode}: {_output_tail(completed)}",
                time.monotonic() - started,
            )
        return None

    def _require_site(self) -> SiteConfig:
        if self.site is None:
            raise ConfigError(
                "the health check needs the box's site configuration; give "
                "--config SITE.toml"
            )
        return self.site

    # boot-check and repairs

    def boot_check(self) -> list[str]:
        """Return to a complete slot after an interrupted update; return what changed.

        Run it once per boot before the box starts. A trial left in
        ``state.json`` means the updater stopped before the health check
        decided, so the previous slot comes back. When an updater is running
        right now (it holds the lock), nothing is touched.
        """
        try:
            with self._locked():
                return self._repair()
        except UpdateFailed as err:
            if err.reason == "busy":
                return ["an update is running; boot-check left the slots alone"]
            raise

    def _repair_before_apply(self) -> str:
        running = self.app.current_slot()
        changes = self._repair()
        if changes:
            _LOGGER.warning(
                "Repaired the slots before the update: %s", "; ".join(changes)
            )
        if self.app.current_slot() != running:
            # The box runs the slot that was switched away from.
            restarted = self._restart()
            if restarted is not None:
                _LOGGER.error("Restart after the repair failed: %s", restarted.reason)
        state = self.app.read_state()
        assert state is not None  # _repair writes it
        return state.active

    def _repair(self) -> list[str]:
        changes: list[str] = []
        link = self.app.current_link
        if link.is_dir() and not link.is_symlink():
            # Only root can put a folder there, and what it contains is unknown,
            # so it is left for a person to look at.
            raise SlotError(
                f"{link} is a folder, not a symbolic link to a slot; move it away "
                f"(mv {link} {link}.old) and run 'nightbox update boot-check' again"
            )
        for folder in self.app.incoming_folders():
            self.steps.run("remove extraction folder", _files.remove_tree, folder)
            changes.append(f"removed the leftover extraction folder {folder.name}")
        complete = [slot for slot in SLOT_NAMES if self.app.slot_info(slot) is not None]
        if not complete:
            raise SlotError(
                f"neither slot in {self.app.path} is complete (no slot.json with "
                "complete: true); reinstall the box's image"
            )
        state = self.app.read_state()
        current = self.app.current_slot()
        if state is None:
            wanted = current if current in complete else complete[0]
            changes.append(
                f"{self.app.state_file.name} was missing or invalid; rebuilt it with "
                f"{wanted} active"
            )
        elif state.trying is not None:
            wanted = state.previous if state.previous in complete else state.active
            if wanted not in complete:
                wanted = complete[0]
            changes.append(
                f"the trial of {state.trying_version or '?'} in {state.trying} did not "
                f"finish; switched back to {wanted}"
            )
            record_result(
                self.config.updates_dir,
                UpdateResult(
                    "switched-back",
                    state.trying_version,
                    "interrupted",
                    "the updater stopped (a power cut or a crash) before the health "
                    f"check decided; the box was switched back to {wanted}",
                ),
            )
        else:
            wanted = state.active if state.active in complete else complete[0]
            if wanted != state.active:
                changes.append(
                    f"the active slot {state.active} is incomplete; switched to "
                    f"{wanted}"
                )
        if current != wanted:
            changes.append(
                f"current pointed at {current or 'nothing'}; now at {wanted}"
            )
            self.steps.run(
                "switch current", _files.replace_symlink, self.app.current_link, wanted
            )
        if state is None or state.trying is not None or state.active != wanted:
            self.steps.run("restore state", self._write_state, SlotState(active=wanted))
        return changes

    def _write_state(self, state: SlotState) -> None:
        _files.write_json_atomically(self.app.state_file, state.to_json())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the application folder itself.

        Locking the folder creates no file, so a rejected bundle leaves the
        folder exactly as it was.
        """
        try:
            descriptor = os.open(self.app.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise SlotError(
                f"cannot open the application folder {self.app.path} ({err.strerror}); "
                "check [update] app_dir"
            ) from err
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise UpdateFailed(
                    "busy", f"another update of {self.app.path} is running; wait for it"
                ) from err
            yield
        finally:
            os.close(descriptor)

    # status

    def status(self) -> dict[str, Any]:
        """Return the active slot, both slots' versions and the last result."""
        state = self.app.read_state()
        slots = {}
        for slot in SLOT_NAMES:
            info = self.app.slot_info(slot)
            slots[slot] = (
                None
                if info is None
                else {"version": info.version, "installed_at": info.installed_at}
            )
        results = read_results(self.config.updates_dir)
        return {
            "app_dir": str(self.app.path),
            "current": self.app.current_slot(),
            "state": None if state is None else state.to_json(),
            "slots": slots,
            "last_result": results.get("last"),
            "counts": results.get("counts", {}),
        }


def slot_environment() -> dict[str, str]:
    """Return this process's environment without variables that redirect Python."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in _FOREIGN_PYTHON_VARIABLES
    }


def systemd_reset_command(command: list[str]) -> list[str] | None:
    """Return ``systemctl reset-failed UNIT...`` for ``systemctl restart UNIT...``.

    Returns None for any other restart command.
    """
    if len(command) < 3 or Path(command[0]).name != "systemctl":
        return None
    if command[1] != "restart":
        return None
    return [command[0], "reset-failed", *command[2:]]


def _supported_tags() -> list[str]:
    # The updater runs on the active slot's Python, the base Python that the
    # copied venv of the new slot links to.
    return [str(tag) for tag in tags.sys_tags()]


def _output_tail(completed: subprocess.CompletedProcess[str]) -> str:
    text = (completed.stderr or completed.stdout or "").strip()
    return (
        text if len(text) <= _OUTPUT_TAIL_CHARS else "..." + text[-_OUTPUT_TAIL_CHARS:]
    )


def _mebibytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _is_no_space(error: OSError) -> bool:
    if error.errno == errno.ENOSPC:
        return True
    # shutil.copytree collects its failures into one shutil.Error, whose
    # argument lists (source, destination, reason) per file.
    if isinstance(error, shutil.Error) and error.args:
        no_space = os.strerror(errno.ENOSPC)
        return any(no_space in str(entry) for entry in error.args[0])
    return False


def _error_text(error: Exception) -> str:
    """Return one line for ``error``; shutil.Error lists its first failed file."""
    if (
        isinstance(error, shutil.Error)
        and error.args
        and isinstance(error.args[0], list)
    ):
        failures = error.args[0]
        if failures and isinstance(failures[0], tuple) and len(failures[0]) == 3:
            source, _destination, why = failures[0]
            more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
            return f"copying {source} failed: {why}{more}"
    if isinstance(error, OSError) and error.filename is not None:
        # str(error) shows the name's repr, where an undecodable byte would
        # read as a surrogate escape instead of the byte.
        return f"{os.fsdecode(error.filename)}: {error.strerror}"
    return str(error)


def _printable(text: str) -> str:
    """Return ``text`` with undecodable file-name bytes shown as ``\\xNN``.

    File names that are not UTF-8 reach Python as lone surrogates, which
    JSON encoders and the bus reject.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Surrogates that no file name decoding makes: show their code points.
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _failure_kind(error: Exception) -> tuple[str, str]:
    """Return the reason and the ``results.json`` result of a failed update."""
    if isinstance(error, BundleRejected):
        return error.reason, "rejected"
    if isinstance(error, UpdateKeyError):
        return "update-key", "rejected"
    if isinstance(error, ConfigError):
        return "configuration", "failed"
    if isinstance(error, SlotError):
        return "slots", "failed"
    if isinstance(error, UpdateFailed) and error.reason == "health-check":
        return error.reason, "switched-back"
    if isinstance(error, UpdateFailed):
        return error.reason, "failed"
    if isinstance(error, OSError):
        return ("no-space" if _is_no_space(error) else "io-error"), "failed"
    return type(error).__name__, "failed"


def _with_version(version: str | None, message: str) -> str:
    return message if version is None else f"Nightbox {version}: {message}"
