"""Remote management: signed commands, telemetry and Home Assistant discovery.

Commands arrive as signed documents (:mod:`appliance.signed_documents`) on
``nightbox/<site>/box/<box>/cmnd/<name>``, from the box's own broker or,
through the sync service, from the fleet's upstream broker. A command runs
only when it is signed by one of ``[fleet] operator_keys``, is for this site
and this box, is within its validity (when the box's clock is trusted), and
carries a nonce never used before. Its nonce is recorded in the transaction
of its effect, or in a transaction of its own for commands whose effect is
not in the store. Every command gets one result on ``stat/result``.

The box also publishes its telemetry, retained, on ``tele/state`` on every
connect and every ``[fleet] telemetry_interval_s``, and the Home Assistant
discovery configs of its sensors.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import orjson

from appliance._tasks import cancel_and_wait
from appliance.bus.client import Incoming
from appliance.errors import ConfigError, PayloadError
from appliance.remote import site_file
from appliance.remote.bundles import BundleApplier
from appliance.remote.document_types import (
    BUILTIN_COMMANDS,
    MAX_COMMAND_BYTES,
    REGISTERED_COMMANDS,
)
from appliance.remote.homeassistant import HomeAssistantDiscovery
from appliance.remote.telemetry import Telemetry, software_version
from appliance.signed_documents import (
    DocumentLedger,
    SignatureError,
    SignedDocument,
    verify_document,
)

if TYPE_CHECKING:
    from appliance.runtime import Box

_LOGGER = logging.getLogger(__name__)

# Commands received on the local bus and not yet handled. Operators send a
# few, so a full queue means that something floods the command topic.
MAX_QUEUED_COMMANDS = 64
# The time the sync service gets to publish a restart's result upstream
# before the box stops its services, in seconds. A restart received on the
# local bus publishes its result first and restarts at once.
RESTART_GRACE_S = 1.0
# At most one warning per key, such as a rejection reason, in this many
# seconds. The counts in the box status cover the rest.
_LOG_INTERVAL_S = 5.0
_TOKEN_ID = re.compile(r"[0-9a-f]{32}\Z")
_MAX_REASON_CHARS = 200
_MAX_KEY_CHARS = 200

CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class CommandError(Exception):
    """A command that cannot run, with a one-word ``reason`` and a ``message``.

    Registered command handlers raise it to reject their arguments
    (``invalid-argument``) or to report that they failed (``failed``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class RemoteManagement:
    """The remote management of one box: signed commands, telemetry, discovery."""

    def __init__(self, box: Box, *, config_path: Path | None) -> None:
        self._box = box
        self._config = box.config
        self._config_path = config_path
        self._ledger = DocumentLedger()
        self._handlers: dict[str, CommandHandler] = {}
        # Imported here: the updater's handler raises this module's CommandError.
        from appliance.update.command import updatable, update_command

        # A box runs the updater when it was installed with application slots.
        if updatable(box.config.update):
            self._handlers["update"] = update_command(box.config)
        self.bundles = BundleApplier(
            box.store, box.config, box.clock, box.tokens, config_path=config_path
        )
        self.telemetry_source = Telemetry(
            box.config,
            box.store,
            box.clock,
            box.checkouts.last_batch,
            sync_state=self._sync_state,
        )
        self.discovery = HomeAssistantDiscovery(
            box.bus, box.config, version=software_version()
        )
        self.restart_requested = asyncio.Event()
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(
            MAX_QUEUED_COMMANDS
        )
        self._worker: asyncio.Task[None] | None = None
        self._telemetry_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._running = False
        self._last_log: dict[str, float] = {}

    def register(self, name: str, handler: CommandHandler) -> None:
        """Run ``handler`` for command ``name`` (such as ``clip`` or ``update``).

        The handler receives the command's arguments (its body without
        ``box``) after the document was verified and its nonce recorded, and
        returns the ``result`` object. It raises CommandError to reject.
        """
        if name in BUILTIN_COMMANDS:
            raise ValueError(f"command {name!r} is built in and cannot be replaced")
        self._handlers[name] = handler

    async def start(self) -> None:
        """Subscribe to commands and readers, and publish telemetry and discovery."""
        bus = self._box.bus
        topics = bus.topics
        self._running = True
        bus.subscribe(topics.command(self._config.box_id, "+"), self._on_command)
        bus.subscribe(f"{topics.prefix}/reader/+/availability", self._on_reader)
        bus.on_connect(self.publish_telemetry)
        self.discovery.start()
        self._worker = asyncio.create_task(self._run_commands(), name="remote-commands")
        self._telemetry_task = asyncio.create_task(
            self._publish_telemetry_forever(), name="remote-telemetry"
        )
        if bus.connected.is_set():
            # The connect callbacks ran before these were registered.
            await self.publish_telemetry()
            await self.discovery.publish()

    async def stop(self) -> None:
        """Stop handling commands and publishing telemetry."""
        self._running = False
        self.discovery.stop()
        await cancel_and_wait(self._telemetry_task)
        await cancel_and_wait(self._worker)
        await cancel_and_wait(self._restart_task)

    def status(self) -> dict[str, Any]:
        """Return the counts of accepted and rejected commands and bundles."""
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected)}

    def telemetry(self) -> dict[str, Any]:
        """Return the telemetry ``data`` object documented in docs/mqtt.md."""
        return self.telemetry_source.snapshot()

    async def publish_telemetry(self) -> None:
        """Publish the retained telemetry once."""
        if not self._running:
            return
        bus = self._box.bus
        topic = bus.topics.telemetry(self._config.box_id)
        try:
            await bus.publish_json(topic, {"data": self.telemetry()}, retain=True)
        except (aiomqtt.MqttError, TimeoutError, sqlite3.Error) as err:
            self._log_limited("telemetry", "Could not publish telemetry: %s", err)

    async def handle_command(self, name: str, payload: bytes) -> dict[str, Any]:
        """Verify and run command ``name``, and return the result ``data`` object.

        It raises no Exception, for bad input or a failing handler. Every
        rejection is a result with ``ok`` false, a ``reason`` and a
        ``message``, and is counted. The log gets at most one warning per
        reason every _LOG_INTERVAL_S seconds.
        """
        nonce: str | None = None
        try:
            document = _parse(payload)
            nonce = _readable_nonce(document)
            signed = self._verify(name, document)
            result = await self._run(signed)
        except SignatureError as err:
            return self._rejected("command", name, nonce, err.reason, err.message)
        except CommandError as err:
            return self._rejected("command", name, nonce, err.reason, err.message)
        except Exception as err:
            _LOGGER.exception("Command %s (nonce %s) failed", name, nonce)
            return self._rejected(
                "command",
                name,
                nonce,
                "internal-error",
                f"the box failed to run the command ({type(err).__name__}); "
                "its log has the details",
            )
        self.accepted[name] += 1
        _LOGGER.info(
            "Ran command %s signed by key %s (nonce %s)", name, signed.key, nonce
        )
        return {
            "kind": "command",
            "type": name,
            "nonce": nonce,
            "ok": True,
            "result": result,
        }

    async def handle_bundle(self, bundle_type: str, payload: bytes) -> dict[str, Any]:
        """Apply a signed bundle with the box's BundleApplier and return its result."""
        try:
            result = self.bundles.apply(bundle_type, payload)
        except Exception as err:
            # BundleApplier.apply reports its own failures, so only a failure
            # while it reports one reaches this point.
            _LOGGER.exception("Bundle %s failed", bundle_type)
            return self._rejected(
                "bundle",
                bundle_type,
                _payload_nonce(payload),
                "internal-error",
                f"the box failed to apply the bundle ({type(err).__name__}); "
                "its log has the details",
            )
        if result.get("ok"):
            self.accepted[f"bundle/{bundle_type}"] += 1
        else:
            self.rejected[str(result.get("reason", "unknown"))] += 1
        return result

    # Verification and dispatch.

    def _verify(self, name: str, document: Any) -> SignedDocument:
        keys = self._config.fleet.operator_keys
        if not keys:
            raise SignatureError(
                "unknown-key",
                "this box accepts no commands because [fleet] operator_keys is "
                "empty in its site configuration; add the operator's public key "
                "file there and restart the box",
            )
        signed = verify_document(
            document,
            keys,
            site=self._config.site_id,
            kind="command",
            clock=self._box.clock,
        )
        if signed.type != name:
            raise SignatureError(
                "malformed",
                f"the document is a {signed.type!r:.40} command but arrived on the "
                f"topic of command {name!r:.40}; send it on cmnd/{signed.type}",
            )
        box_id = signed.body.get("box")
        if box_id != self._config.box_id:
            raise CommandError(
                "wrong-box",
                f"the command is for box {box_id!r:.40}, not this box "
                f"{self._config.box_id!r}; sign one with body.box set to it",
            )
        return signed

    async def _run(self, signed: SignedDocument) -> dict[str, Any]:
        arguments = {key: value for key, value in signed.body.items() if key != "box"}
        name = signed.type
        if name == "status":
            _expect(arguments, name)
            self._accept_alone(signed)
            return self._box.status()
        if name == "config-get":
            return self._config_get(signed, arguments)
        if name == "config-set":
            return self._config_set(signed, arguments)
        if name in ("drop-start", "drop-stop"):
            return self._drop_state(signed, arguments)
        if name == "token-revoke":
            return self._token_revoke(signed, arguments)
        if name == "restart":
            return self._restart(signed, arguments)
        return await self._run_registered(signed, arguments)

    async def _run_registered(
        self, signed: SignedDocument, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        name = signed.type
        handler = self._handlers.get(name)
        if handler is None and name in REGISTERED_COMMANDS:
            raise CommandError(
                "unavailable",
                f"this box runs no {REGISTERED_COMMANDS[name]}, so it cannot run "
                f"command {name!r}",
            )
        if handler is None:
            known = sorted((*BUILTIN_COMMANDS, *REGISTERED_COMMANDS, *self._handlers))
            raise CommandError(
                "unknown-command",
                f"command {name!r:.40} is unknown; use one of {', '.join(known)}",
            )
        self._accept_alone(signed)
        return await handler(arguments)

    def _accept_alone(self, signed: SignedDocument) -> None:
        """Record the nonce of a command whose effect is not in the store."""
        with self._box.store.transaction() as transaction:
            self._ledger.accept(transaction, signed)

    # The built-in commands.

    def _config_get(
        self, signed: SignedDocument, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        _expect(arguments, "config-get", optional=("key",))
        key = _key_argument(arguments, required=False)
        config_path = self._require_config_path("config-get")
        self._accept_alone(signed)
        try:
            value = site_file.config_get(config_path, key)
        except ConfigError as err:
            raise CommandError("invalid-argument", str(err)) from err
        return {"key": key, "value": value}

    def _config_set(
        self, signed: SignedDocument, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        _expect(arguments, "config-set", required=("key", "value"))
        key = _key_argument(arguments, required=True)
        assert key is not None
        config_path = self._require_config_path("config-set")
        value = arguments["value"]
        try:
            # The file is written before the nonce commits. A failed commit
            # leaves the change in place and the command may be sent again.
            with self._box.store.transaction() as transaction:
                self._ledger.accept(transaction, signed)
                site_file.config_set(config_path, key, value)
        except ConfigError as err:
            raise CommandError("invalid-argument", str(err)) from err
        _LOGGER.info("Set %s in %s; it applies after a restart", key, config_path)
        # The result goes to every account that reads stat/result.
        public_value = site_file.hide_secrets(value, key.rsplit(".", 1)[-1])
        return {"key": key, "value": public_value, "restart_required": True}

    def _drop_state(
        self, signed: SignedDocument, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        name = signed.type
        _expect(arguments, name, required=("drop",))
        drop_id = arguments["drop"]
        if not isinstance(drop_id, str):
            raise CommandError(
                "invalid-argument",
                f"argument 'drop' must be a drop id string, not {drop_id!r:.40}",
            )
        # DropService checks the drop and writes its event. The operator's
        # key id is recorded as the author of the change.
        state = "live" if name == "drop-start" else "stopped"
        try:
            with self._box.store.transaction() as transaction:
                self._ledger.accept(transaction, signed)
                return self._box.drops.set_state(
                    transaction, drop_id, state, by=f"key-{signed.key}"
                )
        except PayloadError as err:
            raise CommandError("invalid-argument", str(err)) from err

    def _token_revoke(
        self, signed: SignedDocument, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        _expect(arguments, "token-revoke", required=("token",), optional=("reason",))
        token_id = arguments["token"]
        if not isinstance(token_id, str) or not _TOKEN_ID.match(token_id):
            raise CommandError(
                "invalid-argument",
                f"argument 'token' = {token_id!r:.60} is invalid; give the token "
                "id (jti), 32 lowercase hex digits, as 'nightbox token list' shows",
            )

        reason = arguments.get("reason", "revoked by the operator")
        if not isinstance(reason, str) or not 0 < len(reason) <= _MAX_REASON_CHARS:
            raise CommandError(
                "invalid-argument",
                f"argument 'reason' must be a text of 1 to {_MAX_REASON_CHARS} "
                f"characters, not {reason!r:.40}",
            )

        store = self._box.store
        if (
            store.query_one("SELECT 1 FROM edge_tokens WHERE id = ?", (token_id,))
            is None
        ):
            raise CommandError(
                "invalid-argument",
                f"token {token_id} was not issued by this box; 'nightbox token "
                "list' on the box shows the issued tokens",
            )

        # The nonce and the revocation commit together.
        with store.transaction() as transaction:
            self._ledger.accept(transaction, signed)
            revoked = self._box.tokens.revoke_in(transaction, token_id, reason)
        if revoked:
            _LOGGER.info("Revoked token %s by operator key %s", token_id, signed.key)
        return {"token": token_id, "revoked": revoked}

    def _restart(
        self, signed: SignedDocument, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        _expect(arguments, "restart")
        result: dict[str, Any] = {"restarting": True}
        if self._config_path is not None:
            # The restart reads the file again and keeps the running
            # configuration when the file is invalid, so the operator learns
            # here which one the box will run.
            error = site_file.file_error(self._config_path)
            result["config_valid"] = error is None
            if error is not None:
                result["config_error"] = error
                _LOGGER.warning(
                    "Restart requested while %s is invalid, so the box keeps "
                    "its previous configuration: %s",
                    self._config_path,
                    error,
                )
        self._accept_alone(signed)
        self._restart_task = asyncio.create_task(
            self._restart_after_grace(), name="remote-restart"
        )
        return result

    def _require_config_path(self, name: str) -> Path:
        if self._config_path is None:
            raise CommandError(
                "unavailable",
                f"this box was started without a configuration file, so it cannot "
                f"run {name}; start it with 'nightbox run --config FILE'",
            )
        return self._config_path

    async def _restart_after_grace(self) -> None:
        await asyncio.sleep(RESTART_GRACE_S)
        self._request_restart()

    def _request_restart(self) -> None:
        if not self.restart_requested.is_set():
            _LOGGER.info("Restarting the box's services as a command requested")
            self.restart_requested.set()

    # The local bus.

    async def _on_command(self, incoming: Incoming) -> None:
        name = incoming.topic.rsplit("/", 1)[-1]
        if not self._running:
            self._log_limited(
                "stopped", "Dropped command %s because the box is stopping", name[:40]
            )
            return
        try:
            self._queue.put_nowait((name, incoming.payload))
        except asyncio.QueueFull:
            self._rejected(
                "command",
                name,
                None,
                "busy",
                f"{MAX_QUEUED_COMMANDS} commands are waiting; the command was "
                "dropped, so send it again later",
            )

    async def _run_commands(self) -> None:
        bus = self._box.bus
        topic = bus.topics.command_result(self._config.box_id)
        while True:
            name, payload = await self._queue.get()
            result = await self.handle_command(name, payload)
            try:
                await bus.publish_json(topic, {"data": result})
            except (aiomqtt.MqttError, TimeoutError) as err:
                self._log_limited(
                    "result", "Could not publish the result of %s: %s", name, err
                )
            if result["ok"] and name == "restart":
                # The result is out, so the restart need not wait.
                self._request_restart()

    async def _on_reader(self, incoming: Incoming) -> None:
        reader_id = incoming.topic.rsplit("/", 2)[-2]
        state = incoming.payload.decode("utf-8", "replace").strip()[:16]
        self.telemetry_source.reader_availability[reader_id] = state

    async def _publish_telemetry_forever(self) -> None:
        interval_s = self._config.fleet.telemetry_interval_s
        while True:
            await asyncio.sleep(interval_s)
            if self._box.bus.connected.is_set():
                await self.publish_telemetry()

    # Results, counts and logs.

    def _rejected(
        self, kind: str, name: str, nonce: str | None, reason: str, message: str
    ) -> dict[str, Any]:
        self.rejected[reason] += 1
        self._log_limited(
            f"rejected-{reason}",
            "Rejected %s %s (nonce %s): %s: %s",
            kind,
            name[:40],
            nonce,
            reason,
            message,
        )
        return {
            "kind": kind,
            "type": name,
            "nonce": nonce,
            "ok": False,
            "reason": reason,
            "message": message,
        }

    def _log_limited(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            self._last_log[key] = now
            _LOGGER.warning(message, *args)

    def _sync_state(self) -> dict[str, Any]:
        # The box creates its optional sync service after this object.
        sync = self._box.sync
        return {} if sync is None else sync.state()


def _parse(payload: bytes) -> Any:
    if len(payload) > MAX_COMMAND_BYTES:
        raise SignatureError(
            "malformed",
            f"the command has {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}",
        )
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise SignatureError(
            "malformed", f"the command is not UTF-8 JSON: {err}"
        ) from err


def _payload_nonce(payload: bytes) -> str | None:
    """Return the nonce of a JSON payload, or None when it has no readable one."""
    try:
        return _readable_nonce(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return None


def _readable_nonce(document: Any) -> str | None:
    nonce = document.get("nonce") if isinstance(document, dict) else None
    if isinstance(nonce, str) and re.fullmatch(r"[0-9a-f]{32}", nonce):
        return nonce
    return None


def _expect(
    arguments: dict[str, Any],
    name: str,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> None:
    """Raise CommandError unless ``arguments`` has exactly the allowed names."""
    missing = [argument for argument in required if argument not in arguments]
    if missing:
        raise CommandError(
            "invalid-argument",
            f"command {name} needs argument {missing[0]!r} in its body",
        )
    allowed = set(required) | set(optional)
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none besides 'box'"
        raise CommandError(
            "invalid-argument",
            f"command {name} has no argument {unknown[0]!r:.40}; it accepts {accepted}",
        )


def _key_argument(arguments: dict[str, Any], *, required: bool) -> str | None:
    key = arguments.get("key")
    if key is None and not required:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_CHARS:
        raise CommandError(
            "invalid-argument",
            f"argument 'key' must be a dotted configuration key such as "
            f"'wallet.max_charge', not {key!r:.60}",
        )
    return key
