"""One gateway per test module, on its own thread; after every test it must still serve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversarial.edge import Edge, running_edge
from tests.conftest import LISTENERS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every case here runs against both data listeners."""
    if "listener" in metafunc.fixturenames:
        metafunc.parametrize("listener", LISTENERS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, listener: str) -> Iterator[Edge]:
    with running_edge(Path(tmp_path_factory.mktemp("edge")), listener) as e:
        yield e


@pytest.fixture(autouse=True)
def _still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a case sent, the gateway answers the next plain request on a new connection."""
    if "edge" not in request.fixturenames:
        yield
        return
    e: Edge = request.getfixturevalue("edge")
    e.take()  # what earlier tests left behind is not this test's business
    e.backend.refused.clear()
    yield
    e.assert_serving()
