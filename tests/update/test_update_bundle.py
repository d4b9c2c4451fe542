"""Update bundles: signing, verifying, and rejecting tampered and hostile archives."""

from __future__ import annotations

import base64
import io
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.signed_documents import key_id
from appliance.update.bundle import (
    MAX_MANIFEST_BYTES,
    BundleBuildError,
    read_bundle,
    write_bundle,
)
from appliance.update.keys import (
    UpdateKeyError,
    generate_key_pair,
    load_private_key,
    load_public_key,
)
from appliance.update.manifest import (
    MAX_FILE_BYTES,
    BundleRejected,
    compatible_wheels,
)

REPOSITORY = Path(__file__).resolve().parents[2]
WHEEL_NAME = "nightbox-0.2.0-py3-none-any.whl"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    # Reading a bundle never opens its wheels, so any zip archive will do here.
    path = tmp_path / "input" / WHEEL_NAME
    path.parent.mkdir()
    return write_wheel(path, b"wheel bytes " * 1000)


def write_wheel(path: Path, data: bytes) -> Path:
    """Write a zip archive with one file, which ``update bundle`` takes as a wheel."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("content.txt", data)
    return path


@pytest.fixture
def bundle(tmp_path: Path, key: Ed25519PrivateKey, wheel: Path) -> Path:
    output = tmp_path / "nightbox-0.2.0.nbu"
    write_bundle(
        output,
        key,
        version="0.2.0",
        wheels=[wheel],
        firmware_dir=REPOSITORY / "firmware",
    )
    return output


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [
            (member, tar.extractfile(member).read())  # type: ignore[union-attr]
            for member in tar.getmembers()
        ]


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def file_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def signed_parts(
    key: Ed25519PrivateKey, files: dict[str, bytes], *, version: str = "0.2.0"
) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Return a manifest and signature listing ``files`` as the payload."""
    import hashlib

    manifest = {
        "format": 1,
        "version": version,
        "created_at": "2027-01-15T08:00:00Z",
        "wheels": [
            {
                "path": f"wheels/{WHEEL_NAME}",
                "project": "nightbox",
                "python": "py3",
                "tags": ["py3-none-any"],
            }
        ],
        "firmware": [path for path in files if path.startswith("firmware/")],
        "files": [
            {
                "path": path,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            for path, data in files.items()
        ],
    }
    manifest_bytes = orjson.dumps(manifest)
    signature = {
        "key": key_id(key.public_key()),
        "sig": base64.b64encode(key.sign(manifest_bytes)).decode(),
    }
    return [
        (file_info("manifest.json"), manifest_bytes),
        (file_info("manifest.sig"), orjson.dumps(signature)),
    ]


def reject(path: Path, key: Ed25519PrivateKey, **options: object) -> BundleRejected:
    with pytest.raises(BundleRejected) as caught:
        read_bundle(path, key.public_key(), **options)  # type: ignore[arg-type]
    return caught.value


def test_bundle_round_trip(
    tmp_path: Path, bundle: Path, key: Ed25519PrivateKey, wheel: Path
) -> None:
    folder = tmp_path / "extracted"
    folder.mkdir()

    verified = read_bundle(
        bundle, key.public_key(), active_version="0.1.0", extract_to=folder
    )

    assert verified.manifest.version == "0.2.0"
    assert [w.path for w in verified.manifest.wheels] == [f"wheels/{WHEEL_NAME}"]
    assert verified.manifest.wheels[0].python == "py3"
    assert "firmware/main.py" in verified.manifest.firmware
    assert (folder / "wheels" / WHEEL_NAME).read_bytes() == wheel.read_bytes()
    assert (folder / "firmware" / "main.py").read_bytes() == (
        REPOSITORY / "firmware" / "main.py"
    ).read_bytes()
    names = [member.name for member, _data in members(bundle)]
    assert names[:2] == ["manifest.json", "manifest.sig"]


def test_verify_without_extracting(bundle: Path, key: Ed25519PrivateKey) -> None:
    verified = read_bundle(bundle, key.public_key())

    assert verified.folder is None
    assert len(verified.manifest.sha256) == 64


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("wheels/" + WHEEL_NAME, "hash-mismatch"),
        ("manifest.json", "bad-signature"),
        ("manifest.sig", "bad-signature"),
    ],
)
def test_one_changed_byte_rejected(
    tmp_path: Path, bundle: Path, key: Ed25519PrivateKey, target: str, reason: str
) -> None:
    parts = members(bundle)
    changed = []
    for info, data in parts:
        if info.name == target:
            if target == "manifest.sig":
                signature = orjson.loads(data)
                raw = bytearray(base64.b64decode(signature["sig"]))
                raw[10] ^= 0x01
                signature["sig"] = base64.b64encode(bytes(raw)).decode()
                data = orjson.dumps(signature)
            else:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
        changed.append((info, data))
    tampered = write_tar(tmp_path / "tampered.nbu", changed)

    error = reject(tampered, key)

    assert error.reason == reason
    if reason == "hash-mismatch":
        assert target in error.message


