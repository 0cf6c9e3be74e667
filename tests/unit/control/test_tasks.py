"""Ticker and BackgroundTasks: a failing turn does not end the loop; closing leaves nothing running."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.control.tasks import BackgroundTasks, Ticker

log = logging.getLogger("test.tasks")


async def test_a_failing_turn_is_logged_and_the_ticker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    turns = 0
    enough = asyncio.Event()

    async def turn() -> None:
        nonlocal turns
        turns += 1
        if turns == 5:
            enough.set()
        if turns % 2:
            raise RuntimeError("boom")

    ticker = Ticker(turn, lambda: 0.0, log, "test turn")
    ticker.start()
    ticker.start()  # a second start does not start a second loop
    await enough.wait()
    await ticker.close()
    assert not ticker.running
    settled = turns
    await asyncio.sleep(0)
    assert turns == settled == 5
    assert [r.getMessage() for r in caplog.records] == ["test turn failed"] * 3


async def test_background_calls_are_kept_until_done_and_drained_on_close() -> None:
    tasks = BackgroundTasks()
    gate = asyncio.Event()
    done: list[int] = []

    async def call(k: int) -> None:
        await gate.wait()
        done.append(k)
        if k == 1:
            raise RuntimeError("its own to log")

    for k in range(3):
        tasks.spawn(call(k))
    assert len(tasks) == 3
    gate.set()
    await tasks.drain()
    assert sorted(done) == [0, 1, 2]
    assert len(tasks) == 0


async def test_close_ends_a_ticker_whose_turn_swallowed_the_cancellation() -> None:
    entered = asyncio.Event()
    turns = 0

    async def turn() -> None:
        nonlocal turns
        turns += 1
        entered.set()
        try:
            await asyncio.Event().wait()  # forever, unless cancelled
        except asyncio.CancelledError:
            pass  # as a library that swallows the cancellation does

    ticker = Ticker(turn, lambda: 0.0, log, "stubborn turn")
    ticker.start()
    await entered.wait()
    await ticker.close()
    assert turns == 1 and not ticker.running
    ticker.start()  # a closed ticker stays closed
    assert not ticker.running
