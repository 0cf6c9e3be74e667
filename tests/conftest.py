"""Fixtures every test directory may use: a real Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from gateway.policy.model import DEFAULT_LISTENER
from tests.redis_server import RedisServer, private_redis

# The data listeners a gateway can serve with (policy `gateway.listener`).
LISTENERS = ("aiohttp", "httptools")
# Set to run every gateway a test starts on one listener (`TAILGUARD_TEST_LISTENER=httptools`).
LISTENER_ENV = "TAILGUARD_TEST_LISTENER"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_listeners` run once per data listener; the HTTP a client sees must
    not tell them apart."""
    if "listener" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_listeners"
    ):
        metafunc.parametrize("listener", LISTENERS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def listener(request: pytest.FixtureRequest) -> str:
    """The data listener the gateways of this test serve with."""
    param = getattr(request, "param", None)
    return str(param) if param is not None else os.environ.get(LISTENER_ENV, DEFAULT_LISTENER)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis to share state through: `REDIS_URL`, or a private server for the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = private_redis()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis that the test may kill and restart (never the shared REDIS_URL one)."""
    server = private_redis()
    try:
        yield server
    finally:
        server.close()


# Generated tests judge behaviour, never speed: a per-example deadline is a wall-time
# assertion that a loaded machine breaks.
settings.register_profile("tailguard", deadline=None)
settings.load_profile("tailguard")
