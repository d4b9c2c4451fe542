"""Schema migrations, applied in order and recorded in ``PRAGMA user_version``.

Append a migration to change the schema; never edit one that has shipped,
because boxes in the field have already applied it.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the box's identity, the outbox, check-outs, opt-ins, kits, coupons,
    # and the answers to idempotent requests.
    """
    CREATE TABLE box_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        created_at REAL NOT NULL,
        clock_trusted INTEGER NOT NULL,
        body TEXT NOT NULL,
        published_at REAL
    );
    CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
    CREATE TABLE checkouts (
        event_id TEXT PRIMARY KEY,
        band TEXT NOT NULL,
        reader TEXT NOT NULL,
        seen_at REAL NOT NULL,
        rssi_dbm REAL NOT NULL
    );
    CREATE INDEX checkouts_by_band ON checkouts (band, seen_at);
    CREATE TABLE optins (
        band TEXT PRIMARY KEY,
        contact_kind TEXT NOT NULL CHECK (contact_kind IN ('email', 'wallet')),
        contact TEXT NOT NULL,
        consent_text TEXT NOT NULL,
        consented_at REAL NOT NULL
    );
    CREATE TABLE kit_stock (
        station TEXT PRIMARY KEY,
        initial INTEGER NOT NULL,
        remaining INTEGER NOT NULL CHECK (remaining >= 0)
    );
    CREATE TABLE kits (
        band TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        issued_at REAL NOT NULL,
        event_id TEXT NOT NULL
    );
    CREATE TABLE coupons (
        code TEXT PRIMARY KEY,
        band TEXT NOT NULL UNIQUE,
        contact_kind TEXT NOT NULL,
        contact TEXT NOT NULL,
        offer TEXT NOT NULL,
        issued_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE requests (
        key TEXT PRIMARY KEY,
        action TEXT NOT NULL,
        reply TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: a digest of each idempotent request, so a key reused for a
    # different request is distinguished from a retry.
    """
    ALTER TABLE requests ADD COLUMN fingerprint TEXT;
    """,
)
