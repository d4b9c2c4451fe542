"""``assets.toml`` of an operator's folder, turned into a signed manifest.

On the operator's machine, a folder contains the asset files and an
``assets.toml`` that describes them::

    budget_bytes = 1073741824      # optional

    [[assets]]
    item = "tee"                   # an item id of the site's [[items]]
    name = "Night tee, 3D model"   # shown to staff
    file = "models/tee.glb"        # relative to the folder

:func:`pack_folder` hashes every file, signs the manifest with the
operator's Ed25519 key and writes ``manifest.json`` beside ``assets.toml``.
The folder can then go on a USB stick as it is, or upstream with
``nightbox fleet assets send``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance._toml_values import ID_PATTERN, is_whole_number
from appliance.assets._blobs import hash_file
from appliance.assets.config import MAX_BUDGET_BYTES, MIN_BUDGET_BYTES
from appliance.assets.manifest import DESCRIPTION_NAME, MANIFEST_NAME, sign_manifest
from appliance.errors import NightboxError
from appliance.remote._bundle_bodies import InvalidBundle
from appliance.signed_documents import MAX_VALIDITY_S
from provisioning.secret_file import write_file_atomically

__all__ = [
    "DESCRIPTION_NAME",
    "MEDIA_TYPES",
    "PackError",
    "PackedAsset",
    "load_private_key",
    "pack_folder",
]

# The media type of each file extension; the box serves only these.
MEDIA_TYPES = {
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".ktx2": "image/ktx2",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
}
_ENTRY_KEYS = {"item", "name", "file"}


class PackError(NightboxError, ValueError):
    """A folder, ``assets.toml`` or key that cannot be packed, with the reason."""


@dataclass(frozen=True, slots=True)
class PackedAsset:
    """One file of the manifest, as packed; ``file`` is the name in ``assets.toml``."""

    path: Path
    sha256: str
    size: int
    item: str
    name: str
    media_type: str
    file: str


def pack_folder(
    folder: Path,
    private_key: Ed25519PrivateKey,
    *,
    site: str,
    version: int,
    issued_at: float,
    budget_bytes: int | None = None,
    validity_s: float = MAX_VALIDITY_S,
) -> tuple[list[PackedAsset], Path]:
    """Hash the files of ``assets.toml``, sign the manifest and write it.

    ``budget_bytes`` (the ``--budget`` option) overrides the file's own.
    Returns the packed files and the path of ``manifest.json``. Raises
    PackError naming ``assets.toml``, the entry and the fix.
    """
    if not ID_PATTERN.match(site):
        raise PackError(
            f"--site {site!r:.40} is not a site id; give the [site] id of the "
            "boxes' site file: 1-32 lowercase letters, digits and '-', starting "
            "with a letter or digit"
        )
    description_path = folder / DESCRIPTION_NAME
    description = _read_description(folder)
    packed = [
        _pack_entry(folder, entry, index)
        for index, entry in enumerate(_entries(description, description_path))
    ]
    _reject_repeats(packed, description_path)
    body: dict[str, Any] = {
        "assets": [
            {
                "sha256": asset.sha256,
                "size": asset.size,
                "item": asset.item,
                "name": asset.name,
                "type": asset.media_type,
            }
            for asset in packed
        ]
    }
    budget = _budget(description, description_path, budget_bytes, packed)
    if budget is not None:
        body["budget_bytes"] = budget
    try:
        document = sign_manifest(
            private_key,
            site=site,
            version=version,
            body=body,
            issued_at=issued_at,
            validity_s=validity_s,
        )
    except InvalidBundle as err:
        raise PackError(f"{description_path}: {err}") from err
    target = folder / MANIFEST_NAME
    write_file_atomically(
        target, orjson.dumps(document, option=orjson.OPT_INDENT_2), 0o644
    )
    return packed, target


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an operator's Ed25519 private key (PEM); the error never quotes it."""
    hint = "give the operator.key that `nightbox fleet keygen` wrote"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PackError(
            f"cannot read key file {path} ({err.strerror}); {hint}"
        ) from err
    if b"PUBLIC KEY-----" in data:
        raise PackError(
            f"key file {path} is a public key; sign with the private key, {hint}"
        )
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise PackError(f"key file {path} is encrypted; {hint} (unencrypted)") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise PackError(f"key file {path} is not a PEM private key; {hint}") from err
    if not isinstance(private_key, Ed25519PrivateKey):
        raise PackError(
            f"key file {path} is not an Ed25519 key; boxes verify Ed25519 "
            f"signatures only, so {hint}"
        )
    return private_key