def test_changed_manifest_byte_fails_signature(
    tmp_path: Path, bundle: Path, key: Ed25519PrivateKey
) -> None:
    parts = members(bundle)
    info, data = parts[0]
    # A version digit: the manifest still parses, so only the signature fails.
    data = data.replace(b'"version": "0.2.0"', b'"version": "0.9.0"')
    tampered = write_tar(tmp_path / "tampered.nbu", [(info, data), *parts[1:]])

    assert reject(tampered, key).reason == "bad-signature"


def test_other_key_rejected(bundle: Path) -> None:
    other = Ed25519PrivateKey.generate()

    error = reject(bundle, other)

    assert error.reason == "unknown-key"
    assert key_id(other.public_key()) in error.message


@pytest.mark.parametrize("active", ["0.2.0", "0.3.0", "1.0"])
def test_old_or_same_version_rejected(
    bundle: Path, key: Ed25519PrivateKey, active: str
) -> None:
    error = reject(bundle, key, active_version=active)

    assert error.reason == "old-version"
    assert f"0.2.0 <= {active}" in error.message


def test_prerelease_order_follows_pep440(bundle: Path, key: Ed25519PrivateKey) -> None:
    verified = read_bundle(bundle, key.public_key(), active_version="0.2.0rc1")

    assert verified.manifest.version == "0.2.0"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../escape.py", "'..'"),
        ("/etc/passwd", "absolute path"),
        ("firmware/../../x.py", "'..'"),
        ("firmware/./main.py", "'.'"),
        ("firmware/sp ace.py", "characters"),
        ("elsewhere/main.py", "outside"),
    ],
)
def test_unsafe_member_names_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, name: str, words: str
) -> None:
    wheel_bytes = b"wheel"
    parts = signed_parts(key, {f"wheels/{WHEEL_NAME}": wheel_bytes})
    archive = write_tar(
        tmp_path / "hostile.nbu",
        [
            *parts,
            (file_info(f"wheels/{WHEEL_NAME}"), wheel_bytes),
            (file_info(name), b"x"),
        ],
    )
    extracted = tmp_path / "extracted"
    extracted.mkdir()

    error = reject(archive, key, extract_to=extracted)

    assert error.reason == "unsafe-member"
    assert words in error.message
    assert not (tmp_path / "escape.py").exists()


@pytest.mark.parametrize(
    "kind",
    [
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.FIFOTYPE,
        tarfile.DIRTYPE,
    ],
)
def test_links_and_devices_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, kind: bytes
) -> None:
    wheel_bytes = b"wheel"
    parts = signed_parts(
        key, {f"wheels/{WHEEL_NAME}": wheel_bytes, "firmware/main.py": b"print(1)"}
    )
    special = file_info("firmware/main.py")
    special.type = kind
    special.linkname = "/etc/shadow"
    archive = write_tar(
        tmp_path / "hostile.nbu",
        [*parts, (file_info(f"wheels/{WHEEL_NAME}"), wheel_bytes), (special, b"")],
    )
    extracted = tmp_path / "extracted"
    extracted.mkdir()

    error = reject(archive, key, extract_to=extracted)

    assert error.reason == "unsafe-member"
    assert not (extracted / "firmware" / "main.py").exists()


