"""Limits every listener enforces on its clients, whatever they send or fail to send.

A slow or idle client must not hold a slot for long: a new connection has
`header_timeout` to deliver its first request head, a kept-alive one `idle_timeout` to
deliver the next (aiohttp's keep-alive timer closes a connection that has not produced
a complete request head in that time, partial bytes or not), and a listener takes at most
`max_connections` at once (more are closed as they arrive). Request lines and header
fields longer than `max_header_size`, or more than `MAX_HEADERS` fields, get 431/400
from the parser. The body has its own bound (`body_timeout`, read by the edge after
authentication).

These are plain aiohttp subclasses: the data listener (`GuardedServer`) and the admin
listener (`GuardedAppRunner`) share them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler

from gateway.policy.compile import ListenerLimits

# The most header fields a request may carry (aiohttp's own default is the same).
MAX_HEADERS = 128


def server_kwargs(limits: ListenerLimits) -> dict[str, Any]:
    """The aiohttp request handler settings the limits map to."""
    return {
        "keepalive_timeout": limits.idle_timeout,
        "max_line_size": limits.max_header_size,
        "max_field_size": limits.max_header_size,
        "max_headers": MAX_HEADERS,
        # after an early answer (401, 413), wait this long at most for the unread body
        "lingering_time": min(2.0, limits.idle_timeout),
    }


class _GuardedHandler(RequestHandler):
    """A connection that is closed when over the limit or too slow with its first head."""

    _tg_limits: ListenerLimits
    _tg_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self._tg_limits.max_connections:
            self.force_close()
            return
        self._tg_timer = asyncio.get_running_loop().call_later(
            self._tg_limits.header_timeout, self._tg_head_overdue
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._tg_timer is not None and getattr(self, "_request_count", True):
            # a complete head arrived: from here on the keep-alive timer keeps watch
            self._tg_timer.cancel()
            self._tg_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._tg_timer is not None:
            self._tg_timer.cancel()
            self._tg_timer = None
        super().connection_lost(exc)

    def _tg_head_overdue(self) -> None:
        self._tg_timer = None
        if not getattr(self, "_request_count", 0):
            self.force_close()


class GuardedServer(web.Server):
    """aiohttp's low-level server with `ListenerLimits` on every connection."""

    def __init__(self, handler: Any, *, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(handler, **server_kwargs(limits), **kwargs)
        self._tg_limits = limits

    def __call__(self) -> RequestHandler:
        handler = _GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler._tg_limits = self._tg_limits
        return handler


class GuardedAppRunner(web.AppRunner):
    """An `AppRunner` (the admin API) whose connections obey `ListenerLimits`."""

    def __init__(self, app: web.Application, *, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._tg_limits = limits

    async def _make_server(self) -> web.Server:
        app = self._app
        app._set_loop(asyncio.get_running_loop())
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        kwargs = {"debug": app._debug, "access_log_class": AccessLogger, **self._kwargs}
        return GuardedServer(
            app._handle, limits=self._tg_limits, request_factory=app._make_request, **kwargs
        )


# Set to 1 to serve with aiohttp's pure-Python HTTP parser anyway (never in production).
ALLOW_PY_PARSER_ENV = "TAILGUARD_ALLOW_PURE_PYTHON_HTTP"


def parser_problem() -> str | None:
    """Why this process must not serve HTTP, or None.

    aiohttp's pure-Python request parser (used when its C extension is missing or
    `AIOHTTP_NO_EXTENSIONS` is set) has had request-smuggling bugs the C parser has not,
    and it is several times slower; a gateway at the edge refuses it unless told otherwise.
    """
    from aiohttp import http_parser

    if http_parser.HttpRequestParser is http_parser.HttpRequestParserPy:
        if os.environ.get(ALLOW_PY_PARSER_ENV) == "1":
            return None
        return (
            "aiohttp is running without its C HTTP parser (is AIOHTTP_NO_EXTENSIONS set, or "
            "was it installed without its extension?); refusing to serve. Reinstall aiohttp "
            f"from a wheel, or set {ALLOW_PY_PARSER_ENV}=1 to accept the risk"
        )
    return None


__all__ = [
    "ALLOW_PY_PARSER_ENV",
    "MAX_HEADERS",
    "GuardedAppRunner",
    "GuardedServer",
    "ListenerLimits",
]
