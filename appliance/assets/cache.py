"""The asset cache: verified blobs of the signed manifest, within a budget.

:class:`AssetCache` keeps the blobs that the current manifest lists (the
``assets`` bundle of the highest version in ``asset_manifests``) under
their SHA-256 in ``<data_dir>/assets/`` and one row per blob in
``asset_blobs``. Blobs arrive from a USB folder (:meth:`AssetCache.import_folder`)
or through sync (:mod:`appliance.assets.delivery`). Every blob is hashed on
arrival and again at start-up; one that does not match is removed, logged
with its hash prefix and counted.

The cache stays within ``min([assets] budget_bytes, manifest budget_bytes)``.
Blobs of the night's items (:meth:`AssetCache.pin_items`) are never
evicted; other blobs are evicted least recently served first. State lives
in the store and on disk, not in memory, so ``nightbox assets import`` from
another process is seen by a running box at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.assets._blobs import (
    BlobRejected,
    BlobStore,
    NotRegularFile,
    Written,
    hash_file,
    read_limited,
    short_hash,
)
from appliance.assets._folder import candidate_files
from appliance.assets.config import AssetsConfig
from appliance.assets.delivery import AssetFetcher
from appliance.assets.manifest import (
    DESCRIPTION_NAME,
    IMAGE_TYPES,
    MANIFEST_NAME,
    MODEL_TYPES,
    AssetEntry,
    Manifest,
    ManifestRejected,
    manifest_from_body,
    parse_manifest_document,
)
from appliance.clock import Clock
from appliance.commerce.config import CommerceConfig
from appliance.errors import NightboxError
from appliance.remote._sync_inbound import LimitedLog
from appliance.remote.document_types import MAX_BUNDLE_BYTES
from appliance.signed_documents import DocumentLedger, SignatureError
from appliance.store import Store

__all__ = [
    "MANIFEST_NAME",
    "AssetCache",
    "BudgetExceeded",
    "ImportResult",
    "VerifyResult",
    "night_items",
]

_LOGGER = logging.getLogger(__name__)

# Warnings about rejected blobs are logged at most once per reason in this
# many seconds, with the number skipped.
_REJECT_LOG_INTERVAL_S = 5.0
# ``last_served_at`` is written at most once per blob in this many seconds,
# so a busy try-on page does not write the store on every request.
_SERVED_WRITE_INTERVAL_S = 60.0


class BudgetExceeded(NightboxError, ValueError):
    """A blob that does not fit because pinned blobs fill the budget."""

    def __init__(self, sha256: str, message: str) -> None:
        super().__init__(message)
        self.sha256 = sha256


@dataclass(slots=True)
class ImportResult:
    """The outcome of importing a USB folder, as it is when the import ends.

    ``stored`` lists the hashes written and ``present`` those already
    stored. ``missing`` lists the entries that no file of the folder matched.
    ``rejected`` maps each listed hash whose file was rejected to the reason,
    and ``over_budget`` maps each hash not stored because it does not fit
    the budget to the reason. A blob evicted before the import ends is
    listed in ``over_budget``, never in ``stored`` or ``present``.
    """

    manifest_version: int
    manifest_applied: bool
    stored: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    missing: list[AssetEntry] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    over_budget: dict[str, str] = field(default_factory=dict)
    unmatched_files: int = 0

    @property
    def complete(self) -> bool:
        """Whether every listed blob is stored."""
        return not (self.missing or self.rejected or self.over_budget)

    def to_json(self) -> dict[str, Any]:
        """Return the result as a JSON object."""
        return {
            "manifest_version": self.manifest_version,
            "manifest_applied": self.manifest_applied,
            "stored": self.stored,
            "present": self.present,
            "missing": [entry.sha256 for entry in self.missing],
            "rejected": self.rejected,
            "over_budget": self.over_budget,
            "unmatched_files": self.unmatched_files,
        }


@dataclass(slots=True)
class VerifyResult:
    """The outcome of hashing every stored blob again.

    ``links_removed`` lists the symbolic links found in the cache's folders;
    each was removed as a link, and its target was left as it was.
    """

    checked: int = 0
    removed: dict[str, str] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)
    links_removed: list[Path] = field(default_factory=list)


def night_items(commerce: CommerceConfig, now: float) -> set[str]:
    """Return the items of tonight: every ``[[items]]`` entry and drop item.

    A drop counts when it belongs to tonight's night (``commerce.night_of``)
    or is still running, so its item's blobs are pinned for the whole night.
    """
    tonight = commerce.night_of(now)
    pinned = {item.id for item in commerce.items}
    for drop in commerce.drops:
        if commerce.night_of(drop.starts_at) == tonight or drop.ends_at > now:
            pinned.add(drop.item)
    return pinned


class AssetCache:
    """The blobs of the signed asset manifest, verified and within a budget."""

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        config: AssetsConfig,
        clock: Clock,
        operator_keys: Mapping[str, Ed25519PublicKey],
        site_id: str,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._keys = operator_keys
        self._site = site_id
        self.blobs = BlobStore(data_dir / "assets")
        self._ledger = DocumentLedger()
        self._pinned_items: frozenset[str] = frozenset()
        self._manifest: Manifest | None = None
        self._served_written: dict[str, float] = {}
        self._reject_log = LimitedLog(_LOGGER, _REJECT_LOG_INTERVAL_S)
        # Rejections since the cache was made, by reason: blobs that did not
        # match ("hash-mismatch", "size-mismatch", "changed-on-disk",
        # "over-budget") and manifests ("manifest-<reason>").
        self.rejected: Counter[str] = Counter()
        self.evicted = 0
        self.fetcher = AssetFetcher(self, site_id)
        self._fetch_task: asyncio.Task[None] | None = None

    # Life cycle.

    async def start(self) -> None:
        """Verify every stored blob, then import ``preload_dir`` if set.

        A blob whose file changed on disk is removed, logged and counted, and
        so is a symbolic link in the cache's folders (as a link). A preload
        folder that is missing or rejected is logged; the box runs on with
        the blobs it has.
        """
        await asyncio.to_thread(self.prepare_folders)
        result = await self.verify()
        self._drop_unlisted()
        self._enforce_budget()
        _LOGGER.info(
            "Asset cache verified %d blobs (%d removed) against manifest version %s",
            result.checked,
            len(result.removed),
            self._version_text(),
        )
        preload = self._config.preload_dir
        if preload is not None:
            await self._preload(preload)
        self._fetch_task = asyncio.create_task(self.fetcher.run(), name="asset-fetch")

    def prepare_folders(self, *, remove_leftovers: bool = True) -> list[Path]:
        """Create the cache's folders; return the links that stood in their place.

        Each link was removed as a link (its target is left as it was),
        logged and counted. ``remove_leftovers`` is as in
        :meth:`BlobStore.prepare`.
        """
        links = self.blobs.prepare(remove_leftovers=remove_leftovers)
        self._count_links(links)
        return links

    async def stop(self) -> None:
        """Stop fetching blobs; a blob half received is fetched again later."""
        task, self._fetch_task = self._fetch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.fetcher.discard_parts)

    async def _preload(self, folder: Path) -> None:
        present = await asyncio.to_thread(os.path.lexists, folder / MANIFEST_NAME)
        if not present:
            # A stick that is not plugged in is no error.
            _LOGGER.warning(
                "assets.preload_dir %s has no %s; no assets were imported from it",
                folder,
                MANIFEST_NAME,
            )
            return
        try:
            result = await self.import_folder(folder)
        except ManifestRejected as err:
            _LOGGER.warning(
                "The manifest in assets.preload_dir %s was rejected: %s", folder, err
            )
            return
        except (OSError, sqlite3.Error) as err:
            self.rejected["preload-failed"] += 1
            _LOGGER.error("Could not import assets from %s: %s", folder, err)
            return
        _LOGGER.info(
            "Imported assets from %s: %d stored, %d already present, %d missing, "
            "%d rejected, %d over budget",
            folder,
            len(result.stored),
            len(result.present),
            len(result.missing),
            len(result.rejected),
            len(result.over_budget),
        )

    # What the portal and the status read.

    def manifest(self) -> Manifest | None:
        """Return the current manifest, the applied one of the highest version."""
        row = self._store.query_one(
            "SELECT version, body FROM asset_manifests ORDER BY version DESC LIMIT 1"
        )
        if row is None:
            return None
        version, body = row
        cached = self._manifest
        if cached is None or cached.version != version:
            cached = manifest_from_body(version, orjson.loads(body))
            self._manifest = cached
        return cached

    def stored(self) -> dict[str, int]:
        """Return the size of every stored blob, by hash."""
        rows = self._store.query("SELECT sha256, size FROM asset_blobs")
        return {sha256: size for sha256, size in rows}

    def entry(self, sha256: str) -> AssetEntry | None:
        """Return the manifest entry of a blob that is stored, else None."""
        manifest = self.manifest()
        listed = None if manifest is None else manifest.entry(sha256)
        if listed is None:
            return None
        row = self._store.query_one(
            "SELECT size FROM asset_blobs WHERE sha256 = ?", (sha256,)
        )
        if row is None or row[0] != listed.size:
            return None
        return listed

    def entries_for_item(self, item_id: str) -> list[AssetEntry]:
        """Return the stored, verified blobs of an item, in manifest order."""
        manifest = self.manifest()
        if manifest is None:
            return []
        stored = self.stored()
        return [
            entry
            for entry in manifest.entries
            if entry.item == item_id and stored.get(entry.sha256) == entry.size
        ]

    def model_for_item(self, item_id: str) -> AssetEntry | None:
        """Return the item's first stored 3D model (glTF binary or JSON), or None."""
        return next(
            (e for e in self.entries_for_item(item_id) if e.media_type in MODEL_TYPES),
            None,
        )

    def poster_for_item(self, item_id: str) -> AssetEntry | None:
        """Return the item's first stored image, or None."""
        return next(
            (e for e in self.entries_for_item(item_id) if e.media_type in IMAGE_TYPES),
            None,
        )

    def note_served(self, sha256: str) -> None:
        """Record that a blob was served, for least-recently-served eviction."""
        now = self._clock.now()
        last = self._served_written.get(sha256)
        if last is not None and now - last < _SERVED_WRITE_INTERVAL_S:
            return
        self._served_written[sha256] = now
        with self._store.transaction() as transaction:
            transaction.execute(
                "UPDATE asset_blobs SET last_served_at = ? WHERE sha256 = ?",
                (now, sha256),
            )

    def budget(self) -> int:
        """Return the budget in bytes: the configured one, lowered by the manifest's."""
        manifest = self.manifest()
        configured = self._config.budget_bytes
        if manifest is None or manifest.budget_bytes is None:
            return configured
        return min(configured, manifest.budget_bytes)

    def pinned_hashes(self) -> set[str]:
        """Return the hashes of the manifest entries of pinned items."""
        manifest = self.manifest()
        if manifest is None:
            return set()
        return {e.sha256 for e in manifest.entries if e.item in self._pinned_items}

    def missing(self) -> list[AssetEntry]:
        """Return the manifest entries that are not stored, pinned ones first."""
        manifest = self.manifest()
        if manifest is None:
            return []
        stored = self.stored()
        absent = [e for e in manifest.entries if stored.get(e.sha256) != e.size]
        pinned = self.pinned_hashes()
        return sorted(absent, key=lambda entry: entry.sha256 not in pinned)

    def blobs_to_fetch(self) -> list[AssetEntry]:
        """Return the missing entries that fit the budget, pinned ones first.

        An unpinned blob is fetched only while it fits beside the stored
        blobs, so fetching never evicts a blob that was fetched before.
        """
        pinned = self.pinned_hashes()
        room = self.budget() - sum(self.stored().values())
        fetch: list[AssetEntry] = []
        for entry in self.missing():
            if entry.sha256 in pinned or entry.size <= room:
                fetch.append(entry)
                room -= entry.size
        return fetch

    def status(self) -> dict[str, Any]:
        """Return the cache's figures for the box status."""
        manifest = self.manifest()
        stored = self.stored()
        pinned = self.pinned_hashes() & stored.keys()
        return {
            "manifest_version": None if manifest is None else manifest.version,
            "listed": 0 if manifest is None else len(manifest.entries),
            "blobs": len(stored),
            "bytes": sum(stored.values()),
            "budget": self.budget(),
            "pinned": len(pinned),
            "pinned_bytes": sum(stored[sha256] for sha256 in pinned),
            "missing": len(self.missing()),
            "rejected": dict(sorted(self.rejected.items())),
            "evicted": self.evicted,
            "fetching": self.fetcher.current_prefix(),
        }

    # Changes.

    def pin_items(self, items: Iterable[str]) -> None:
        """Pin the blobs of ``items`` (the night's items); eviction skips them.

        The set replaces the one pinned before.
        """
        self._pinned_items = frozenset(items)
        self.fetcher.wake()

    def manifest_changed(self) -> None:
        """Act on a newly applied manifest: drop unlisted blobs and fetch the rest.

        It raises nothing: a failure of the disk or the store is logged, and
        the next start drops and evicts what is left.
        """
        try:
            self._drop_unlisted()
            self._enforce_budget()
        except (OSError, sqlite3.Error) as err:
            _LOGGER.error(
                "Could not tidy the asset cache after a new manifest: %s", err
            )
        self.fetcher.wake()

    def accept_manifest(self, payload: bytes) -> tuple[Manifest, bool]:
        """Verify a signed manifest and apply it unless it is the current one.

        Returns the manifest and whether it was applied now. A manifest equal
        to the current one (same version and body, as when a USB folder is
        imported again) is not applied twice. Raises ManifestRejected with
        the reason; nothing is stored then.
        """
        try:
            signed, manifest = parse_manifest_document(
                payload, self._keys, site=self._site, clock=self._clock
            )
            current = self.manifest()
            if current is not None and manifest.version <= current.version:
                if (
                    manifest.version == current.version
                    and manifest.canonical == current.canonical
                ):
                    return current, False
                raise ManifestRejected(
                    "old-version",
                    f"assets manifest version {manifest.version} is not newer than "
                    f"the applied version {current.version}; pack it again with a "
                    "higher --version",
                )
            with self._store.transaction() as transaction:
                self._ledger.accept(transaction, signed)
                transaction.execute(
                    "INSERT INTO asset_manifests (version, body, applied_at)"
                    " VALUES (?, ?, ?)",
                    (manifest.version, manifest.canonical, self._clock.now()),
                )
                transaction.emit(
                    "bundle_applied",
                    {
                        "type": signed.type,
                        "version": signed.version,
                        "key": signed.key,
                        "nonce": signed.nonce,
                        "counts": {
                            "assets": len(manifest.entries),
                            "bytes": manifest.total_bytes,
                        },
                    },
                )
        except SignatureError as err:
            self._count_manifest_rejection(err.reason, err.message)
            raise ManifestRejected(err.reason, err.message) from err
        except ManifestRejected as err:
            self._count_manifest_rejection(err.reason, err.message)
            raise
        _LOGGER.info(
            "Applied assets manifest version %d signed by key %s: %d assets, %d bytes",
            manifest.version,
            signed.key,
            len(manifest.entries),
            manifest.total_bytes,
        )
        self.manifest_changed()
        return manifest, True

    async def import_folder(self, folder: Path) -> ImportResult:
        """Import a USB folder: its ``manifest.json``, then the blobs it lists.

        Files anywhere under ``folder`` are matched by SHA-256, whatever
        their names; links, FIFOs and devices are never read. Only the
        blobs that :meth:`blobs_to_fetch` allows are copied, so an import
        never evicts a blob of the manifest for an unpinned one. Raises
        ManifestRejected when the manifest is missing or rejected, before
        any blob is read.
        """
        path = folder / MANIFEST_NAME
        payload = await asyncio.to_thread(self._read_manifest, path)
        manifest, applied = self.accept_manifest(payload)
        result = ImportResult(manifest.version, applied)
        stored = self.stored()
        result.present = [
            e.sha256 for e in manifest.entries if stored.get(e.sha256) == e.size
        ]
        needed = {entry.sha256: entry.size for entry in self.blobs_to_fetch()}
        planned_bytes = sum(stored.values()) + sum(needed.values())
        for entry in self.missing():
            if entry.sha256 not in needed:
                message = self._no_room_message(entry, planned_bytes)
                result.over_budget[entry.sha256] = message
        sizes = set(needed.values())
        candidates = await asyncio.to_thread(
            candidate_files, folder, sizes, skip=(path, folder / DESCRIPTION_NAME)
        )
        result.unmatched_files = candidates.skipped
        for candidate in candidates.files:
            if not needed:
                break
            identity = candidates.identities[candidate]
            await self._import_file(candidate, identity, needed, result)
        self._settle(manifest, result)
        return result

    def _read_manifest(self, path: Path) -> bytes:
        """Return the bytes of a folder's ``manifest.json``, at most 4 MiB + 1.

        Raises ManifestRejected ``missing``, counted, when the file is
        absent, unreadable, or not a regular file (a link is not followed).
        """
        fix = (
            "give the folder that `nightbox assets pack` wrote manifest.json into, "
            "with manifest.json as a regular file"
        )
        try:
            return read_limited(path, MAX_BUNDLE_BYTES)
        except NotRegularFile as err:
            message = f"{err}; the box does not read it, so {fix}"
        except OSError as err:
            message = f"cannot read {path} ({err.strerror}); {fix}"
        self._count_manifest_rejection("missing", message)
        raise ManifestRejected("missing", message)

    def _settle(self, manifest: Manifest, result: ImportResult) -> None:
        """Move the blobs evicted during the import to ``over_budget``."""
        stored_now = self.stored()
        for sha256 in (*result.stored, *result.present):
            if sha256 not in stored_now:
                entry = manifest.entry(sha256)
                size = 0 if entry is None else entry.size
                result.over_budget[sha256] = (
                    f"blob {short_hash(sha256)} ({size} bytes) was evicted during "
                    "the import to make room for a blob of tonight's items"
                )
        result.stored = [sha256 for sha256 in result.stored if sha256 in stored_now]
        result.present = [sha256 for sha256 in result.present if sha256 in stored_now]
        accounted = (
            stored_now.keys() | result.rejected.keys() | result.over_budget.keys()
        )
        result.missing = [e for e in manifest.entries if e.sha256 not in accounted]

    async def _import_file(
        self,
        path: Path,
        identity: tuple[int, int],
        needed: dict[str, int],
        result: ImportResult,
    ) -> None:
        """Copy one candidate file into the cache if its hash is a needed one."""
        size = (await asyncio.to_thread(path.lstat)).st_size
        if size not in needed.values():
            # Every blob of this size was found in an earlier file.
            return
        try:
            written = await asyncio.to_thread(
                self.blobs.copy_path, path, limit=size, identity=identity
            )
        except OSError as err:
            # The file went away, became a link or FIFO, or cannot be read.
            _LOGGER.warning("Skipped %s while importing assets: %s", path, err)
            result.unmatched_files += 1
            return
        if written.sha256 in result.present:
            # A copy of a blob that is stored already.
            self.blobs.discard(written)
            return
        if written.sha256 not in needed:
            self.blobs.discard(written)
            same_size = sorted(sha for sha, s in needed.items() if s == written.size)
            listed = ", ".join(short_hash(sha) for sha in same_size)
            self._count_rejection(
                "hash-mismatch",
                f"file {path} has the size of blob {listed} but another SHA-256 "
                f"({short_hash(written.sha256)}...); it was not stored, so copy "
                "it again from the operator's folder",
            )
            result.unmatched_files += 1
            return
        sha256 = written.sha256
        try:
            await self.store_written(written, sha256, needed[sha256])
        except (BlobRejected, BudgetExceeded) as err:
            result.rejected[sha256] = str(err)
        else:
            result.stored.append(sha256)
        del needed[sha256]

    async def store_written(self, written: Written, sha256: str, size: int) -> None:
        """Keep a temporary file as blob ``sha256`` if it matches and fits.

        Raises BlobRejected or BudgetExceeded after counting and logging it;
        the temporary file is gone either way.
        """
        try:
            self.make_room(sha256, size)
        except BudgetExceeded as err:
            self.blobs.discard(written)
            self._count_rejection("over-budget", str(err))
            raise
        try:
            await asyncio.to_thread(self.blobs.commit, written, sha256, size)
        except BlobRejected as err:
            self._count_rejection(err.reason, err.message)
            raise
        self._record_blob(sha256, size)

    async def adopt_part(self, part: Path, sha256: str, size: int) -> None:
        """Keep a file assembled from sync chunks as blob ``sha256`` if it matches.

        Raises BlobRejected or BudgetExceeded after counting and logging it;
        ``part`` is gone either way.
        """
        try:
            self.make_room(sha256, size)
        except BudgetExceeded as err:
            await asyncio.to_thread(_remove, part)
            self._count_rejection("over-budget", str(err))
            raise
        try:
            await asyncio.to_thread(self.blobs.adopt, part, sha256, size)
        except BlobRejected as err:
            self._count_rejection(err.reason, err.message)
            raise
        self._record_blob(sha256, size)

    def make_room(self, sha256: str, size: int) -> None:
        """Evict unpinned blobs, least recently served first, until ``size`` fits.

        Raises BudgetExceeded, evicting nothing, when the pinned blobs leave
        too little room even with every unpinned blob gone.
        """
        budget = self.budget()
        pinned = self.pinned_hashes()
        rows = self._store.query(
            "SELECT sha256, size FROM asset_blobs WHERE sha256 != ?"
            " ORDER BY coalesce(last_served_at, 0), stored_at",
            (sha256,),
        )
        used = sum(row_size for _sha, row_size in rows)
        if used + size <= budget:
            return
        pinned_bytes = sum(s for sha, s in rows if sha in pinned)
        if pinned_bytes + size > budget:
            raise BudgetExceeded(
                sha256, self._over_budget_message(sha256, size, pinned_bytes)
            )
        for victim, victim_size in rows:
            if used + size <= budget:
                break
            if victim in pinned:
                continue
            self._evict(victim, "to make room")
            used -= victim_size

    async def verify(self) -> VerifyResult:
        """Hash every stored blob again; remove and count those that changed.

        A file on disk without a row (a crash between its rename and its
        row) is kept when its content matches its name and the manifest. A
        symbolic link in ``blobs/`` is removed as a link and counted; no
        link is followed, so nothing outside the cache is read or removed.
        """
        result = VerifyResult()
        rows = {
            sha: size
            for sha, size in self._store.query("SELECT sha256, size FROM asset_blobs")
        }
        scan = await asyncio.to_thread(self.blobs.scan)
        result.links_removed = scan.links
        self._count_links(scan.links)
        files = scan.files
        manifest = self.manifest()
        for sha256, size in rows.items():
            path = files.get(sha256)
            if path is None:
                self._forget(sha256)
                result.removed[sha256] = "missing-on-disk"
                self._count_rejection(
                    "missing-on-disk",
                    f"blob {short_hash(sha256)} has no file any more; it is fetched "
                    "or imported again",
                )
                continue
            result.checked += 1
            actual, actual_size = await asyncio.to_thread(_hash, path)
            if actual != sha256 or actual_size != size:
                await asyncio.to_thread(self.blobs.remove, sha256)
                self._forget(sha256)
                result.removed[sha256] = "changed-on-disk"
                self._count_rejection(
                    "changed-on-disk",
                    f"blob {short_hash(sha256)} changed on disk (now "
                    f"{short_hash(actual)}..., {actual_size} bytes); it was removed "
                    "and is fetched or imported again",
                )
                continue
            self._mark_verified(sha256)
        for sha256, path in files.items():
            if sha256 in rows:
                continue
            listed = None if manifest is None else manifest.entry(sha256)
            actual, actual_size = await asyncio.to_thread(_hash, path)
            if listed is not None and actual == sha256 and actual_size == listed.size:
                self._record_blob(sha256, actual_size)
                result.adopted.append(sha256)
                result.checked += 1
            else:
                await asyncio.to_thread(self.blobs.remove, sha256)
                result.removed[sha256] = "unrecorded"
        if result.removed:
            self.fetcher.wake()
        return result

    # Store and disk bookkeeping.

    def _record_blob(self, sha256: str, size: int) -> None:
        now = self._clock.now()
        with self._store.transaction() as transaction:
            transaction.execute(
                "INSERT INTO asset_blobs (sha256, size, stored_at, verified_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET"
                " size = excluded.size, verified_at = excluded.verified_at",
                (sha256, size, now, now),
            )
        _LOGGER.info("Stored asset blob %s (%d bytes)", short_hash(sha256), size)
        self.fetcher.wake()

    def _mark_verified(self, sha256: str) -> None:
        with self._store.transaction() as transaction:
            transaction.execute(
                "UPDATE asset_blobs SET verified_at = ? WHERE sha256 = ?",
                (self._clock.now(), sha256),
            )

    def _forget(self, sha256: str) -> None:
        with self._store.transaction() as transaction:
            transaction.execute("DELETE FROM asset_blobs WHERE sha256 = ?", (sha256,))
        self._served_written.pop(sha256, None)

    def _evict(self, sha256: str, reason: str) -> None:
        self.blobs.remove(sha256)
        self._forget(sha256)
        self.evicted += 1
        _LOGGER.info("Evicted asset blob %s %s", short_hash(sha256), reason)

    def _drop_unlisted(self) -> None:
        """Remove blobs that the current manifest no longer lists."""
        manifest = self.manifest()
        if manifest is None:
            return
        listed = {e.sha256: e.size for e in manifest.entries}
        for sha256, size in self.stored().items():
            if listed.get(sha256) != size:
                self._evict(sha256, "because the current manifest does not list it")

    def _enforce_budget(self) -> None:
        """Evict unpinned blobs while the stored ones exceed a lowered budget."""
        stored = self.stored()
        budget = self.budget()
        if sum(stored.values()) <= budget:
            return
        pinned = self.pinned_hashes()
        used = sum(stored.values())
        rows = self._store.query(
            "SELECT sha256, size FROM asset_blobs"
            " ORDER BY coalesce(last_served_at, 0), stored_at"
        )
        for sha256, size in rows:
            if used <= budget:
                break
            if sha256 not in pinned:
                self._evict(sha256, "to fit the asset budget")
                used -= size
        if used > budget:
            _LOGGER.warning(
                "Blobs pinned for tonight's items use %d bytes, more than the asset "
                "budget of %d bytes; raise [assets] budget_bytes",
                used,
                budget,
            )

    def _over_budget_message(self, sha256: str, size: int, pinned_bytes: int) -> str:
        """Describe a blob that pinned blobs leave no room for, with the bytes needed.

        The bytes needed are those of every pinned blob of the manifest
        (and this blob, if it is not pinned), so a budget raised to that
        figure makes room for all of them, not only for this blob.
        """
        manifest = self.manifest()
        pinned_items = self._pinned_items
        pinned_entries = [
            e for e in (manifest.entries if manifest else ()) if e.item in pinned_items
        ]
        needed = sum(entry.size for entry in pinned_entries)
        count = len(pinned_entries)
        pinned_blobs = "pinned blob" if count == 1 else f"{count} pinned blobs"
        if any(entry.sha256 == sha256 for entry in pinned_entries):
            verb = "needs" if count == 1 else "need"
            holder = f"the {pinned_blobs} of the manifest {verb}"
        elif count:
            holder = f"the {pinned_blobs} of the manifest and this blob need"
            needed += size
        else:
            holder = "this blob needs"
            needed = size
        needed = max(needed, pinned_bytes + size)
        return (
            f"blob {short_hash(sha256)} ({size} bytes) does not fit in the asset "
            f"budget of {self.budget()} bytes: blobs pinned for tonight's items use "
            f"{pinned_bytes} bytes, and {holder} {needed} bytes; "
            f"{self._budget_fix(needed)}, or list fewer assets for tonight's items"
        )

    def _no_room_message(self, entry: AssetEntry, used: int) -> str:
        """Describe an unpinned blob that is not stored because it does not fit.

        ``used`` is the bytes of the stored blobs and of those imported first.
        """
        manifest = self.manifest()
        total = entry.size if manifest is None else manifest.total_bytes
        return (
            f"blob {short_hash(entry.sha256)} ({entry.size} bytes, item "
            f"{entry.item}) does not fit in the asset budget of {self.budget()} "
            f"bytes beside the {used} bytes of blobs stored or imported first, and "
            "an unpinned blob never evicts another blob of the manifest; to keep "
            f"every listed blob, {self._budget_fix(total)}"
        )

    def _budget_fix(self, needed: int) -> str:
        """Name the budget values that are below ``needed``, and how to raise them."""
        manifest = self.manifest()
        configured = self._config.budget_bytes
        listed = None if manifest is None else manifest.budget_bytes
        site_limits = configured < needed
        manifest_limits = listed is not None and listed < needed
        if manifest_limits and not site_limits:
            return (
                f"the manifest's budget_bytes of {listed} limits the budget, so "
                f"pack the manifest again with a budget_bytes of at least {needed}"
            )
        if site_limits and not manifest_limits:
            return f"raise [assets] budget_bytes to at least {needed}"
        return (
            f"raise [assets] budget_bytes (now {configured}) and the manifest's "
            f"budget_bytes (now {listed}) to at least {needed}"
        )

    def _count_links(self, links: Iterable[Path]) -> None:
        for link in links:
            self._count_rejection(
                "symbolic-link",
                f"{link} was a symbolic link; the asset cache does not follow "
                "links, so the link was removed and its target left as it was",
            )

    def _count_rejection(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        self._reject_log.warning(reason, "Asset cache rejected a blob: %s", message)

    def _count_manifest_rejection(self, reason: str, message: str) -> None:
        self.rejected[f"manifest-{reason}"] += 1
        self._reject_log.warning(
            f"manifest-{reason}",
            "Asset cache rejected a manifest: %s: %s",
            reason,
            message,
        )

    def _version_text(self) -> str:
        manifest = self.manifest()
        return "none" if manifest is None else str(manifest.version)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _hash(path: Path) -> tuple[str, int]:
    """Return a blob file's hash and size, or empty ones if it cannot be read."""
    try:
        return hash_file(path)
    except OSError as err:
        # Gone, or swapped for a link or FIFO since the scan: the caller
        # removes it (a link as a link) as a changed blob.
        if not isinstance(err, FileNotFoundError):
            _LOGGER.warning("Could not hash asset blob file %s: %s", path, err)
        return "", 0