def test_duplicate_member_rejected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    wheel_bytes = b"wheel"
    parts = signed_parts(key, {f"wheels/{WHEEL_NAME}": wheel_bytes})
    member = (file_info(f"wheels/{WHEEL_NAME}"), wheel_bytes)
    archive = write_tar(tmp_path / "hostile.nbu", [*parts, member, member])

    assert reject(archive, key).reason == "duplicate-file"


def test_unlisted_and_missing_files_rejected(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    wheel_bytes = b"wheel"
    parts = signed_parts(key, {f"wheels/{WHEEL_NAME}": wheel_bytes})
    unlisted = write_tar(
        tmp_path / "unlisted.nbu",
        [
            *parts,
            (file_info(f"wheels/{WHEEL_NAME}"), wheel_bytes),
            (file_info("firmware/main.py"), b"print(1)"),
        ],
    )
    missing = write_tar(tmp_path / "missing.nbu", parts)

    assert reject(unlisted, key).reason == "unlisted-file"
    assert reject(missing, key).reason == "missing-file"


def test_huge_sizes_rejected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    import hashlib

    manifest = {
        "format": 1,
        "version": "0.2.0",
        "created_at": "2027-01-15T08:00:00Z",
        "wheels": [
            {
                "path": f"wheels/{WHEEL_NAME}",
                "project": "nightbox",
                "python": "py3",
                "tags": ["py3-none-any"],
            }
        ],
        "firmware": [],
        "files": [
            {
                "path": f"wheels/{WHEEL_NAME}",
                "size": MAX_FILE_BYTES + 1,
                "sha256": hashlib.sha256(b"").hexdigest(),
            }
        ],
    }
    manifest_bytes = orjson.dumps(manifest)
    signature = {
        "key": key_id(key.public_key()),
        "sig": base64.b64encode(key.sign(manifest_bytes)).decode(),
    }
    huge_entry = write_tar(
        tmp_path / "huge-entry.nbu",
        [
            (file_info("manifest.json"), manifest_bytes),
            (file_info("manifest.sig"), orjson.dumps(signature)),
        ],
    )
    huge_manifest = write_tar(
        tmp_path / "huge-manifest.nbu",
        [(file_info("manifest.json"), b" " * (MAX_MANIFEST_BYTES + 1))],
    )

    entry_error = reject(huge_entry, key)
    assert entry_error.reason == "too-large"
    assert f"above the maximum of {MAX_FILE_BYTES}" in entry_error.message
    assert "whole number" not in entry_error.message
    assert reject(huge_manifest, key).reason == "too-large"


def test_member_size_differs_from_manifest(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    parts = signed_parts(key, {f"wheels/{WHEEL_NAME}": b"wheel"})
    archive = write_tar(
        tmp_path / "longer.nbu",
        [*parts, (file_info(f"wheels/{WHEEL_NAME}"), b"wheel and more")],
    )

    error = reject(archive, key)

    assert error.reason == "size-mismatch"
    assert WHEEL_NAME in error.message


def test_not_a_tar_rejected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "random.nbu"
    path.write_bytes(b"\x00\x01not a tar" * 100)
    fifo = tmp_path / "fifo.nbu"
    import os

    os.mkfifo(fifo)

    assert reject(path, key).reason == "malformed"
    assert reject(fifo, key).reason == "unreadable"
    assert reject(tmp_path / "absent.nbu", key).reason == "unreadable"


def test_manifest_must_come_first(
    tmp_path: Path, bundle: Path, key: Ed25519PrivateKey
) -> None:
    parts = members(bundle)
    reordered = write_tar(
        tmp_path / "reordered.nbu", [parts[2], *parts[:2], *parts[3:]]
    )

    error = reject(reordered, key)

    assert error.reason == "malformed"
    assert "must start with manifest.json" in error.message


def test_bundle_needs_matching_nightbox_wheel(
    tmp_path: Path, key: Ed25519PrivateKey, wheel: Path
) -> None:
    other = wheel.with_name("orjson-3.10.0-cp311-cp311-manylinux_2_17_aarch64.whl")
    write_wheel(other, b"orjson")

    with pytest.raises(
        BundleBuildError,
        match=re.escape("version 0.2.0, not the bundle's version 0.3.0"),
    ):
        write_bundle(tmp_path / "x.nbu", key, version="0.3.0", wheels=[wheel])
    with pytest.raises(BundleBuildError, match="no nightbox wheel"):
        write_bundle(tmp_path / "x.nbu", key, version="0.2.0", wheels=[other])
    with pytest.raises(BundleBuildError, match="PEP 440"):
        write_bundle(tmp_path / "x.nbu", key, version="tuesday", wheels=[wheel])
    assert not (tmp_path / "x.nbu").exists()


def test_per_architecture_wheels_chosen_by_tag(
    tmp_path: Path, key: Ed25519PrivateKey, wheel: Path
) -> None:
    arm = wheel.with_name("orjson-3.10.0-cp311-cp311-manylinux_2_17_aarch64.whl")
    intel = wheel.with_name("orjson-3.10.0-cp311-cp311-manylinux_2_17_x86_64.whl")
    write_wheel(arm, b"arm")
    write_wheel(intel, b"intel")
    manifest = write_bundle(
        tmp_path / "x.nbu", key, version="0.2.0", wheels=[wheel, arm, intel]
    )

    on_arm = compatible_wheels(
        manifest, ["cp311-cp311-manylinux_2_17_aarch64", "py3-none-any"]
    )
    with pytest.raises(BundleRejected) as caught:
        compatible_wheels(
            manifest, ["cp312-cp312-manylinux_2_17_riscv64", "py3-none-any"]
        )

    assert [w.path for w in on_arm] == [f"wheels/{WHEEL_NAME}", f"wheels/{arm.name}"]
    assert {w.python for w in manifest.wheels} == {"py3", "cp311"}
    assert caught.value.reason == "no-wheel"
    assert "orjson" in caught.value.message


def test_keygen_writes_private_key_0600(tmp_path: Path) -> None:
    files = generate_key_pair(tmp_path / "keys")

    public = load_public_key(files.public_key)
    private = load_private_key(files.private_key)

    assert files.private_key.stat().st_mode & 0o777 == 0o600
    assert len(files.public_key.read_text().strip()) == 44
    assert key_id(public) == key_id(private.public_key()) == files.key_id
    with pytest.raises(UpdateKeyError, match="never overwrites"):
        generate_key_pair(tmp_path / "keys")


def test_missing_update_key_says_so(tmp_path: Path) -> None:
    (tmp_path / "short.pub").write_text(base64.b64encode(b"x" * 16).decode())

    with pytest.raises(UpdateKeyError, match="accepts no update"):
        load_public_key(tmp_path / "absent.pub")
    with pytest.raises(UpdateKeyError, match="16 bytes"):
        load_public_key(tmp_path / "short.pub")


def firmware_copy(folder: Path) -> Path:
    shutil.copytree(
        REPOSITORY / "firmware",
        folder,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return folder


@pytest.mark.parametrize("link", ["nbreader/evil.py", "main.py", "nbreader"])
def test_firmware_symlink_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, wheel: Path, link: str
) -> None:
    firmware = firmware_copy(tmp_path / "fw")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for readers\n")
    linked = firmware / link
    if linked.is_dir():
        shutil.move(linked, tmp_path / "real-nbreader")
        linked.symlink_to(tmp_path / "real-nbreader", target_is_directory=True)
        target = str(tmp_path / "real-nbreader")
    else:
        linked.unlink(missing_ok=True)
        linked.symlink_to(secret)
        target = str(secret)
    output = tmp_path / "evil.nbu"

    with pytest.raises(BundleBuildError) as caught:
        write_bundle(
            output, key, version="0.2.0", wheels=[wheel], firmware_dir=firmware
        )

    assert str(linked) in str(caught.value)
    assert target in str(caught.value)
    assert "symbolic link" in str(caught.value)
    assert not output.exists()


def test_wheel_that_is_not_zip_rejected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    fake = tmp_path / WHEEL_NAME
    fake.write_text("# README\n")

    with pytest.raises(BundleBuildError, match="is not a wheel"):
        write_bundle(tmp_path / "x.nbu", key, version="0.2.0", wheels=[fake])

    assert not (tmp_path / "x.nbu").exists()


def test_output_folder_or_existing_file_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, wheel: Path
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    existing = tmp_path / "old.nbu"
    existing.write_bytes(b"an older bundle")

    with pytest.raises(BundleBuildError, match="is a folder; give a file name"):
        write_bundle(folder, key, version="0.2.0", wheels=[wheel])
    with pytest.raises(BundleBuildError, match="already exists"):
        write_bundle(existing, key, version="0.2.0", wheels=[wheel])

    assert list(folder.iterdir()) == []
    assert existing.read_bytes() == b"an older bundle"


def header_offsets(path: Path) -> dict[str, int]:
    with tarfile.open(path, mode="r:") as tar:
        return {member.name: member.offset for member in tar.getmembers()}


@pytest.mark.parametrize(
    ("member", "after"),
    [
        ("manifest.sig", "'manifest.json'"),
        (f"wheels/{WHEEL_NAME}", "'manifest.sig'"),
        ("firmware/main.py", f"'wheels/{WHEEL_NAME}'"),
    ],
)
def test_damaged_header_named_with_offset(
    tmp_path: Path, bundle: Path, key: Ed25519PrivateKey, member: str, after: str
) -> None:
    offsets = header_offsets(bundle)
    data = bytearray(bundle.read_bytes())
    # A byte of the member's name: the header checksum no longer matches.
    data[offsets[member] + 1] ^= 0x01
    damaged = tmp_path / "damaged.nbu"
    damaged.write_bytes(data)

    error = reject(damaged, key)

    assert error.reason == "malformed"
    assert f"damaged at byte {offsets[member]}" in error.message
    assert f"header after {after}" in error.message


def test_manifest_not_utf8_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    manifest_bytes = b'{"format": 1, "version": "0.2.0\xff"}'
    signature = {
        "key": key_id(key.public_key()),
        "sig": base64.b64encode(key.sign(manifest_bytes)).decode(),
    }
    path = write_tar(
        tmp_path / "latin.nbu",
        [
            (file_info("manifest.json"), manifest_bytes),
            (file_info("manifest.sig"), orjson.dumps(signature)),
        ],
    )

    error = reject(path, key)

    assert error.reason == "malformed"
    assert "manifest.json is not UTF-8 text" in error.message
    assert "surrogates" not in error.message


def test_wheel_version_mismatch_fix_for_box(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    wheel = b"wheel"
    parts = signed_parts(key, {f"wheels/{WHEEL_NAME}": wheel}, version="0.3.0")
    path = write_tar(
        tmp_path / "mismatch.nbu", [*parts, (file_info(f"wheels/{WHEEL_NAME}"), wheel)]
    )

    error = reject(path, key)

    assert "not the bundle's version 0.3.0" in error.message
    assert "--version" not in error.message
    assert "build it again with 'nightbox update bundle'" in error.message


def test_private_key_as_public_key_named(tmp_path: Path) -> None:
    files = generate_key_pair(tmp_path / "keys")

    with pytest.raises(UpdateKeyError, match="is a PEM private key"):
        load_public_key(files.private_key)
