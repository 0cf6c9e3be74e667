"""Model contracts: KServe v2 inputs checked against the model's own metadata, before a GPU.

A route with `contract:` has its infer requests checked against what `GET /v2/models/<m>`
of the chosen backend says (input names, datatypes, shapes with -1 as "any size"), and
a request that breaks it is refused with `ContractViolation`, which the edge answers 400
in KServe's own shape (`{"error": "<message>"}`, code `contract_violation` in
`x-tailguard-error`) without reaching the backend; refusals are counted per reason. The metadata is fetched
once per backend and model, shared by concurrent requests, and trusted for
`metadata_ttl`; while it cannot be had (the backend is down, the answer is not
metadata) requests pass unchecked and are counted, so a metadata outage never becomes
an outage of the route.

`check_request` is pure (a contract and the request bytes in, a problem or None out);
`ModelContracts` does the fetching and caching; `ContractStage` is the stage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.clock import Clock
from gateway.errors import AttemptFailed, ClientError, ContractViolation, TailguardError
from gateway.policy.compile import BackendRuntime, model_from_path
from gateway.proxy.edge import CodingError, decoded
from gateway.proxy.exchange import Exchange
from gateway.proxy.pipeline import Answer, Handler
from gateway.proxy.transports import Transports
from gateway.quality.features import load_json_head
from gateway.telemetry.catalog import Metrics

log = logging.getLogger("tailguard.contract")

# How long a failed metadata fetch is remembered before the next request tries again.
RETRY_FETCH_AFTER = 5.0
ITEM_SIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
    "INT32": 4, "INT64": 8, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size
    optional: bool = False


@dataclass(frozen=True, slots=True)
class ModelContract:
    """The inputs a model accepts, from its KServe v2 metadata."""

    model: str
    inputs: Mapping[str, TensorSpec]

    @classmethod
    def from_metadata(cls, model: str, doc: Any) -> ModelContract:
        """Parse a `/v2/models/<m>` answer; ValueError when it is not model metadata."""
        inputs = doc.get("inputs") if isinstance(doc, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise ValueError("model metadata without inputs")
        specs: dict[str, TensorSpec] = {}
        for t in inputs:
            if not isinstance(t, dict):
                raise ValueError("an input of the metadata is not an object")
            name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
            if not isinstance(name, str) or not isinstance(datatype, str):
                raise ValueError("an input of the metadata lacks a name or datatype")
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
            ):
                raise ValueError(f"input '{name}' of the metadata has no valid shape")
            specs[name] = TensorSpec(name, datatype, tuple(shape), t.get("optional") is True)
        return cls(model, specs)


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a request breaks its model's contract: a reason (metric label) and a message."""

    reason: str
    message: str


def _count(data: Any) -> int | None:
    """How many scalars a JSON tensor's data holds (nested lists allowed), or None."""
    if not isinstance(data, list):
        return None
    if not data or not isinstance(data[0], list):
        return len(data)
    total = 0
    for item in data:
        n = _count(item)
        if n is None:
            return None
        total += n
    return total


