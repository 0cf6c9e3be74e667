"""A private, throwaway `redis-server` for tests that need a real Redis.

Uses `REDIS_URL` when it is set; otherwise starts `redis-server` from PATH on a free
port with persistence off. Where neither is possible the tests skip with a loud reason,
except under CI (`CI=true`), where a missing Redis is a failure: the suite must never
pass there by skipping what it was meant to prove.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed port, which a test may stop and start again."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="tailguard-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def missing_redis(reason: str) -> None:
    """Skip loudly on a workstation; fail under CI, where Redis must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"Redis is required in CI: {reason}")
    pytest.skip(f"NO REDIS, shared-state tests not run: {reason}")


def private_redis() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_redis("redis-server is not on PATH and REDIS_URL is not set")
        raise AssertionError("unreachable")
    server = RedisServer(binary)
    server.start()
    return server
