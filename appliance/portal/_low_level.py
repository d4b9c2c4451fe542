"""The portal's responses to requests that aiohttp cannot parse.

aiohttp responds to a request it cannot read (a bad request line, a header
over its size limit, a malformed ``Content-Length``) itself, before any
middleware runs, with ``RequestHandler.handle_error``. By default that
response quotes the offending bytes, names aiohttp's version in ``Server``
and lacks the portal's security headers. :class:`PortalRunner` makes every
connection's handler a :class:`PortalRequestHandler`, whose response is a
fixed sentence with the portal's headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

# The Server header of every portal response: no software versions.
SERVER_NAME = "Nightbox"


class PortalRequestHandler(web.RequestHandler):
    """aiohttp's per-connection request handler with the portal's error response."""

    def __init__(
        self, manager: web.Server, *, headers: Mapping[str, str], **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._headers = dict(headers)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Respond to a request that failed before or outside the portal's handlers.

        aiohttp's own method still logs the error (through the portal's
        error log, which leaves out the request's text) and raises
        ConnectionError when part of a response was sent already. Its
        response is replaced by a sentence that repeats nothing of the request.
        """
        super().handle_error(request, status, exc, message)
        if status >= 500:
            text = "The box could not answer this request; try again in a moment."
        else:
            text = "The portal could not read this request; reload the page."
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = web.Response(
            status=status,
            text=f"{status} {phrase}. {text}\n",
            content_type="text/plain",
            headers=self._headers,
        )
        response.force_close()
        return response


class PortalRunner(web.AppRunner):
    """An AppRunner whose connections are served by :class:`PortalRequestHandler`.

    ``handler_kwargs`` are the options aiohttp passes on to each request
    handler (access log, keep-alive timeout, error logger). ``headers`` go
    on the responses to unreadable requests.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        headers: Mapping[str, str],
        shutdown_timeout: float,
        **handler_kwargs: Any,
    ) -> None:
        super().__init__(app, shutdown_timeout=shutdown_timeout, **handler_kwargs)
        self._error_headers = dict(headers)
        self._handler_kwargs = handler_kwargs

    @property
    def server(self) -> Any:
        """The factory of connection handlers that sites listen with.

        aiohttp's sites, and the studio's ``GuardedSite``, call it once per
        connection. It makes the portal's handler for the runner's server,
        so the server still tracks and shuts down every connection.
        """
        server = super().server
        if server is None:
            return None
        headers, handler_kwargs = self._error_headers, self._handler_kwargs

        def make_handler() -> PortalRequestHandler:
            return PortalRequestHandler(
                server,
                loop=asyncio.get_running_loop(),
                headers=headers,
                **handler_kwargs,
            )

        return make_handler
