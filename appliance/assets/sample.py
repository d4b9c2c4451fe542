"""A small sample 3D model: a T-shirt as a binary glTF 2.0 file (GLB).

The demo and the tests need a model that a browser's ``<model-viewer>``
loads, without shipping a binary file. :func:`sample_model` builds one with
``struct`` alone: a torso, two sleeves and a collar band, each a box with
flat normals, in one mesh with one red PBR material.

The file follows the glTF 2.0 specification (Khronos), section 4.4 for the
GLB container: a 12-byte header, a JSON chunk padded with spaces and a
binary chunk padded with zeros, each to 4 bytes. POSITION has the min and
max that the specification requires, and every buffer view and accessor
offset is aligned to its component size.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["SAMPLE_COLOUR", "sample_model", "write_sample_model"]

GLB_MAGIC = 0x46546C67  # "glTF"
GLB_VERSION = 2
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
# glTF component types and buffer view targets.
FLOAT = 5126
UNSIGNED_SHORT = 5123
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
TRIANGLES = 4
# The T-shirt's linear RGBA base colour: a festival red.
SAMPLE_COLOUR = (0.80, 0.10, 0.12, 1.0)

Vector = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class _Part:
    """A box of the shirt: its local bounds, then a turn about z and a shift."""

    low: Vector
    high: Vector
    turn_deg: float = 0.0
    shift: Vector = (0.0, 0.0, 0.0)


# Units are metres, so the shirt shows at a believable size in AR.
_PARTS = (
    # Torso.
    _Part((-0.25, -0.34, -0.08), (0.25, 0.30, 0.08)),
    # Sleeves, hanging 30 degrees below the shoulders.
    _Part((0.0, -0.08, -0.07), (0.24, 0.08, 0.07), -30.0, (0.22, 0.22, 0.0)),
    _Part((-0.24, -0.08, -0.07), (0.0, 0.08, 0.07), 30.0, (-0.22, 0.22, 0.0)),
    # Collar band.
    _Part((-0.09, 0.30, -0.05), (0.09, 0.33, 0.05)),
)


def sample_model() -> bytes:
    """Return the sample T-shirt as the bytes of a GLB file."""
    positions: list[Vector] = []
    normals: list[Vector] = []
    indices: list[int] = []
    for part in _PARTS:
        _add_box(part, positions, normals, indices)
    position_bytes = b"".join(struct.pack("<3f", *p) for p in positions)
    normal_bytes = b"".join(struct.pack("<3f", *n) for n in normals)
    index_bytes = struct.pack(f"<{len(indices)}H", *indices)
    binary = position_bytes + normal_bytes + index_bytes
    binary += b"\x00" * (-len(binary) % 4)
    # The bounds are taken from the float32 values as stored, as validators
    # compare them exactly.
    stored = [struct.unpack("<3f", struct.pack("<3f", *p)) for p in positions]
    low = [min(p[axis] for p in stored) for axis in range(3)]
    high = [max(p[axis] for p in stored) for axis in range(3)]
    document = {
        "asset": {"version": "2.0", "generator": "Nightbox sample model"},
        "scene": 0,
        "scenes": [{"name": "Sample", "nodes": [0]}],
        "nodes": [{"name": "T-shirt", "mesh": 0}],
        "meshes": [
            {
                "name": "T-shirt",
                "primitives": [
                    {
                        "attributes": {"POSITION": 0, "NORMAL": 1},
                        "indices": 2,
                        "material": 0,
                        "mode": TRIANGLES,
                    }
                ],
            }
        ],
        "materials": [
            {
                "name": "Cotton",
                "pbrMetallicRoughness": {
                    "baseColorFactor": list(SAMPLE_COLOUR),
                    "metallicFactor": 0.0,
                    "roughnessFactor": 0.85,
                },
            }
        ],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [
            {
                "buffer": 0,
                "byteOffset": 0,
                "byteLength": len(position_bytes),
                "target": ARRAY_BUFFER,
            },
            {
                "buffer": 0,
                "byteOffset": len(position_bytes),
                "byteLength": len(normal_bytes),
                "target": ARRAY_BUFFER,
            },
            {
                "buffer": 0,
                "byteOffset": len(position_bytes) + len(normal_bytes),
                "byteLength": len(index_bytes),
                "target": ELEMENT_ARRAY_BUFFER,
            },
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": FLOAT,
                "count": len(positions),
                "type": "VEC3",
                "min": low,
                "max": high,
            },
            {
                "bufferView": 1,
                "componentType": FLOAT,
                "count": len(normals),
                "type": "VEC3",
            },
            {
                "bufferView": 2,
                "componentType": UNSIGNED_SHORT,
                "count": len(indices),
                "type": "SCALAR",
            },
        ],
    }
    return _glb(orjson.dumps(document), binary)


def write_sample_model(path: Path) -> bytes:
    """Write the sample T-shirt to ``path`` as a GLB file and return its bytes."""
    data = sample_model()
    path.write_bytes(data)
    return data


def _glb(json_chunk: bytes, binary_chunk: bytes) -> bytes:
    json_chunk += b" " * (-len(json_chunk) % 4)
    binary_chunk += b"\x00" * (-len(binary_chunk) % 4)
    length = 12 + 8 + len(json_chunk) + 8 + len(binary_chunk)
    return b"".join(
        (
            struct.pack("<3I", GLB_MAGIC, GLB_VERSION, length),
            struct.pack("<2I", len(json_chunk), CHUNK_JSON),
            json_chunk,
            struct.pack("<2I", len(binary_chunk), CHUNK_BIN),
            binary_chunk,
        )
    )


def _add_box(
    part: _Part,
    positions: list[Vector],
    normals: list[Vector],
    indices: list[int],
) -> None:
    """Append a box's 24 vertices (4 per face, flat normals) and 12 triangles."""
    bounds = (part.low, part.high)
    for axis in range(3):
        u, v = [other for other in range(3) if other != axis]
        for side in (0, 1):
            normal = [0.0, 0.0, 0.0]
            normal[axis] = 1.0 if side else -1.0
            corners = []
            for a, b in ((0, 0), (1, 0), (1, 1), (0, 1)):
                corner = [0.0, 0.0, 0.0]
                corner[axis] = bounds[side][axis]
                corner[u] = bounds[a][u]
                corner[v] = bounds[b][v]
                corners.append(_place(part, (corner[0], corner[1], corner[2])))
            turned_normal = _turn((normal[0], normal[1], normal[2]), part.turn_deg)
            first = len(positions)
            positions.extend(corners)
            normals.extend([turned_normal] * 4)
            # Counter-clockwise seen from outside, as glTF's front faces are.
            if _dot(_cross(corners[0], corners[1], corners[2]), turned_normal) > 0:
                indices.extend(
                    (first, first + 1, first + 2, first, first + 2, first + 3)
                )
            else:
                indices.extend(
                    (first, first + 2, first + 1, first, first + 3, first + 2)
                )


def _place(part: _Part, point: Vector) -> Vector:
    x, y, z = _turn(point, part.turn_deg)
    return (x + part.shift[0], y + part.shift[1], z + part.shift[2])


def _turn(vector: Vector, degrees: float) -> Vector:
    """Rotate a vector about the z axis."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    x, y, z = vector
    return (x * cos - y * sin, x * sin + y * cos, z)


def _cross(a: Vector, b: Vector, c: Vector) -> Vector:
    """Return (b - a) x (c - a)."""
    ab = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    ac = (c[0] - a[0], c[1] - a[1], c[2] - a[2])
    return (
        ab[1] * ac[2] - ab[2] * ac[1],
        ab[2] * ac[0] - ab[0] * ac[2],
        ab[0] * ac[1] - ab[1] * ac[0],
    )


def _dot(a: Vector, b: Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
