"""Cache keys and the stored form of an entry: what a shared store hands back is untrusted."""

from __future__ import annotations

import json
import struct

import pytest

from gateway.fallback.cache import (
    CacheConfig,
    CachedAnswer,
    LocalEntries,
    cache_key,
    decode,
    encode,
)


def config(**kw: object) -> CacheConfig:
    base: dict[str, object] = {
        "ttl": 10.0,
        "stale_if_error": 60.0,
        "max_entries": 100,
        "max_entry_size": 1 << 20,
        "vary": (),
        "ignore_fields": frozenset(),
        "methods": frozenset({"GET", "POST"}),
    }
    base.update(kw)
    return CacheConfig(**base)  # type: ignore[arg-type]


ENTRY = CachedAnswer(200, (("content-type", "application/json"),), b'{"y":[1,2]}', 1.8e9)


def key(body: bytes, headers: dict[str, str] | None = None, **kw: object) -> str | None:
    return cache_key("r", config(**kw), "POST", "/infer?x=1", headers or {}, body)


def test_equal_json_bodies_share_a_key_and_different_ones_do_not() -> None:
    assert key(b'{"a":1,"b":2}') == key(b'{ "b": 2, "a": 1 }')
    assert key(b'{"a":1}') != key(b'{"a":2}')
    assert key(b"not json") != key(b"not  json")


def test_ignored_fields_and_vary_headers_shape_the_key() -> None:
    ignore = frozenset({"user"})
    assert key(b'{"a":1,"user":"x"}', ignore_fields=ignore) == key(
        b'{"a":1,"user":"y"}', ignore_fields=ignore
    )
    assert key(b'{"a":1,"user":"x"}') != key(b'{"a":1,"user":"y"}')
    vary = ("x-tenant",)
    assert key(b"{}", {"x-tenant": "a"}, vary=vary) != key(b"{}", {"x-tenant": "b"}, vary=vary)
    assert key(b"{}", {"x-tenant": "a"}) == key(b"{}", {"x-tenant": "b"})


def test_a_method_not_listed_is_not_cacheable() -> None:
    assert cache_key("r", config(methods=frozenset({"GET"})), "POST", "/", {}, b"") is None


def test_a_deeply_nested_body_is_keyed_by_its_bytes_not_a_crash() -> None:
    # json.loads raises RecursionError here; a client's body must never turn into a 500
    deep = b"[" * 100_000 + b"]" * 100_000
    k = key(deep)
    assert k is not None and k == key(deep) and k != key(b"[]")


def test_an_entry_survives_the_round_trip() -> None:
    assert decode(encode(ENTRY)) == ENTRY
    empty = CachedAnswer(204, (), b"", 0.0)
    assert decode(encode(empty)) == empty


def test_a_truncated_value_is_a_miss_not_a_shorter_answer() -> None:
    raw = encode(ENTRY)
    for cut in (1, 3, len(ENTRY.body), len(raw) - 1):
        assert decode(raw[:-cut]) is None, cut
    assert decode(raw + b"x") is None


def _forge(status: int, stored_at: float, heads: bytes, body: bytes = b"ok") -> bytes:
    return struct.pack("!4sHdII", b"TGc1", status, stored_at, len(heads), len(body)) + heads + body


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"plain text a peer left under the key",
        _forge(200, float("nan"), b"[]"),  # would never age: a fresh hit forever
        _forge(200, float("inf"), b"[]"),
        _forge(500, 1.8e9, b"[]"),  # only 2xx answers are ever stored
        _forge(0, 1.8e9, b"[]"),
        _forge(200, 1.8e9, b"{}"),
        _forge(200, 1.8e9, b"[1]"),
        _forge(200, 1.8e9, b'[["content-type","a","b"]]'),
        _forge(200, 1.8e9, b'[["content-type",1]]'),
        _forge(200, 1.8e9, b'[["set-cookie","a=b"]]'),
        _forge(200, 1.8e9, json.dumps([["content-type", "a\r\nx-evil: 1"]]).encode()),
        _forge(200, 1.8e9, b"[" * 100_000),
        _forge(200, 1.8e9, b"\xff\xfe"),
    ],
)
def test_a_corrupt_or_foreign_value_is_a_miss(raw: bytes) -> None:
    assert decode(raw) is None


def test_the_local_lru_expires_and_evicts() -> None:
    lru = LocalEntries(2)
    lru.put("a", ENTRY, expires=10.0)
    lru.put("b", ENTRY, expires=10.0)
    assert lru.get("a", now=5.0) == ENTRY  # a is now the most recent
    lru.put("c", ENTRY, expires=10.0)
    assert lru.get("b", now=5.0) is None
    assert len(lru) == 2
    assert lru.get("a", now=10.0) is None  # expired, and dropped
    assert len(lru) == 1
    lru.capacity = 0  # a reload shrank it: the next put trims
    lru.put("d", ENTRY, expires=20.0)
    assert len(lru) == 0
