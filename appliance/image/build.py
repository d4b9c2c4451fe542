"""``nightbox image build``: the box's disk image from Debian packages and this tree.

The build runs seven stages and reports one line for each:

1. tools: mmdebstrap, genimage, mkfs.vfat, mcopy, mke2fs, and binfmt_misc
   with qemu-user for a foreign architecture;
2. wheels: Nightbox and its dependencies as wheels, built on the host;
3. packages: the Debian root tree, with slot A's venv installed from the
   wheels by pip inside the tree;
4. app: slot A's reader firmware, ``slot.json``, ``current`` and ``state.json``;
5. system: the overlay of ``image-build/overlay``, the update key, the units;
6. trees: the root tree and the data tree (``/var/lib/nightbox``);
7. image: the initramfs, the boot partition's files, and the disk image
   from genimage, moved to ``--output`` last.

A lock on ``OUTPUT.lock`` keeps two builds from writing the same image.

``--rootfs-only`` stops after stage 6, so its root tree has no initramfs:
systemd-nspawn boots a tree without one, and building it under qemu-user
takes minutes. The recipe (package lists, hooks,
overlay, genimage template) lives in ``image-build/`` and is described in
``image-build/README.md`` and docs/image.md.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.image._build_disk import (
    Partition,
    prepare_boot_dir,
    read_partitions,
    run_genimage,
    split_trees,
)
from appliance.image._build_tools import ImageBuildError, check_tools
from appliance.image._build_tree import (
    DEFAULT_MIRROR,
    TreeSpec,
    apply_system,
    build_initramfs,
    install_slot,
    read_update_key,
    run_mmdebstrap,
    security_mirror_for,
)
from appliance.image._build_wheels import build_wheelhouse, source_tree

__all__ = ["ARCHITECTURES", "BuildOptions", "BuildResult", "ImageBuildError", "build"]

_LOGGER = logging.getLogger(__name__)

ARCHITECTURES = ("amd64", "arm64")
STAGE_COUNT = 7
# A sources.list line: type, optional [options], URL, suite, then components;
# a flat archive's suite is a path ending in "/" and takes no component.
_APT_SOURCE_RE = re.compile(
    r"^deb(-src)?(\s+\[[^\]]*\])?\s+[a-z+]+:\S+\s+(\S+/|\S+(\s+\S+)+)\s*$"
)
# genimage's configuration names the trees in double quotes.
_GENIMAGE_UNSAFE = ('"', "\\", "\n")


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """The options of one image build, as ``nightbox image build`` takes them."""

    arch: str
    output: Path | None = None
    rootfs_dir: Path | None = None
    rootfs_only: bool = False
    update_key: Path | None = None
    extra_apt_sources: Sequence[str] = ()
    extra_apt_keys: Sequence[Path] = ()
    mirror: str = DEFAULT_MIRROR
    security_mirror: str | None = None
    work_dir: Path | None = None
    cache_dir: Path | None = None


@dataclass(slots=True)
class BuildResult:
    """The files a build produced."""

    image: Path | None
    root_dir: Path
    data_dir: Path
    partitions: list[Partition] = field(default_factory=list)
    seconds_by_stage: dict[str, float] = field(default_factory=dict)


def check_options(options: BuildOptions) -> None:
    """Raise :class:`ImageBuildError` for options that cannot build an image."""
    if options.arch not in ARCHITECTURES:
        raise ImageBuildError(
            f"unknown architecture {options.arch!r}: expected one of "
            + ", ".join(ARCHITECTURES)
        )
    if options.rootfs_only and options.rootfs_dir is None:
        raise ImageBuildError(
            "--rootfs-only needs --rootfs-dir DIR to keep the trees in"
        )
    if not options.rootfs_only and options.output is None:
        raise ImageBuildError(
            "--output FILE.img is required unless --rootfs-only is given"
        )
    if options.output is not None:
        _check_output(options.output)
    if options.rootfs_dir is not None:
        _check_rootfs_dir(options.rootfs_dir)
    for option, folder in (("--rootfs-dir", options.rootfs_dir),
                           ("--work-dir", options.work_dir)):  # fmt: skip
        if folder is not None and any(c in str(folder) for c in _GENIMAGE_UNSAFE):
            raise ImageBuildError(
                f"{option} {str(folder)!r} contains a double quote, a backslash or "
                "a line break, which genimage's configuration cannot hold: choose "
                "another folder"
            )
    _check_mirrors(options.mirror, options.security_mirror)
    for line in options.extra_apt_sources:
        if not _APT_SOURCE_RE.match(line):
            raise ImageBuildError(
                f"--extra-apt-source {line!r} is not a sources.list line: expected "
                "'deb URL SUITE COMPONENT...', or 'deb URL PATH/' for a flat archive"
            )
    for key in options.extra_apt_keys:
        if not key.is_file():
            raise ImageBuildError(f"--extra-apt-key {key} does not exist")
    if options.update_key is not None:
        read_update_key(options.update_key)


def _check_output(output: Path) -> None:
    if not output.parent.is_dir():
        raise ImageBuildError(
            f"--output {output}: folder {output.parent} does not exist"
        )
    if output.is_dir():
        raise ImageBuildError(
            f"--output {output} is a folder: give the image's file name, such as "
            f"{output / 'nightbox.img'}"
        )
    if output.exists() and not output.is_file():
        raise ImageBuildError(
            f"--output {output} exists and is not a regular file: choose another name"
        )


def _check_rootfs_dir(rootfs_dir: Path) -> None:
    if rootfs_dir.exists() and not rootfs_dir.is_dir():
        raise ImageBuildError(
            f"--rootfs-dir {rootfs_dir} is not a folder: choose a new or empty folder"
        )
    for name in ("root", "data"):
        path = rootfs_dir / name
        if path.exists() and not path.is_dir():
            raise ImageBuildError(
                f"--rootfs-dir {rootfs_dir}: {path} is not a folder; choose a new "
                "folder or remove it"
            )
        if path.exists() and any(path.iterdir()):
            raise ImageBuildError(
                f"--rootfs-dir {rootfs_dir}: {path} is not empty; choose "
                "a new folder or empty it"
            )


def _check_mirrors(mirror: str, security_mirror: str | None) -> None:
    schemes = ("http://", "https://", "file:/")
    if not mirror.startswith(schemes):
        raise ImageBuildError(
            f"--mirror {mirror!r} is not an http, https or file URL, such "
            f"as {DEFAULT_MIRROR}"
        )
    if security_mirror is None:
        if security_mirror_for(mirror) is None:
            raise ImageBuildError(
                f"--mirror {mirror} does not end in /debian, so the security "
                "archive beside it is unknown: give it with --security-mirror URL, "
                "such as http://deb.debian.org/debian-security"
            )
    elif not security_mirror.startswith(schemes):
        raise ImageBuildError(
            f"--security-mirror {security_mirror!r} is not an http, https or file "
            "URL, such as http://deb.debian.org/debian-security"
        )


def build(
    options: BuildOptions, progress: Callable[[str], None] = print
) -> BuildResult:
    """Build the image (or only its trees) that ``options`` describe.

    ``progress`` receives one line per stage, such as ``[3/7] packages: ...``.
    The work folder is removed at the end unless ``options.work_dir`` is given.
    The stages' logs are kept when a stage fails: in the work folder, or
    without ``--work-dir`` in a ``nightbox-image-logs-*`` folder whose path
    the error message names.
    """
    check_options(options)
    recipe_dir = source_tree() / "image-build"
    update_key = read_update_key(options.update_key) if options.update_key else None
    with _output_lock(options.output):
        if options.work_dir is not None:
            options.work_dir.mkdir(parents=True, exist_ok=True)
            work = options.work_dir
            logs = work
        else:
            work = Path(tempfile.mkdtemp(prefix="nightbox-image-"))
            logs = Path(tempfile.mkdtemp(prefix="nightbox-image-logs-"))
        keep_logs = False
        try:
            return _build_in(options, recipe_dir, update_key, work, logs, progress)
        except ImageBuildError:
            # The message names the failed stage's log; Ctrl-C keeps nothing.
            keep_logs = options.work_dir is None and any(logs.iterdir())
            raise
        finally:
            if options.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
                if keep_logs:
                    _LOGGER.info("build failed; its logs are kept in %s", logs)
                else:
                    shutil.rmtree(logs, ignore_errors=True)


@contextmanager
def _output_lock(output: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``OUTPUT.lock`` while the build writes ``output``.

    A second build of the same file fails at once instead of replacing the
    first one's image minutes later. The lock file stays, because removing
    it would let a third build lock a new file while the second holds the old.
    """
    if output is None:
        yield
        return
    lock_path = output.with_name(output.name + ".lock")
    with lock_path.open("a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            raise ImageBuildError(
                f"another build is writing --output {output} (process {holder} has "
                f"locked {lock_path}): wait for it to finish or choose another "
                "--output"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        try:
            yield
        finally:
            lock_file.seek(0)
            lock_file.truncate()
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _install_image(written: Path, output: Path) -> None:
    """Move the finished image to ``output``, replacing it in one step.

    The file is first copied (or moved) next to ``output``, so an old image
    stays whole until the rename, and no half-copied file carries its name.
    """
    partial = output.with_name(output.name + ".partial")
    try:
        shutil.move(written, partial)
        os.replace(partial, output)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise ImageBuildError(
            f"cannot write --output {output}: {err}; the image was built in {written}"
        ) from err


def _build_in(
    options: BuildOptions,
    recipe_dir: Path,
    update_key: str | None,
    work: Path,
    logs: Path,
    progress: Callable[[str], None],
) -> BuildResult:
    trees = options.rootfs_dir if options.rootfs_dir is not None else work / "trees"
    root = trees / "root"
    data = trees / "data"
    for path in (root, data):
        if path.exists():
            path.rmdir()
    timer = _StageTimer(progress)

    timer.start("tools")
    found = check_tools(options.arch)
    timer.done(", ".join(found))

    timer.start("wheels")
    cache = options.cache_dir
    wheelhouse = build_wheelhouse(
        options.arch, work / "wheelhouse", cache / "pip" if cache else None
    )
    timer.done(
        f"{wheelhouse.wheel_count} wheels, {wheelhouse.size_bytes / 1e6:.0f} MB, "
        f"for {wheelhouse.requirement} on {options.arch}"
    )

    timer.start("packages")
    spec = TreeSpec(
        arch=options.arch,
        mirror=options.mirror,
        recipe_dir=recipe_dir,
        extra_apt_sources=tuple(options.extra_apt_sources),
        extra_apt_keys=tuple(options.extra_apt_keys),
        security_mirror=options.security_mirror,
        apt_cache_dir=cache / f"apt-{options.arch}" if cache else None,
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    run_mmdebstrap(
        spec, root, wheelhouse.path, wheelhouse.requirement, logs / "mmdebstrap.log"
    )
    timer.done(f"Debian bookworm {options.arch} in {root}, from {options.mirror}")

    timer.start("app")
    version = wheelhouse.requirement.split("==", 1)[1]
    slot = install_slot(root, source_tree() / "firmware", version)
    timer.done(f"nightbox {version} in {slot.relative_to(root)} (current -> slot-a)")

    timer.start("system")
    apply_system(root, recipe_dir, source_tree() / "docs" / "image.md", update_key)
    key_note = (
        "update key installed" if update_key else "no update key: updates refused"
    )
    timer.done(f"overlay, units enabled, {key_note}")

    timer.start("trees")
    split_trees(root, data)
    timer.done(f"root {root}, data {data}")
    result = BuildResult(image=None, root_dir=root, data_dir=data)
    if options.rootfs_only:
        result.seconds_by_stage = timer.seconds
        return result

    timer.start("image")
    assert options.output is not None  # check_options requires it
    build_initramfs(root, logs / "initramfs.log")
    boot = work / "boot"
    if boot.exists():
        shutil.rmtree(boot)
    prepare_boot_dir(options.arch, root, recipe_dir, boot)
    written = run_genimage(options.arch, recipe_dir, work, boot, root, data, logs)
    _install_image(written, options.output)
    result.image = options.output
    result.partitions = read_partitions(options.output)
    size = options.output.stat().st_size
    timer.done(f"{options.output}, {size / 2**20:.0f} MiB")
    result.seconds_by_stage = timer.seconds
    return result


class _StageTimer:
    """Numbers the stages, times them and reports one line for each."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self._progress = progress
        self._number = 0
        self._name = ""
        self._started = 0.0
        self.seconds: dict[str, float] = {}

    def start(self, name: str) -> None:
        self._number += 1
        self._name = name
        self._started = time.monotonic()

    def done(self, detail: str) -> None:
        elapsed = time.monotonic() - self._started
        self.seconds[self._name] = elapsed
        _LOGGER.info("stage %s took %.1f s", self._name, elapsed)
        self._progress(
            f"[{self._number}/{STAGE_COUNT}] {self._name}: {detail} ({elapsed:.0f} s)"
        )