def check_request(contract: ModelContract, body: bytes) -> Violation | None:
    """The first way `body` (an infer request, JSON or binary extension) breaks `contract`."""
    try:
        doc, _ = load_json_head(body)
    except ValueError:
        return Violation("not_json", "request body is not valid JSON")
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs:
        return Violation("no_inputs", "expected at least one input in the 'inputs' array")
    specs = contract.inputs
    seen: set[str] = set()
    for t in inputs:
        if not isinstance(t, dict):
            return Violation("no_inputs", "each input must be an object")
        name = t.get("name")
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(sorted(specs))
            return Violation(
                "unknown_input",
                f"unexpected inference input '{name}' for model '{contract.model}' "
                f"(its inputs: {known})",
            )
        seen.add(spec.name)
        datatype = t.get("datatype")
        if datatype != spec.datatype:
            return Violation(
                "datatype",
                f"input '{name}' has datatype {datatype}, model '{contract.model}' "
                f"expects {spec.datatype}",
            )
        shape = t.get("shape")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            return Violation("shape", f"input '{name}': shape must be a list of sizes")
        if len(shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            return Violation(
                "shape",
                f"input '{name}' has shape {shape}, model '{contract.model}' expects "
                f"{list(spec.shape)} (-1: any size)",
            )
        elements = math.prod(shape)
        params = t.get("parameters")
        binary = params.get("binary_data_size") if isinstance(params, dict) else None
        if binary is not None:
            size = ITEM_SIZE.get(spec.datatype)
            if size is not None and binary != elements * size:
                return Violation(
                    "data_size",
                    f"input '{name}': {binary} bytes do not hold {elements} {spec.datatype}",
                )
        elif "data" in t:
            n = _count(t["data"])
            if n is not None and n != elements:
                return Violation(
                    "data_size", f"input '{name}': {n} values do not fill shape {shape}"
                )
    missing = [s.name for s in specs.values() if not s.optional and s.name not in seen]
    if missing:
        return Violation(
            "missing_input",
            f"model '{contract.model}' expects input(s) {', '.join(missing)}",
        )
    return None


class ModelContracts:
    """Metadata per (backend, model): fetched once, shared by waiters, trusted for a TTL."""

    def __init__(self, transports: Transports, clock: Clock) -> None:
        self._transports = transports
        self._clock = clock
        # (backend, model) -> (good until, contract or None when it could not be had)
        self._cache: dict[tuple[str, str], tuple[float, ModelContract | None, str]] = {}
        self._fetching: dict[tuple[str, str], asyncio.Future[None]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def get(
        self, backend: BackendRuntime, model: str, ttl: float, timeout: float
    ) -> tuple[ModelContract | None, str]:
        """(the contract, "") or (None, why it could not be had)."""
        key = (backend.name, model)
        now = self._clock.now()
        hit = self._cache.get(key)
        if hit is not None and now < hit[0]:
            return hit[1], hit[2]
        pending = self._fetching.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key, backend, model, ttl, timeout))
            self._fetching[key] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(key, None))
        try:
            await asyncio.wait_for(asyncio.shield(pending), timeout)
        except TimeoutError:
            return None, "metadata_timeout"
        hit = self._cache.get(key)
        return (hit[1], hit[2]) if hit is not None else (None, "metadata_unavailable")

    async def _fetch(
        self, key: tuple[str, str], backend: BackendRuntime, model: str, ttl: float, timeout: float
    ) -> None:
        now = self._clock.now()
        usable = [s for s, ok in zip(backend.states, backend.availability(now), strict=True) if ok]
        why = "metadata_unavailable"
        contract = None
        for state in usable[:2]:
            transport = self._transports.get(state.spec, backend.pool, backend.protocol)
            try:
                async with asyncio.timeout(timeout):
                    resp = await transport.send("GET", f"/v2/models/{model}", {}, b"")
                    body = resp.body
                    if resp.stream is not None:
                        resp.close()
                        body = None
            except (TimeoutError, AttemptFailed, TailguardError, OSError):
                why = "metadata_unavailable"
                continue
            if resp.status != 200 or body is None:
                why = "metadata_unavailable"
                continue
            try:
                contract = ModelContract.from_metadata(model, json.loads(body))
                break
            except (ValueError, RecursionError) as e:
                why = "metadata_invalid"
                log.warning("metadata of %s from %s is unusable: %s", model, state.spec.url, e)
        done = self._clock.now()
        until = done + ttl if contract is not None else done + RETRY_FETCH_AFTER
        self._cache[key] = (until, contract, "" if contract is not None else why)


class ContractStage:
    """Refuse KServe v2 infer requests that break the model's metadata (route `contract:`).

    Belongs in a route's chain after the body is read (BodyStage) and before the cache
    and fallbacks: a request refused here never reaches a backend, a cache or a
    fallback, and counts against no backend.
    """

    def __init__(self, contracts: ModelContracts, metrics: Metrics) -> None:
        self._contracts = contracts
        self._m = metrics

    async def __call__(self, ex: Exchange, nxt: Handler) -> Answer:
        route, backend, req = ex.route, ex.backend, ex.request
        assert route is not None and backend is not None
        cfg = route.contract
        if cfg is None or req.method != "POST" or not req.path.endswith("/infer"):
            return await nxt(ex)
        model = model_from_path(req.path)
        if model is None:
            return await nxt(ex)
        contract, why = await self._contracts.get(
            backend, model, cfg.metadata_ttl, cfg.fetch_timeout
        )
        m = self._m
        if contract is None:
            m.child(m.contract_unchecked, route.name, why).inc()
            return await nxt(ex)
        try:
            body = decoded(
                req.headers.get("content-encoding"), req.body, ex.snapshot.settings.max_body
            )
        except CodingError as e:
            raise ClientError(str(e)) from None
        if body is None:  # a coding the gateway cannot undo: the backend judges it
            m.child(m.contract_unchecked, route.name, "unknown_coding").inc()
            return await nxt(ex)
        violation = check_request(contract, body)
        if violation is None:
            return await nxt(ex)
        m.child(m.contract_rejections, route.name, violation.reason).inc()
        raise ContractViolation(violation.message)


__all__ = [
    "ContractStage",
    "ModelContract",
    "ModelContracts",
    "TensorSpec",
    "Violation",
    "check_request",
]
