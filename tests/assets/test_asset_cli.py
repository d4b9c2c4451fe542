"""``nightbox assets``: pack, import, status, verify and sample, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asset_folder import Packed, packed_folder, write_site_file
from asset_site import MIB, blob, entry, sha, signed_manifest, write_folder
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets.sample import sample_model
from appliance.cli import main
from appliance.signed_documents import key_id


@pytest.fixture
def packed(tmp_path: Path) -> Packed:
    return packed_folder(tmp_path / "usb", key_dir=tmp_path)


@pytest.fixture
def site_file(tmp_path: Path, packed: Packed) -> Path:
    return write_site_file(tmp_path)


def _blob_rows(tmp_path: Path) -> set[str]:
    folder = tmp_path / "data" / "assets" / "blobs"
    return {path.name for path in folder.rglob("*") if path.is_file()}


def test_pack_writes_signed_manifest(packed: Packed) -> None:
    document = json.loads((packed.folder / "manifest.json").read_text())

    assert document["type"] == "assets"
    assert document["kind"] == "bundle"
    assert document["site"] == "test"
    assert document["version"] == 1
    assert document["key"] == key_id(packed.key.public_key())
    assert document["body"]["assets"] == [
        {
            "sha256": sha(packed.model),
            "size": len(packed.model),
            "item": "tee",
            "name": "Night tee model",
            "type": "model/gltf-binary",
        },
        {
            "sha256": sha(packed.poster),
            "size": len(packed.poster),
            "item": "tee",
            "name": "Night tee poster",
            "type": "image/png",
        },
    ]
    assert "budget_bytes" not in document["body"]


def test_pack_budget_option(packed: Packed, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main(
        [
            "assets",
            "pack",
            str(packed.folder),
            "--key",
            str(packed.key_file),
            "--site",
            "test",
            "--version",
            "2",
            "--budget",
            "5000000",
        ]
    )

    document = json.loads((packed.folder / "manifest.json").read_text())
    assert code == 0
    assert document["body"]["budget_bytes"] == 5_000_000
    assert document["version"] == 2
    out = capsys.readouterr().out
    assert "version 2 for site test, 2 assets" in out
    assert sha(packed.model)[:12] in out


@pytest.mark.parametrize(
    ("description", "words"),
    [
        (None, "assets.toml is missing"),
        ("[[assets]]\nitem = 'tee'\nname = 'x'\nfile = 'a.txt'\n", "extension"),
        ("[[assets]]\nitem = 'tee'\nname = 'x'\nfile = '../key'\n", "outside"),
        ("[[assets]]\nitem = 'Tee!'\nname = 'x'\nfile = 'a.txt'\n", "not an item id"),
        ("[[assets]]\nitem = 'tee'\nfile = 'a.txt'\n", "assets[0].name is missing"),
        ("[[assets]]\nitem = 'tee'\nname = 'x'\nfile = 'no.glb'\n", "not a file"),
        ("assets = 3\n", "no assets are listed"),
        ("[[assets]\n", "not valid TOML"),
    ],
)
def test_pack_rejects_bad_description(
    tmp_path: Path,
    packed: Packed,
    capsys: pytest.CaptureFixture[str],
    description: str | None,
    words: str,
) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "a.txt").write_text("text")
    (tmp_path / "key").write_text("secret")
    if description is not None:
        (folder / "assets.toml").write_text(description)

    code = main(
        [
            "assets",
            "pack",
            str(folder),
            "--key",
            str(packed.key_file),
            "--site",
            "test",
            "--version",
            "1",
        ]
    )

    assert code == 2
    assert words in capsys.readouterr().err
    assert not (folder / "manifest.json").exists()


def test_pack_rejects_public_key(
    tmp_path: Path, packed: Packed, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "assets",
            "pack",
            str(packed.folder),
            "--key",
            str(tmp_path / "operator.pub"),
            "--site",
            "test",
            "--version",
            "3",
        ]
    )

    assert code == 2
    assert "is a public key" in capsys.readouterr().err


def test_import_stores_every_blob(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["assets", "import", str(packed.folder), "--config", str(site_file)])

    out = capsys.readouterr().out
    assert code == 0
    assert "Manifest version 1 applied" in out
    assert "2 stored, 0 already present, 0 missing, 0 rejected" in out
    assert _blob_rows(tmp_path) == {sha(packed.model), sha(packed.poster)}

    again = main(
        ["assets", "import", str(packed.folder), "--config", str(site_file), "--json"]
    )

    result = json.loads(capsys.readouterr().out)
    assert again == 0
    assert result["manifest_applied"] is False
    assert sorted(result["present"]) == sorted([sha(packed.model), sha(packed.poster)])
    assert result["stored"] == []


def test_import_reports_missing_file(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (packed.folder / "tee-poster.png").unlink()

    code = main(["assets", "import", str(packed.folder), "--config", str(site_file)])

    out = capsys.readouterr().out
    assert code == 1
    assert f"missing {sha(packed.poster)[:12]}" in out
    assert "Night tee poster" in out
    assert _blob_rows(tmp_path) == {sha(packed.model)}


def test_import_rejects_corrupted_file(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    poster = packed.folder / "tee-poster.png"
    poster.write_bytes(b"\xff" + packed.poster[1:])

    code = main(
        ["assets", "import", str(packed.folder), "--config", str(site_file), "--json"]
    )

    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert result["missing"] == [sha(packed.poster)]
    assert result["unmatched_files"] == 1
    assert _blob_rows(tmp_path) == {sha(packed.model)}


def test_import_rejects_tampered_manifest(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = packed.folder / "manifest.json"
    document = json.loads(manifest.read_text())
    document["body"]["assets"][0]["item"] = "cap"
    manifest.write_text(json.dumps(document))

    code = main(["assets", "import", str(packed.folder), "--config", str(site_file)])

    err = capsys.readouterr().err
    assert code == 2
    assert "rejected (bad-signature)" in err
    assert "nothing was stored" in err
    assert _blob_rows(tmp_path) == set()


def test_import_rejects_manifest_of_other_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packed = packed_folder(tmp_path / "usb", site="annex", key_dir=tmp_path)
    site_file = write_site_file(tmp_path)

    code = main(["assets", "import", str(packed.folder), "--config", str(site_file)])

    assert code == 2
    assert "rejected (wrong-site)" in capsys.readouterr().err


def test_import_without_manifest(
    tmp_path: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    code = main(["assets", "import", str(empty), "--config", str(site_file)])

    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_status_lists_blobs(
    packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (packed.folder / "tee-poster.png").unlink()
    main(["assets", "import", str(packed.folder), "--config", str(site_file)])
    capsys.readouterr()

    code = main(["assets", "status", "--config", str(site_file), "--json"])

    status = json.loads(capsys.readouterr().out)
    assert code == 0
    assert status["manifest_version"] == 1
    assert status["blobs"] == 1
    assert status["bytes"] == len(packed.model)
    assert status["missing"] == 1
    # The site's [[items]] lists the tee, so its blob is pinned.
    assert status["pinned"] == 1

    main(["assets", "status", "--config", str(site_file)])
    out = capsys.readouterr().out
    assert "Manifest version: 1" in out
    assert "Missing: 1" in out
    assert "Night tee poster" in out


def test_verify_exits_1_on_changed_blob(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["assets", "import", str(packed.folder), "--config", str(site_file)])
    assert main(["assets", "verify", "--config", str(site_file)]) == 0
    assert "Checked 2 blobs, removed 0" in capsys.readouterr().out
    stored = tmp_path / "data" / "assets" / "blobs" / sha(packed.model)[:2]
    (stored / sha(packed.model)).write_bytes(b"changed")

    code = main(["assets", "verify", "--config", str(site_file)])

    out = capsys.readouterr().out
    assert code == 1
    assert f"removed {sha(packed.model)[:12]}: changed-on-disk" in out
    assert _blob_rows(tmp_path) == {sha(packed.poster)}


def test_sample_command_writes_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "tee.glb"

    code = main(["assets", "sample", str(output)])

    assert code == 0
    assert output.read_bytes() == sample_model()
    assert str(output) in capsys.readouterr().out


def test_import_needs_config(
    packed: Packed, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NIGHTBOX_CONFIG", raising=False)

    code = main(["assets", "import", str(packed.folder)])

    assert code == 2
    assert "no site configuration given" in capsys.readouterr().err


def test_import_same_size_present_blob_not_rejected(
    tmp_path: Path, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two blobs of one size: the first is kept already, so its file in the
    # folder is no corrupted copy of the second.
    folder = tmp_path / "pair"
    folder.mkdir()
    first, second = b"a" * 5000, b"b" * 5000
    (folder / "a.png").write_bytes(first)
    (folder / "assets.toml").write_text(
        "[[assets]]\nitem = 'tee'\nname = 'A'\nfile = 'a.png'\n"
        "\n[[assets]]\nitem = 'tee'\nname = 'B'\nfile = 'b.png'\n"
    )
    (folder / "b.png").write_bytes(second)
    key = str(tmp_path / "operator.key")
    pack = ["assets", "pack", str(folder), "--key", key, "--site", "test"]
    assert main([*pack, "--version", "5"]) == 0
    (folder / "b.png").unlink()
    assert main(["assets", "import", str(folder), "--config", str(site_file)]) == 1
    (folder / "b.png").write_bytes(second)
    capsys.readouterr()

    code = main(["assets", "import", str(folder), "--config", str(site_file), "--json"])

    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["stored"] == [sha(second)]
    assert result["present"] == [sha(first)]
    assert result["rejected"] == {}
    assert result["unmatched_files"] == 0


def test_verify_removes_link_not_target(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["assets", "import", str(packed.folder), "--config", str(site_file)])
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "file.txt").write_text("keep me")
    link = tmp_path / "data" / "assets" / "blobs" / "zz"
    link.symlink_to(victim)
    capsys.readouterr()

    code = main(["assets", "verify", "--config", str(site_file)])

    out = capsys.readouterr().out
    assert code == 1
    assert (victim / "sub" / "file.txt").read_text() == "keep me"
    assert not link.is_symlink()
    assert f"removed symbolic link {link}" in out
    assert _blob_rows(tmp_path) == {sha(packed.model), sha(packed.poster)}


def _unpinned_folder(tmp_path: Path, key: Ed25519PrivateKey) -> tuple[Path, list[str]]:
    """Write a folder of ten 300 KiB blobs of an unpinned item, budget 1 MiB."""
    files = {
        f"cap-{index}.png": blob(f"cap-{index}", 300 * 1024) for index in range(10)
    }
    manifest = signed_manifest(
        key,
        [entry(data, "cap", name, "image/png") for name, data in files.items()],
        budget_bytes=MIB,
    )
    folder = write_folder(tmp_path / "caps", manifest, files)
    return folder, [sha(data) for data in files.values()]


def _blob_times(tmp_path: Path) -> dict[str, int]:
    folder = tmp_path / "data" / "assets" / "blobs"
    return {
        path.name: path.stat().st_mtime_ns
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_import_reports_blobs_over_budget(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, hashes = _unpinned_folder(tmp_path, packed.key)

    code = main(["assets", "import", str(folder), "--config", str(site_file), "--json"])

    result = json.loads(capsys.readouterr().out)
    kept = _blob_rows(tmp_path)
    assert code == 1
    assert len(kept) == 3
    assert set(result["stored"]) == kept
    assert result["stored"] == hashes[:3]
    assert sorted(result["over_budget"]) == sorted(hashes[3:])
    assert "does not fit" in result["over_budget"][hashes[3]]
    assert result["missing"] == []
    status = json.loads(
        _output(capsys, ["assets", "status", "--config", str(site_file), "--json"])
    )
    assert status["blobs"] == 3


def test_import_again_rewrites_nothing(
    tmp_path: Path, packed: Packed, site_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, hashes = _unpinned_folder(tmp_path, packed.key)
    main(["assets", "import", str(folder), "--config", str(site_file)])
    written = _blob_times(tmp_path)
    capsys.readouterr()

    code = main(["assets", "import", str(folder), "--config", str(site_file)])

    out = capsys.readouterr().out
    assert code == 1
    assert "0 stored, 3 already present, 0 missing, 0 rejected, 7 over budget" in out
    assert f"not stored {hashes[3][:12]}" in out
    assert _blob_times(tmp_path) == written


def _output(capsys: pytest.CaptureFixture[str], arguments: list[str]) -> str:
    capsys.readouterr()
    assert main(arguments) == 0
    return capsys.readouterr().out


def _pack(folder: Path, key_file: Path, *extra: str, site: str = "test") -> int:
    return main(
        [
            "assets",
            "pack",
            str(folder),
            "--key",
            str(key_file),
            f"--site={site}",
            "--version",
            "1",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("description", "words"),
    [
        (
            "[[assets]]\nitem = 'tee'\nname = 'x'\nfile = 'no.glb'\n",
            "{toml}: assets[0].file = 'no.glb' is not a file in {folder}; copy the "
            "file into the folder or correct the path",
        ),
        (
            "[[assets]]\nitem = 'tee'\nname = 'x'\nfile = 'no.txt'\n",
            "{toml}: assets[0].file = 'no.txt' has an extension the box does not serve",
        ),
        (
            "[[assets]]\nitem = 'Tee!'\nname = 'x'\nfile = 'a.png'\n",
            "{toml}: assets[0].item = 'Tee!' is not an item id",
        ),
        ("assets = 3\n", "{toml}: no assets are listed"),
        (
            "budget_bytes = 'lots'\n[[assets]]\nitem = 'tee'\nname = 'x'\n"
            "file = 'a.png'\n",
            "{toml}: budget_bytes = 'lots' is invalid; give a whole number of bytes "
            "from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
        ),
        (
            "budget_bytes = 1\n[[assets]]\nitem = 'tee'\nname = 'x'\nfile = 'a.png'\n",
            "{toml}: budget_bytes = 1 is invalid",
        ),
        (
            "budget_bytes = 1048576\n[[assets]]\nitem = 'tee'\nname = 'x'\n"
            "file = 'big.png'\n",
            "{toml}: budget_bytes = 1048576 is smaller than assets[0].file = "
            "'big.png' (2097152 bytes), so no box could keep that file; give a "
            "budget_bytes of at least 2097152",
        ),
        (
            "[[assets]]\nitem = 'tee'\nname = 'x'\nfile = 'a.png'\n\n"
            "[[assets]]\nitem = 'cap'\nname = 'y'\nfile = 'copy.png'\n",
            "{toml}: assets[1].file = 'copy.png' has the same content as "
            "assets[0].file = 'a.png'; a blob belongs to one item, so list the "
            "content once",
        ),
    ],
)
def test_pack_messages_name_file_and_fix(
    tmp_path: Path,
    packed: Packed,
    capsys: pytest.CaptureFixture[str],
    description: str,
    words: str,
) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"png")
    (folder / "copy.png").write_bytes(b"png")
    (folder / "big.png").write_bytes(b"\0" * (2 * MIB))
    (folder / "assets.toml").write_text(description)

    code = _pack(folder, packed.key_file)

    assert code == 2
    expected = words.format(toml=folder / "assets.toml", folder=folder)
    assert expected in capsys.readouterr().err
    assert not (folder / "manifest.json").exists()


@pytest.mark.parametrize("budget", ["1", "1048575", str(1024**4 + 1)])
def test_pack_rejects_budget_option_outside_range(
    packed: Packed, capsys: pytest.CaptureFixture[str], budget: str
) -> None:
    (packed.folder / "manifest.json").unlink()

    with pytest.raises(SystemExit) as caught:
        _pack(packed.folder, packed.key_file, "--budget", budget)

    assert caught.value.code == 2
    assert "must be from 1048576 to 1099511627776" in capsys.readouterr().err
    assert not (packed.folder / "manifest.json").exists()


@pytest.mark.parametrize("site", ["Bad Site", "club!", "-club", "a" * 33])
def test_pack_rejects_invalid_site(
    packed: Packed, capsys: pytest.CaptureFixture[str], site: str
) -> None:
    (packed.folder / "manifest.json").unlink()

    code = _pack(packed.folder, packed.key_file, site=site)

    err = capsys.readouterr().err
    assert code == 2
    assert f"--site {site!r} is not a site id" in err
    assert "[site] id" in err
    assert not (packed.folder / "manifest.json").exists()
