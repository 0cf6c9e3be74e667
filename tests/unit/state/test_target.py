"""`state.url` forms: one Redis, Sentinel, Cluster; errors an operator can act on."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from gateway.state.target import RedisTarget, cluster_key, parse_redis_url


def test_single_server_urls_pass_through() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@r:6380/1", "unix:///run/redis.sock"):
        t = parse_redis_url(url)
        assert (t.mode, t.url) == ("single", url)
    assert parse_redis_url("rediss://r:6380").tls


def test_sentinel_url() -> None:
    t = parse_redis_url(
        "redis+sentinel://app:s%40cret@s1:26379,[::1]:26380,s3/mymaster/2?sentinel_password=x"
    )
    assert t == RedisTarget(
        mode="sentinel",
        url=t.url,
        hosts=(("s1", 26379), ("::1", 26380), ("s3", 26379)),
        service="mymaster",
        db=2,
        username="app",
        password="s@cret",
        sentinel_password="x",
    )
    assert "s%40cret" not in t.safe() and "=x" not in t.safe()
    assert (
        t.safe() == "redis+sentinel://***@s1:26379,[::1]:26380,s3/mymaster/2?sentinel_password=***"
    )


def test_cluster_url() -> None:
    t = parse_redis_url("rediss+cluster://:pw@n1:7000,n2:7001")
    assert (t.mode, t.hosts, t.password, t.tls, t.db) == (
        "cluster",
        (("n1", 7000), ("n2", 7001)),
        "pw",
        True,
        0,
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x", "expected a Redis URL"),
        ("redis+sentinel://s1:26379", "name the master"),
        ("redis+sentinel://s1:99999/m", "port out of range"),
        ("redis+sentinel://s1:26379/m/x", "not a database number"),
        ("redis+cluster://n1:7000/3", "database 0 only"),
        ("redis+cluster://n1:7000,,n2", "is not HOST or HOST:PORT"),
        ("redis+cluster://n1?sentinel_password=x", "only for redis+sentinel"),
        ("redis+sentinel://s1/m?timeout=1", "unknown URL parameter 'timeout'"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        parse_redis_url(url)


def test_cluster_keys_carry_one_hash_tag() -> None:
    assert cluster_key("ratelimit:r:abc") == "{ratelimit:r:abc}"
    # a caller's own tag is kept, so keys it names together share a slot
    assert cluster_key("a:{t}") == "a:{t}"
    assert key_slot(b"tailguard:" + cluster_key("a:{t}").encode()) == key_slot(b"b:{t}")
    # an empty tag is no tag in Redis: such a key gets a real one
    assert cluster_key("a:{}") == "{a:{}}"
