"""The pools of every endpoint, shared by every snapshot that names the endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable

from gateway.policy.compile import EndpointSpec
from gateway.proxy.grpc_upstream import GrpcTransport
from gateway.proxy.h1 import H1Transport
from gateway.proxy.transport import PoolSpec


class Transports:
    """Pools by endpoint id, shared by every snapshot that names the endpoint.

    A reload keeps the pools of endpoints it keeps; `retain` closes the rest once no
    snapshot references them.
    """

    def __init__(self) -> None:
        self._pools: dict[str, H1Transport] = {}
        self._channels: dict[str, GrpcTransport] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, spec: EndpointSpec, pool: PoolSpec, protocol: str) -> H1Transport:
        t = self._pools.get(spec.id)
        if t is None or t.pool != pool:
            if t is not None:
                # settings changed: the old pool finishes its in-flight work and is dropped
                self._close_later(t.close())
            t = H1Transport(spec.url, pool, check_json=protocol != "http")
            self._pools[spec.id] = t
        return t

    def grpc(self, spec: EndpointSpec, pool: PoolSpec) -> GrpcTransport:
        """The gRPC channel of an endpoint with a `grpc:` address (the caller checked it has one)."""
        t = self._channels.get(spec.id)
        if t is None or t.address != spec.grpc or t.pool != pool:
            if t is not None:
                self._close_later(t.close())
            assert spec.grpc is not None
            t = GrpcTransport(spec, pool, spec.grpc)
            self._channels[spec.id] = t
        return t

    def _close_later(self, closing: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)  # keep a reference until it is done
        task.add_done_callback(self._closing.discard)

    async def retain(self, ids: Iterable[str]) -> None:
        """Close the pools of endpoints no longer named (after a reload removed them).

        Safe while older snapshots still serve: closing drops idle connections at once and
        the busy ones when their answers end.
        """
        keep = set(ids)
        for eid in [e for e in self._pools if e not in keep]:
            await self._pools.pop(eid).close()
        for eid in [e for e in self._channels if e not in keep]:
            await self._channels.pop(eid).close()

    def endpoint_ids(self) -> frozenset[str]:
        return frozenset(self._pools) | frozenset(self._channels)

    async def close(self) -> None:
        await self.retain(())
