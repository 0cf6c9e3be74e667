"""The response cache: fresh hits within `ttl`, stale answers within `stale_if_error`.

An entry is kept for `ttl + stale_if_error`. Within `ttl` it may answer without asking
the backend (when `ttl` > 0); after that it is only served when the backend could not
answer, marked `x-tailguard-fallback: cache` with its `age`. Only successful buffered
answers are stored; streams and errors never are.

The key is built from the method, the path with its query, a canonical form of the JSON
body (keys sorted, insignificant whitespace gone, `ignore_fields` dropped, so that
`{"a":1,"b":2}` and `{"b": 2, "a": 1}` share an entry) and the values of the `vary`
headers. Entries live in the shared store when it is shared (Redis: TTL keys, evicted by
Redis), else in a per-route LRU bounded by `max_entries`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheConfig:
    ttl: float
    stale_if_error: float
    max_entries: int
    max_entry_size: int
    vary: tuple[str, ...]
    ignore_fields: frozenset[str]
    methods: frozenset[str]

    @property
    def keep_for(self) -> float:
        """How long an entry is worth keeping at all."""
        return self.ttl + self.stale_if_error


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored answer; `stored_at` is wall-clock time so replicas agree on its age."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float

    def age(self, wall_now: float) -> float:
        return max(0.0, wall_now - self.stored_at)


# Response headers worth keeping with a cached body; the rest are per-response facts.
KEPT_HEADERS = ("content-type", "content-encoding")
_CODING_HEADERS = ("accept-encoding", "content-encoding")


def cache_key(
    route: str,
    config: CacheConfig,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    scope: tuple[str, ...] = (),
) -> str | None:
    """The entry's key, or None when this request is not cacheable (method not listed).

    `scope` is what else must match for an answer to be shared: the caller passes the
    tenant (one tenant's answers are never served to another) and the backend the split
    chose (a promoted canary does not keep serving the old model's answers).
    """
    if method not in config.methods:
        return None
    h = hashlib.sha256()
    for part in scope:
        h.update(part.encode())
        h.update(b"\0")
    h.update(method.encode())
    h.update(b"\0")
    h.update(path_qs.encode("utf-8", "surrogateescape"))
    h.update(b"\0")
    for name in config.vary:
        h.update(name.encode())
        h.update(b"=")
        h.update((headers.get(name) or "").encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    # an answer encoded for one client (gzip) must not be served to one that cannot read it,
    # and a body sent encoded is a different key from the same body sent plain
    for name in _CODING_HEADERS:
        h.update((headers.get(name) or "").strip().lower().encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    h.update(_canonical_body(body, config.ignore_fields))
    return f"cache:{route}:{h.hexdigest()}"


def _canonical_body(body: bytes, ignore: frozenset[str]) -> bytes:
    if not body:
        return b""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # not JSON, or nested too deep to canonicalise: the bytes themselves are the key
        return body
    if ignore and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ignore}
    # a lone surrogate in the client's JSON stays a key, not an error
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


# magic and version, status, stored_at, length of the JSON header list, length of the body
_HEAD = struct.Struct("!4sHdII")
_MAGIC = b"TGc1"


def encode(entry: CachedAnswer) -> bytes:
    """A compact binary form for the store: fixed header, JSON header list, raw body."""
    heads = json.dumps(entry.headers, separators=(",", ":")).encode()
    head = _HEAD.pack(_MAGIC, entry.status, entry.stored_at, len(heads), len(entry.body))
    return head + heads + entry.body


def decode(raw: bytes) -> CachedAnswer | None:
    """The entry, or None for anything that is not one (a foreign, truncated or corrupt value).

    Whatever comes back from a shared store is untrusted: a value that would crash the
    request, never age, or pass a truncated body off as a whole answer is a miss instead.
    """
    try:
        magic, status, stored_at, n, size = _HEAD.unpack_from(raw)
        start = _HEAD.size
        if (
            magic != _MAGIC
            or len(raw) != start + n + size
            or not 200 <= status < 300
            or not math.isfinite(stored_at)
        ):
            return None
        heads = json.loads(raw[start : start + n])
        if not isinstance(heads, list):
            return None
        headers = tuple((k, v) for k, v in heads)
        if not all(_safe_header(k, v) for k, v in headers):
            return None
        return CachedAnswer(status, headers, raw[start + n :], stored_at)
    except (struct.error, ValueError, TypeError, RecursionError):
        return None


def _safe_header(name: object, value: object) -> bool:
    # a header this module would have kept, with nothing that could split the response
    return (
        isinstance(name, str)
        and name in KEPT_HEADERS
        and isinstance(value, str)
        and not any(c in value for c in "\r\n\0")
    )


class LocalEntries:
    """A per-route LRU of encoded entries with expiry, for the unshared (memory) store."""

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()

    def get(self, key: str, now: float) -> CachedAnswer | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires, entry = item
        if expires <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CachedAnswer, expires: float) -> None:
        self._entries[key] = (expires, entry)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


__all__ = [
    "KEPT_HEADERS",
    "CacheConfig",
    "CachedAnswer",
    "LocalEntries",
    "cache_key",
    "decode",
    "encode",
]
