"""The bytes/text boundary: target normalisation, codings, digits, JSON text."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ClientError, RateLimited
from gateway.proxy.answers import error_answer, protocol_for_path
from gateway.proxy.edge import (
    CodingError,
    ascii_int,
    decoded,
    loads_client_json,
    normalize_target,
    remove_dot_segments,
)


@pytest.mark.parametrize(
    ("target", "path", "forwarded"),
    [
        ("/v2/models/m/infer", "/v2/models/m/infer", "/v2/models/m/infer"),
        ("/v2/models/m/infer?x=1&y=%20", "/v2/models/m/infer", "/v2/models/m/infer?x=1&y=%20"),
        ("/a/public/../private", "/a/private", "/a/private"),
        ("/a/%2e%2E/b", "/b", "/b"),
        ("/a/./b/.", "/a/b/", "/a/b/"),
        ("/my%20model/%7Efoo", "/my model/~foo", "/my%20model/~foo"),
        ("/caf%c3%a9", "/café", "/caf%C3%A9"),
    ],
)
def test_targets_are_normalised_once(target: str, path: str, forwarded: str) -> None:
    assert normalize_target(target) == (path, forwarded)


@pytest.mark.parametrize(
    "target",
    ["http://h/x", "h:443", "*", "x", "/a%2Fb", "/a%2fb", "/a%5cb", "/a%00", "/a%0a", "/a%zz",
     "/a%4", "/%ff", "/a b", "/a\x00", "/a?b#c", "/a?b c", "/../etc", "/a/../../etc",
     "/%2e%2e/x"],
)  # fmt: skip
def test_unsafe_targets_are_refused(target: str) -> None:
    with pytest.raises(ClientError):
        normalize_target(target)


_SEGMENT = st.sampled_from(["a", "b", ".", "..", "%2e", "%2E%2e", "c%20d", "", "x.y"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_SEGMENT, max_size=8), st.booleans())
def test_a_normalised_path_has_no_dot_segments_and_is_stable(segments: list[str], q: bool) -> None:
    target = "/" + "/".join(segments) + ("?q=1" if q else "")
    try:
        path, forwarded = normalize_target(target)
    except ClientError as e:
        assert "climbs above the root" in e.message
        return
    parts = forwarded.split("?", 1)[0].split("/")
    assert "." not in parts and ".." not in parts
    assert normalize_target(forwarded) == (path, forwarded)


def test_remove_dot_segments_follows_rfc_3986_examples() -> None:
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/mid/content=5/../6") == "/mid/6"


def test_decoded_undoes_gzip_and_deflate_and_bounds_bombs() -> None:
    data = b'{"a": 1}'
    assert decoded("gzip", gzip.compress(data), 100) == data
    assert decoded("deflate", zlib.compress(data), 100) == data
    assert decoded(None, data, 100) == data
    assert decoded("br", b"...", 100) is None  # cannot look: passes unjudged
    with pytest.raises(CodingError):
        decoded("gzip", b"not gzip", 100)
    with pytest.raises(CodingError):
        decoded("gzip", gzip.compress(b"0" * 10_000), 1000)
    with pytest.raises(CodingError):
        decoded("gzip", gzip.compress(data)[:-6], 100)


def test_only_ascii_digits_are_numbers() -> None:
    assert ascii_int("12") == 12
    assert ascii_int(" 7 ") == 7
    assert ascii_int("\u00b2") is None  # '²'.isdigit() is True, int('²') raises
    assert ascii_int("\u0661") is None  # ARABIC-INDIC DIGIT ONE
    assert ascii_int("-1") is None and ascii_int("") is None and ascii_int(None) is None


def test_lone_surrogates_are_not_json_a_gateway_accepts() -> None:
    with pytest.raises(ValueError):
        loads_client_json(b'{"a": "\\ud800"}')
    with pytest.raises(ValueError):
        loads_client_json(b'["\\udc00x"]')
    assert loads_client_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


def test_error_bodies_speak_the_route_protocol() -> None:
    err = RateLimited("slow down", headers={"retry-after": "1"})
    kserve = error_answer("kserve-v2", err, "r1")
    assert json.loads(kserve.body) == {"error": "slow down"}
    openai = json.loads(error_answer("openai", err, "r1").body)
    assert openai == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limited",
        }
    }
    plain = json.loads(error_answer("http", err, "r1").body)
    assert plain["error"]["code"] == "rate_limited" and plain["error"]["request_id"] == "r1"
    for answer in (kserve, error_answer("openai", err, "r1")):
        assert answer.status == 429
        assert answer.headers["x-tailguard-error"] == "rate_limited"
        assert answer.headers["retry-after"] == "1"
    assert protocol_for_path("/v2/models/x") == "kserve-v2"
    assert protocol_for_path("/v1/chat/completions") == "openai"
    assert protocol_for_path("/predict") == "http"
