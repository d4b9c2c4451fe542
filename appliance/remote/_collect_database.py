"""The collector's PostgreSQL schema and its batch writes, with psycopg 3.

Each batch is one transaction. Events are inserted with ``ON CONFLICT
(event_id) DO NOTHING``, so a redelivered event changes nothing. The schema
is versioned in ``collector_schema`` and created by the collector itself,
under an advisory lock so that collectors starting together do not race.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import psycopg

from appliance.errors import NightboxError
from appliance.remote._collect_messages import (
    AvailabilityRow,
    EventRow,
    Rejection,
    Row,
    TelemetryRow,
    rejection,
)
from appliance.remote._collect_url import describe_error, redact_url

SCHEMA_VERSION = 1
# Any constant key works: it only has to be the same in every collector.
_SCHEMA_LOCK_KEY = 0x6E62_636F_6C6C
_CONNECT_TIMEOUT_S = 10

# Statements of each schema version, applied in order.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE events (
            event_id uuid PRIMARY KEY,
            site text NOT NULL,
            box text NOT NULL,
            seq bigint NOT NULL,
            type text NOT NULL,
            created_at timestamptz NOT NULL,
            clock_trusted boolean NOT NULL,
            data jsonb NOT NULL,
            received_at timestamptz NOT NULL
        )
        """,
        "CREATE INDEX events_box_seq ON events (site, box, seq)",
        "CREATE INDEX events_type_created ON events (type, created_at)",
        """
        CREATE TABLE boxes (
            site text NOT NULL,
            box text NOT NULL,
            availability text CHECK (availability IN ('online', 'offline')),
            availability_since timestamptz,
            telemetry jsonb,
            telemetry_sent_at timestamptz,
            sync jsonb,
            sync_sent_at timestamptz,
            last_event_at timestamptz,
            last_seen_at timestamptz,
            first_seen_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (site, box)
        )
        """,
        """
        CREATE TABLE rejected_messages (
            topic text NOT NULL,
            payload_sha256 text NOT NULL,
            reason text NOT NULL,
            detail text NOT NULL,
            event_id text,
            payload_bytes integer NOT NULL,
            deliveries integer NOT NULL,
            first_received_at timestamptz NOT NULL,
            last_received_at timestamptz NOT NULL,
            PRIMARY KEY (topic, payload_sha256)
        )
        """,
    ),
)

_INSERT_EVENTS = """
    INSERT INTO events (event_id, site, box, seq, type, created_at,
                        clock_trusted, data, received_at)
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::bigint[],
                         %s::text[], %s::timestamptz[], %s::boolean[],
                         %s::jsonb[], %s::timestamptz[])
    ON CONFLICT (event_id) DO NOTHING
    RETURNING site, box, received_at
"""
_UPSERT_EVENT_BOX = """
    INSERT INTO boxes AS b (site, box, last_event_at, last_seen_at)
    VALUES (%s, %s, %s, %s)
    ON CONFLICT (site, box) DO UPDATE SET
        last_event_at = GREATEST(b.last_event_at, EXCLUDED.last_event_at),
        last_seen_at = GREATEST(b.last_seen_at, EXCLUDED.last_seen_at)
"""
# availability_since keeps its time while the state stays the same, so it
# is the time the collector first saw the current state.
_UPSERT_AVAILABILITY = """
    INSERT INTO boxes AS b (site, box, availability, availability_since,
                            last_seen_at)
    VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (site, box) DO UPDATE SET
        availability = EXCLUDED.availability,
        availability_since = CASE
            WHEN b.availability IS NOT DISTINCT FROM EXCLUDED.availability
            THEN b.availability_since
            ELSE EXCLUDED.availability_since
        END,
        last_seen_at = GREATEST(b.last_seen_at, EXCLUDED.last_seen_at)
"""
_UPSERT_TELEMETRY = {
    "state": """
        INSERT INTO boxes AS b (site, box, telemetry, telemetry_sent_at,
                                last_seen_at)
        VALUES (%s, %s, %s::jsonb, %s, %s)
        ON CONFLICT (site, box) DO UPDATE SET
            telemetry = EXCLUDED.telemetry,
            telemetry_sent_at = EXCLUDED.telemetry_sent_at,
            last_seen_at = GREATEST(b.last_seen_at, EXCLUDED.last_seen_at)
    """,
    "sync": """
        INSERT INTO boxes AS b (site, box, sync, sync_sent_at, last_seen_at)
        VALUES (%s, %s, %s::jsonb, %s, %s)
        ON CONFLICT (site, box) DO UPDATE SET
            sync = EXCLUDED.sync,
            sync_sent_at = EXCLUDED.sync_sent_at,
            last_seen_at = GREATEST(b.last_seen_at, EXCLUDED.last_seen_at)
    """,
}
# A rejected message delivered again counts one more delivery.
_UPSERT_REJECTED = """
    INSERT INTO rejected_messages AS r (topic, payload_sha256, reason, detail,
        event_id, payload_bytes, deliveries, first_received_at, last_received_at)
    VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s)
    ON CONFLICT (topic, payload_sha256) DO UPDATE SET
        deliveries = r.deliveries + 1,
        reason = EXCLUDED.reason,
        detail = EXCLUDED.detail,
        last_received_at = EXCLUDED.last_received_at
"""


