"""A packed USB folder and the site file of a box that trusts its key.

``packed_folder`` packs a folder with ``nightbox assets pack`` itself, so
the tests of import, preload and sync delivery start from what an operator
hands over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asset_site import write_private_key, write_public_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets.sample import write_sample_model
from appliance.cli import main

POSTER = bytes(range(256)) * 40
SITE_TOML = """\
[site]
id = "{site}"
name = "Test venue"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"

[[items]]
id = "tee"
name = "Night tee"
price = 2500

[fleet]
operator_keys = ["operator.pub"]
{assets}"""


@dataclass(frozen=True)
class Packed:
    """A packed folder, its files' bytes and the operator key that signed it."""

    folder: Path
    model: bytes
    poster: bytes
    key: Ed25519PrivateKey
    key_file: Path


def packed_folder(
    folder: Path, *, site: str = "test", version: int = 1, key_dir: Path | None = None
) -> Packed:
    """Write a model and a poster with assets.toml, and pack them for ``site``."""
    key = Ed25519PrivateKey.generate()
    keys = key_dir if key_dir is not None else folder.parent
    keys.mkdir(parents=True, exist_ok=True)
    key_file = write_private_key(key, keys / "operator.key")
    write_public_key(key, keys / "operator.pub")
    (folder / "models").mkdir(parents=True)
    model = write_sample_model(folder / "models" / "tee.glb")
    (folder / "tee-poster.png").write_bytes(POSTER)
    (folder / "assets.toml").write_text(
        '[[assets]]\nitem = "tee"\nname = "Night tee model"\nfile = "models/tee.glb"\n'
        '\n[[assets]]\nitem = "tee"\nname = "Night tee poster"\n'
        'file = "tee-poster.png"\n',
        encoding="utf-8",
    )
    code = main(
        [
            "assets",
            "pack",
            str(folder),
            "--key",
            str(key_file),
            "--site",
            site,
            "--version",
            str(version),
        ]
    )
    assert code == 0
    return Packed(folder, model, POSTER, key, key_file)


def write_site_file(folder: Path, *, site: str = "test", assets: str = "") -> Path:
    """Write a site file in ``folder`` that trusts ``folder/operator.pub``."""
    path = folder / "site.toml"
    path.write_text(SITE_TOML.format(site=site, assets=assets), encoding="utf-8")
    return path
