"""What llhttp refuses becomes the gateway's own error, with the status a client sees."""

from __future__ import annotations

import httptools
import pytest

from gateway.errors import ClientError, HeadersTooLarge
from gateway.proxy.h1_server import translate


class _Limited:
    """Parser callbacks that refuse a header, as the listener's limits do."""

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(value) > 8:
            raise HeadersTooLarge("a header field is too long")


def refusal(data: bytes, callbacks: object | None = None) -> ClientError:
    parser = httptools.HttpRequestParser(callbacks if callbacks is not None else object())
    with pytest.raises(httptools.HttpParserError) as caught:
        parser.feed_data(data)
    return translate(caught.value)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        pytest.param(b"get / HTTP/1.1\r\n\r\n", "method", id="method-lower-case"),
        pytest.param(b"FOO / HTTP/1.1\r\n\r\n", "method", id="method-unknown"),
        pytest.param(b"GET /\xff HTTP/1.1\r\n\r\n", "target", id="target-not-ascii"),
        pytest.param(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "malformed", id="version"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "malformed",
            id="content-length-twice",
        ),
    ],
)
def test_parser_errors_are_a_400_for_the_client(data: bytes, words: str) -> None:
    err = refusal(data)
    assert type(err) is ClientError
    assert err.status == 400
    assert words in err.message


def test_a_limit_raised_in_a_callback_keeps_its_own_status() -> None:
    err = refusal(b"GET / HTTP/1.1\r\nX-Long: 0123456789\r\nHost: a\r\n\r\n", _Limited())
    assert isinstance(err, HeadersTooLarge)
    assert err.status == 431
