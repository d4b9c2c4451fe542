"""The collector's PostgreSQL URL: checks, and redaction of its password.

A libpq URL may carry a password in two places: the user info before
``@`` and a ``password`` or ``sslpassword`` query parameter. Every message
about the database is built from :func:`redact_url`, never by searching
for the password inside text. Only the driver's own error messages, which
may quote parts of the URL, go through :func:`without_password`.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

import psycopg

from appliance.errors import ConfigError

_URL_SCHEMES = ("postgresql", "postgres")
_SECRET_PARAMETERS = ("password", "sslpassword")
# A password shorter than this is not replaced inside a driver message,
# because it could match an ordinary word. The message is left out instead.
_MIN_REPLACED_SECRET = 4
_LEFT_OUT = "the driver's message is left out because it may contain the password"
_ENCODE_HINT = (
    "percent-encode those characters in the URL (@ as %40, / as %2F, "
    "? as %3F, # as %23, : as %3A)"
)


def redact_url(text: str) -> str:
    """Return a database URL with every password replaced by ``***``.

    The password in the user info and the values of the ``password`` and
    ``sslpassword`` query parameters are replaced, each parameter as often
    as it occurs. A URL that cannot be split is replaced whole.
    """
    try:
        parts = urllib.parse.urlsplit(text.strip())
    except ValueError:
        return "(an invalid URL, not shown because it may contain a password)"
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, location = netloc.rpartition("@")
        user, colon, _password = user_info.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{location}"
    query = "&".join(_redact_parameter(item) for item in parts.query.split("&"))
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, query, parts.fragment)
    )


def _redact_parameter(item: str) -> str:
    key, equals, _value = item.partition("=")
    if equals and urllib.parse.unquote(key).strip().lower() in _SECRET_PARAMETERS:
        return f"{key}=***"
    return item


def check_database_url(text: str) -> str:
    """Check that ``text`` is a ``postgresql://`` URL, and return it redacted.

    Raises ConfigError, naming the redacted URL, for an invalid URL or
    one that is not PostgreSQL's. libpq splits a URL differently from this
    check when the user name or password has an unencoded ``@``, ``/``,
    ``?`` or ``#``. Such a URL is rejected without showing it, because
    libpq would read part of the password as the host name and print it.
    """
    _check_unambiguous(text.strip())
    redacted = redact_url(text)
    try:
        parts = urllib.parse.urlsplit(text.strip())
        parts.port  # noqa: B018 (reading the port validates it)
    except ValueError as err:
        raise ConfigError(
            f"database URL {redacted!r} is invalid "
            f"({without_password(str(err), text)}); give "
            "postgresql://user@host:port/database"
        ) from err
    if parts.scheme not in _URL_SCHEMES:
        # A key=value connection string would be printed whole, password
        # included, so the value is not repeated.
        raise ConfigError(
            "the database URL must start with postgresql:// (it is not shown "
            "because it may contain a password); give "
            "postgresql://user@host:port/database"
        )
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(
            urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        )
    except psycopg.Error as err:
        raise ConfigError(
            f"database URL {redacted!r} is invalid: {describe_error(err, text)}"
        ) from err
    if _libpq_view(parsed) != _urllib_view(parts):
        raise ConfigError(
            f"database URL {redacted!r} is read differently by libpq than by "
            f"nightbox collect; {_ENCODE_HINT}"
        )
    try:
        psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.Error as err:
        raise ConfigError(
            f"database URL {redacted!r} is invalid: {describe_error(err, text)}"
        ) from err
    return redacted


def _check_unambiguous(text: str) -> None:
    """Raise ConfigError when libpq and urllib find different user infos.

    libpq ends the user info at the first ``@`` before any ``/``, and
    urllib at the last ``@`` before the first ``/``, ``?`` or ``#``. The
    message never quotes the URL.
    """
    _scheme, separator, rest = text.partition("://")
    if not separator:
        return
    slash = rest.find("/")
    before_slash = rest if slash < 0 else rest[:slash]
    libpq_user_info = before_slash.partition("@")[0] if "@" in before_slash else None
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    urllib_user_info = authority.rpartition("@")[0] if "@" in authority else None
    path = rest[len(authority) :]
    path = re.split(r"[?#]", path, maxsplit=1)[0] if path.startswith("/") else ""
    if libpq_user_info == urllib_user_info and "@" not in path:
        return
    raise ConfigError(
        "the database URL has an unencoded '@', '/', '?' or '#' in its user "
        "name, password or database name, so libpq would read part of it as "
        f"the host name; {_ENCODE_HINT}. The URL is not shown because it may "
        "contain the password"
    )


def _urllib_view(parts: urllib.parse.SplitResult) -> dict[str, str | None]:
    def unquoted(value: str | None) -> str | None:
        return urllib.parse.unquote(value) if value else None

    port = parts.port
    return {
        "user": unquoted(parts.username),
        "password": unquoted(parts.password),
        "host": (parts.hostname or "").lower() or None,
        "port": None if port is None else str(port),
        "dbname": unquoted(parts.path.removeprefix("/")),
    }


def _libpq_view(parsed: Mapping[str, object]) -> dict[str, str | None]:
    view = {key: parsed.get(key) for key in ("user", "password", "port", "dbname")}
    host = parsed.get("host")
    view["host"] = str(host).lower() if host else None
    return {key: str(value) if value else None for key, value in view.items()}


def describe_error(err: psycopg.Error, url: str) -> str:
    """Return a driver error's message on one line, without the URL's password."""
    message = err.diag.message_primary if err.diag else None
    if message:
        text = f"{message} (SQLSTATE {err.sqlstate})" if err.sqlstate else message
    else:
        text = " ".join(str(err).split())
    return without_password(text, url)


def without_password(text: str, url: str) -> str:
    """Return ``text`` with each password of ``url`` replaced by ``***``.

    A password is replaced only as a whole word, so that the rest of the
    text stays readable. When a password shorter than 4 characters occurs
    in ``text``, the whole text is replaced by a note instead.
    """
    for secret in sorted(_secrets(url), key=len, reverse=True):
        word = re.compile(rf"(?<!\w){re.escape(secret)}(?!\w)")
        if len(secret) >= _MIN_REPLACED_SECRET:
            text = word.sub("***", text)
        elif word.search(text):
            return _LEFT_OUT
    return text


def _secrets(url: str) -> set[str]:
    """Return every password of ``url``, raw and percent-decoded."""
    secrets: set[str] = set()
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return secrets
    _user, colon, password = parts.netloc.rpartition("@")[0].partition(":")
    if colon:
        secrets.add(password)
    for item in parts.query.split("&"):
        key, equals, value = item.partition("=")
        if equals and urllib.parse.unquote(key).strip().lower() in _SECRET_PARAMETERS:
            secrets.add(value)
    decoded = {urllib.parse.unquote(secret) for secret in secrets}
    return {secret for secret in secrets | decoded if secret}
