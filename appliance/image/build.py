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
   from genimage.

``--rootfs-only`` stops after stage 6, so its root tree has no initramfs:
systemd-nspawn boots a tree without one, and building it under qemu-user
takes minutes. The recipe (package lists, hooks,
overlay, genimage template) lives in ``image-build/`` and is described in
``image-build/README.md`` and docs/image.md.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
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
)
from appliance.image._build_wheels import build_wheelhouse, source_tree

__all__ = ["ARCHITECTURES", "BuildOptions", "BuildResult", "ImageBuildError", "build"]

_LOGGER = logging.getLogger(__name__)

ARCHITECTURES = ("amd64", "arm64")
STAGE_COUNT = 7


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
    work_dir: Path | None = None
    cache_dir: Path | None = None


@dataclass(slots=True)
class BuildResult:
    """What a build produced."""

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
    if options.output is not None and not options.output.parent.is_dir():
        raise ImageBuildError(
            f"--output {options.output}: folder {options.output.parent} does not exist"
        )
    if options.rootfs_dir is not None:
        for name in ("root", "data"):
            path = options.rootfs_dir / name
            if path.exists() and any(path.iterdir()):
                raise ImageBuildError(
                    f"--rootfs-dir {options.rootfs_dir}: {path} is not empty; choose "
                    "a new folder or empty it"
                )
    if not options.mirror.startswith(("http://", "https://", "file:/")):
        raise ImageBuildError(
            f"--mirror {options.mirror!r} is not an http, https or file URL, such "
            f"as {DEFAULT_MIRROR}"
        )
    for line in options.extra_apt_sources:
        if not line.startswith(("deb ", "deb[", "deb-src ")):
            raise ImageBuildError(
                f"--extra-apt-source {line!r} is not a sources.list line: expected "
                "'deb URL SUITE COMPONENT...'"
            )
    for key in options.extra_apt_keys:
        if not key.is_file():
            raise ImageBuildError(f"--extra-apt-key {key} does not exist")
    if options.update_key is not None:
        read_update_key(options.update_key)


def build(
    options: BuildOptions, progress: Callable[[str], None] = print
) -> BuildResult:
    """Build the image (or only its trees) that ``options`` describe.

    ``progress`` receives one line per stage, such as ``[3/7] packages: ...``.
    The work folder is removed at the end unless ``options.work_dir`` is given.
    """
    check_options(options)
    recipe_dir = source_tree() / "image-build"
    update_key = read_update_key(options.update_key) if options.update_key else None
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
        work = options.work_dir
    else:
        work = Path(tempfile.mkdtemp(prefix="nightbox-image-"))
    try:
        return _build_in(options, recipe_dir, update_key, work, progress)
    finally:
        if options.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _build_in(
    options: BuildOptions,
    recipe_dir: Path,
    update_key: str | None,
    work: Path,
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
        apt_cache_dir=cache / f"apt-{options.arch}" if cache else None,
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    run_mmdebstrap(
        spec, root, wheelhouse.path, wheelhouse.requirement, work / "mmdebstrap.log"
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
    build_initramfs(root, work / "initramfs.log")
    boot = work / "boot"
    if boot.exists():
        shutil.rmtree(boot)
    prepare_boot_dir(options.arch, root, recipe_dir, boot)
    written = run_genimage(
        options.arch, recipe_dir, work, boot, root, data, options.output.name
    )
    shutil.move(written, options.output)
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
