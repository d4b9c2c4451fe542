"""The guest portal's HTTP server: its life cycle, guards and responses.

Guests reach the portal from their phones on the venue network. It is a
public page, so every request passes the same guards before a handler runs:

- connections are limited in total and per client address, and a request
  head must arrive within a few seconds (the studio's limits, reused);
- each client address has a token bucket for page and file requests and a
  smaller one for form posts. An empty bucket gets 429 with Retry-After;
- a form post whose ``Origin`` (or, without one, ``Referer``) names another
  site gets 403, and every form carries a CSRF token (see ``_sessions``);
- form bodies are read strictly (see ``_forms``): over 8 KiB is 413,
  anything malformed is 400 naming the field;
- every response carries the security headers of :data:`SECURITY_HEADERS`.

Nothing a guest types and no band id or code appears in a URL the pages
link to or in a log line. The access log writes the method, the route and
the status only, and rejections are logged as counted reasons.

The pages themselves are in ``_pages``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from appliance.portal._forms import (
    FORM_TIMEOUT_S,
    MAX_FORM_BYTES,
    CsrfError,
    FormError,
)
from appliance.portal._limits import (
    BurstLog,
    RateLimiter,
    SiteWideLimit,
    retry_after,
)
from appliance.portal._low_level import SERVER_NAME, PortalRunner
from appliance.portal._pages import Pages
from appliance.portal._sessions import Sessions
from appliance.portal._terminal import PortalTerminal
from appliance.portal.band_codes import (
    band_for_code,
    load_band_key,
    register_band_codes,
)
from appliance.portal.config import PortalConfig
from appliance.studio._http_limits import (
    AcceptFailureFilter,
    ConnectionLimits,
    LogLimiter,
    listen_guarded,
    skipped_suffix,
)

if TYPE_CHECKING:
    from appliance.runtime import Box

__all__ = ["SECURITY_HEADERS", "Portal"]

_LOGGER = logging.getLogger(__name__)
_ACCESS_LOGGER = logging.getLogger(f"{__name__}.access")

_PACKAGE = Path(__file__).parent
STATIC_DIR = _PACKAGE / "static"

MODEL_VIEWER = STATIC_DIR / "vendor" / "model-viewer.min.js"


def model_viewer_style_hash(path: Path = MODEL_VIEWER) -> str | None:
    """Return the CSP hash source of the ``<style>`` that model-viewer adds.

    ``<model-viewer>`` puts one fixed ``<style>`` element into its shadow
    root (its default controls and sizing), which ``style-src 'self'``
    blocks. Its text is a literal in the bundle, so its SHA-256 is computed
    from the vendored file. Returns None when the file or the block is
    missing; the page then loads without those default styles.
    """
    try:
        text = path.read_text(encoding="utf-8")
        start = text.index("<style>") + len("<style>")
        end = text.index("</style>", start)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    digest = hashlib.sha256(text[start:end].encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def content_security_policy(style_hash: str | None) -> str:
    """Return the portal's Content-Security-Policy.

    Scripts and styles come from the box only. Two sources beyond the
    portal's own files are allowed, both for ``<model-viewer>`` 4.4:
    ``'wasm-unsafe-eval'``, because the three.js mesh decoder it bundles
    compiles WebAssembly (this allows no JavaScript eval), and the hash of
    its shadow root's one ``<style>`` block.
    """
    styles = "'self'" if style_hash is None else f"'self' {style_hash}"
    return (
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
        f"style-src {styles}; img-src 'self' data: blob:; "
        "connect-src 'self' data: blob:; worker-src 'self' blob:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )


SECURITY_HEADERS = {
    "Content-Security-Policy": content_security_policy(model_viewer_style_hash()),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# A connection must send a complete request head within this many seconds
# of connecting or of its last response, or it is closed. A form body gets
# as long again.
HEADER_TIMEOUT_S = FORM_TIMEOUT_S
_SHUTDOWN_TIMEOUT_S = 2.0
# The window of the rejection log: the first rejection of a reason is
# logged at once, the others of this many seconds as one counted line.
REJECTION_LOG_INTERVAL_S = 10.0
# Over [portal] unknown_band_codes_per_minute, unknown codes get 429 from
# every address for this many seconds.
UNKNOWN_CODE_COOLDOWN_S = 30.0
_STATUS_TITLES = {
    400: "Please check the form",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    408: "Too slow",
    409: "Not possible",
    413: "Too much data",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Not available",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _RouteAccessLog(AbstractAccessLogger):
    """An access log of method, route and status: no path values, no address."""

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        self.logger.debug(
            "%s %s %d %.3f s", request.method, route_of(request), response.status, time
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def route_of(request: web.BaseRequest) -> str:
    """Return the route pattern a request matched, such as ``/drops/{drop}``.

    The pattern never contains what the request put in the path.
    """
    match_info = getattr(request, "match_info", None)
    route = None if match_info is None else match_info.route
    resource = None if route is None else route.resource
    return "(no route)" if resource is None else resource.canonical


class _ServerErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's error log for the portal: counted reasons, never request text.

    A malformed request is counted by its aiohttp error class and logged in
    one line per interval. Other errors keep their traceback but not their
    message, which may quote a request.
    """

    def __init__(
        self, logger: logging.Logger, limiter: LogLimiter, counts: Counter[str]
    ) -> None:
        super().__init__(logger, {})
        self._limiter = limiter
        self._counts = counts

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if not isinstance(error, BaseException):
            error = None
        reason = "malformed-http" if isinstance(error, HttpProcessingError) else None
        reason = reason or (type(error).__name__ if error else "server-error")
        self._counts[reason] += 1
        skipped = self._limiter.allow(f"server-{reason}")
        if skipped is None:
            return
        frames = (
            "" if error is None else "".join(traceback.format_tb(error.__traceback__))
        )
        self.logger.log(
            logging.WARNING if reason == "malformed-http" else level,
            "Portal HTTP error (%s)%s%s",
            reason,
            skipped_suffix(skipped),
            f"\n{frames}" if frames and reason != "malformed-http" else "",
        )