class DatabaseUnavailableError(NightboxError, ConnectionError):
    """PostgreSQL is unreachable, rejected the login, or failed a statement.

    The message names the database by its URL with the password removed.
    """


@dataclass
class WriteResult:
    """Counts of what one batch changed, and its rejections."""

    events_stored: int = 0
    duplicates: int = 0
    states: int = 0
    # Every rejection written, including events PostgreSQL itself rejected.
    rejections: list[Rejection] = field(default_factory=list)


class CollectorDatabase:
    """The collector's connection to PostgreSQL, opened again after a failure."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.redacted_url = redact_url(url)
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None

    def open(self) -> None:
        """Connect and create or upgrade the schema.

        Raises DatabaseUnavailableError when PostgreSQL is unreachable,
        rejects the login, or the schema is newer than this collector's.
        """
        self._connection_or_connect()

    def close(self) -> None:
        """Close the connection, if one is open."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def write(self, rows: Sequence[Row]) -> WriteResult:
        """Write one batch in one transaction and return what it changed.

        A row that PostgreSQL rejects as invalid data (a NUL character in a
        JSON string, for one) becomes a ``database-rejected`` rejection and
        the rest of the batch is written. Raises DatabaseUnavailableError on
        any other failure, after which nothing of the batch is committed
        unless the failure hit the commit itself.
        """
        connection = self._connection_or_connect()
        try:
            with connection.transaction():
                result = self._write_batch(connection, rows)
        except psycopg.Error as err:
            self.close()
            raise DatabaseUnavailableError(
                f"PostgreSQL at {self.redacted_url} failed a write: "
                f"{describe_error(err, self._url)}"
            ) from err
        return result

    def _connection_or_connect(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        try:
            connection = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT_S,
                application_name="nightbox-collect",
            )
        except psycopg.Error as err:
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {self.redacted_url}: "
                f"{describe_error(err, self._url)}"
            ) from err
        try:
            _ensure_schema(connection)
        except psycopg.Error as err:
            connection.close()
            raise DatabaseUnavailableError(
                f"cannot create the collector's tables in {self.redacted_url}: "
                f"{describe_error(err, self._url)}; the role needs CREATE on the "
                "database's schema (own the database, for example)"
            ) from err
        except DatabaseUnavailableError:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _write_batch(
        self, connection: psycopg.Connection[tuple[object, ...]], rows: Sequence[Row]
    ) -> WriteResult:
        try:
            # A savepoint, so that the batch can be written again row by row.
            with connection.transaction():
                return _write_rows(connection, rows)
        except psycopg.DataError:
            pass
        result = WriteResult()
        rejections = [row for row in rows if isinstance(row, Rejection)]
        for row in rows:
            if isinstance(row, Rejection):
                continue
            try:
                with connection.transaction():
                    _add(result, _write_rows(connection, [row]))
            except psycopg.DataError as err:
                rejections.append(_database_rejection(row, err))
        _write_rejections(connection, rejections)
        result.rejections = rejections
        return result


