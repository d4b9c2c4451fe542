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
    # 3: the economy: edge tokens, wallets with a double-entry ledger,
    # microdrops, promo codes, members and partner offer codes.
    """
    CREATE TABLE edge_tokens (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        scopes TEXT NOT NULL,
        issued_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE revoked_tokens (
        id TEXT PRIMARY KEY,
        revoked_at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE wallets (
        band TEXT PRIMARY KEY,
        currency TEXT NOT NULL,
        balance INTEGER NOT NULL CHECK (balance >= 0)
    );
    CREATE TABLE ledger_transactions (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL
            CHECK (kind IN ('topup', 'charge', 'refund', 'void')),
        band TEXT NOT NULL,
        currency TEXT NOT NULL,
        amount INTEGER NOT NULL CHECK (amount >= 0),
        method TEXT,
        terminal TEXT NOT NULL,
        item TEXT,
        quantity INTEGER,
        list_amount INTEGER,
        discount INTEGER NOT NULL DEFAULT 0,
        promo_code TEXT,
        creator TEXT,
        set_id TEXT,
        drop_claim TEXT,
        refers_to TEXT REFERENCES ledger_transactions (id),
        refunded INTEGER NOT NULL DEFAULT 0,
        voided_by TEXT,
        night TEXT NOT NULL,
        created_at REAL NOT NULL,
        event_id TEXT NOT NULL
    );
    CREATE INDEX ledger_transactions_by_band ON ledger_transactions (band, night);
    CREATE INDEX ledger_transactions_by_night ON ledger_transactions (night);
    CREATE TABLE ledger_entries (
        transaction_id TEXT NOT NULL REFERENCES ledger_transactions (id),
        account TEXT NOT NULL,
        amount INTEGER NOT NULL,
        currency TEXT NOT NULL
    );
    CREATE INDEX ledger_entries_by_transaction ON ledger_entries (transaction_id);
    CREATE INDEX ledger_entries_by_account ON ledger_entries (account);
    CREATE TABLE drops (
        id TEXT PRIMARY KEY,
        item TEXT NOT NULL,
        price INTEGER NOT NULL CHECK (price >= 0),
        currency TEXT NOT NULL,
        quota INTEGER NOT NULL CHECK (quota >= 0),
        available INTEGER NOT NULL CHECK (available >= 0 AND available <= quota),
        state TEXT NOT NULL DEFAULT 'scheduled'
            CHECK (state IN ('scheduled', 'live', 'stopped'))
    );
    CREATE TABLE drop_claims (
        id TEXT PRIMARY KEY,
        drop_id TEXT NOT NULL REFERENCES drops (id),
        band TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('reserved', 'paid', 'expired', 'cancelled')),
        terminal TEXT NOT NULL,
        creator TEXT,
        set_id TEXT,
        promo_code TEXT,
        night TEXT NOT NULL,
        reserved_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        transaction_id TEXT REFERENCES ledger_transactions (id),
        pickup_code TEXT UNIQUE,
        picked_up_at REAL
    );
    CREATE INDEX drop_claims_reserved ON drop_claims (expires_at)
        WHERE status = 'reserved';
    CREATE INDEX drop_claims_by_drop ON drop_claims (drop_id, status);
    CREATE TABLE drop_holdings (
        drop_id TEXT NOT NULL REFERENCES drops (id),
        band TEXT NOT NULL,
        units INTEGER NOT NULL CHECK (units >= 0),
        PRIMARY KEY (drop_id, band)
    );
    CREATE TABLE promo_codes (
        code TEXT PRIMARY KEY,
        max_uses INTEGER NOT NULL,
        uses INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses)
    );
    CREATE TABLE members (
        band TEXT PRIMARY KEY,
        tier TEXT NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE partner_codes (
        code TEXT PRIMARY KEY,
        offer TEXT NOT NULL,
        band TEXT UNIQUE,
        issued_at REAL,
        redeemed_at REAL,
        redeemed_by TEXT
    );
    CREATE INDEX partner_codes_free ON partner_codes (offer, code)
        WHERE band IS NULL;
    """,
    # 4: the nonces of accepted signed documents and the applied version of
    # each bundle type, so neither a command nor an old bundle replays.
    """
    CREATE TABLE signed_nonces (
        nonce TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        type TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE bundle_versions (
        type TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    );
    """,
    # 5: stored replies belong to the device that sent the request, so one
    # device's idempotency key neither reads nor blocks another's. Replies
    # stored before have no requester ('').
    """
    CREATE TABLE requests_by_requester (
        requester TEXT NOT NULL,
        key TEXT NOT NULL,
        action TEXT NOT NULL,
        fingerprint TEXT,
        reply TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (requester, key)
    );
    INSERT INTO requests_by_requester
        SELECT '', key, action, fingerprint, reply, created_at FROM requests;
    DROP TABLE requests;
    ALTER TABLE requests_by_requester RENAME TO requests;
    """,
    # 6: store-and-forward sync. ``synced_at`` is set when the upstream
    # broker acknowledged the event, independently of ``published_at`` on
    # the local bus. Asset manifests arrive as signed bundles; online
    # top-ups are applied once per top-up id.
    """
    ALTER TABLE outbox ADD COLUMN synced_at REAL;
    CREATE INDEX outbox_unsynced ON outbox (seq) WHERE synced_at IS NULL;
    CREATE TABLE asset_manifests (
        version INTEGER PRIMARY KEY,
        body TEXT NOT NULL,
        applied_at REAL NOT NULL
    );
    CREATE TABLE online_topups (
        id TEXT PRIMARY KEY,
        band TEXT NOT NULL,
        amount INTEGER NOT NULL CHECK (amount > 0),
        applied_at REAL NOT NULL
    );
    """,
    # 7: the terminal console. Its PIN lock-out survives a restart (one
    # row). Drops and promo codes created from the console while the box
    # runs keep their definition here, because the site file lists only
    # the ones known at start. The last message of each console job lets a
    # console that reconnected, also after a restart, catch up.
    """
    CREATE TABLE console_lockout (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        failures INTEGER NOT NULL CHECK (failures >= 0),
        lockouts INTEGER NOT NULL CHECK (lockouts >= 0),
        locked_at REAL,
        locked_s REAL
    );
    CREATE TABLE added_drops (
        id TEXT PRIMARY KEY REFERENCES drops (id),
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL CHECK (ends_at > starts_at),
        per_guest_limit INTEGER NOT NULL CHECK (per_guest_limit >= 1),
        reservation_s REAL NOT NULL,
        creator TEXT,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE added_promo_codes (
        code TEXT PRIMARY KEY REFERENCES promo_codes (code),
        percent INTEGER,
        amount INTEGER,
        expires_at REAL,
        creator TEXT,
        applies_to TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        CHECK ((percent IS NULL) != (amount IS NULL))
    );
    CREATE TABLE console_jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 8: the camera studio's clips. A clip's row is written with its file,
    # and ``uploaded_at`` is set once the fleet acknowledged every chunk of
    # it. ``removed_at`` is set when the file was deleted to keep the
    # newest clips only.
    """
    CREATE TABLE clips (
        id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        size INTEGER NOT NULL CHECK (size > 0),
        sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
        duration_s REAL NOT NULL CHECK (duration_s >= 0),
        created_at REAL NOT NULL,
        trigger TEXT NOT NULL,
        set_id TEXT,
        note TEXT,
        uploaded_at REAL,
        removed_at REAL
    );
    CREATE INDEX clips_to_upload ON clips (created_at)
        WHERE uploaded_at IS NULL AND removed_at IS NULL;
    """,
    # 9: the asset cache. One row per blob kept under its SHA-256, written
    # after the file was verified. ``last_served_at`` orders eviction; the
    # blobs of the night's items are pinned by the running cache, not here.
    """
    CREATE TABLE asset_blobs (
        sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
        size INTEGER NOT NULL CHECK (size > 0),
        stored_at REAL NOT NULL,
        verified_at REAL NOT NULL,
        last_served_at REAL
    );
    """,
    # 10: the guest portal. A session ties a phone's cookie to a band; the
    # cookie contains a random id and the table only its SHA-256. A band code
    # is an HMAC of the band, which cannot be reversed, so the codes handed
    # out are registered under a keyed hash of the code.
    """
    CREATE TABLE portal_sessions (
        id_hash TEXT PRIMARY KEY CHECK (length(id_hash) = 64),
        band TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX portal_sessions_by_band ON portal_sessions (band);
    CREATE INDEX portal_sessions_by_expiry ON portal_sessions (expires_at);
    CREATE TABLE portal_band_codes (
        code_hash TEXT PRIMARY KEY CHECK (length(code_hash) = 64),
        band TEXT NOT NULL UNIQUE,
        registered_at REAL NOT NULL
    );
    """,
    # 11: analytics and privacy. Page views are counters per night, page and
    # subject (a drop or an item), never per guest. Wellness notes live at
    # most 24 hours. Follow-up coupons can be redeemed. An erasure records
    # when and how many rows, never whose.
    """
    CREATE TABLE page_views (
        night TEXT NOT NULL,
        page TEXT NOT NULL,
        subject TEXT NOT NULL,
        views INTEGER NOT NULL CHECK (views >= 0),
        PRIMARY KEY (night, page, subject)
    );
    CREATE TABLE wellness_notes (
        id TEXT PRIMARY KEY,
        band TEXT,
        note TEXT NOT NULL,
        staff TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX wellness_notes_by_expiry ON wellness_notes (expires_at);
    ALTER TABLE coupons ADD COLUMN redeemed_at REAL;
    ALTER TABLE coupons ADD COLUMN redeemed_by TEXT;
    CREATE TABLE erasures (
        id TEXT PRIMARY KEY,
        erased_at REAL NOT NULL,
        rows INTEGER NOT NULL CHECK (rows >= 0),
        requested_by TEXT NOT NULL
    );
    """,
)
