"""Request targets at the edge: normalised once, and the path that matched is the path forwarded.

The policy has a `public` and a `private` KServe route side by side. A target that the
gateway matches one way and a backend resolves another (dot segments, encoded slashes,
absolute-form) would reach `private` through the `public` route's checks.
"""

from __future__ import annotations

import pytest

from tests.adversarial.edge import Edge, converse, forwarding_problems, get, refused_in_step

# (target sent, route that must answer, target the backend must receive): RFC 3986 5.2.4
NORMALISED = [
    pytest.param(b"/v2/models/public/x", "public", b"/v2/models/public/x", id="plain"),
    pytest.param(
        b"/v2/models/public/../private/infer",
        "private",
        b"/v2/models/private/infer",
        id="dot-dot-into-another-route",
    ),
    pytest.param(
        b"/v2/models/private/./a/../infer",
        "private",
        b"/v2/models/private/infer",
        id="dot-and-dot-dot",
    ),
    pytest.param(
        b"/v1/../v2/models/private/infer",
        "private",
        b"/v2/models/private/infer",
        id="dot-dot-out-of-chat",
    ),
    pytest.param(b"/v2/models/public/x/..", "public", b"/v2/models/public/", id="trailing-dot-dot"),
    pytest.param(b"/v2/models/public/x/.", "public", b"/v2/models/public/x/", id="trailing-dot"),
    pytest.param(
        b"/v2/models/public/a/./b/../c?x=/../y&z=%2F",
        "public",
        b"/v2/models/public/a/c?x=/../y&z=%2F",
        id="query-kept-as-is",
    ),
]


@pytest.mark.parametrize(("target", "route", "forwarded"), NORMALISED)
def test_dot_segments_are_removed_before_matching_and_forwarding(
    edge: Edge, target: bytes, route: str, forwarded: bytes
) -> None:
    conv = converse(edge.port, get(target))
    conv.assert_sound()
    assert conv.statuses == [200], conv
    answer = conv.answers[0]
    assert answer.route == route, f"{target!r} matched {answer.route!r}, not {route!r}"
    assert [s.target for s in edge.take()] == [forwarded]
    assert answer.echoed == forwarded


ENCODED_DOTS = [
    b"/v2/models/public/%2e%2e/private/infer",
    b"/v2/models/public/%2E%2E/private/infer",
    b"/v2/models/public/.%2e/private/infer",
    b"/v2/models/public/%2e./private/infer",
]


@pytest.mark.parametrize("target", ENCODED_DOTS)
def test_encoded_dot_segments_are_refused_or_resolved(edge: Edge, target: bytes) -> None:
    """`%2e` is `.` (RFC 3986 6.2.2.2): a backend decodes it, so the gateway must too, or refuse."""
    conv = converse(edge.port, get(target))
    conv.assert_sound()
    seen = edge.take()
    if conv.statuses == [400]:
        assert seen == [], "a refused target reached a backend"
        return
    assert conv.statuses == [200], conv
    assert conv.answers[0].route == "private", f"{target!r} matched {conv.answers[0].route!r}"
    assert [s.target for s in seen] == [b"/v2/models/private/infer"]


REFUSED = [
    pytest.param(b"/../../etc/passwd", id="climbs-above-root"),
    pytest.param(b"/v2/models/public/../../../../x", id="climbs-above-root-from-a-route"),
    pytest.param(b"/v2/models/public%2F..%2Fprivate/infer", id="encoded-slash"),
    pytest.param(b"/v2/models/public%2f..%2fprivate/infer", id="encoded-slash-lower-case"),
    pytest.param(b"/v2/models/public/a%2Fb", id="encoded-slash-in-a-segment"),
    pytest.param(b"/v2/models/public/..%5Cprivate/infer", id="encoded-backslash"),
    pytest.param(b"/v2/models/public/..%5cprivate/infer", id="encoded-backslash-lower-case"),
    pytest.param(b"/v2/models/public/..\\private/infer", id="backslash"),
    pytest.param(b"/v2/models/public/a%00b", id="encoded-nul"),
    pytest.param(b"/v2/models/public/a\x00b", id="nul"),
    pytest.param(b"/v2/models/public/a%0d%0aX-Injected:%20yes", id="encoded-cr-lf"),
    pytest.param(b"/v2/models/public/a%01b", id="encoded-control-char"),
    pytest.param(b"/v2/models/public/a%7Fb", id="encoded-del"),
    pytest.param(b"/v2/models/public/a\x01b", id="control-char"),
    pytest.param(b"/v2/models/public/\xff\xfe", id="bytes-not-utf8"),
    pytest.param(b"http://other.example/x", id="absolute-form"),
    pytest.param(
        b"http://other.example/v2/models/private/infer", id="absolute-form-naming-a-route"
    ),
    pytest.param(b"https://other.example/v2/models/public/x", id="absolute-form-https"),
    pytest.param(b"other.example:443", id="authority-form-with-get"),
]


@pytest.mark.parametrize("target", REFUSED)
def test_targets_that_cannot_be_forwarded_as_matched_are_400(edge: Edge, target: bytes) -> None:
    refused_in_step(edge, get(target), (400,))


def test_connect_authority_form_is_400(edge: Edge) -> None:
    request = b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n"
    refused_in_step(edge, request, (400,))


def test_asterisk_form_is_never_forwarded(edge: Edge) -> None:
    refused_in_step(edge, b"OPTIONS * HTTP/1.1\r\nHost: edge.test\r\n\r\n")


# Targets with no single right answer: refused, or forwarded so that a backend resolves them to
# the route that matched. Either is fine; forwarding one thing after matching another is not.
CONSISTENT = [
    pytest.param(b"//v2/models/public/x", id="double-slash"),
    pytest.param(b"//other.example/v2/models/public/x", id="network-path-reference"),
    pytest.param(b"/v2/models/%70ublic/x", id="percent-encoded-unreserved"),
    pytest.param(b"/v2/models/public/%ff%fe", id="percent-encoded-not-utf8"),
    pytest.param(b"/v2/models/public/caf%C3%A9", id="percent-encoded-utf8"),
    pytest.param(b"/v2/models/public/caf\xc3\xa9", id="raw-utf8"),
    pytest.param(b"/v2/models/public/..;/private/infer", id="dot-dot-with-parameter"),
    pytest.param(b"/v2/models/public/x#frag", id="fragment"),
    pytest.param(b"/v2/models/public/%zz", id="bad-percent-escape"),
]


@pytest.mark.parametrize("target", CONSISTENT)
def test_forwarded_path_is_the_matched_path(edge: Edge, target: bytes) -> None:
    conv = converse(edge.port, get(target))
    conv.assert_sound()
    seen = edge.take()
    answer = conv.answers[0]
    if 400 <= answer.status < 500:
        assert seen == [], "a refused target reached a backend"
        return
    assert answer.status == 200, conv
    assert len(seen) == 1
    assert forwarding_problems(seen[0].target, answer.route) == []
