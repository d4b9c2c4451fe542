"""Reading the portal's form posts strictly: size, type, encoding and fields.

Browsers send the portal's forms as ``application/x-www-form-urlencoded``
UTF-8. Anything else is rejected before a field is looked at, with a
:class:`FormError` whose message names the field (or the header) and what
to send instead. Messages never repeat a field's value, because values are
guest data.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote_plus

from aiohttp import web

from appliance.errors import NightboxError

FORM_TYPE = "application/x-www-form-urlencoded"
# The largest form the portal accepts, in bytes. Its largest form, the
# opt-in, is under 1 KiB even with a 254-character email address.
MAX_FORM_BYTES = 8 * 1024
# The maximum length of a field's value in characters, above every field
# the portal reads.
MAX_FIELD_CHARS = 512
# A form body must arrive within this many seconds of its request head.
FORM_TIMEOUT_S = 5.0


class FormError(NightboxError, ValueError):
    """A form post was rejected; ``status`` is the HTTP status of the response.

    ``field`` names the form field or header at fault, or is None when the
    body as a whole is.
    """

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


class CsrfError(NightboxError):
    """A form post came without a valid CSRF token: HTTP 403, nothing changed.

    ``reason`` is the rejection reason the portal counts: ``csrf-missing``
    for a form without a token or with an empty one, ``csrf-invalid`` for a
    token that does not fit the browser's cookies.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def read_form(
    request: web.Request, fields: Iterable[str], *, timeout_s: float
) -> dict[str, str]:
    """Read the fields of a form post, each given at most once.

    ``fields`` are the names the form may contain. Any other name is
    rejected, and a post without a body is an empty form. Raises FormError
    with status 413 for a body over :data:`MAX_FORM_BYTES`, 408 for a body
    that does not arrive within ``timeout_s``, and 400 for a wrong content
    type, a body that is not UTF-8, a malformed pair, an unknown or repeated
    field, or a value that is too long or contains control characters.
    """
    if not request.body_exists:
        # A post without a body has no fields whatever its Content-Type, so
        # it reaches the CSRF check and gets 403 like any form without a token.
        return {}
    content_type = request.headers.get("Content-Type", "")
    media_type, _, parameters = content_type.partition(";")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"')
    if media_type.strip().lower() != FORM_TYPE or charset not in ("", "utf-8"):
        raise FormError(
            400,
            "Content-Type",
            f"the Content-Type of a form must be {FORM_TYPE} in UTF-8; send "
            "it from the portal's own page",
        )
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise FormError(
            413, None, f"the form is over {MAX_FORM_BYTES} bytes; send less"
        )
    try:
        async with asyncio.timeout(timeout_s):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise FormError(
            413, None, f"the form is over {MAX_FORM_BYTES} bytes; send less"
        ) from err
    except TimeoutError as err:
        raise FormError(
            408,
            None,
            f"the form did not arrive within {timeout_s:g} s; send it again",
        ) from err
    if len(body) > MAX_FORM_BYTES:
        raise FormError(
            413, None, f"the form is over {MAX_FORM_BYTES} bytes; send less"
        )
    return parse_form(body, frozenset(fields))


def parse_form(body: bytes, allowed: frozenset[str]) -> dict[str, str]:
    """Parse an urlencoded UTF-8 body into its fields (see :func:`read_form`)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormError(
            400, None, "the form is not UTF-8 text; send it from the portal's page"
        ) from err
    form: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        raw_name, separator, raw_value = pair.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
        except UnicodeDecodeError as err:
            raise FormError(
                400, None, "a field name is not UTF-8 text; send the portal's form"
            ) from err
        if name not in allowed:
            raise FormError(
                400,
                name[:40],
                f"unknown field {name[:40]!r}; the form has only "
                f"{', '.join(sorted(allowed))}",
            )
        if not separator:
            raise FormError(400, name, f"field {name!r} has no value; send {name}=…")
        try:
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError as err:
            raise FormError(
                400, name, f"field {name!r} is not UTF-8 text; type it again"
            ) from err
        if name in form:
            raise FormError(400, name, f"field {name!r} is given twice; send it once")
        if len(value) > MAX_FIELD_CHARS:
            raise FormError(
                400,
                name,
                f"field {name!r} is longer than {MAX_FIELD_CHARS} characters; "
                "shorten it",
            )
        if any(unicodedata.category(character) == "Cc" for character in value):
            raise FormError(
                400,
                name,
                f"field {name!r} contains a control character; type it again",
            )
        form[name] = value
    return form


def required(form: dict[str, str], name: str, description: str) -> str:
    """Return the non-blank value of field ``name``.

    Raises FormError (400) naming the field and ``description`` of the
    expected value when it is missing or blank.
    """
    value = form.get(name, "").strip()
    if not value:
        raise FormError(400, name, f"missing field {name!r}: give {description}")
    return value