def _write_rows(
    connection: psycopg.Connection[tuple[object, ...]], rows: Sequence[Row]
) -> WriteResult:
    result = WriteResult()
    events = [row for row in rows if isinstance(row, EventRow)]
    if events:
        stored = _insert_events(connection, events)
        result.events_stored = len(stored)
        result.duplicates = len(events) - len(stored)
    availability = [row for row in rows if isinstance(row, AvailabilityRow)]
    telemetry = [row for row in rows if isinstance(row, TelemetryRow)]
    with connection.cursor() as cursor:
        if availability:
            cursor.executemany(
                _UPSERT_AVAILABILITY,
                [
                    (
                        row.site,
                        row.box,
                        row.state,
                        row.received_at,
                        None if row.retained else row.received_at,
                    )
                    for row in availability
                ],
            )
        for name, statement in _UPSERT_TELEMETRY.items():
            named = [row for row in telemetry if row.name == name]
            if named:
                cursor.executemany(statement, [_telemetry_values(row) for row in named])
    result.states = len(availability) + len(telemetry)
    rejections = [row for row in rows if isinstance(row, Rejection)]
    _write_rejections(connection, rejections)
    result.rejections = rejections
    return result


def _insert_events(
    connection: psycopg.Connection[tuple[object, ...]], events: Sequence[EventRow]
) -> list[tuple[object, ...]]:
    """Insert events in one statement and return the new ones' site, box, time."""
    columns = (
        [event.event_id for event in events],
        [event.site for event in events],
        [event.box for event in events],
        [event.seq for event in events],
        [event.type for event in events],
        [event.created_at for event in events],
        [event.clock_trusted for event in events],
        [orjson.dumps(event.data).decode() for event in events],
        [event.received_at for event in events],
    )
    stored = connection.execute(_INSERT_EVENTS, columns).fetchall()
    latest: dict[tuple[object, object], object] = {}
    for site, box, received_at in stored:
        latest[(site, box)] = received_at
    if latest:
        with connection.cursor() as cursor:
            cursor.executemany(
                _UPSERT_EVENT_BOX,
                [(site, box, at, at) for (site, box), at in latest.items()],
            )
    return stored


def _telemetry_values(row: TelemetryRow) -> tuple[object, ...]:
    data = None if row.data is None else orjson.dumps(row.data).decode()
    seen = None if row.retained else row.received_at
    return (row.site, row.box, data, row.sent_at, seen)


def _write_rejections(
    connection: psycopg.Connection[tuple[object, ...]], rejections: Sequence[Rejection]
) -> None:
    if not rejections:
        return
    with connection.cursor() as cursor:
        cursor.executemany(
            _UPSERT_REJECTED,
            [
                (
                    row.topic,
                    row.payload_sha256,
                    row.reason,
                    row.detail,
                    row.event_id,
                    row.payload_bytes,
                    row.received_at,
                    row.received_at,
                )
                for row in rejections
            ],
        )


def _add(total: WriteResult, part: WriteResult) -> None:
    total.events_stored += part.events_stored
    total.duplicates += part.duplicates
    total.states += part.states


def _database_rejection(
    row: EventRow | TelemetryRow | AvailabilityRow, err: psycopg.DataError
) -> Rejection:
    # Only the primary message: PostgreSQL's detail and context quote the data.
    message = err.diag.message_primary or type(err).__name__
    if isinstance(row, AvailabilityRow):
        topic, payload = f"nightbox/{row.site}/box/{row.box}/availability", b""
    else:
        topic, payload = row.topic, row.payload
    event_id = row.event_id if isinstance(row, EventRow) else None
    return rejection(
        topic,
        payload,
        "database-rejected",
        f"PostgreSQL rejected the message's data: {message}",
        row.received_at,
        event_id=event_id,
    )


def _ensure_schema(connection: psycopg.Connection[tuple[object, ...]]) -> None:
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS collector_schema ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = connection.execute("SELECT max(version) FROM collector_schema").fetchone()
        current = 0 if row is None or row[0] is None else int(str(row[0]))
        if current > SCHEMA_VERSION:
            raise DatabaseUnavailableError(
                f"the collector's tables are at schema version {current}, newer "
                f"than version {SCHEMA_VERSION} of this collector; run a newer "
                "nightbox"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version - 1]:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO collector_schema (version) VALUES (%s)", (version,)
            )
