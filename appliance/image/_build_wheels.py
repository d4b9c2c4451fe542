"""The wheelhouse: Nightbox and its dependencies as wheels for the image.

The wheels are built and downloaded on the host, where PyPI is reachable and
pip runs at native speed. pip inside the root tree then installs from this
folder with no index. Binary wheels are chosen for the image's platform:
Debian bookworm's CPython 3.11 on glibc 2.36, for the image's architecture.
Dependencies that PyPI ships only as source (esptool, for one) are pure
Python and are built into ``py3-none-any`` wheels on the host.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.image._build_tools import ImageBuildError

_LOGGER = logging.getLogger(__name__)

# Debian bookworm's Python and C library.
IMAGE_PYTHON_VERSION = "3.11"
IMAGE_GLIBC_MINOR = 36
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# Folders of a checkout that are not part of the package's source.
_NOT_SOURCE = (
    ".git",
    ".venv",
    "node_modules",
    "build",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
)


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    """A folder of wheels and the requirement that installs Nightbox from it."""

    path: Path
    requirement: str
    wheel_count: int
    size_bytes: int


def platform_tags(arch: str) -> list[str]:
    """Return the manylinux platform tags that bookworm's glibc runs for ``arch``."""
    machine = _MACHINES[arch]
    tags = [f"manylinux2014_{machine}"]
    tags += [
        f"manylinux_2_{minor}_{machine}" for minor in range(17, IMAGE_GLIBC_MINOR + 1)
    ]
    return tags


def source_tree() -> Path:
    """Return the repository that contains this package's ``pyproject.toml``.

    Raises :class:`ImageBuildError` for an installed package, because the
    image is built from a source checkout (it also needs ``image-build/``).
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "image-build").is_dir():
        raise ImageBuildError(
            f"no Nightbox source tree at {root} (pyproject.toml and image-build/ "
            "are missing): run 'nightbox image build' from a checkout of the "
            "repository, installed with 'pip install -e .'"
        )
    return root


def build_wheelhouse(
    arch: str, destination: Path, cache_dir: Path | None = None
) -> Wheelhouse:
    """Fill ``destination`` with the wheels that install Nightbox on ``arch``."""
    destination.mkdir(parents=True, exist_ok=True)
    cache = ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    source = _clean_source_copy(destination.parent / "source")
    _pip(
        "wheel",
        "--quiet",
        "--no-deps",
        "--wheel-dir",
        str(destination),
        str(source),
        *cache,
    )
    shutil.rmtree(source)
    own = sorted(destination.glob("nightbox-*.whl"))
    if len(own) != 1:
        raise ImageBuildError(
            f"expected one nightbox wheel in {destination}, found {len(own)}: "
            "remove the folder or choose an empty --work-dir"
        )
    version = own[0].name.split("-")[1]
    for requirement in _source_only_requirements(own[0], destination, cache):
        _build_pure_wheel(requirement, destination, cache)
    platforms = [
        option for tag in platform_tags(arch) for option in ("--platform", tag)
    ]
    _pip(
        "download", "--quiet", "--only-binary=:all:", *platforms,
        "--python-version", IMAGE_PYTHON_VERSION, "--implementation", "cp",
        "--find-links", str(destination), "--dest", str(destination),
        str(own[0]), *cache,
    )  # fmt: skip
    wheels = sorted(destination.glob("*.whl"))
    return Wheelhouse(
        path=destination,
        requirement=f"nightbox=={version}",
        wheel_count=len(wheels),
        size_bytes=sum(wheel.stat().st_size for wheel in wheels),
    )


def _clean_source_copy(target: Path) -> Path:
    """Copy the source tree to ``target`` without build output or environments.

    setuptools reuses a checkout's ``build/`` folder, so a module deleted from
    the source could still end up in a wheel built in place.
    """
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(
        source_tree(),
        target,
        ignore=shutil.ignore_patterns(*_NOT_SOURCE),
        symlinks=True,
    )
    return target


def _source_only_requirements(
    wheel: Path, destination: Path, cache: list[str]
) -> list[str]:
    """Return ``name==version`` of each dependency that PyPI has only as source.

    pip resolves the dependencies for this machine's Python without installing
    anything. The download that follows resolves them again for the image's
    Python 3.11 and fails, naming the package, on one this step missed.
    """
    report = destination / "resolve-report.json"
    _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report",
         str(report), str(wheel), *cache)  # fmt: skip
    resolved = json.loads(report.read_text(encoding="utf-8"))
    report.unlink()
    requirements = []
    for item in resolved.get("install", []):
        url = item.get("download_info", {}).get("url", "")
        if url.endswith(".whl"):
            continue
        metadata = item["metadata"]
        requirements.append(f"{metadata['name']}=={metadata['version']}")
    return requirements


def _build_pure_wheel(requirement: str, destination: Path, cache: list[str]) -> None:
    before = set(destination.glob("*.whl"))
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(destination),
         requirement, *cache)  # fmt: skip
    for wheel in set(destination.glob("*.whl")) - before:
        if not wheel.name.endswith("-none-any.whl"):
            wheel.unlink()
            raise ImageBuildError(
                f"{requirement} has no binary wheel for the image's platform on "
                f"PyPI, and its source builds {wheel.name}, which runs only on "
                "this machine: pin a version of it that ships manylinux wheels"
            )
        _LOGGER.info("built %s from source (pure Python)", wheel.name)


def _pip(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    _LOGGER.debug("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        # pip's own message names the package and the version it could not find.
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        detail = "\n".join(errors[-5:]) or result.stderr.strip()[-2000:]
        raise ImageBuildError(
            f"pip {arguments[0]} failed (exit code {result.returncode}):\n{detail}\n"
            "Check that PyPI is reachable and that pyproject.toml's dependencies "
            f"have wheels for CPython {IMAGE_PYTHON_VERSION} on manylinux"
        )
