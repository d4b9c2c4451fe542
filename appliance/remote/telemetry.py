"""The box's telemetry: tonight's figures, computed from the store on demand.

Each figure is one indexed or small query, so the box can compute them every
``[fleet] telemetry_interval_s`` seconds. "Tonight" is the night that the
box's clock is in (see ``CommerceConfig.night_of``), so a box with an
untrusted clock that was set wrong reports the wrong night.

``guests_in`` counts the bands that used the box tonight (a wallet
transaction, a kit, an opt-in or a drop claim) and whose last such use is
later than their last check-out. The box keeps no record of bands that were
only heard by a reader, so a guest who never used a terminal or a kit
station is not counted.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any

from appliance.clock import Clock
from appliance.commerce.config import CommerceConfig
from appliance.config import SiteConfig
from appliance.store import Store

LastBatch = Callable[[str], float | None]

_GUESTS_IN = """
WITH activity (band, t) AS (
    SELECT band, created_at FROM ledger_transactions WHERE night = :night
    UNION ALL SELECT band, issued_at FROM kits WHERE issued_at >= :start
    UNION ALL SELECT band, consented_at FROM optins WHERE consented_at >= :start
    UNION ALL SELECT band, reserved_at FROM drop_claims WHERE night = :night
),
last_use AS (SELECT band, MAX(t) AS t FROM activity GROUP BY band),
last_checkout AS (
    SELECT band, MAX(seen_at) AS t FROM checkouts WHERE seen_at >= :start
    GROUP BY band
)
SELECT COUNT(*) FROM last_use LEFT JOIN last_checkout USING (band)
WHERE last_checkout.t IS NULL OR last_use.t > last_checkout.t
"""

# The same filter as the night report: voided transactions and their voids
# cancel out.
_SALES = """
SELECT
    COALESCE(SUM(CASE WHEN kind = 'charge' THEN amount ELSE 0 END), 0)
    - COALESCE(SUM(CASE WHEN kind = 'refund' THEN amount ELSE 0 END), 0)
FROM ledger_transactions
WHERE night = ? AND voided_by IS NULL AND kind IN ('charge', 'refund')
"""


def software_version() -> str:
    """Return the installed version of the nightbox package, or ``unknown``."""
    try:
        return importlib.metadata.version("nightbox")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def night_start(commerce: CommerceConfig, t: float) -> float:
    """Return the Unix time at which the night containing ``t`` began."""
    zone = zoneinfo.ZoneInfo(commerce.timezone)
    night = dt.date.fromisoformat(commerce.night_of(t))
    start = dt.datetime.combine(
        night, dt.time(hour=commerce.night_rollover_hour), tzinfo=zone
    )
    return start.timestamp()


class Telemetry:
    """The ``tele/state`` figures of one box, computed from its store."""

    def __init__(
        self,
        config: SiteConfig,
        store: Store,
        clock: Clock,
        last_batch: LastBatch,
        *,
        sync_state: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._last_batch = last_batch
        self._sync_state = sync_state
        self._started = time.monotonic()
        self._version = software_version()
        self.reader_availability: dict[str, str] = {}

    def snapshot(self) -> dict[str, Any]:
        """Return the telemetry ``data`` object documented in docs/mqtt.md."""
        now = self._clock.now()
        commerce = self._config.commerce
        night = commerce.night_of(now)
        start = night_start(commerce, now)
        kits_issued = self._kits_issued(start)
        kits_left = self._kits_left()
        readers_online = self._readers_online(now)
        return {
            "night": night,
            "guests_in": self._count(_GUESTS_IN, {"night": night, "start": start}),
            "checkouts": self._count(
                "SELECT COUNT(*) FROM checkouts WHERE seen_at >= ?", (start,)
            ),
            "kits_issued": {
                "total": sum(kits_issued.values()),
                "stations": kits_issued,
            },
            "kits_left": {"total": sum(kits_left.values()), "stations": kits_left},
            "sales_minor": self._count(_SALES, (night,)),
            "currency": commerce.wallet.currency,
            "drop_stock": dict(
                self._store.query("SELECT id, available FROM drops ORDER BY id")
            ),
            "sync_backlog": self._count(
                "SELECT COUNT(*) FROM outbox WHERE synced_at IS NULL"
            ),
            "sync_last_success": self._sync_last_success(),
            "readers_online": readers_online,
            "readers": len(self._config.readers),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "version": self._version,
        }

    def _count(self, sql: str, parameters: Any = ()) -> int:
        row = self._store.query_one(sql, parameters)
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _kits_issued(self, start: float) -> dict[str, int]:
        issued = {
            reader.id: 0 for reader in self._config.readers if reader.role == "kit"
        }
        for station, count in self._store.query(
            "SELECT station, COUNT(*) FROM kits WHERE issued_at >= ? GROUP BY station",
            (start,),
        ):
            issued[station] = int(count)
        return issued

    def _kits_left(self) -> dict[str, int]:
        return {
            station: int(remaining)
            for station, remaining in self._store.query(
                "SELECT station, remaining FROM kit_stock ORDER BY station"
            )
        }

    def _readers_online(self, now: float) -> int:
        """Count readers announced online, or without an announcement but recent.

        A reader without a retained availability (the box's own scanner, or
        firmware that announces none) counts as online while its last batch
        is within ``checkout.silence_s``, the limit after which the health
        monitor raises ``reader-silent``.
        """
        silence_s = self._config.checkout.silence_s
        online = 0
        for reader in self._config.readers:
            announced = self.reader_availability.get(reader.id)
            last_batch = self._last_batch(reader.id)
            recent = last_batch is not None and now - last_batch <= silence_s
            if announced == "online" or (announced is None and recent):
                online += 1
        return online

    def _sync_last_success(self) -> float | None:
        if self._sync_state is None:
            return None
        value = self._sync_state().get("last_success")
        return float(value) if isinstance(value, int | float) else None