class Portal:
    """The guest portal of a box whose site has a ``[portal]`` table.

    ``serve_http()`` listens on ``[portal] host:port`` (port 0 picks a free
    one) and returns the portal, whose :attr:`port` is then bound.
    """

    def __init__(self, box: Box, *, monotonic: Callable[[], float] = time.monotonic):
        config = box.config.portal
        if config is None:
            raise ValueError("the site has no [portal] table; add one to serve it")

        self.config: PortalConfig = config
        self.box = box
        self._key = load_band_key(box.config.data_dir)
        self.sessions = Sessions(
            box.store, box.clock, self._key, config.session_hours * 3600.0
        )
        self.terminal = PortalTerminal(
            box.requests, box.tokens, box.config.commerce.token_max_ttl_s
        )

        self._monotonic = monotonic
        self._page_limiter = RateLimiter(
            config.page_requests_per_minute, config.page_burst, monotonic
        )
        self._form_limiter = RateLimiter(
            config.form_posts_per_minute, config.form_burst, monotonic
        )
        self._limits = ConnectionLimits(
            config.max_connections, config.max_connections_per_address
        )
        self._log_limiter = LogLimiter(REJECTION_LOG_INTERVAL_S, monotonic)
        self._rejection_log = BurstLog(_LOGGER, REJECTION_LOG_INTERVAL_S)
        self._unknown_codes = SiteWideLimit(
            config.unknown_band_codes_per_minute, UNKNOWN_CODE_COOLDOWN_S, monotonic
        )
        self._accept_failures = AcceptFailureFilter(self._log_limiter)

        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_PACKAGE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._pages = Pages(self)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

        # Requests served, by route pattern and status class.
        self.served: Counter[str] = Counter()
        # Requests rejected, by reason (rate-limited-pages, csrf-missing, origin …).
        self.rejections: Counter[str] = Counter()
        # Connections closed at once because of the connection limits.
        self.connections_rejected: Counter[str] = Counter()

    @property
    def port(self) -> int:
        """The TCP port the portal listens on (RuntimeError before serve_http())."""
        if self._port is None:
            raise RuntimeError("the guest portal is not serving")
        return self._port

    def band_code(self, band: str) -> str:
        """Register and return the code of ``band`` (for printing it on the band)."""
        codes = register_band_codes(
            self.box.store, self._key, [band], self.box.clock.now()
        )
        return codes[band]

    def band_for_code(self, text: str) -> str | None:
        """Return the band whose registered code is ``text``, or None.

        Raises BandCodeError for a malformed code.
        """
        return band_for_code(self.box.store, self._key, text)

    def state(self) -> dict[str, Any]:
        """Return the portal's counters for the box status."""
        return {
            "listening": self._port is not None,
            "port": self._port,
            "public_url": self.config.public_url,
            "served": dict(self.served),
            "rejections": dict(self.rejections),
            "connections": self._limits.total,
            "connections_rejected": dict(self.connections_rejected),
            "rate_limited_clients": self._page_limiter.clients,
            "token_renewals": self.terminal.renewals,
        }

    async def serve_http(self) -> Portal:
        """Listen on ``[portal] host:port``; return the portal (see :attr:`port`).

        Registers the codes of the site's registered bands and deletes
        expired sessions first. Raises OSError naming the address when it
        cannot be bound. Calling it again while serving changes nothing.
        """
        if self._runner is not None:
            return self
        box = self.box
        register_band_codes(
            box.store,
            self._key,
            [band.id for band in box.config.bands],
            box.clock.now(),
        )
        purged = self.sessions.purge()
        app = self._application()
        runner = PortalRunner(
            app,
            headers={
                **SECURITY_HEADERS,
                "Cache-Control": "no-store",
                "Server": SERVER_NAME,
            },
            access_log_class=_RouteAccessLog,
            access_log=_ACCESS_LOGGER,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
            # aiohttp closes a connection that has no complete request this
            # long after it connected or after its last response.
            keepalive_timeout=HEADER_TIMEOUT_S,
            logger=_ServerErrorLog(_LOGGER, self._log_limiter, self.rejections),
        )
        host, port = self.config.host, self.config.port
        self._port = await listen_guarded(
            runner,
            host,
            port,
            self._limits,
            self._reject_connection,
            lambda err: (
                f"cannot listen for the guest portal on {host}:{port} "
                f"({err.strerror}); set [portal] port to a free port (1024 or "
                "above without root), or host to an address of this box"
            ),
        )
        self._runner = runner
        logging.getLogger("asyncio").addFilter(self._accept_failures)
        _LOGGER.info(
            "Guest portal listening on %s:%d for %s (%d expired sessions deleted)",
            self.config.host,
            self._port,
            self.config.public_url,
            purged,
        )
        return self

    async def stop(self) -> None:
        """Stop listening; requests in progress get up to two seconds to finish."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        logging.getLogger("asyncio").removeFilter(self._accept_failures)
        await runner.cleanup()
        self._rejection_log.flush()
        _LOGGER.info("Guest portal on port %s stopped", self._port)
        self._port = None

    def _application(self) -> web.Application:
        # The largest body aiohttp reads; a form is read with its own limit.
        app = web.Application(client_max_size=MAX_FORM_BYTES, middlewares=[self._guard])
        app.on_response_prepare.append(_add_security_headers)
        self._pages.add_routes(app)
        app.router.add_get("/static/{name:.+}", self._static)
        from appliance.assets.http import add_asset_routes

        add_asset_routes(app, self.box.assets)
        return app

    def _reject_connection(self, reason: str, address: str) -> None:
        self.connections_rejected[reason] += 1
        skipped = self._log_limiter.allow(f"connection-{reason}")
        if skipped is None:
            return
        # The address is left out: on a venue network it points at a guest.
        _LOGGER.warning(
            "Guest portal rejected a connection (%s); the limits are %d in total "
            "and %d per address%s",
            reason,
            self._limits.max_total,
            self._limits.max_per_address,
            skipped_suffix(skipped),
        )

    def count_rejection(self, reason: str, message: str) -> None:
        """Count a rejected request and log it without guest data.

        ``message`` must not contain anything the guest sent.
        """
        self.rejections[reason] += 1
        self._rejection_log.record(reason, message)

    def reject_unknown_band_code(self) -> None:
        """Count an unknown band code; raise 429 while the site-wide limit is passed.

        The limit counts unknown codes from every address together, because
        a guesser with many addresses passes every per-address limit.
        """
        self.count_rejection("band-code-unknown", "an unknown band code")
        wait_s, began = self._unknown_codes.record()
        if wait_s <= 0:
            return
        if began:
            _LOGGER.warning(
                "Guest portal: more than %d unknown band codes in a minute from all "
                "addresses together; every unknown code gets 429 for %g s",
                self._unknown_codes.per_minute,
                self._unknown_codes.cooldown_s,
            )
        raise web.HTTPTooManyRequests(
            text="too many unknown band codes were sent to the portal just now; "
            "check the code printed on your band and try again in a moment",
            headers={"Retry-After": retry_after(wait_s)},
        )

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        address = request.remote or "unknown"
        posting = request.method not in ("GET", "HEAD", "OPTIONS")
        limiter = self._form_limiter if posting else self._page_limiter
        wait_s = limiter.take(address)
        if wait_s > 0:
            reason = "rate-limited-forms" if posting else "rate-limited-pages"
            self.count_rejection(reason, "a client sent requests too fast")
            return self.error_response(
                request,
                429,
                reason,
                "too many requests from this device; wait a moment and try again",
                headers={"Retry-After": retry_after(wait_s)},
            )
        if posting and not self._same_origin(request):
            self.count_rejection(
                "origin", f"a post to {route_of(request)} came from another site"
            )
            return self.error_response(
                request,
                403,
                "origin",
                "this form was sent from another site; open the portal's page "
                "and send it from there",
            )
        try:
            response = await handler(request)
        except CsrfError as err:
            self.count_rejection(
                err.reason, f"{route_of(request)}: a form came without a valid token"
            )
            return self.error_response(request, 403, err.reason, err.message)
        except FormError as err:
            reason = {413: "too-large", 408: "timeout"}.get(err.status, "invalid-form")
            self.count_rejection(reason, f"{route_of(request)}: {_field_text(err)}")
            return self.error_response(
                request, err.status, reason, err.message, field=err.field
            )
        except web.HTTPException as err:
            if err.status < 400:
                raise
            reason = _http_reason(err.status)
            if err.status not in (404, 429):
                self.count_rejection(reason, f"{request.method} {route_of(request)}")
            else:
                # A 429 here comes from the site-wide band-code limit, which
                # logs its start once.
                self.rejections[reason] += 1
            retry = err.headers.get("Retry-After")
            return self.error_response(
                request,
                err.status,
                reason,
                _http_message(err),
                headers=None if retry is None else {"Retry-After": retry},
            )
        except Exception as err:  # a bug in a page must not stop the portal
            self.rejections["internal-error"] += 1
            skipped = self._log_limiter.allow(f"internal-{type(err).__name__}")
            if skipped is not None:
                # The message is left out, because it may quote guest input.
                # The stack frames show where it failed.
                _LOGGER.error(
                    "Guest portal page %s failed with %s%s\n%s",
                    route_of(request),
                    type(err).__name__,
                    skipped_suffix(skipped),
                    "".join(traceback.format_tb(err.__traceback__)),
                )
            return self.error_response(
                request,
                500,
                "internal-error",
                "the box could not show this page; try again, or ask staff",
            )
        self.served[f"{route_of(request)} {response.status // 100}xx"] += 1
        return response

    def _same_origin(self, request: web.Request) -> bool:
        """Return whether a post may come from the page that sent it.

        Browsers send ``Origin: null`` with form posts from a page whose
        Referrer-Policy is no-referrer (the Fetch standard's "serializing a
        request origin"), which the portal's pages are, so ``null`` passes
        and the CSRF token decides. Clients that send neither header pass to
        the CSRF check as well.
        """
        allowed = {self.config.public_url, f"{request.scheme}://{request.host}"}
        origin = request.headers.get("Origin")
        if origin is not None:
            return origin == "null" or origin.rstrip("/") in allowed
        referer = request.headers.get("Referer")
        if referer is None:
            return True
        try:
            parts = urlsplit(referer)
        except ValueError:
            return False
        return f"{parts.scheme}://{parts.netloc}" in allowed

    def error_response(
        self,
        request: web.Request,
        status: int,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """Return an error as JSON for data routes and as an HTML page otherwise."""
        if wants_json(request):
            body: dict[str, Any] = {"error": reason, "message": message}
            if field is not None:
                body["field"] = field
            return web.json_response(body, status=status, headers=headers)
        html = self.render(
            "error.html",
            title=_STATUS_TITLES.get(status, "Error"),
            message=message,
            field=field,
            signed_in=False,
        )
        return web.Response(
            text=html, status=status, content_type="text/html", headers=headers
        )

    def render(self, template: str, **context: Any) -> str:
        """Render ``template`` with the site name and ``context`` (autoescaped)."""
        return self.templates.get_template(template).render(
            site_name=self.box.config.site_name, **context
        )

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = static_file(name)
        if path is None:
            raise web.HTTPNotFound(text=f"no file {name[:60]!r} on the portal")
        return web.FileResponse(
            path,
            headers={
                "Content-Type": _STATIC_TYPES[path.suffix],
                # Revalidated with the ETag on each load, so an update of the
                # box shows at once and an unchanged file costs a 304.
                "Cache-Control": "no-cache",
            },
        )


_STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
}


def static_file(name: str) -> Path | None:
    """Return the file ``name`` under the portal's static folder, or None.

    Only plain names of known types are served: no hidden files, no '..',
    and nothing outside the folder, also through a symbolic link.
    """
    parts = name.split("/")
    if len(parts) > 3 or any(not part or part.startswith(".") for part in parts):
        return None
    path = STATIC_DIR.joinpath(*parts)
    if path.suffix not in _STATIC_TYPES:
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_file() or not resolved.is_relative_to(STATIC_DIR.resolve()):
        return None
    return resolved


def wants_json(request: web.Request) -> bool:
    """Return whether errors of this request's path are JSON: data, not pages."""
    path = request.path
    return (
        path.endswith((".json", "/stock"))
        or path.startswith("/assets/")
        or path == "/assets"
    )


async def _add_security_headers(
    request: web.Request, response: web.StreamResponse
) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # aiohttp would name itself and its version.
    response.headers["Server"] = SERVER_NAME
    # Pages show a guest's band, claims and codes: no cache may keep them.
    # Files and assets set their own caching.
    response.headers.setdefault("Cache-Control", "no-store")


def _http_reason(status: int) -> str:
    return {
        400: "invalid",
        403: "forbidden",
        404: "not-found",
        405: "method-not-allowed",
        413: "too-large",
        429: "band-codes-site-limit",
    }.get(status, f"http-{status}")


def _http_message(err: web.HTTPException) -> str:
    text = err.text or ""
    # aiohttp's own text is "<status>: <reason>"; the portal's pages give a
    # sentence for the guest instead.
    if text and not text.startswith(f"{err.status}:"):
        return text
    if err.status == 404:
        return "there is no such page on the portal; go back to the start page"
    if err.status == 405:
        return "this page cannot be used that way; open it from the portal's links"
    if err.status == 413:
        return f"the request is over {MAX_FORM_BYTES} bytes; send less"
    return err.reason or "the request was rejected"


def _field_text(err: FormError) -> str:
    # Field names are the portal's own except in an 'unknown field' error,
    # whose name came from the client, so only the message kind is logged.
    return "malformed form" if err.field is None else "invalid field"
