"""A small async client for a simulated server's control API (`/_sim/`).

For tests, the demo and load tests that drive a sim running elsewhere (another
process, or another region's control port). Every call raises `SimControlError`
on a non-2xx answer, with the server's reason, so a typo in a fault fails loud.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.sim.faults import Faults


class SimControlError(Exception):
    """The control API refused the order; `status` and `message` say why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sim control answered {status}: {message}")
        self.status = status
        self.message = message


def _faults_body(
    faults: Faults | Mapping[str, Any] | None, kw: Mapping[str, Any]
) -> dict[str, Any]:
    if isinstance(faults, Faults):
        base: dict[str, Any] = faults.to_dict()
    else:
        base = dict(faults or {})
    base.update(kw)
    return base


class SimControl:
    """Drive one sim through its control URL (`SimServer.control_url`).

    The caller owns `session` and closes it. `for_` and keyword names follow
    the JSON fields (`for_` because `for` is a Python keyword).
    """

    def __init__(self, control_url: str, session: aiohttp.ClientSession) -> None:
        self.base = control_url.rstrip("/") + "/_sim"
        self._session = session

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        async with self._session.request(method, self.base + path, json=body) as r:
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = None
            if r.status >= 300:
                message = data.get("error") if isinstance(data, dict) else None
                raise SimControlError(r.status, str(message or r.reason))
            return data

    async def faults(self) -> dict[str, Any]:
        """The faults in force, as JSON."""
        return dict(await self._call("GET", "/faults"))

    async def set_faults(
        self, faults: Faults | Mapping[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """Replace every fault: fields not given go back to their defaults."""
        return dict(await self._call("PUT", "/faults", _faults_body(faults, kw)))

    async def patch_faults(
        self, faults: Mapping[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """Change only the fields given (latency merges field by field)."""
        return dict(await self._call("PATCH", "/faults", _faults_body(faults, kw)))

    async def clear_faults(self) -> dict[str, Any]:
        """Back to a healthy server."""
        return dict(await self._call("DELETE", "/faults"))

    async def set_outputs(self, **kw: Any) -> dict[str, Any]:
        """Replace the classifier's output settings (classes, bias, disagree_rate)."""
        return dict(await self._call("PUT", "/outputs", kw))

    async def stats(self) -> dict[str, Any]:
        """Counters plus name, region, alive and port."""
        return dict(await self._call("GET", "/stats"))

    async def reset_stats(self) -> dict[str, Any]:
        return dict(await self._call("POST", "/stats/reset"))

    async def die(self, for_: float | None = None) -> dict[str, Any]:
        """Crash the sim's main listener; with `for_`, it revives itself after that long.

        Through the main port this works once: afterwards only a control port reaches it.
        """
        body = {} if for_ is None else {"for": for_}
        return dict(await self._call("POST", "/die", body))

    async def revive(self) -> dict[str, Any]:
        """Listen again on the same port (needs a control port: the main one is dead)."""
        return dict(await self._call("POST", "/revive"))
