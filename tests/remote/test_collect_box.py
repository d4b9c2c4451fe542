"""A running box forwards its outbox upstream and the collector stores it.

The box is the real ``Box`` with a ``[sync]`` section that names the test
fleet's broker, so the events, availability and telemetry that reach
PostgreSQL are the bytes a box sends, not a test's copy of the format.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from postgres import Postgres, postgres  # noqa: F401
from test_collect import collecting, collector_settings, eventually, stored_ids
from upstream_broker import Upstream, fleet_site_config, upstream  # noqa: F401

from appliance.config import SiteConfig
from appliance.runtime import Box

SITE = "club"
BOX = "box-1"


def checkouts(postgres: Postgres) -> list[tuple[object, ...]]:  # noqa: F811
    """Return the stored check-outs of club/box-1 as (id, seq, data, trusted)."""
    return postgres.query(
        "SELECT event_id::text, seq, data, clock_trusted FROM events "
        "WHERE site = 'club' AND box = 'box-1' AND type = 'checkout' ORDER BY seq"
    )


@pytest.fixture
def site_config(tmp_path: Path, upstream: Upstream) -> SiteConfig:  # noqa: F811
    """The test site as box ``club/box-1`` of the upstream broker's fleet."""
    return fleet_site_config(tmp_path / "box", upstream)


async def test_box_events_reach_postgres(
    box: Box,
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    async with collecting(collector_settings(upstream, postgres)) as running:
        with box.store.transaction() as transaction:
            for number in range(30):
                transaction.emit("checkout", {"band": f"ib-1-{number}"})
            events = list(transaction.events)
        await eventually(
            lambda: len(checkouts(postgres)) == 30, "the box's 30 events are stored"
        )
        await eventually(
            lambda: bool(
                postgres.query("SELECT 1 FROM boxes WHERE telemetry IS NOT NULL")
            ),
            "the box's telemetry is stored",
        )

    assert checkouts(postgres) == [
        (event.id, event.seq, event.data, event.clock_trusted) for event in events
    ]
    # The box may also report reader faults; each event of any type is stored once.
    assert len(stored_ids(postgres)) == running.stats.events_stored
    assert running.stats.duplicates == 0
    assert sum(running.stats.rejected.values()) == 0
    state = postgres.query("SELECT availability, telemetry ? 'guests_in' FROM boxes")
    assert state == [("online", True)]
