"""CheckoutPipeline on a real SQLite file: batches in, committed check-outs out.

No bus: each test parses batches as the service would and ingests them. A
pass is a band heard at -55 dBm twice per half-second batch, which meets the
default rule (-66 dBm, 0.5 s dwell, 2 adverts) one batch after it starts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SITE_UUID, make_site_config

from appliance.checkout import parse_batch
from appliance.checkout._pipeline import CheckoutPipeline
from appliance.clock import ManualClock
from appliance.config import RegisteredBand, SiteConfig
from appliance.runtime import site_bands
from appliance.sim import _adverts
from appliance.store import OutboxEvent, Store

T0 = 1_780_000_000.0
NAMESPACE = bytes.fromhex("6e696768746278736974")
BATCH_S = 0.5
EXIT_WINDOW_S = 900.0  # the site default
DUAL = RegisteredBand("band-dual", aliases=("ib-2-5", "uid-000000000005"))


def ibeacon(major: int, minor: int, power_dbm: int = -59) -> bytes:
    return _adverts.ibeacon(SITE_UUID, major, minor, power_dbm)


def eddystone_uid(instance: int) -> bytes:
    # Eddystone sends its power at 0 m: -18 dBm is -59 dBm at 1 m.
    return _adverts.eddystone_uid(NAMESPACE, instance.to_bytes(6, "big"), -18)


BAND = ibeacon(1, 7)
BAND_ID = "ib-1-7"


class Reader:
    """A simulated reader that numbers its batches as the firmware does."""

    def __init__(self, reader_id: str, boot: str = "boot-a") -> None:
        self.reader_id = reader_id
        self.boot = boot
        self.seq = 0
        self.sent: list[dict[str, Any]] = []

    def batch(self, t: float, sightings: list[dict[str, Any]]) -> dict[str, Any]:
        self.seq += 1
        data = {
            "reader": self.reader_id,
            "boot": self.boot,
            "seq": self.seq,
            "t": t,
            "heard": sum(item["n"] for item in sightings),
            "sightings": sightings,
        }
        self.sent.append(data)
        return data


def sighting(
    advert: bytes,
    t: float,
    rssi_dbm: float = -55.0,
    address: str = "c0:ff:ee:00:00:01",
    count: int = 2,
) -> dict[str, Any]:
    return {"t": t, "addr": address, "rssi": rssi_dbm, "n": count, "adv": advert.hex()}


def ingest(pipeline: CheckoutPipeline, data: dict[str, Any]) -> list[dict[str, Any]]:
    _bands, checkouts = pipeline.ingest(parse_batch(data["reader"], data))
    return checkouts


def walk_past(
    pipeline: CheckoutPipeline,
    reader: Reader,
    advert: bytes,
    start_s: float,
    seconds: float = 2.0,
) -> list[dict[str, Any]]:
    """Send one batch every BATCH_S with the band close to the reader."""
    checkouts = []
    for step in range(int(seconds / BATCH_S) + 1):
        t = start_s + step * BATCH_S
        checkouts += ingest(pipeline, reader.batch(t, [sighting(advert, t)]))
    return checkouts


def checkout_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT event_id, band, reader FROM checkouts ORDER BY seen_at"
        ).fetchall()


@pytest.fixture
def config(tmp_path: Path) -> SiteConfig:
    return make_site_config(
        tmp_path / "box", eddystone_namespace=NAMESPACE, bands=(DUAL,)
    )


@pytest.fixture
def store_path(config: SiteConfig) -> Path:
    return config.data_dir / "nightbox.sqlite3"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    opened = Store(store_path, ManualClock(T0))
    yield opened
    opened.close()


@pytest.fixture
def pipeline(config: SiteConfig, store: Store) -> CheckoutPipeline:
    return CheckoutPipeline(config, store, site_bands(config))


def test_pipeline_pass_checks_out(pipeline: CheckoutPipeline, store_path: Path) -> None:
    checkouts = walk_past(pipeline, Reader("exit-1"), BAND, T0)

    assert [c["band"] for c in checkouts] == [BAND_ID]
    assert checkouts[0]["reader"] == "exit-1"
    assert checkouts[0]["seen_at"] == T0 + BATCH_S
    assert checkouts[0]["format"] == "ibeacon"
    assert [row[1] for row in checkout_rows(store_path)] == [BAND_ID]


def test_pipeline_two_readers_one_checkout(
    pipeline: CheckoutPipeline, store_path: Path
) -> None:
    exit_1, exit_2 = Reader("exit-1"), Reader("exit-2")
    checkouts = []
    for step in range(5):
        t = T0 + step * BATCH_S
        checkouts += ingest(pipeline, exit_1.batch(t, [sighting(BAND, t)]))
        checkouts += ingest(pipeline, exit_2.batch(t, [sighting(BAND, t)]))

    assert len(checkouts) == 1
    assert pipeline.stats.repeat_crossings == 1
    assert len(checkout_rows(store_path)) == 1


def test_pipeline_repeat_passes_in_window(
    pipeline: CheckoutPipeline, store_path: Path
) -> None:
    exit_1, exit_2 = Reader("exit-1"), Reader("exit-2")
    first = walk_past(pipeline, exit_1, BAND, T0)
    # Each later pass comes after a gap of more than 4 s, so it is a new
    # approach and the tracker fires again, but the store rejects it.
    later = []
    for offset_s in (30.0, 300.0, EXIT_WINDOW_S - 20.0):
        later += walk_past(pipeline, exit_1, BAND, T0 + offset_s)
        later += walk_past(pipeline, exit_2, BAND, T0 + offset_s + 10.0)

    assert len(first) == 1
    assert later == []
    assert pipeline.stats.repeat_crossings == 6
    assert len(checkout_rows(store_path)) == 1


def test_pipeline_pass_after_window(
    pipeline: CheckoutPipeline, store_path: Path
) -> None:
    reader = Reader("exit-1")
    first = walk_past(pipeline, reader, BAND, T0)
    second = walk_past(pipeline, reader, BAND, T0 + EXIT_WINDOW_S + 5.0)

    assert len(first) == 1
    assert len(second) == 1
    assert second[0]["event_id"] != first[0]["event_id"]
    assert len(checkout_rows(store_path)) == 2


def test_pipeline_address_rotation_one_band(
    pipeline: CheckoutPipeline, store_path: Path
) -> None:
    reader = Reader("exit-1")
    checkouts = []
    for step in range(5):
        t = T0 + step * BATCH_S
        # A new random address in every batch, and two in the last ones.
        addresses = [f"5a:00:00:00:00:{step:02x}", f"5a:00:00:00:01:{step:02x}"]
        sightings = [
            sighting(BAND, t, address=address, count=1) for address in addresses
        ]
        checkouts += ingest(pipeline, reader.batch(t, sightings[: 1 + step % 2]))

    assert [c["band"] for c in checkouts] == [BAND_ID]
    assert len(checkout_rows(store_path)) == 1


def test_pipeline_aliases_one_checkout(
    pipeline: CheckoutPipeline, store_path: Path
) -> None:
    # The dual band is heard as iBeacon at one exit, then as Eddystone-UID
    # at the other a few seconds later.
    first = walk_past(pipeline, Reader("exit-1"), ibeacon(2, 5), T0)
    second = walk_past(pipeline, Reader("exit-2"), eddystone_uid(5), T0 + 5.0)

    assert [c["band"] for c in first] == ["band-dual"]
    assert second == []
    assert [row[1] for row in checkout_rows(store_path)] == ["band-dual"]


def test_pipeline_aliases_mixed_in_one_pass(
    pipeline: CheckoutPipeline, store_path: Path
) -> None:
    # One advert per batch, alternating identities. Alone, each identity
    # would cross later and on its own track. Together they are one band.
    reader = Reader("exit-1")
    checkouts = []
    for step in range(8):
        t = T0 + step * BATCH_S
        advert = ibeacon(2, 5) if step % 2 == 0 else eddystone_uid(5)
        checkouts += ingest(pipeline, reader.batch(t, [sighting(advert, t, count=1)]))

    assert [c["band"] for c in checkouts] == ["band-dual"]
    assert checkouts[0]["seen_at"] == T0 + 2 * BATCH_S
    assert len(checkout_rows(store_path)) == 1


def test_pipeline_duplicate_batch_skipped(pipeline: CheckoutPipeline) -> None:
    reader = Reader("exit-1")
    walk_past(pipeline, reader, BAND, T0)
    batches_before = pipeline.stats.batches

    bands, checkouts = pipeline.ingest(parse_batch("exit-1", reader.sent[-1]))
    older_bands, older = pipeline.ingest(parse_batch("exit-1", reader.sent[0]))

    assert (bands, checkouts) == (0, [])
    assert (older_bands, older) == (0, [])
    assert pipeline.stats.duplicate_batches == 2
    assert pipeline.stats.batches == batches_before


def test_pipeline_new_boot_accepted(pipeline: CheckoutPipeline) -> None:
    walk_past(pipeline, Reader("exit-1", boot="boot-a"), BAND, T0)
    batches_before = pipeline.stats.batches
    rebooted = Reader("exit-1", boot="boot-b")

    t = T0 + 3.0
    bands, _checkouts = pipeline.ingest(
        parse_batch("exit-1", rebooted.batch(t, [sighting(BAND, t)]))
    )

    assert rebooted.seq == 1
    assert bands == 1
    assert pipeline.stats.batches == batches_before + 1
    assert pipeline.stats.duplicate_batches == 0


def test_pipeline_restart_keeps_window(
    config: SiteConfig, store: Store, store_path: Path
) -> None:
    reader = Reader("exit-1")
    before = walk_past(
        CheckoutPipeline(config, store, site_bands(config)), reader, BAND, T0
    )
    store.close()

    reopened = Store(store_path, ManualClock(T0 + 60.0))
    try:
        restarted = CheckoutPipeline(config, reopened, site_bands(config))
        # The reader replays its backlog, then the band walks past again.
        replayed = [ingest(restarted, batch) for batch in list(reader.sent)]
        again = walk_past(restarted, reader, BAND, T0 + 60.0)
        repeats = restarted.stats.repeat_crossings
    finally:
        reopened.close()

    assert len(before) == 1
    assert len(replayed) == 5
    assert all(checkouts == [] for checkouts in replayed)
    assert again == []
    assert repeats == 2
    assert len(checkout_rows(store_path)) == 1


def test_pipeline_kit_reader_never_checks_out(
    pipeline: CheckoutPipeline, store_path: Path
) -> None:
    checkouts = walk_past(pipeline, Reader("kit-1"), BAND, T0, seconds=10.0)

    assert checkouts == []
    assert not pipeline.is_exit("kit-1")
    assert pipeline.stats.band_sightings == 21
    assert checkout_rows(store_path) == []


def test_pipeline_foreign_advert_counted(pipeline: CheckoutPipeline) -> None:
    phone = bytes.fromhex("02011a020a050aff4c0010050a1c77f95b")
    checkouts = walk_past(pipeline, Reader("exit-1"), phone, T0)

    assert checkouts == []
    assert pipeline.stats.rejected["not-a-site-band"] == 5


def test_pipeline_checkout_rows_have_events(
    pipeline: CheckoutPipeline, store: Store, store_path: Path
) -> None:
    committed: list[list[OutboxEvent]] = []
    store.on_commit(committed.append)
    readers = [Reader("exit-1"), Reader("exit-2")]
    checkouts = []
    for minor in range(1, 6):
        reader = readers[minor % 2]
        checkouts += walk_past(pipeline, reader, ibeacon(1, minor), T0 + minor * 10.0)

    with sqlite3.connect(store_path) as connection:
        joined = connection.execute(
            "SELECT checkouts.event_id, checkouts.band, outbox.seq, outbox.type,"
            " outbox.body FROM checkouts JOIN outbox ON outbox.id = checkouts.event_id"
            " ORDER BY checkouts.seen_at"
        ).fetchall()
        outbox_count = connection.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    assert len(checkouts) == 5
    assert len(joined) == 5
    assert outbox_count == 5
    assert [row[0] for row in joined] == [c["event_id"] for c in checkouts]
    assert [row[2] for row in joined] == [c["seq"] for c in checkouts]
    assert [row[2] for row in joined] == sorted({row[2] for row in joined})
    assert {row[3] for row in joined} == {"checkout"}
    assert [json.loads(row[4])["band"] for row in joined] == [
        f"ib-1-{minor}" for minor in range(1, 6)
    ]
    assert [[event.id for event in events] for events in committed] == [
        [c["event_id"]] for c in checkouts
    ]


def test_pipeline_failed_insert_drops_event(
    pipeline: CheckoutPipeline, store: Store, store_path: Path
) -> None:
    # The outbox event is written before the check-out row, so a failed row
    # must take the event with it.
    with store.transaction() as transaction:
        transaction.execute(
            "CREATE TRIGGER refuse_band BEFORE INSERT ON checkouts"
            " WHEN NEW.band = 'ib-1-9' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )

    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        walk_past(pipeline, Reader("exit-1"), ibeacon(1, 9), T0)

    with sqlite3.connect(store_path) as connection:
        outbox_count = connection.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert outbox_count == 0
    assert checkout_rows(store_path) == []
    assert pipeline.stats.checkouts == 0
