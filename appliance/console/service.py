"""The requests of the terminal console (``api/console/<action>``), served by the box.

The console is the terminal ``console``; every action refuses any other
requester with ``not-console``. ``unlock`` turns the admin PIN into a short
edge token with ``console:admin`` and the terminal scopes, and the admin
actions need that scope. Queries read the store; changes commit with their
event like every other request (see :mod:`appliance.requests`).
"""

from __future__ import annotations

import logging
import math
import re
import zoneinfo
from typing import TYPE_CHECKING, Any

from appliance.console import _admin, _lockout
from appliance.console._jobs import KIND_READER_PROVISION, ConsoleJobs
from appliance.console._logs import LogRing
from appliance.console._nearby import MAX_WINDOW_S, RecentBatches
from appliance.console._overview import overview
from appliance.console._privacy import PrivacyActions
from appliance.console._system import network_interfaces
from appliance.console.pin import PinFile, PinFileError, pin_path
from appliance.errors import PayloadError
from appliance.remote.telemetry import software_version
from appliance.requests import Refusal, Request, RequestHandler
from appliance.store import Transaction
from appliance.studio._bus_api import console_actions
from appliance.tokens import TokenError
from provisioning.readers import ReaderArgumentError, ReaderRequest
from provisioning.readers.registration import validate_request
from provisioning.site_access import CONSOLE

if TYPE_CHECKING:
    from pathlib import Path

    from appliance.runtime import Box
    from appliance.wristbands import SiteBands

_LOGGER = logging.getLogger(__name__)

ADMIN_SCOPE = "console:admin"
# The scopes of an unlocked console: the box's administration and the work
# of every terminal (sell, refund, top up, hand out kits and drops).
UNLOCK_SCOPES = (
    ADMIN_SCOPE,
    "pos:charge",
    "pos:refund",
    "pos:void",
    "wallet:topup",
    "drops:claim",
    "drops:manage",
    "drops:pickup",
    "offers:redeem",
    "kits:issue",
    "optin:register",
)
UNLOCK_TTL_S = 15 * 60.0
DEFAULT_NEARBY_WINDOW_S = 5.0
_MAX_PIN_LENGTH = 64
_PORT_MAX_LENGTH = 200
_UPDATES_NOTE = (
    "the box installs software updates that the fleet operator sends as a "
    "signed update command; there is no update source on the venue network"
)
_SHORT_TEXT = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")


