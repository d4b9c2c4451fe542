"""Signed bundles from the fleet, each verified and applied in one transaction.

Bundle types: member lists, online top-ups, token revocations, asset
manifests and the site configuration. A bundle is a document signed with an
operator's Ed25519 key (see :mod:`appliance.signed_documents`).
:class:`BundleApplier` verifies it, validates its body, and applies it in
one SQLite transaction together with :meth:`DocumentLedger.accept` and one
``bundle_applied`` outbox event, so a bundle is recorded as applied exactly
when its effect commits. The formats are described in ``docs/bundles.md``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from appliance.clock import Clock
from appliance.config import SiteConfig
from appliance.errors import ConfigError, NightboxError
from appliance.remote import _bundle_bodies as bodies
from appliance.remote import site_file
from appliance.remote._bundle_bodies import InvalidBundle
from appliance.remote.document_types import BUNDLE_TYPES, MAX_BUNDLE_BYTES
from appliance.signed_documents import (
    DocumentLedger,
    SignatureError,
    SignedDocument,
    verify_document,
)
from appliance.store import Store, Transaction
from appliance.tokens import EdgeTokens
from appliance.wallet._ledger import credit_topup, night_topped_up

_LOGGER = logging.getLogger(__name__)

# Online top-ups are posted against tender:online, from this terminal.
ONLINE_METHOD = "online"
ONLINE_TERMINAL = "online"
# At most one warning per rejection reason in this many seconds. The rest are
# counted, and the next warning of that reason gives their number.
_LOG_INTERVAL_S = 5.0
_NONCE = re.compile(r"[0-9a-f]{32}")


class BundleRejected(NightboxError, ValueError):
    """A rejected bundle, with a one-word ``reason`` and a ``message`` with the fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class BundleApplier:
    """The verification and application of the signed bundles that reach one box.

    ``counts`` counts rejections by reason and ``applied`` counts applied
    bundles by type. ``config_path`` is the site configuration file that a
    ``config`` bundle replaces. Without it, such bundles are rejected.
    """

    def __init__(
        self,
        store: Store,
        config: SiteConfig,
        clock: Clock,
        tokens: EdgeTokens,
        *,
        config_path: Path | None,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._tokens = tokens
        self._config_path = config_path
        self._ledger = DocumentLedger()
        self.counts: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        # Called after an assets bundle committed, so the asset cache drops
        # blobs the manifest no longer lists and fetches the new ones.
        self.on_assets_applied: Callable[[], None] | None = None

    def apply(self, bundle_type: str, payload: bytes) -> dict[str, Any]:
        """Verify and apply one bundle; return the result data for ``stat/result``.

        ``bundle_type`` is the type named by the topic the bundle arrived on.
        It raises no Exception. A failure of the store or the file system
        returns the reason ``failed``, and any other failure of the box
        ``internal-error``. A rejected bundle gets ``ok: false`` with a
        reason and a message, and changes nothing.
        """
        topic_type = str(bundle_type)[:40]
        nonce: str | None = None
        try:
            document = _parse(payload)
            nonce = _readable_nonce(document)
            signed = verify_document(
                document,
                self._config.fleet.operator_keys,
                site=self._config.site_id,
                kind="bundle",
                clock=self._clock,
            )
            counts = self._apply_verified(topic_type, signed)
        except (SignatureError, BundleRejected) as err:
            return self._reject(topic_type, nonce, err.reason, err.message)
        except InvalidBundle as err:
            return self._reject(topic_type, nonce, "invalid", str(err))
        except (sqlite3.Error, OSError) as err:
            # The store or the file system failed, not the bundle, so the
            # operator may send the same bundle again once the box is fixed.
            message = (
                f"the box could not apply the bundle ({type(err).__name__}: "
                f"{err}); nothing changed, so send it again after fixing the box"
            )
            return self._reject(topic_type, nonce, "failed", message, error=err)
        except Exception as err:
            # A bug of the box, not of the bundle. The result still names the
            # nonce, so the sender can match it.
            message = (
                f"the box failed to apply the bundle ({type(err).__name__}); "
                "its log has the details"
            )
            return self._reject(topic_type, nonce, "internal-error", message, error=err)
        self.applied[signed.type] += 1
        if signed.type == "assets" and self.on_assets_applied is not None:
            self.on_assets_applied()
        _LOGGER.info(
            "Applied %s bundle version %s signed by key %s: %s",
            signed.type,
            signed.version,
            signed.key,
            counts,
        )
        return {
            "kind": "bundle",
            "type": topic_type,
            "nonce": nonce,
            "ok": True,
            "result": {"version": signed.version, **counts},
        }

    def _apply_verified(
        self, topic_type: str, signed: SignedDocument
    ) -> dict[str, Any]:
        if signed.type != topic_type:
            raise BundleRejected(
                "malformed",
                f"the bundle arrived on the {topic_type!r} topic but is a "
                f"{signed.type!r} bundle; publish it on bundle/{signed.type}",
            )
        if signed.type not in BUNDLE_TYPES:
            raise BundleRejected(
                "unknown-type",
                f"bundle type {signed.type!r} is unknown; use one of "
                f"{', '.join(BUNDLE_TYPES)}",
            )
        apply_body = self._body_applier(signed)
        with self._store.transaction() as transaction:
            self._ledger.accept(transaction, signed)
            counts = apply_body(transaction)
            transaction.emit(
                "bundle_applied",
                {
                    "type": signed.type,
                    "version": signed.version,
                    "key": signed.key,
                    "nonce": signed.nonce,
                    "counts": counts,
                },
            )
        return counts

    def _body_applier(
        self, signed: SignedDocument
    ) -> Callable[[Transaction], dict[str, Any]]:
        """Validate the body and return the step that writes it in the transaction."""
        body = signed.body
        commerce = self._config.commerce
        if signed.type == "members":
            members = bodies.parse_members(body, commerce)
            return lambda transaction: _replace_members(transaction, members)
        if signed.type == "topups":
            topups = bodies.parse_topups(body, commerce)
            return lambda transaction: self._credit_topups(transaction, topups)
        if signed.type == "revocations":
            revocations = bodies.parse_revocations(body)
            return lambda transaction: self._revoke(transaction, revocations)
        if signed.type == "assets":
            manifest = bodies.parse_assets(body)
            version = signed.version or 0
            return lambda transaction: self._store_manifest(
                transaction, manifest, version
            )
        self._reject_other_box(body)
        document = bodies.parse_site_document(body)
        if self._config_path is None:
            raise BundleRejected(
                "unavailable",
                "this box runs without a configuration file, so it cannot "
                "replace its configuration; run it with `nightbox run --config "
                "FILE`",
            )
        path = self._config_path
        return lambda _transaction: self._replace_config(path, document)

    def _reject_other_box(self, body: dict[str, Any]) -> None:
        """Raise InvalidBundle when a config bundle names another site or box.

        A config bundle sent to every box of the site reaches boxes that it
        does not name, so this check comes before any other of the body.
        """
        document = body.get("config")
        if not isinstance(document, dict):
            return
        try:
            site_file.reject_other_identity(
                document, site_id=self._config.site_id, box_id=self._config.box_id
            )
        except ConfigError as err:
            raise InvalidBundle(f"the configuration is invalid: {err}") from err

    def _credit_topups(
        self, transaction: Transaction, topups: list[bodies.OnlineTopup]
    ) -> dict[str, Any]:
        commerce = self._config.commerce
        now = self._clock.now()
        night = commerce.night_of(now)
        credited = 0
        already_applied = 0
        amount = 0
        for index, topup in enumerate(topups):
            if not _record_topup(transaction, index, topup, now):
                already_applied += 1
                continue
            topped_up = night_topped_up(transaction, topup.band, night)
            limit = commerce.wallet.night_topup_limit
            if topped_up + topup.amount > limit:
                raise InvalidBundle(
                    f"topups[{index}] of {topup.amount} for band {topup.band} passes "
                    f"wallet.night_topup_limit = {limit}: the band has topped up "
                    f"{topped_up} on the night of {night}; send it in a later "
                    "bundle after that night, or raise the limit"
                )
            credit_topup(
                transaction,
                band=topup.band,
                currency=commerce.wallet.currency,
                amount=topup.amount,
                method=ONLINE_METHOD,
                terminal=ONLINE_TERMINAL,
                night=night,
                now=now,
                extra={"topup_id": topup.id},
            )
            credited += 1
            amount += topup.amount
        return {
            "credited": credited,
            "already_applied": already_applied,
            "amount": amount,
            "currency": commerce.wallet.currency,
        }

    def _revoke(
        self, transaction: Transaction, revocations: list[bodies.Revocation]
    ) -> dict[str, Any]:
        revoked = 0
        for revocation in revocations:
            if self._tokens.revoke_in(
                transaction, revocation.token_id, revocation.reason
            ):
                revoked += 1
        return {"revoked": revoked, "already_revoked": len(revocations) - revoked}

    def _store_manifest(
        self, transaction: Transaction, manifest: bodies.AssetManifest, version: int
    ) -> dict[str, Any]:
        transaction.execute(
            "INSERT INTO asset_manifests (version, body, applied_at) VALUES (?, ?, ?)",
            (version, manifest.canonical, self._clock.now()),
        )
        return {"assets": manifest.count, "bytes": manifest.total_bytes}

    def _replace_config(self, path: Path, document: dict[str, Any]) -> dict[str, Any]:
        # The file is written inside the store's transaction, after the
        # ledger accepted the bundle, so a rejected bundle never writes it.
        # NOTE: a commit that fails after the write leaves the new file with
        # the bundle unrecorded. Sending the same bundle again rewrites the
        # same file and records it.
        try:
            site_file.replace_config(
                path,
                document,
                site_id=self._config.site_id,
                box_id=self._config.box_id,
            )
        except ConfigError as err:
            raise InvalidBundle(f"the configuration is invalid: {err}") from err
        return {"restart_required": True}

    def _reject(
        self,
        topic_type: str,
        nonce: str | None,
        reason: str,
        message: str,
        *,
        error: BaseException | None = None,
    ) -> dict[str, Any]:
        self.counts[reason] += 1
        self._log_rejection(topic_type, nonce, reason, message, error)
        return {
            "kind": "bundle",
            "type": topic_type,
            "nonce": nonce,
            "ok": False,
            "reason": reason,
            "message": message,
        }

    def _log_rejection(
        self,
        topic_type: str,
        nonce: str | None,
        reason: str,
        message: str,
        error: BaseException | None,
    ) -> None:
        now = time.monotonic()
        last = self._last_logged.get(reason)
        if last is not None and now - last < _LOG_INTERVAL_S:
            self._unlogged[reason] += 1
            return
        self._last_logged[reason] = now
        unlogged = self._unlogged.pop(reason, 0)
        _LOGGER.log(
            logging.WARNING if error is None else logging.ERROR,
            "Rejected %s bundle (nonce %s): %s: %s%s",
            topic_type,
            nonce,
            reason,
            message,
            f" ({unlogged} more rejected for this reason since the last warning)"
            if unlogged
            else "",
            exc_info=error,
        )


def _parse(payload: bytes) -> Any:
    if len(payload) > MAX_BUNDLE_BYTES:
        raise BundleRejected(
            "too-large",
            f"the bundle has {len(payload)} bytes, more than the maximum of "
            f"{MAX_BUNDLE_BYTES} (4 MiB); split it into smaller bundles",
        )
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise BundleRejected(
            "malformed",
            f"the bundle is not valid JSON ({err}); send the signed document as "
            "UTF-8 JSON",
        ) from err


def _readable_nonce(document: Any) -> str | None:
    """Return the document's nonce if it is one, so results can name it."""
    if not isinstance(document, dict):
        return None
    nonce = document.get("nonce")
    if isinstance(nonce, str) and _NONCE.fullmatch(nonce):
        return nonce
    return None


def _replace_members(
    transaction: Transaction, members: list[bodies.Member]
) -> dict[str, Any]:
    """Replace every bundle member; members from the configuration stay."""
    replaced = transaction.execute("DELETE FROM members WHERE source = 'bundle'")
    configured = {
        row[0]
        for row in transaction.execute(
            "SELECT band FROM members WHERE source = 'config'"
        ).fetchall()
    }
    rows = [(m.band, m.tier) for m in members if m.band not in configured]
    transaction.execute_many(
        "INSERT INTO members (band, tier, source) VALUES (?, ?, 'bundle')", rows
    )
    return {
        "members": len(rows),
        "replaced": replaced.rowcount,
        "configured_skipped": len(members) - len(rows),
    }


def _record_topup(
    transaction: Transaction, index: int, topup: bodies.OnlineTopup, now: float
) -> bool:
    """Record a top-up id, or return False when an earlier bundle applied it."""
    cursor = transaction.execute(
        "INSERT INTO online_topups (id, band, amount, applied_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        (topup.id, topup.band, topup.amount, now),
    )
    if cursor.rowcount == 1:
        return True
    band, amount = transaction.execute(
        "SELECT band, amount FROM online_topups WHERE id = ?", (topup.id,)
    ).fetchone()
    if (band, amount) != (topup.band, topup.amount):
        raise InvalidBundle(
            f"topups[{index}].id = {topup.id!r} was applied before as {amount} for "
            f"band {band}, not {topup.amount} for band {topup.band}; give a new "
            "top-up its own id"
        )
    return False
