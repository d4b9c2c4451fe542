"""Host tools that ``nightbox image build`` needs, and how to install them."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import NightboxError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")

# Debian architecture names by the machine names that platform.machine() returns.
_DEBIAN_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# The binfmt_misc entry that runs foreign binaries of each architecture.
_QEMU_ENTRIES = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}


class ImageBuildError(NightboxError, RuntimeError):
    """An image build cannot go on; the message names the cause and the fix."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A program the build runs, with the Debian package that installs it."""

    command: str
    package: str


TOOLS = (
    Tool("mmdebstrap", "mmdebstrap"),
    Tool("genimage", "genimage"),
    Tool("mkfs.vfat", "dosfstools"),
    Tool("mcopy", "mtools"),
    Tool("mke2fs", "e2fsprogs"),
)


def host_architecture() -> str:
    """Return the Debian name of this machine's architecture (``amd64`` ...)."""
    machine = platform.machine()
    return _DEBIAN_ARCHITECTURES.get(machine, machine)


def find_tool(command: str) -> str | None:
    """Return the path of ``command``, also in the sbin folders root has."""
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return shutil.which(command, path=search)


def missing_tools() -> list[Tool]:
    """Return the tools in :data:`TOOLS` that are not installed."""
    return [tool for tool in TOOLS if find_tool(tool.command) is None]


def check_tools(arch: str) -> list[str]:
    """Check the build's tools for ``arch``; return one line per tool found.

    Raises :class:`ImageBuildError` naming every missing tool and the
    ``apt-get install`` line that installs them, or, for a foreign
    architecture, what to do to run its binaries through binfmt_misc.
    """
    if os.geteuid() != 0:
        raise ImageBuildError(
            "nightbox image build must run as root: mmdebstrap's root mode sets "
            "the owners of the image's files and runs pip inside the tree. Run "
            "it with sudo"
        )
    missing = missing_tools()
    if missing:
        names = ", ".join(tool.command for tool in missing)
        packages = " ".join(sorted({tool.package for tool in missing}))
        raise ImageBuildError(
            f"missing tools: {names}. Install them with "
            f"'apt-get install {packages}' (or run tests/ensure-image-tools), "
            "then run the build again"
        )
    found = [f"{tool.command} ({find_tool(tool.command)})" for tool in TOOLS]
    if arch != host_architecture():
        found.append(check_foreign_architecture(arch))
    return found


def check_foreign_architecture(arch: str) -> str:
    """Check that binfmt_misc runs ``arch`` binaries; return what was found.

    The packages' maintainer scripts and pip run inside the root tree, so a
    foreign architecture's binaries must run through qemu-user.
    """
    entry_name = _QEMU_ENTRIES.get(arch)
    if entry_name is None:
        raise ImageBuildError(
            f"cannot build for {arch!r} on this {host_architecture()} machine: "
            "expected amd64 or arm64"
        )
    entry = BINFMT_DIR / entry_name
    if not (BINFMT_DIR / "status").exists():
        raise ImageBuildError(
            f"building for {arch} on {host_architecture()} needs binfmt_misc, which "
            "is not mounted. Mount it with 'mount -t binfmt_misc binfmt_misc "
            f"{BINFMT_DIR}' and install qemu-user-static and binfmt-support "
            "(tests/ensure-image-tools does both)"
        )
    if not entry.exists():
        raise ImageBuildError(
            f"building for {arch} on {host_architecture()} needs {entry_name} "
            "registered in binfmt_misc. Install it with 'apt-get install "
            "qemu-user-static binfmt-support', then run 'update-binfmts --enable "
            f"{entry_name}'"
        )
    if "enabled" not in entry.read_text(encoding="ascii", errors="replace"):
        raise ImageBuildError(
            f"{entry_name} is registered in binfmt_misc but disabled. Enable it "
            f"with 'update-binfmts --enable {entry_name}'"
        )
    return f"binfmt_misc: {entry_name} enabled"