class ConsoleService:
    """Serves ``api/console/*`` for the terminal console."""

    def __init__(self, box: Box, bands: SiteBands, config_path: Path | None) -> None:
        self._box = box
        self._bands = bands
        self._pins = PinFile(pin_path(box.config.data_dir))
        self.recent_batches = RecentBatches()
        self.logs = LogRing(
            box.clock.now, zoneinfo.ZoneInfo(box.config.commerce.timezone)
        )
        self.jobs = ConsoleJobs(box, config_path)

    def start(self) -> None:
        """Keep recent batches and log lines, and serve the console's requests."""
        self._box.checkouts.add_batch_listener(self.recent_batches.add)
        self.logs.install()
        self.jobs.start()
        serve = self._box.requests.serve
        admin = _admin.AdminActions(self._box)
        privacy = PrivacyActions(self._box)
        queries: dict[str, RequestHandler] = {
            "overview": self._overview,
            "nearby": self._nearby,
            "optins": admin.optins,
            "system": self._system,
            "jobs": self._jobs,
        }
        for action, handler in queries.items():
            serve("console", action, self._console_only(handler), mutating=False)
        # Replies that carry a token are not stored: the box keeps only the
        # ids of the tokens it issues. A wellness note or a contact to erase
        # must not rest in the store as a request's fingerprint either.
        for action, handler, scope in (
            ("unlock", self._unlock, None),
            ("token-issue", admin.token_issue, ADMIN_SCOPE),
            ("wellness-add", self._box.wellness.add, ADMIN_SCOPE),
            ("erase-contact", privacy.erase_contact, ADMIN_SCOPE),
        ):
            serve(
                "console",
                action,
                self._console_only(handler),
                scope=scope,
                stores_reply=False,
            )
        admin_queries: dict[str, RequestHandler] = {
            "tokens": admin.tokens,
            "promos": admin.promos,
            # Log lines name devices, token ids and errors, so they need the
            # admin PIN; the facts of ``system`` do not.
            "logs": self._logs,
            "wellness-list": self._box.wellness.list_notes,
        }
        for action, handler in admin_queries.items():
            serve(
                "console",
                action,
                self._console_only(handler),
                scope=ADMIN_SCOPE,
                mutating=False,
            )
        admin_changes: dict[str, RequestHandler] = {
            "token-revoke": admin.token_revoke,
            "drop-create": admin.drop_create,
            "promo-create": admin.promo_create,
            "kit-restock": admin.kit_restock,
            "reader-provision": self._reader_provision,
            "wellness-delete": self._box.wellness.delete,
            # The camera studio's stream, or a no-studio rejection.
            **console_actions(self._box.studio),
        }
        for action, handler in admin_changes.items():
            serve("console", action, self._console_only(handler), scope=ADMIN_SCOPE)

    async def stop(self) -> None:
        """Finish or interrupt running jobs and stop keeping log lines."""
        await self.jobs.stop()
        self.logs.uninstall()

    @staticmethod
    def _console_only(handler: RequestHandler) -> RequestHandler:
        def serve_console(transaction: Transaction, request: Request) -> dict[str, Any]:
            if request.requester_kind != "terminal" or request.requester != CONSOLE:
                raise Refusal(
                    "not-console",
                    f"console requests come from the terminal {CONSOLE!r} only, not "
                    f"{request.requester_kind} {request.requester!r}",
                )
            return handler(transaction, request)

        return serve_console

    def _unlock(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        pin = request.data.get("pin")
        if not isinstance(pin, str) or not 0 < len(pin) <= _MAX_PIN_LENGTH:
            raise PayloadError("field 'pin' must be the console PIN as a string")
        if not self._pins.exists():
            raise Refusal(
                "no-pin",
                "no console PIN is set; run `nightbox console set-pin --config FILE` "
                "or the setup wizard on the box",
            )

        now = self._box.clock.now()
        state = _lockout.read_state(transaction)
        retry_after_s = state.retry_after_s(now)
        if retry_after_s > 0:
            refusal = _locked_out(retry_after_s)
            if state.locked_at is not None and now < state.locked_at:
                refusal.also_commit(
                    lambda write: _lockout.restart_lock(write, state, now)
                )
            raise refusal

        # NOTE: scrypt runs on the event loop here, tens of milliseconds on a
        # Raspberry Pi; the lock-out bounds how often it runs.
        try:
            right = self._pins.verify(pin)
        except (FileNotFoundError, PinFileError) as err:
            raise Refusal(
                "no-pin",
                f"{err}; set the PIN with `nightbox console set-pin --config FILE`",
            ) from err
        if not right:
            raise self._wrong_pin(state, now)

        _lockout.record_success(transaction)
        try:
            issued = self._box.tokens.issue_in(
                transaction, CONSOLE, UNLOCK_SCOPES, UNLOCK_TTL_S
            )
        except TokenError as err:
            raise Refusal("token-error", err.message) from err
        _LOGGER.info("Console unlocked; token %s", issued.claims.token_id)
        claims = issued.claims
        return {
            "token": issued.token,
            "token_id": claims.token_id,
            "expires_at": claims.expires_at,
            "scopes": sorted(claims.scopes),
            "ttl_s": int(claims.expires_at - claims.issued_at),
        }

    def _wrong_pin(self, state: _lockout.LockoutState, now: float) -> Refusal:
        def record(transaction: Transaction) -> None:
            _lockout.record_failure(transaction, now)

        failures = state.failures + 1
        _LOGGER.warning(
            "Console unlock with a wrong PIN (%d of %d in a row)",
            failures,
            _lockout.MAX_FAILURES,
        )
        if failures >= _lockout.MAX_FAILURES:
            locked_s = min(
                _lockout.FIRST_LOCK_S * 2**state.lockouts, _lockout.MAX_LOCK_S
            )
            return _locked_out(locked_s).also_commit(record)
        attempts_left = _lockout.MAX_FAILURES - failures
        return Refusal(
            "wrong-pin",
            f"wrong PIN; {attempts_left} attempts left before the console locks",
            attempts_left=attempts_left,
        ).also_commit(record)

    def _overview(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        return overview(self._box, transaction)

    def _nearby(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        reader = data.get("reader")
        if reader is not None and (
            not isinstance(reader, str) or self._box.config.reader(reader) is None
        ):
            known = ", ".join(r.id for r in self._box.config.readers) or "none"
            raise PayloadError(
                f"field 'reader' = {reader!r:.40} is not a reader of this site "
                f"({known})"
            )
        window_s = data.get("window_s", DEFAULT_NEARBY_WINDOW_S)
        if (
            isinstance(window_s, bool)
            or not isinstance(window_s, int | float)
            or not math.isfinite(window_s)
            or not 1 <= window_s <= MAX_WINDOW_S
        ):
            raise PayloadError(
                f"field 'window_s' must be 1 to {MAX_WINDOW_S:.0f} seconds, "
                f"not {window_s!r:.20}"
            )
        bands = self.recent_batches.nearby(
            self._bands, self._box.clock.now(), float(window_s), reader
        )
        return {"bands": bands}

    def _system(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        box = self._box
        return {
            "now": round(box.clock.now(), 3),
            "clock": {"trusted": box.clock.trusted, "source": str(box.clock.source)},
            "version": software_version(),
            "uptime_s": box.management.telemetry()["uptime_s"],
            "broker": box.broker_kind,
            "network": network_interfaces(),
            "updates": {"available": False, "note": _UPDATES_NOTE},
        }

    def _logs(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        return {"now": round(self._box.clock.now(), 3), "lines": self.logs.lines()}

    def _jobs(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        return {"jobs": self.jobs.recent()}

    def _reader_provision(
        self, transaction: Transaction, request: Request
    ) -> dict[str, Any]:
        reader_request = _reader_request(request.data)
        if not self.jobs.has_site_file:
            raise Refusal(
                "no-site-file",
                "this box runs without a site file (the demo), so it cannot add "
                "readers; run the box with `nightbox run --config FILE`",
            )
        try:
            validate_request(reader_request, self._box.config)
        except ReaderArgumentError as err:
            raise PayloadError(str(err)) from err
        running = self.jobs.running(KIND_READER_PROVISION)
        if running is not None:
            raise Refusal(
                "busy",
                f"job {running} is provisioning a reader; wait until it is done",
                job=running,
            )
        return {"job": self.jobs.start_reader_provision(transaction, reader_request)}


def _locked_out(retry_after_s: float) -> Refusal:
    seconds = math.ceil(retry_after_s)
    return Refusal(
        "locked-out",
        f"too many wrong PINs; the console is locked for {seconds} s",
        retry_after_s=seconds,
    )


def _reader_request(data: dict[str, Any]) -> ReaderRequest:
    """Return the reader-provision request's fields, checked for their types."""
    port = data.get("port")
    if not isinstance(port, str) or not 0 < len(port) <= _PORT_MAX_LENGTH:
        raise PayloadError(
            "field 'port' must be the board's serial device, like /dev/ttyUSB0, "
            f"not {port!r:.40}"
        )
    role = data.get("role")
    if role not in ("exit", "kit"):
        raise PayloadError(f"field 'role' must be 'exit' or 'kit', not {role!r:.20}")
    zone = data.get("zone")
    if not isinstance(zone, str) or not _SHORT_TEXT.match(zone):
        raise PayloadError(
            "field 'zone' must be 1-32 lowercase letters, digits and '-', such "
            f"as main-door, not {zone!r:.40}"
        )
    reader_id = data.get("id")
    if reader_id is not None and (
        not isinstance(reader_id, str) or not _SHORT_TEXT.match(reader_id)
    ):
        raise PayloadError(
            "field 'id' must be 1-32 lowercase letters, digits and '-', such as "
            f"exit-3, not {reader_id!r:.40}"
        )
    uplink = data.get("uplink", "wifi")
    if uplink not in ("wifi", "serial"):
        raise PayloadError(
            f"field 'uplink' must be 'wifi' or 'serial', not {uplink!r:.20}"
        )
    kit_stock = data.get("kit_stock")
    if kit_stock is not None and (
        isinstance(kit_stock, bool)
        or not isinstance(kit_stock, int)
        or not 0 <= kit_stock <= 100_000
    ):
        raise PayloadError(
            f"field 'kit_stock' must be a whole number from 0 to 100000, "
            f"not {kit_stock!r:.20}"
        )
    return ReaderRequest(
        role=role,
        zone=zone,
        port=port,
        reader_id=reader_id,
        uplink=uplink,
        kit_stock=kit_stock,
    )
