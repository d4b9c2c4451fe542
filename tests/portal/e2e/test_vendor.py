"""The committed copy of ``<model-viewer>`` matches the npm package it names.

The portal serves ``appliance/portal/static/vendor/model-viewer.min.js`` from
the repository, so a box without Node.js has it. These checks keep that copy,
package.json, package-lock.json and the vendor README on one version.
``make vendor`` refreshes the copy; ``make test`` installs node_modules.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
VENDOR = ROOT / "appliance" / "portal" / "static" / "vendor"
NODE_MODULES = ROOT / "node_modules"
PACKAGE = "@google/model-viewer"

# Committed file -> the file in node_modules it is a copy of.
COPIES = {
    "model-viewer.min.js": "@google/model-viewer/dist/model-viewer.min.js",
    "model-viewer.LICENSE": "@google/model-viewer/LICENSE",
    "three.LICENSE": "three/LICENSE",
    "lit.LICENSE": "lit/LICENSE",
    "gainmap-js.LICENSE": "@monogrid/gainmap-js/LICENSE",
}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _installed_package_dir() -> Path:
    package_dir = NODE_MODULES / PACKAGE
    if not (package_dir / "package.json").is_file():
        pytest.fail(
            f"{package_dir} is missing; run 'npm ci' in {ROOT} "
            "(or 'make test', which runs it)"
        )
    return package_dir


def test_package_json_pins_exact_version() -> None:
    pinned = _read_json(ROOT / "package.json")["dependencies"][PACKAGE]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), pinned


def test_lock_matches_package_json() -> None:
    pinned = _read_json(ROOT / "package.json")["dependencies"][PACKAGE]
    lock = _read_json(ROOT / "package-lock.json")
    assert lock["packages"][""]["dependencies"][PACKAGE] == pinned
    assert lock["packages"][f"node_modules/{PACKAGE}"]["version"] == pinned


def test_installed_version_is_pinned_version() -> None:
    pinned = _read_json(ROOT / "package.json")["dependencies"][PACKAGE]
    installed = _read_json(_installed_package_dir() / "package.json")["version"]
    assert installed == pinned, "node_modules is stale; run 'npm ci'"


def test_readme_names_pinned_version() -> None:
    pinned = _read_json(ROOT / "package.json")["dependencies"][PACKAGE]
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    assert f"`{PACKAGE}` {pinned}" in readme


@pytest.mark.parametrize("name", sorted(COPIES))
def test_vendored_file_is_byte_copy(name: str) -> None:
    _installed_package_dir()
    source = NODE_MODULES / COPIES[name]
    committed = (VENDOR / name).read_bytes()
    assert committed == source.read_bytes(), (
        f"{VENDOR / name} differs from {source}; run 'make vendor'"
    )


def test_bundle_has_one_shadow_style_block() -> None:
    # The portal allows model-viewer's shadow-root <style> by the hash of its
    # text, which only works while the bundle contains exactly one such block.
    text = (VENDOR / "model-viewer.min.js").read_text(encoding="utf-8")
    assert text.count("<style>") == 1
    assert text.count("</style>") == 1


def shadow_style_hash() -> str:
    """Return the CSP hash source of the bundle's shadow-root ``<style>`` text."""
    text = (VENDOR / "model-viewer.min.js").read_text(encoding="utf-8")
    start = text.index("<style>") + len("<style>")
    end = text.index("</style>", start)
    digest = hashlib.sha256(text[start:end].encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def portal_directives() -> dict[str, list[str]]:
    """Return the portal's Content-Security-Policy as directive -> sources."""
    from appliance.portal.service import SECURITY_HEADERS

    directives: dict[str, list[str]] = {}
    for part in SECURITY_HEADERS["Content-Security-Policy"].split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def test_portal_csp_allows_bundle_wasm() -> None:
    # The bundled meshopt decoder of three.js compiles WebAssembly on load.
    script_sources = portal_directives()["script-src"]

    assert "'wasm-unsafe-eval'" in script_sources
    assert "'unsafe-eval'" not in script_sources
    assert "'unsafe-inline'" not in script_sources


def test_portal_csp_allows_shadow_style() -> None:
    style_sources = portal_directives()["style-src"]

    assert shadow_style_hash() in style_sources
    assert "'unsafe-inline'" not in style_sources
