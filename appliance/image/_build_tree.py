"""The image's root tree: Debian packages, application slot A and the overlay.

mmdebstrap installs the packages listed in ``image-build/packages/`` and runs
the hooks in ``image-build/hooks/`` inside the tree (the ``nightbox`` user,
and the venv of slot A installed from the wheelhouse). The rest is plain file
work on the finished tree: the slot's firmware and state files, the overlay
of ``image-build/overlay/``, the update key, and the enabled units.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from appliance.image._build_tools import ImageBuildError, find_tool
from appliance.image.layout import (
    CURRENT_LINK_NAME,
    SLOT_MARKER_NAME,
    SLOT_NAMES,
    SLOT_STATE_NAME,
    STATE_DIR,
    UPDATE_KEY_FILE,
    BoxLayout,
)

DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Units of image-build/overlay that `systemctl enable` links into their
# targets. The other units are started by these (the reload and update
# services by their path units).
ENABLED_UNITS = (
    "nightbox-first-boot.service",
    "nightbox-slot-check.service",
    "nightbox.service",
    "nightbox-tui.service",
    "nightbox-broker-reload.path",
    "nightbox-update.path",
    "mosquitto.service",
    "chrony.service",
    "NetworkManager.service",
    "bluetooth.service",
)
# The terminal UI has tty1; apt's timers would write to the read-only root.
MASKED_UNITS = (
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    # Debian's nightly copy of the dpkg database goes to /var/backups on the
    # root, so it would fail every night and leave the box degraded.
    "dpkg-db-backup.timer",
    "dpkg-db-backup.service",
)


@dataclass(frozen=True, slots=True)
class TreeSpec:
    """The contents of the root tree: architecture, mirrors, keys and packages."""

    arch: str
    mirror: str
    recipe_dir: Path
    extra_apt_sources: Sequence[str] = ()
    # None takes the mirror's ``-security`` sibling (security_mirror_for).
    security_mirror: str | None = None
    extra_apt_keys: Sequence[Path] = ()
    apt_cache_dir: Path | None = None


def package_list(recipe_dir: Path, arch: str) -> list[str]:
    """Return the packages of ``common.txt`` and ``<arch>.txt``, comments removed."""
    packages = []
    for name in ("common.txt", f"{arch}.txt"):
        path = recipe_dir / "packages" / name
        if not path.is_file():
            raise ImageBuildError(
                f"package list {path} is missing: expected it in the recipe"
            )
        for line in path.read_text(encoding="utf-8").splitlines():
            word = line.split("#", 1)[0].strip()
            if word:
                packages.append(word)
    return packages


def security_mirror_for(mirror: str) -> str | None:
    """Return the security archive next to ``mirror``, or None if there is none.

    Debian's servers and their copies keep it beside the main archive
    (``.../debian`` and ``.../debian-security``); a mirror URL with another
    last folder name gives no way to find it.
    """
    mirror = mirror.rstrip("/")
    if mirror.endswith("/debian"):
        return f"{mirror}-security"
    return None


def apt_sources(spec: TreeSpec) -> list[str]:
    """Return the sources.list lines of the image: Debian's suites, then extras.

    Every image gets ``bookworm-security``, from ``spec.security_mirror`` or
    else from the mirror's sibling (:func:`security_mirror_for`).
    """
    components = "main" if spec.arch == "amd64" else "main non-free-firmware"
    mirror = spec.mirror.rstrip("/")
    security = spec.security_mirror or security_mirror_for(mirror)
    if security is None:
        raise ImageBuildError(
            f"--mirror {spec.mirror} does not end in /debian, so the security "
            "archive beside it is unknown: give it with --security-mirror URL"
        )
    return [
        f"deb {mirror} {DEBIAN_SUITE} {components}",
        f"deb {mirror} {DEBIAN_SUITE}-updates {components}",
        f"deb {security.rstrip('/')} {DEBIAN_SUITE}-security {components}",
        *spec.extra_apt_sources,
    ]


def run_mmdebstrap(
    spec: TreeSpec, root: Path, wheelhouse: Path, requirement: str, log: Path
) -> None:
    """Install the packages and slot A's venv into the empty folder ``root``."""
    hooks = spec.recipe_dir / "hooks"
    command = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        f"--arch={spec.arch}",
        "--include=" + ",".join(package_list(spec.recipe_dir, spec.arch)),
        # raspi-firmware's kernel hooks copy the kernel, the initrd and the Pi
        # firmware into /boot/firmware, and fail when it does not exist.
        '--setup-hook=mkdir -p "$1/boot/firmware"',
    ]
    for number, key in enumerate(spec.extra_apt_keys):
        suffix = ".asc" if key.read_bytes()[:5] == b"-----" else ".gpg"
        target = f"/etc/apt/trusted.gpg.d/nightbox-extra-{number}{suffix}"
        command += [
            '--setup-hook=mkdir -p "$1/etc/apt/trusted.gpg.d"',
            f'--setup-hook=cp {shlex.quote(str(key.resolve()))} "$1{target}"',
        ]
    if spec.apt_cache_dir is not None:
        # apt finds the cached packages in its archive folder and downloads only
        # the others; the cache is refreshed before mmdebstrap cleans the tree.
        spec.apt_cache_dir.mkdir(parents=True, exist_ok=True)
        command += [
            '--setup-hook=mkdir -p "$1/var/cache/apt/archives/partial"',
            f"--setup-hook=sync-in {spec.apt_cache_dir} /var/cache/apt/archives",
            f"--customize-hook=sync-out /var/cache/apt/archives {spec.apt_cache_dir}",
        ]
    command += [
        f"--customize-hook={hooks / 'customize-users.sh'}",
        f"--customize-hook={hooks / 'customize-venv.sh'}",
        DEBIAN_SUITE,
        str(root),
        *apt_sources(spec),
    ]
    environment = dict(os.environ)
    # Debian's kernel hook skips the initramfs when INITRD=No, and the
    # initramfs-tools trigger then finds none to update. The image stage
    # builds it once (build_initramfs), instead of twice here, which under
    # qemu-user takes minutes each time.
    environment["INITRD"] = "No"
    environment["NIGHTBOX_WHEELHOUSE"] = str(wheelhouse)
    environment["NIGHTBOX_REQUIREMENT"] = requirement
    with log.open("wb") as output:
        result = subprocess.run(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            check=False,
        )
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise ImageBuildError(
            f"mmdebstrap failed (exit code {result.returncode}); the last lines of "
            f"{log}:\n" + "\n".join(tail) + "\nCheck the mirror "
            f"({spec.mirror}) and the --extra-apt-source lines; the whole log "
            f"is {log}"
        )


