"""A private, throwaway `redis-server` for tests that need a real Redis.

Uses `REDIS_URL` when it is set; otherwise starts `redis-server` from PATH on a free
port with persistence off. Where neither is possible the tests skip with a loud reason,
except under CI (`CI=true`), where a missing Redis is a failure: the suite must never
pass there by skipping what it was meant to prove.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed to child processes are picked below the kernel's ephemeral range: a port the
# kernel picked (bind to 0) can be taken again, between the pick and the child's own bind, as
# the local end of any outgoing connection on the host (seen: a replica's "address already in
# use"). Below that range only another explicit bind can take it.
_LOW_PORTS = range(20000, max(20001, min(_ephemeral_low(), 32768)))
_pick = random.Random()


def free_port() -> int:
    """A port on 127.0.0.1 free now and outside the ephemeral range, for a child to listen on."""
    for _ in range(200):
        port = _pick.choice(_LOW_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the low range is crowded: fall back to the kernel's pick
        s.bind(("127.0.0.1", 0))
        fallback: int = s.getsockname()[1]
        return fallback


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


def _command(port: int, *args: str) -> bytes:
    """One command over a raw socket, for setting up a topology without a client library."""
    parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"*{len(args)}\r\n{''.join(parts)}".encode())
        s.settimeout(2)
        data = b""
        while not data.endswith(b"\r\n") or (data[:1] in (b"$", b"*") and len(data) < 4):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data[:1] in (b"+", b"-", b":"):
                break
            if data[:1] == b"$":
                head, _, body = data.partition(b"\r\n")
                if int(head[1:]) < 0 or len(body) >= int(head[1:]) + 2:
                    break
        return data


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RedisNode(RedisServer):
    """A redis-server (or sentinel) with extra arguments, named for the test's messages."""

    def __init__(
        self, binary: str, args: list[str] | None = None, *, config: str | None = None
    ) -> None:
        super().__init__(binary)
        self.args = args or []
        self.config = config  # a config file comes first (a sentinel needs one it can rewrite)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, *([self.config] if self.config else []), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             "--protected-mode", "no", "--repl-diskless-sync-delay", "0", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
        )  # fmt: skip
        _wait(lambda: _ping(self.port) or self.proc is None or self.proc.poll() is not None,
              f"redis on port {self.port}", 10)  # fmt: skip
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited on port {self.port}")

    def info(self, section: str) -> dict[str, str]:
        text = _command(self.port, "INFO", section).decode(errors="replace")
        return dict(
            line.split(":", 1) for line in text.splitlines() if ":" in line and line[0] != "#"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) on loopback ports.

    Failover is quick on purpose: a master is down after 400 ms without an answer.
    """

    SERVICE = "tg"

    def __init__(self, binary: str) -> None:
        self.master = RedisNode(binary)
        self.replica = RedisNode(binary)
        self.sentinels: list[RedisNode] = []
        self._binary = binary

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    @property
    def nodes(self) -> list[RedisNode]:
        return [self.master, self.replica]

    def start(self) -> None:
        self.master.start()
        self.replica.args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        _wait(lambda: self.replica.info("replication").get("master_link_status") == "up",
              "the replica to sync")  # fmt: skip
        for _ in range(3):
            node = RedisNode(self._binary)
            conf = Path(node.dir) / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 400\n"
                f"sentinel failover-timeout {self.SERVICE} 3000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            node.config, node.args = str(conf), ["--sentinel"]
            node.start()
            self.sentinels.append(node)
        # a failover needs the sentinels to know each other (hello messages every 2 s)
        _wait(lambda: all(self._others(s) == 2 for s in self.sentinels), "the sentinels to meet")

    def _others(self, sentinel: RedisNode) -> int:
        reply = _command(sentinel.port, "SENTINEL", "MASTER", self.SERVICE).decode()
        lines = reply.split("\r\n")
        for i, line in enumerate(lines):
            if line == "num-other-sentinels" and i + 2 < len(lines):
                return int(lines[i + 2])
        return -1

    def master_port(self) -> int:
        reply = _command(
            self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE
        ).decode()
        return int(reply.split("\r\n")[-2])

    def close(self) -> None:
        for node in [*self.sentinels, self.replica, self.master]:
            node.close()


def _cluster_port() -> int:
    """A free port whose bus port (+10000) is free too; Redis wants both below 65536."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterSet:
    """Three masters with one replica each, `cluster-node-timeout` 500 ms, on loopback ports."""

    def __init__(self, binary: str) -> None:
        self.nodes = [
            RedisNode(binary, ["--cluster-enabled", "yes", "--cluster-node-timeout", "500",
                               "--cluster-config-file", "nodes.conf",
                               "--cluster-replica-validity-factor", "0"])
            for _ in range(6)
        ]  # fmt: skip
        for n in self.nodes:
            n.port = _cluster_port()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            missing_redis("redis-cli is not on PATH (Debian: redis-tools)")
            raise AssertionError("unreachable")
        for n in self.nodes:
            n.start()
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )  # fmt: skip
        _wait(lambda: all(self.ok(n) for n in self.nodes), "the cluster to be ok")
        # a replica takes over only once it has synced with its master
        _wait(lambda: all(n.info("replication").get("master_link_status", "up") == "up"
                          for n in self.nodes), "the replicas to sync")  # fmt: skip

    @staticmethod
    def ok(node: RedisNode) -> bool:
        return b"cluster_state:ok" in _command(node.port, "CLUSTER", "INFO")

    def master_of(self, key: bytes) -> RedisNode:
        """The node serving `key`'s slot as master now."""
        from redis.crc import key_slot

        slot = key_slot(key)
        for n in self.nodes:
            if not n.alive():
                continue
            text = _command(n.port, "CLUSTER", "NODES").decode()
            for line in text.split("\r\n", 1)[-1].splitlines():
                fields = line.split()
                if len(fields) < 9 or "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for r in fields[8:]:
                    lo, _, hi = r.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        port = int(fields[1].split(":")[1].split("@")[0])
                        return next(x for x in self.nodes if x.port == port)
        raise RuntimeError(f"no master serves slot {slot}")

    def close(self) -> None:
        for n in self.nodes:
            n.close()


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_redis("redis-server is not on PATH")
        raise AssertionError("unreachable")
    return binary
