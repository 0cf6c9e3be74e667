"""The upstream transport contract on aiohttp's client: the reference `H1Transport` is
checked against, outcome for outcome (the gateway itself uses the lean client)."""

from __future__ import annotations

import asyncio
from collections.abc import Container, Mapping

import aiohttp

from gateway.errors import AttemptFailed
from gateway.proxy.transport import (
    BUFFER_LIMIT,
    PoolSpec,
    UpstreamResponse,
    looks_like_json,
    no_answer_within,
)
from gateway.resilience.outcome import Outcome, classify_status


class AiohttpStream:
    """`UpstreamStream` over an aiohttp response, translating its exceptions."""

    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._resp.content.readany()
        except TimeoutError:
            self._resp.close()
            raise AttemptFailed(Outcome.TIMEOUT, f"no data within {timeout:g}s") from None
        except aiohttp.ClientPayloadError as e:
            self._resp.close()
            raise AttemptFailed(Outcome.MALFORMED, f"bad response body: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            self._resp.close()
            raise AttemptFailed(Outcome.RESET, f"reset while streaming: {e!r}") from None

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class HttpTransport:
    """Sends attempts to one endpoint over a bounded keep-alive pool."""

    __slots__ = ("_session", "check_json", "pool", "url")

    def __init__(self, url: str, pool: PoolSpec, *, check_json: bool) -> None:
        self.url = url
        self.pool = pool
        self.check_json = check_json
        connector = aiohttp.TCPConnector(
            limit=pool.max_connections,
            keepalive_timeout=pool.idle_timeout,
            ttl_dns_cache=30,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=pool.connect_timeout, sock_connect=pool.connect_timeout
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        )

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """One attempt within `timeout`; the caller classifies nothing further.

        Raises `AttemptFailed` for every failure that produced no usable HTTP answer. HTTP error
        statuses are returned (with their outcome), not raised, so they can be passed through.
        """
        if timeout is None:
            return await self._send(method, path_qs, headers, body)
        try:
            async with asyncio.timeout(timeout):
                return await self._send(method, path_qs, headers, body)
        except TimeoutError:
            raise AttemptFailed(Outcome.TIMEOUT, no_answer_within(timeout)) from None

    async def _send(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes
    ) -> UpstreamResponse:
        try:
            resp = await self._session.request(
                method,
                self.url + path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ConnectionTimeoutError as e:
            raise AttemptFailed(Outcome.CONNECT_FAILURE, f"connect timeout: {e}") from None
        except aiohttp.ClientConnectorError as e:
            raise AttemptFailed(Outcome.CONNECT_FAILURE, f"connect failed: {e.os_error}") from None
        except aiohttp.ServerTimeoutError as e:
            raise AttemptFailed(Outcome.TIMEOUT, f"read timeout: {e}") from None
        except aiohttp.ClientResponseError as e:
            raise AttemptFailed(Outcome.MALFORMED, f"malformed response: {e.message}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            raise AttemptFailed(Outcome.RESET, f"connection reset: {e}") from None
        except aiohttp.ClientError as e:
            raise AttemptFailed(Outcome.RESET, f"upstream error: {e!r}") from None

        outcome = classify_status(resp.status)
        length = resp.content_length
        ctype = resp.headers.get("Content-Type", "")
        if (
            (length is None and method != "HEAD" and resp.status not in (204, 304))
            or (length is not None and length > BUFFER_LIMIT)
            or ctype.startswith("text/event-stream")
        ):
            return UpstreamResponse(resp.status, resp.headers, None, AiohttpStream(resp), outcome)
        try:
            data = await resp.read()
        except aiohttp.ClientPayloadError as e:
            resp.close()
            raise AttemptFailed(Outcome.MALFORMED, f"truncated response body: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            resp.close()
            raise AttemptFailed(Outcome.RESET, f"reset while reading the body: {e!r}") from None
        except BaseException:
            resp.close()
            raise
        if (
            self.check_json
            and outcome is Outcome.SUCCESS
            and "json" in ctype
            and not looks_like_json(data, resp.headers.get("Content-Encoding"))
        ):
            raise AttemptFailed(Outcome.MALFORMED, "backend answered with malformed JSON")
        return UpstreamResponse(resp.status, resp.headers, data, None, outcome)

    async def get_status(
        self, path: str, timeout: float, expect: Container[int] | None = None
    ) -> int:
        """A health probe: the status of a GET, or raises `AttemptFailed`.

        The answer is read so the connection is reused; after a status outside `expect` it
        is closed instead (see `H1Transport.get_status`).
        """
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(self.url + path, allow_redirects=False) as r:
                    if expect is not None and r.status not in expect:
                        r.close()
                        return r.status
                    await r.read()
                    return r.status
        except TimeoutError:
            raise AttemptFailed(Outcome.TIMEOUT, "health check timed out") from None
        except aiohttp.ClientConnectorError as e:
            raise AttemptFailed(Outcome.CONNECT_FAILURE, f"connect failed: {e.os_error}") from None
        except aiohttp.ClientError as e:
            raise AttemptFailed(Outcome.RESET, f"health check failed: {e!r}") from None

    async def close(self) -> None:
        await self._session.close()