def build_initramfs(root: Path, log: Path) -> None:
    """Build the initramfs of every kernel in ``root``, inside the tree.

    The kernel packages' hooks then copy it to where the boot loader reads
    it (``/boot/firmware`` on a Raspberry Pi). /proc, /sys and /dev are
    mounted in a private mount namespace, so they vanish with the command.
    """
    script = (
        'mount -t proc proc "$1/proc" && mount --rbind /sys "$1/sys" && '
        'mount --rbind /dev "$1/dev" && '
        'exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin '
        "update-initramfs -c -k all"
    )
    command = ["unshare", "--mount", "--propagation", "private", "--fork",
               "sh", "-c", script, "sh", str(root)]  # fmt: skip
    with log.open("wb") as output:
        result = subprocess.run(
            command, stdout=output, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise ImageBuildError(
            f"update-initramfs failed in {root} (exit code {result.returncode}); "
            f"the last lines of {log}:\n" + "\n".join(tail)
        )


def install_slot(root: Path, firmware_dir: Path, version: str) -> Path:
    """Complete slot A in ``root``: firmware, ``slot.json``, ``current``, state.

    Returns the slot's folder. ``slot.json`` is written last, because it marks
    the slot complete.
    """
    layout = BoxLayout(root / STATE_DIR.relative_to("/"))
    slot = layout.slot_dir(SLOT_NAMES[0])
    python = slot / "venv" / "bin" / "python"
    if not python.exists() and not python.is_symlink():
        raise ImageBuildError(
            f"slot A has no venv at {python}: the venv hook did not run"
        )
    if not (firmware_dir / "main.py").is_file():
        raise ImageBuildError(
            f"reader firmware missing: expected {firmware_dir / 'main.py'} in the "
            "source tree"
        )
    target = slot / "firmware"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(
        firmware_dir, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    layout.slot_dir(SLOT_NAMES[1]).mkdir(parents=True, exist_ok=True)
    current = layout.app_dir / CURRENT_LINK_NAME
    if current.is_symlink() or current.exists():
        current.unlink()
    current.symlink_to(SLOT_NAMES[0])
    state = {"active": SLOT_NAMES[0], "trying": None, "previous": None}
    (layout.app_dir / SLOT_STATE_NAME).write_bytes(orjson.dumps(state) + b"\n")
    installed_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    marker = {
        "version": version,
        "complete": True,
        "installed_at": installed_at.replace("+00:00", "Z"),
    }
    (slot / SLOT_MARKER_NAME).write_bytes(orjson.dumps(marker) + b"\n")
    return slot


def read_update_key(path: Path) -> str:
    """Return the update key of ``path`` as one base64 line, checked.

    The file contains the raw 32-byte Ed25519 public key in base64 on one line,
    as ``nightbox update keygen`` writes it.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ImageBuildError(f"cannot read --update-key {path}: {err}") from err
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise ImageBuildError(
            f"--update-key {path} is not an Ed25519 public key: expected 32 bytes "
            "as base64 on one line, as 'nightbox update keygen' writes it"
        )
    return text


def apply_system(
    root: Path, recipe_dir: Path, doc_file: Path, update_key: str | None
) -> None:
    """Copy the overlay into ``root`` and set up what a read-only root needs."""
    shutil.copytree(recipe_dir / "overlay", root, dirs_exist_ok=True, symlinks=True)
    if update_key is not None:
        key_file = root / UPDATE_KEY_FILE.relative_to("/")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(update_key + "\n", encoding="ascii")
        key_file.chmod(0o644)
    # An empty machine-id makes systemd generate one at every boot, because the
    # read-only root cannot keep one; copies of the image never share one.
    (root / "etc/machine-id").write_text("", encoding="ascii")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.symlink_to("../run/NetworkManager/resolv.conf")
    for mount_point in ("var/log/journal", "etc/NetworkManager/system-connections",
                        "var/lib/bluetooth", "boot/firmware"):  # fmt: skip
        (root / mount_point).mkdir(parents=True, exist_ok=True)
    if doc_file.is_file():
        docs = root / "usr/share/doc/nightbox"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(doc_file, docs / doc_file.name)
    _create_state_folders(root)
    _systemctl(root, "enable", *ENABLED_UNITS)
    _systemctl(root, "mask", *MASKED_UNITS)


def _create_state_folders(root: Path) -> None:
    """Create the data partition's folders with the owners tmpfiles.d gives them."""
    users = _id_table(root / "etc/passwd")
    groups = _id_table(root / "etc/group")
    state = root / STATE_DIR.relative_to("/")
    rules = _tmpfiles_rules(root / "etc/tmpfiles.d/nightbox.conf")
    for path, mode, user, group in rules:
        if not path.startswith(str(STATE_DIR)):
            continue
        folder = state / Path(path).relative_to(STATE_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.chown(folder, users[user], groups[group])
        except KeyError as err:
            raise ImageBuildError(
                f"tmpfiles.d names {err.args[0]!r}, which the root tree lacks: "
                f"check the owners of {path} in image-build/overlay/etc/tmpfiles.d"
            ) from err
        folder.chmod(mode)


def _tmpfiles_rules(path: Path) -> list[tuple[str, int, str, str]]:
    rules = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0] != "d":
            continue
        rules.append((fields[1], int(fields[2], 8), fields[3], fields[4]))
    return rules


def _id_table(path: Path) -> dict[str, int]:
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if len(fields) >= 3:
            table[fields[0]] = int(fields[2])
    return table


def _systemctl(root: Path, verb: str, *units: str) -> None:
    systemctl = find_tool("systemctl") or "systemctl"
    result = subprocess.run(
        [systemctl, f"--root={root}", "--quiet", verb, *units],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImageBuildError(
            f"systemctl {verb} failed in {root}: {result.stderr.strip()}. Check the "
            "units in image-build/overlay/etc/systemd/system"
        )
