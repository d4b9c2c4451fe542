"""Update bundles: a signed manifest and the files of one Nightbox version.

A bundle (``*.nbu``) is a POSIX tar archive whose members come in this order:

1. ``manifest.json``: the format version, the Nightbox version (PEP 440),
   the creation time, the wheels with the tags they need, the reader
   firmware files, and the path, size and SHA-256 of every payload file::

       {"format": 1, "version": "0.2.0", "created_at": "2027-01-15T08:00:00Z",
        "wheels": [{"path": "wheels/nightbox-0.2.0-py3-none-any.whl",
                    "project": "nightbox", "python": "py3",
                    "tags": ["py3-none-any"]}],
        "firmware": ["firmware/main.py", "firmware/nbreader/scan.py"],
        "files": [{"path": "wheels/...", "size": 1125221, "sha256": "<64 hex>"}]}

2. ``manifest.sig``: ``{"key": "<key id>", "sig": "<base64 Ed25519 signature>"}``,
   the signature over the exact bytes of ``manifest.json``.
3. The payload files under ``wheels/`` and ``firmware/``.

Reading treats the archive as hostile: the signature is checked before any
payload byte is read, every member must be a regular file listed in the
manifest under a plain relative name, sizes are capped, and each file's
SHA-256 is checked while it is copied. A rejected bundle raises
:class:`BundleRejected` and leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import os
import re
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from packaging.version import InvalidVersion, Version

from appliance.errors import NightboxError
from appliance.signed_documents import key_id
from appliance.update.manifest import (
    FIRMWARE_DIR,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_BUNDLE_BYTES,
    WHEELS_DIR,
    BundleFile,
    BundleRejected,
    Manifest,
    check_member_name,
    check_nightbox_wheels,
    parse_manifest,
    wheel_entry,
)

BUNDLE_SUFFIX = ".nbu"
SIGNATURE_NAME = "manifest.sig"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 1024
_COPY_CHUNK_BYTES = 1024 * 1024
_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")


class BundleBuildError(NightboxError, ValueError):
    """The inputs of ``nightbox update bundle`` cannot make a valid bundle."""


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature, version and file hashes were checked.

    ``folder`` is where its payload was extracted, or None when it was only
    verified.
    """

    path: Path
    manifest: Manifest
    folder: Path | None

    def local_path(self, member: str) -> Path:
        """Return the extracted file of archive member ``member``."""
        if self.folder is None:
            raise ValueError("the bundle was verified without extracting it")
        return self.folder.joinpath(*PurePosixPath(member).parts)


# Writing.


