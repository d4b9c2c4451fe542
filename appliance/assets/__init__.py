"""The asset cache: 3D models, images and clips of items, verified by SHA-256.

A signed manifest lists each blob's hash, size, item and media type. Blobs
arrive from a USB folder or through sync, are stored under their hash in
``<data_dir>/assets/``, verified on arrival and at every start, kept
within a size budget with the night's items pinned, and served over HTTP
with immutable caching. ``docs/assets.md`` describes the formats and
commands.
"""

from appliance.assets.cache import AssetCache, BudgetExceeded, night_items
from appliance.assets.config import AssetsConfig, parse_assets_config
from appliance.assets.manifest import AssetEntry, Manifest, ManifestRejected

__all__ = [
    "AssetCache",
    "AssetEntry",
    "AssetsConfig",
    "BudgetExceeded",
    "Manifest",
    "ManifestRejected",
    "night_items",
    "parse_assets_config",
]
