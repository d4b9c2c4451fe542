"""The studio on the bus: creator stations' requests, console actions, ``clip``.

Creator stations send ``api/studio/clip``, ``drop-open`` and ``overlay``
with a ``stream:publish`` edge token. The terminal console sends
``console/stream-start``, ``stream-stop`` and ``stream-clip`` with its
admin token (served by :mod:`appliance.console.service`). The fleet sends
the signed command ``clip``. Request handlers run inside the request
server's transaction and cannot wait for a clip file, so they start the
clip and reply with its id. The ``clip_written`` event and the stream
state report the file once it is stored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from appliance.errors import PayloadError
from appliance.remote.commands import CommandError, CommandHandler
from appliance.requests import Refusal, Request, RequestHandler
from appliance.studio._actions import (
    REQUEST_KEY_FIELD,
    StudioError,
    check_fields,
    message_field,
    note_field,
    open_drop,
)
from appliance.studio.service import Studio, public_clip

if TYPE_CHECKING:
    from appliance.runtime import Box
    from appliance.store import Transaction

_LOGGER = logging.getLogger(__name__)

PUBLISH_SCOPE = "stream:publish"
_COMMAND_ARGUMENTS = {"note"}
_BUS_FIELDS = frozenset({REQUEST_KEY_FIELD})


def serve_studio(box: Box, studio: Studio) -> None:
    """Serve ``api/studio/*`` and register the signed command ``clip``."""
    serve = box.requests.serve
    serve("studio", "clip", _clip_request(studio), scope=PUBLISH_SCOPE)
    serve("studio", "drop-open", _drop_open_request(box), scope=PUBLISH_SCOPE)
    serve("studio", "overlay", _overlay_request(studio), scope=PUBLISH_SCOPE)
    box.management.register("clip", _clip_command(studio))


def console_actions(studio: Studio | None) -> dict[str, RequestHandler]:
    """Return the console's ``stream-*`` handlers, which reject without a studio."""
    if studio is None:
        return {
            action: _no_studio
            for action in ("stream-start", "stream-stop", "stream-clip")
        }

    def start(transaction: Transaction, request: Request) -> dict[str, Any]:
        check_fields(request.data, "start", also=_BUS_FIELDS)
        studio.schedule(studio.start_stream, "stream-start")
        return {"running": True, "state": "starting"}

    def stop(transaction: Transaction, request: Request) -> dict[str, Any]:
        check_fields(request.data, "stop", also=_BUS_FIELDS)
        studio.schedule(studio.stop_stream, "stream-stop")
        return {"running": False, "state": "stopping"}

    def clip(transaction: Transaction, request: Request) -> dict[str, Any]:
        check_fields(request.data, "clip", also=_BUS_FIELDS)
        return _begin_clip(studio, "console", note_field(request.data))

    return {"stream-start": start, "stream-stop": stop, "stream-clip": clip}


def _no_studio(transaction: Transaction, request: Request) -> dict[str, Any]:
    raise Refusal(
        "no-studio",
        "this box has no camera studio; add a [studio] table to the site file "
        "and restart the box",
    )


def _begin_clip(studio: Studio, trigger: str, note: str | None) -> dict[str, Any]:
    try:
        job = studio.begin_clip(trigger, note)
    except StudioError as err:
        raise Refusal(err.code, err.message) from err
    return {
        "clip": job.id,
        "state": "writing",
        "buffer_s": round(studio.stream.ring.duration_s, 3),
    }


def _clip_request(studio: Studio) -> RequestHandler:
    def handle(transaction: Transaction, request: Request) -> dict[str, Any]:
        check_fields(request.data, "clip", also=_BUS_FIELDS)
        return _begin_clip(studio, "request", note_field(request.data))

    return handle


def _drop_open_request(box: Box) -> RequestHandler:
    def handle(transaction: Transaction, request: Request) -> dict[str, Any]:
        check_fields(request.data, "drop-open", also=_BUS_FIELDS)
        try:
            return open_drop(box, transaction, request.data, by=request.requester)
        except StudioError as err:
            raise Refusal(err.code, err.message) from err

    return handle


def _overlay_request(studio: Studio) -> RequestHandler:
    def handle(transaction: Transaction, request: Request) -> dict[str, Any]:
        check_fields(request.data, "overlay", also=_BUS_FIELDS)
        reply = studio.show_message(message_field(request.data))
        _LOGGER.info("Overlay message %s by %s", reply["display"], request.requester)
        return reply

    return handle


def _clip_command(studio: Studio) -> CommandHandler:
    async def handle(arguments: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(arguments) - _COMMAND_ARGUMENTS)
        if unknown:
            raise CommandError(
                "invalid-argument",
                f"command 'clip' takes only 'note', not {unknown[0]!r:.40}",
            )
        try:
            note = note_field(arguments)
            record = await studio.clip("command", note)
        except PayloadError as err:
            raise CommandError("invalid-argument", str(err)) from err
        except StudioError as err:
            raise CommandError("failed", err.message) from err
        return public_clip(record)

    return handle