def write_bundle(
    output: Path,
    private_key: Ed25519PrivateKey,
    *,
    version: str,
    wheels: Iterable[Path],
    firmware_dir: Path | None = None,
    created_at: dt.datetime | None = None,
) -> Manifest:
    """Write a signed bundle of ``wheels`` and the firmware in ``firmware_dir``.

    ``firmware_dir`` is laid out like the repository's ``firmware/``:
    ``main.py`` and ``nbreader/*.py``. The bundle must carry a ``nightbox``
    wheel of ``version``. Raises BundleBuildError naming the input to fix.
    The archive is written to a temporary file and renamed, so ``output``
    is never half written.
    """
    try:
        parsed = Version(version)
    except InvalidVersion as err:
        raise BundleBuildError(
            f"--version {version!r} is not a PEP 440 version; give one such as 0.2.0"
        ) from err
    _check_output(output)
    created = created_at or dt.datetime.now(dt.UTC)
    sources: dict[str, Path] = {}
    wheel_entries = []
    for wheel in wheels:
        entry = wheel_entry(f"{WHEELS_DIR}/{wheel.name}")
        if entry is None:
            raise BundleBuildError(
                f"{wheel} is not a wheel file name (project-version-python-abi-"
                "platform.whl); give the .whl that 'pip wheel' built"
            )
        if entry.path in sources:
            raise BundleBuildError(f"wheel {wheel.name} is given twice")
        _check_wheel_file(wheel)
        sources[entry.path] = wheel
        wheel_entries.append(entry)
    check_nightbox_wheels(wheel_entries, parsed, BundleBuildError)
    firmware = _firmware_sources(firmware_dir) if firmware_dir is not None else {}
    sources.update(firmware)
    files = []
    for path, source in sources.items():
        try:
            size, digest = _hash_file(source)
        except OSError as err:
            raise BundleBuildError(
                f"cannot read {source} ({err.strerror}); give a readable file"
            ) from err
        files.append({"path": path, "size": size, "sha256": digest})
    document = {
        "format": FORMAT_VERSION,
        "version": str(parsed),
        "created_at": created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wheels": [
            {
                "path": entry.path,
                "project": entry.project,
                "python": entry.python,
                "tags": list(entry.tags),
            }
            for entry in wheel_entries
        ],
        "firmware": sorted(firmware),
        "files": files,
    }
    manifest_bytes = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    signature = {
        "key": key_id(private_key.public_key()),
        "sig": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    _write_archive(
        output,
        manifest_bytes,
        orjson.dumps(signature),
        sources,
        int(created.timestamp()),
    )
    return parse_manifest(manifest_bytes)


def _firmware_sources(folder: Path) -> dict[str, Path]:
    main = folder / "main.py"
    if not main.is_file():
        raise BundleBuildError(
            f"--firmware {folder} has no main.py; give the reader firmware folder "
            "(main.py and nbreader/*.py), such as the repository's firmware/"
        )
    _reject_symlink(main)
    sources = {f"{FIRMWARE_DIR}/main.py": main}
    package = folder / "nbreader"
    _reject_symlink(package)
    if package.is_dir():
        for module in sorted(package.glob("*.py")):
            _reject_symlink(module)
            if not module.is_file():
                raise BundleBuildError(
                    f"--firmware: {module} is not a regular file; the firmware "
                    "folder holds files only"
                )
            sources[f"{FIRMWARE_DIR}/nbreader/{module.name}"] = module
    return sources


def _reject_symlink(path: Path) -> None:
    """Raise BundleBuildError when ``path`` is a symbolic link.

    A link would put the file it points at, which may be any file of the
    release machine, into the signed bundle and onto every reader.
    """
    if path.is_symlink():
        raise BundleBuildError(
            f"--firmware: {path} is a symbolic link to {os.readlink(path)}; replace "
            "it with the file itself"
        )


def _check_wheel_file(wheel: Path) -> None:
    try:
        is_zip = zipfile.is_zipfile(wheel)
    except OSError as err:
        raise BundleBuildError(
            f"cannot read {wheel} ({err.strerror}); give a readable .whl file"
        ) from err
    if not wheel.is_file() or not is_zip:
        raise BundleBuildError(
            f"--wheel {wheel} is not a wheel (a zip archive); give the .whl that "
            "'pip wheel' built"
        )


def _check_output(output: Path) -> None:
    if output.is_dir():
        raise BundleBuildError(
            f"--output {output} is a folder; give a file name such as "
            f"{output / 'nightbox-VERSION.nbu'}"
        )
    if output.exists() or output.is_symlink():
        raise BundleBuildError(
            f"--output {output} already exists and bundles are never overwritten; "
            "remove it or give another file name"
        )


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _write_archive(
    output: Path,
    manifest: bytes,
    signature: bytes,
    sources: dict[str, Path],
    mtime: int,
) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{output.name}.", dir=output.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            with tarfile.open(
                fileobj=handle, mode="w", format=tarfile.PAX_FORMAT
            ) as tar:
                _add_bytes(tar, MANIFEST_NAME, manifest, mtime)
                _add_bytes(tar, SIGNATURE_NAME, signature, mtime)
                for path, source in sources.items():
                    info = tarfile.TarInfo(path)
                    info.size = source.stat().st_size
                    info.mtime = mtime
                    info.mode = 0o644
                    with source.open("rb") as payload:
                        tar.addfile(info, payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


# Reading.


def read_bundle(
    path: Path,
    public_key: Ed25519PublicKey,
    *,
    active_version: str | None = None,
    extract_to: Path | None = None,
) -> VerifiedBundle:
    """Verify the bundle at ``path`` and, with ``extract_to``, extract its payload.

    The manifest's signature is checked first, then its version against
    ``active_version`` (a bundle must be newer), and then every payload
    file while it is read. ``extract_to`` must be an empty folder; on
    rejection its content is left for the caller to remove. Raises
    BundleRejected naming the problem.
    """
    try:
        # Opening a FIFO or a device could block or read forever, so the
        # type is checked before the open and again on the opened file.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BundleRejected(
                "unreadable", f"{path} is not a regular file; give a .nbu file"
            )
        handle = path.open("rb")
    except OSError as err:
        raise BundleRejected(
            "unreadable",
            f"cannot open the bundle {path} ({err.strerror}); give the path of a "
            ".nbu file that 'nightbox update bundle' wrote",
        ) from err
    with handle:
        status = os.fstat(handle.fileno())
        size = status.st_size
        if not stat.S_ISREG(status.st_mode):
            raise BundleRejected("unreadable", f"{path} is not a regular file")
        if size > MAX_BUNDLE_BYTES:
            raise BundleRejected(
                "too-large",
                f"the bundle has {size} bytes, more than the maximum of "
                f"{MAX_BUNDLE_BYTES} (1 GiB)",
            )
        try:
            with tarfile.open(fileobj=handle, mode="r:") as tar:
                manifest = _read_signed_manifest(tar, public_key)
                _check_newer(manifest, active_version)
                _read_payload(tar, manifest, extract_to)
        except (tarfile.TarError, EOFError) as err:
            raise BundleRejected(
                "malformed",
                f"{path} is not a valid tar archive ({err}); write bundles with "
                "'nightbox update bundle'",
            ) from err
    return VerifiedBundle(path, manifest, extract_to)


