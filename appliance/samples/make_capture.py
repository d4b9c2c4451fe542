"""Regenerate ``capture.jsonl``, the sample capture for ``nightbox replay``.

Run ``python -m appliance.samples.make_capture``. Every advert comes from the
public test vectors in ``tests/vectors/adverts.json``; only the walk past the
readers (RSSI over time, log-distance path loss with 2 dB noise) is made up.
The output is fixed by the seed, so the file only changes when this does.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

# Beacon time of the Eddystone-EID vector, so its EID resolves at these times.
START_S = 1518080900.0

ADVERTS = {
    # Manufacturer data of vector ibeacon-01 (Blue Charm) after a Flags structure.
    "ibeacon": "0201061aff4c000215426c7565436861726d426561636f6e730efe1355c5",
    # Vector altbeacon-01, a whole scan record.
    "altbeacon": "02011a1bff1801beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c50900",
    # Vector eddystone-uid-01: -29 dBm at 0 m, so about -70 dBm at 1 m.
    "uid": "0201060303aafe1716aafe00e3123456789012346789010000000000010000",
    # The EID of vector eddystone-eid-02 in an EID frame, -20 dBm at 0 m.
    "eid": "0201060303aafe0d16aafe30ec7dd8169dae94258c",
    # Vector ad-01 (an iPhone) and ibeacon-09 (a Tilt hydrometer): not bands.
    "iphone": "02011a020a050aff4c0010050a1c77f95b",
    "tilt": "0201061aff4c000215a495bb70c5b14b44b5121370f02d74de005806c8c5",
}


def _walk(
    rng: random.Random,
    lines: list[dict[str, Any]],
    advert: str,
    address: str,
    reader: str,
    start_s: float,
    closest_m: float,
    power_1m_dbm: float,
) -> None:
    # 12 s at 1 m/s past the reader, 4 adverts a second, 80 % received.
    for step in range(48):
        t = start_s + step * 0.25
        distance = math.hypot(t - start_s - 6.0, closest_m)
        rssi = power_1m_dbm - 20 * math.log10(distance) + rng.gauss(0, 2)
        if rng.random() < 0.8:
            lines.append(_line(t, reader, address, rssi, advert))


def _line(
    t: float, reader: str, address: str, rssi: float, advert: str
) -> dict[str, Any]:
    return {
        "t": round(t, 3),
        "reader": reader,
        "addr": address,
        "rssi": round(rssi),
        "adv": advert,
    }


def build() -> list[dict[str, Any]]:
    """Return the capture's lines in time order."""
    rng = random.Random(7)
    lines: list[dict[str, Any]] = []
    _walk(
        rng, lines, ADVERTS["ibeacon"], "c4:7c:8d:6a:11:01", "exit-1", START_S, 0.6, -59
    )
    _walk(
        rng,
        lines,
        ADVERTS["altbeacon"],
        "c4:7c:8d:6a:11:02",
        "exit-2",
        START_S + 5,
        0.8,
        -59,
    )
    _walk(
        rng,
        lines,
        ADVERTS["uid"],
        "c4:7c:8d:6a:11:03",
        "exit-1",
        START_S + 14,
        0.5,
        -70,
    )
    _walk(
        rng,
        lines,
        ADVERTS["eid"],
        "d1:22:33:44:55:66",
        "exit-2",
        START_S + 20,
        0.7,
        -61,
    )
    # The Blue Charm band passes exit-2 a minute later with a new address:
    # the same band, so still one check-out.
    _walk(
        rng,
        lines,
        ADVERTS["ibeacon"],
        "6f:00:11:22:33:44",
        "exit-2",
        START_S + 60,
        0.6,
        -59,
    )
    # A guest standing 6 m from exit-1 for 20 s (minor 4950): heard, not out.
    standing = ADVERTS["ibeacon"].replace("0efe1355", "0efe1356")
    for step in range(80):
        rssi = -59 - 20 * math.log10(6.0) + rng.gauss(0, 2)
        lines.append(
            _line(
                START_S + 2 + step * 0.25, "exit-1", "c4:7c:8d:6a:11:09", rssi, standing
            )
        )
    # A phone and a hydrometer right by the doors: never bands.
    for step in range(40):
        t = START_S + step * 0.5
        lines.append(_line(t, "exit-1", "4a:5b:6c:7d:8e:9f", -52, ADVERTS["iphone"]))
        lines.append(_line(t, "exit-2", "e1:e2:e3:e4:e5:e6", -50, ADVERTS["tilt"]))
    lines.sort(key=lambda line: line["t"])
    return lines


def main() -> None:
    """Write capture.jsonl next to this file."""
    path = Path(__file__).with_name("capture.jsonl")
    with path.open("w") as handle:
        for line in build():
            handle.write(json.dumps(line) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
