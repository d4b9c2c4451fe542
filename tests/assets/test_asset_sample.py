"""The sample T-shirt model, parsed back as a glTF 2.0 binary (GLB)."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.assets.sample import SAMPLE_COLOUR, sample_model, write_sample_model

COMPONENTS = {"SCALAR": 1, "VEC3": 3}
FORMATS = {5126: ("f", 4), 5123: ("H", 2)}


def _chunks(data: bytes) -> tuple[dict[str, Any], bytes]:
    magic, version, length = struct.unpack_from("<3I", data, 0)
    assert magic == 0x46546C67
    assert version == 2
    assert length == len(data)
    json_length, json_type = struct.unpack_from("<2I", data, 12)
    assert json_type == 0x4E4F534A
    assert json_length % 4 == 0
    json_chunk = data[20 : 20 + json_length]
    bin_offset = 20 + json_length
    bin_length, bin_type = struct.unpack_from("<2I", data, bin_offset)
    assert bin_type == 0x004E4942
    assert bin_length % 4 == 0
    assert bin_offset + 8 + bin_length == len(data)
    return orjson.loads(json_chunk), data[bin_offset + 8 :]


def _read(document: dict[str, Any], binary: bytes, index: int) -> list[tuple[Any, ...]]:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    code, size = FORMATS[accessor["componentType"]]
    width = COMPONENTS[accessor["type"]]
    offset = view["byteOffset"] + accessor.get("byteOffset", 0)
    assert offset % size == 0
    assert accessor["count"] * width * size <= view["byteLength"]
    return [
        struct.unpack_from(f"<{width}{code}", binary, offset + i * width * size)
        for i in range(accessor["count"])
    ]


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, Any], bytes]:
    return _chunks(sample_model())


def test_sample_written_to_file(tmp_path: Path) -> None:
    path = tmp_path / "tee.glb"

    data = write_sample_model(path)

    assert path.read_bytes() == data
    assert data == sample_model()


def test_sample_json_is_gltf_2(parsed: tuple[dict[str, Any], bytes]) -> None:
    document, binary = parsed

    assert document["asset"]["version"] == "2.0"
    assert document["scenes"][document["scene"]]["nodes"] == [0]
    assert document["buffers"] == [{"byteLength": len(binary)}]
    assert "uri" not in document["buffers"][0]
    for view in document["bufferViews"]:
        assert view["byteOffset"] % 4 == 0
        assert view["byteOffset"] + view["byteLength"] <= len(binary)


def test_sample_positions_within_bounds(parsed: tuple[dict[str, Any], bytes]) -> None:
    document, binary = parsed
    primitive = document["meshes"][0]["primitives"][0]
    accessor = document["accessors"][primitive["attributes"]["POSITION"]]
    positions = _read(document, binary, primitive["attributes"]["POSITION"])

    lows = [min(p[axis] for p in positions) for axis in range(3)]
    highs = [max(p[axis] for p in positions) for axis in range(3)]

    assert accessor["min"] == lows
    assert accessor["max"] == highs
    # A shirt: wider than deep, sleeves reaching past the torso's 0.5 m.
    assert highs[0] - lows[0] > 0.7
    assert highs[2] - lows[2] < 0.2


def test_sample_normals_are_unit(parsed: tuple[dict[str, Any], bytes]) -> None:
    document, binary = parsed
    primitive = document["meshes"][0]["primitives"][0]
    normals = _read(document, binary, primitive["attributes"]["NORMAL"])

    assert len(normals) == document["accessors"][0]["count"]
    for normal in normals:
        assert math.isclose(math.hypot(*normal), 1.0, abs_tol=1e-5)


def test_sample_triangles_face_outwards(parsed: tuple[dict[str, Any], bytes]) -> None:
    document, binary = parsed
    primitive = document["meshes"][0]["primitives"][0]
    positions = _read(document, binary, primitive["attributes"]["POSITION"])
    normals = _read(document, binary, primitive["attributes"]["NORMAL"])
    indices = [i for (i,) in _read(document, binary, primitive["indices"])]

    assert primitive["mode"] == 4
    assert len(indices) % 3 == 0
    assert max(indices) < len(positions)
    for start in range(0, len(indices), 3):
        a, b, c = (positions[i] for i in indices[start : start + 3])
        ab = [b[k] - a[k] for k in range(3)]
        ac = [c[k] - a[k] for k in range(3)]
        cross = (
            ab[1] * ac[2] - ab[2] * ac[1],
            ab[2] * ac[0] - ab[0] * ac[2],
            ab[0] * ac[1] - ab[1] * ac[0],
        )
        normal = normals[indices[start]]
        assert sum(cross[k] * normal[k] for k in range(3)) > 0


def test_sample_has_one_coloured_material(
    parsed: tuple[dict[str, Any], bytes],
) -> None:
    document, _binary = parsed

    assert len(document["materials"]) == 1
    pbr = document["materials"][0]["pbrMetallicRoughness"]
    assert pbr["baseColorFactor"] == list(SAMPLE_COLOUR)
    assert pbr["metallicFactor"] == 0.0
    assert document["meshes"][0]["primitives"][0]["material"] == 0