def _read_signed_manifest(
    tar: tarfile.TarFile, public_key: Ed25519PublicKey
) -> Manifest:
    manifest_bytes = _read_small_member(tar, MANIFEST_NAME, MAX_MANIFEST_BYTES)
    signature_bytes = _read_small_member(tar, SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
    try:
        signature = orjson.loads(signature_bytes)
    except orjson.JSONDecodeError as err:
        raise BundleRejected(
            "malformed", f"{SIGNATURE_NAME} is not JSON ({err})"
        ) from err
    if (
        not isinstance(signature, dict)
        or not isinstance(signature.get("key"), str)
        or not isinstance(signature.get("sig"), str)
        or not _KEY_ID.match(signature["key"])
    ):
        raise BundleRejected(
            "malformed",
            f"{SIGNATURE_NAME} must be an object with 'key' (16 hex digits) and "
            "'sig' (base64)",
        )
    trusted = key_id(public_key)
    if signature["key"] != trusted:
        raise BundleRejected(
            "unknown-key",
            f"the bundle is signed with key {signature['key']}, but this box "
            f"trusts update key {trusted}; sign it with the update key the box's "
            "image was built with",
        )
    try:
        public_key.verify(
            base64.b64decode(signature["sig"], validate=True), manifest_bytes
        )
    except (InvalidSignature, binascii.Error, ValueError) as err:
        raise BundleRejected(
            "bad-signature",
            "the signature does not match manifest.json; the bundle was changed "
            "after it was signed, so build and sign it again",
        ) from err
    return parse_manifest(manifest_bytes)


def _next_member(tar: tarfile.TarFile, previous: str | None) -> tarfile.TarInfo | None:
    """Return the next member, or None at the archive's end marker.

    After the first member, tarfile takes a damaged header for the end of
    the archive. A real end is a block of zeros, so anything else where
    tarfile stopped is reported as damage, with the byte offset and
    ``previous``, the name of the member before it.
    """
    member = tar.next()
    if member is not None:
        return member
    assert tar.fileobj is not None  # opened with fileobj
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if block.strip(b"\0"):
        after = "first" if previous is None else f"after {previous!r:.80}"
        raise BundleRejected(
            "malformed",
            f"the archive is damaged at byte {tar.offset} (a tar header {after} "
            "fails its checksum); copy the bundle again from its source",
        )
    return None


def _read_small_member(tar: tarfile.TarFile, name: str, limit: int) -> bytes:
    previous = None if name == MANIFEST_NAME else MANIFEST_NAME
    member = _next_member(tar, previous)
    if member is None or member.name != name:
        found = "the end of the archive" if member is None else repr(member.name[:80])
        raise BundleRejected(
            "malformed",
            f"the bundle must start with {MANIFEST_NAME} and {SIGNATURE_NAME}, but "
            f"{found} came where {name} belongs",
        )
    if not member.isreg():
        raise BundleRejected("unsafe-member", f"{name} is not a regular file")
    if member.size > limit:
        raise BundleRejected(
            "too-large", f"{name} has {member.size} bytes; the maximum is {limit}"
        )
    payload = tar.extractfile(member)
    assert payload is not None  # a regular file always has a payload
    data = payload.read(limit + 1)
    if len(data) != member.size:
        raise BundleRejected("malformed", f"{name} is cut short")
    return data


def _check_newer(manifest: Manifest, active_version: str | None) -> None:
    if active_version is None:
        return
    try:
        active = Version(active_version)
    except InvalidVersion:
        # A slot written by hand with a version pip would not accept: any
        # signed bundle replaces it.
        return
    if manifest.parsed_version <= active:
        raise BundleRejected(
            "old-version",
            f"bundle version {manifest.version} is not newer than the active slot's "
            f"version {active_version} ({manifest.version} <= {active_version}); "
            "build a bundle with a higher version",
        )


def _read_payload(
    tar: tarfile.TarFile, manifest: Manifest, extract_to: Path | None
) -> None:
    expected = {entry.path: entry for entry in manifest.files}
    seen: set[str] = set()
    previous = SIGNATURE_NAME
    while (member := _next_member(tar, previous)) is not None:
        name = member.name
        previous = name
        check_member_name(name)
        if name in seen:
            raise BundleRejected(
                "duplicate-file", f"the archive holds {name!r:.80} twice"
            )
        seen.add(name)
        if not member.isreg() or member.issparse():
            raise BundleRejected(
                "unsafe-member",
                f"archive member {name!r:.80} is a {_member_kind(member)}; a bundle "
                "holds regular files only",
            )
        entry = expected.get(name)
        if entry is None:
            raise BundleRejected(
                "unlisted-file",
                f"archive member {name!r:.80} is not listed in the manifest",
            )
        if member.size != entry.size:
            raise BundleRejected(
                "size-mismatch",
                f"{name} has {member.size} bytes in the archive but {entry.size} in "
                "the manifest",
            )
        _copy_member(tar, member, entry, extract_to)
    missing = sorted(set(expected) - seen)
    if missing:
        raise BundleRejected(
            "missing-file",
            f"the manifest lists {missing[0]!r:.80}, which the archive lacks",
        )


def _copy_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    entry: BundleFile,
    extract_to: Path | None,
) -> None:
    source = tar.extractfile(member)
    assert source is not None  # checked to be a regular file
    target: IO[bytes] | None = None
    if extract_to is not None:
        destination = extract_to.joinpath(*PurePosixPath(entry.path).parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        # "x": the folder is fresh and every name is checked, so an existing
        # file means two members would write one path.
        target = destination.open("xb")
    digest = hashlib.sha256()
    copied = 0
    try:
        while chunk := source.read(_COPY_CHUNK_BYTES):
            copied += len(chunk)
            if copied > entry.size:
                break
            digest.update(chunk)
            if target is not None:
                target.write(chunk)
        if target is not None:
            target.flush()
            os.fsync(target.fileno())
    finally:
        if target is not None:
            target.close()
    if copied != entry.size or digest.hexdigest() != entry.sha256:
        raise BundleRejected(
            "hash-mismatch",
            f"the SHA-256 of {entry.path} does not match the manifest; the bundle "
            "was damaged or changed after it was signed",
        )


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.isdir():
        return "folder"
    if member.isdev():
        return "device or FIFO"
    if member.issparse():
        return "sparse file"
    return "special member"