def _read_description(folder: Path) -> dict[str, Any]:
    path = folder / DESCRIPTION_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise PackError(
            f"{path} is missing; describe the folder's files in it with "
            "[[assets]] entries of item, name and file"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise PackError(f"cannot read {path} ({err}); save it as UTF-8 text") from err
    try:
        description = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PackError(f"{path} is not valid TOML: {err}") from err
    unknown = sorted(set(description) - {"assets", "budget_bytes"})
    if unknown:
        raise PackError(
            f"{path}: unknown key {unknown[0]!r}; allowed: assets, budget_bytes"
        )
    return description


def _entries(description: dict[str, Any], path: Path) -> list[Any]:
    entries = description.get("assets")
    if not isinstance(entries, list) or not entries:
        raise PackError(
            f"{path}: no assets are listed; add [[assets]] entries with item, "
            "name and file"
        )
    return entries


def _budget(
    description: dict[str, Any],
    path: Path,
    option: int | None,
    packed: list[PackedAsset],
) -> int | None:
    """Return the manifest's budget: ``--budget``, else ``budget_bytes``, else None.

    The budget must lie in the range of ``[assets] budget_bytes`` and hold
    the largest file, or no box could keep that file.
    """
    if option is not None:
        budget, named = option, f"--budget {option}"
    elif "budget_bytes" in description:
        value = description["budget_bytes"]
        if not is_whole_number(value, MIN_BUDGET_BYTES, MAX_BUDGET_BYTES):
            raise PackError(
                f"{path}: budget_bytes = {value!r:.40} is invalid; give a whole "
                f"number of bytes from {MIN_BUDGET_BYTES} (1 MiB) to "
                f"{MAX_BUDGET_BYTES} (1 TiB), or remove it to use each box's "
                "[assets] budget_bytes"
            )
        budget, named = value, f"budget_bytes = {value}"
    else:
        return None
    index, largest = max(enumerate(packed), key=lambda pair: pair[1].size)
    if largest.size > budget:
        raise PackError(
            f"{path}: {named} is smaller than assets[{index}].file = "
            f"{largest.file!r:.80} ({largest.size} bytes), so no box could keep "
            f"that file; give a budget_bytes of at least {largest.size}"
        )
    return budget


def _pack_entry(folder: Path, entry: Any, index: int) -> PackedAsset:
    """Check ``assets[index]`` of the folder's description and hash its file."""
    where = f"{folder / DESCRIPTION_NAME}: assets[{index}]"
    if not isinstance(entry, dict):
        raise PackError(f"{where} must be a table with item, name and file")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise PackError(
            f"{where} has unknown key {unknown[0]!r}; allowed: file, item, name"
        )
    for key in sorted(_ENTRY_KEYS):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise PackError(f"{where}.{key} is missing or empty; give it as text")

    item = entry["item"]
    if not ID_PATTERN.match(item):
        raise PackError(
            f"{where}.item = {item!r:.40} is not an item id; use 1-32 lowercase "
            "letters, digits and '-', as in [[items]] of the site"
        )

    path = _inside(folder, entry["file"], where)
    media_type = MEDIA_TYPES.get(path.suffix.lower())
    if media_type is None:
        raise PackError(
            f"{where}.file = {entry['file']!r:.80} has an extension the box does not "
            f"serve; use one of {', '.join(sorted(MEDIA_TYPES))}"
        )
    if not path.is_file():
        raise PackError(
            f"{where}.file = {entry['file']!r:.80} is not a file in {folder}; copy "
            "the file into the folder or correct the path"
        )

    try:
        sha256, size = hash_file(path)
    except OSError as err:
        raise PackError(
            f"{where}.file = {entry['file']!r:.80} cannot be read ({err.strerror}); "
            "put the file in the folder"
        ) from err
    if size == 0:
        raise PackError(
            f"{where}.file = {entry['file']!r:.80} is empty; give the real file"
        )
    return PackedAsset(
        path, sha256, size, item, entry["name"], media_type, entry["file"]
    )


def _inside(folder: Path, name: str, where: str) -> Path:
    """Return the path of ``name`` in ``folder``; it must stay inside the folder."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise PackError(
            f"{where}.file = {name!r:.80} lies outside {folder}; copy the file into "
            "the folder, so the USB stick carries it"
        )
    return path


def _reject_repeats(packed: list[PackedAsset], path: Path) -> None:
    """Reject two entries of one content: the manifest lists each blob once."""
    first: dict[str, int] = {}
    for index, asset in enumerate(packed):
        earlier = first.setdefault(asset.sha256, index)
        if earlier != index:
            raise PackError(
                f"{path}: assets[{index}].file = {asset.file!r:.80} has the same "
                f"content as assets[{earlier}].file = {packed[earlier].file!r:.80}; "
                "a blob belongs to one item, so list the content once, for one "
                "of the items"
            )
