"""`tailguard run --workers 2`: one port, one merged /metrics, a dead worker comes back, and
one admin API that asks for the same credentials as a worker before it forwards anything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from gateway.auth import hash_key
from tests.e2e.test_cli import ROOT, free_port, wait_line
from tests.integration.test_tls import self_signed

BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
).encode()


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def infer(port: int) -> int:
    req = Request(
        f"http://127.0.0.1:{port}/v2/models/classifier/infer",
        data=BODY,
        headers={"content-type": "application/json", "connection": "close"},
    )
    with urlopen(req, timeout=10) as r:
        return int(r.status)


def ready(admin: int) -> bool:
    try:
        with urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
            return bool(r.status == 200)
    except (URLError, OSError):
        return False


def test_two_workers_share_the_port_and_one_admin_api(tmp_path: Path) -> None:
    sim_port, port, admin = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "classifier"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    sup = None
    try:
        wait_line(sim, "listening")
        policy = tmp_path / "p.yaml"
        policy.write_text(
            f"version: 1\n"
            f"gateway: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}'}}\n"
            f"backends:\n"
            f"  clf: {{protocol: kserve-v2, endpoints: [{{url: 'http://127.0.0.1:{sim_port}'}}]}}\n"
            f"routes:\n"
            f"  - {{name: classify, match: {{model: classifier}}, split: [{{backend: clf, weight: 100}}]}}\n"
        )
        sup = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy), "--workers", "2",
             "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        wait_line(sup, "supervising 2 workers")
        deadline = time.monotonic() + 20
        while not ready(admin):
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.1)
        # a new connection each time: the kernel spreads connections over the workers
        assert all(infer(port) == 200 for _ in range(60))
        with urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        served = {
            line.split('worker="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tailguard_requests_total{")
        }
        assert set(served) == {"0", "1"} and sum(served.values()) == 60, served
        assert all(n > 0 for n in served.values())

        # kill one worker outright: the supervisor starts another, the port keeps answering
        victim = children(sup.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            kids = children(sup.pid)
            if len(kids) == 2 and victim not in kids and ready(admin):
                break
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.1)
        assert all(infer(port) == 200 for _ in range(10))

        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=30)
        assert sup.returncode == 0, err
    finally:
        for p in (sup, sim):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=10)


# --- the admin face under --workers ----------------------------------------------------------

TOKEN = "ops-token-0123456789abcdef"
NEW_TOKEN = "rotated-token-0123456789ab"


@dataclass
class Running:
    sup: subprocess.Popen[str]
    policy: Path
    port: int
    admin: int
    sim_port: int
    scheme: str = "http"
    context: ssl.SSLContext | None = None

    @property
    def admin_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.admin}"

    def workers(self) -> list[int]:
        return children(self.sup.pid)

    def worker_admin_url(self, pid: int) -> str:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        where = argv[argv.index(b"--admin-listen") + 1].decode()
        return f"{self.scheme}://{where}"


def policy_text(
    port: int,
    admin: int,
    sim_port: int,
    extra: str = "",
    gateway: str = "",
    admin_host: str = "127.0.0.1",
) -> str:
    return (
        f"version: 1\n"
        f"gateway: {{listen: '127.0.0.1:{port}', admin_listen: '{admin_host}:{admin}'{gateway}}}\n"
        f"{extra}"
        f"backends:\n"
        f"  clf: {{protocol: kserve-v2, endpoints: [{{url: 'http://127.0.0.1:{sim_port}'}}]}}\n"
        f"routes:\n"
        f"  - {{name: classify, match: {{model: classifier}}, split: [{{backend: clf, weight: 100}}]}}\n"
    )


def tokens_section(token: str) -> str:
    return f"admin: {{tokens: [{{id: ops, hash: '{hash_key(token)}'}}]}}\n"


def call(
    url: str,
    *,
    token: str | None = None,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    h = {"connection": "close", **(headers or {})}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    try:
        with urlopen(
            Request(url, data=data, headers=h, method=method), timeout=15, context=context
        ) as r:
            return int(r.status), r.read()
    except HTTPError as e:
        return e.code, e.read()


def raw_head(port: int, request: bytes) -> bytes:
    """Send bytes as they are; the head of the answer (no body is ever sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


@contextlib.contextmanager
def supervised(
    tmp_path: Path,
    *,
    extra: str = "",
    gateway: str = "",
    admin_host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    context: ssl.SSLContext | None = None,
) -> Iterator[Running]:
    """A sim and `tailguard run --workers 2`, ready; stopped (exit 0 checked) afterwards."""
    sim_port, port, admin = free_port(), free_port(), free_port()
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environ.pop("TAILGUARD_SUPERVISOR_SECRET", None)
    if env is None or "TAILGUARD_ADMIN_TOKEN" not in env:
        environ.pop("TAILGUARD_ADMIN_TOKEN", None)
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "classifier"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environ,
    )  # fmt: skip
    sup = None
    try:
        wait_line(sim, "listening")
        policy = tmp_path / "p.yaml"
        policy.write_text(policy_text(port, admin, sim_port, extra, gateway, admin_host))
        sup = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy), "--workers", "2",
             "--log-level", "warning", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environ,
        )  # fmt: skip
        wait_line(sup, "supervising 2 workers")
        running = Running(
            sup, policy, port, admin, sim_port, "https" if context else "http", context
        )
        deadline = time.monotonic() + 30
        while call(running.admin_url + "/readyz", context=context)[0] != 200:
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.1)
        yield running
        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=30)
        assert sup.returncode == 0, err
    finally:
        if sup is not None and sup.poll() is None:
            for pid in children(sup.pid):  # they hold the output pipes open
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for p in (sup, sim):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=10)


def draining(url: str, token: str | None, context: ssl.SSLContext | None = None) -> bool:
    status, body = call(url + "/admin/status", token=token, context=context)
    assert status == 200, body
    return bool(json.loads(body)["backends"][0]["endpoints"][0]["draining"])


def test_the_supervisor_asks_for_the_admin_token_and_forwards_to_every_worker(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"
    with supervised(tmp_path, extra=tokens_section(TOKEN), args=("--audit-log", str(audit))) as run:
        base = run.admin_url
        # what scrapers and orchestrators need is open
        for path in ("/metrics", "/readyz", "/healthz"):
            assert call(base + path)[0] == 200, path
        status, body = call(base + "/metrics")
        assert b'worker="0"' in body and b'worker="1"' in body

        assert call(base + "/admin/status")[0] == 401
        assert call(base + "/admin/status", token="wrong")[0] == 401
        assert call(base + "/admin/status", headers={"x-admin-token": TOKEN[:-1]})[0] == 401
        assert call(base + "/admin/status", token=TOKEN)[0] == 200
        # no caller may speak as the supervisor, not even with a good token
        forged = {"x-tailguard-supervisor": "guess", "x-tailguard-admin-peer": "127.0.0.1"}
        assert call(base + "/admin/status", token=TOKEN, headers=forged)[0] == 401
        # bytes that are no token, and a 4 MiB body announced but never sent: 401 at once
        for header in (b"x-admin-token: \xff\xfe", b"authorization: Bearer caf\xc3\xa9"):
            head = raw_head(
                run.admin, b"GET /admin/status HTTP/1.1\r\nhost: x\r\n" + header + b"\r\n\r\n"
            )
            assert head.startswith(b"HTTP/1.1 401 "), head
        head = raw_head(
            run.admin,
            b"POST /admin/policy HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\n"
            b"content-type: text/yaml\r\ncontent-length: 4194304\r\n\r\n",
        )
        assert head.startswith(b"HTTP/1.1 401 ") and b"connection: close" in head.lower(), head
        head = raw_head(
            run.admin,
            b"POST /admin/policy HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\n"
            b"expect: 100-continue\r\ncontent-length: 4194304\r\n\r\n",
        )
        assert head.startswith(b"HTTP/1.1 401 "), head

        # an accepted action reaches every worker, each auditing the caller's token id
        sim_url = f"http://127.0.0.1:{run.sim_port}"
        drain = json.dumps({"backend": "clf", "endpoint": sim_url}).encode()
        assert call(base + "/admin/endpoints/drain", method="POST", data=drain)[0] == 401
        status, body = call(
            base + "/admin/endpoints/drain",
            method="POST",
            data=drain,
            token=TOKEN,
            headers={"content-type": "application/json"},
        )
        assert status == 200, body
        workers = [run.worker_admin_url(pid) for pid in run.workers()]
        assert len(workers) == 2
        assert all(draining(w, TOKEN) for w in workers)
        entries = [json.loads(line) for line in audit.read_text().splitlines()]
        drains = [e["actor"] for e in entries if e["event"] == "endpoint-drain"]
        assert drains == ["admin:ops", "admin:ops"]

        # a worker's own port: loopback is not enough, a forged vouch is refused
        for w in workers:
            assert call(w + "/admin/status")[0] == 401
            assert call(w + "/admin/status", headers=forged)[0] == 401
            assert call(w + "/admin/status", token=TOKEN, headers=forged)[0] == 401
            assert call(w + "/healthz")[0] == 200

        # a policy applied through the supervisor (not written to the file) rotates the token
        rotated = policy_text(run.port, run.admin, run.sim_port, tokens_section(NEW_TOKEN))
        status, body = call(
            base + "/admin/policy?persist=false", method="PUT", data=rotated.encode(), token=TOKEN
        )
        assert status == 200 and json.loads(body)["applied"], body
        assert call(base + "/admin/status", token=TOKEN)[0] == 401
        assert call(base + "/admin/status", token=NEW_TOKEN)[0] == 200
        assert all(call(w + "/admin/status", token=NEW_TOKEN)[0] == 200 for w in workers)

        # and so does an edit of the file, once the workers have reloaded it
        run.policy.write_text(policy_text(run.port, run.admin, run.sim_port, tokens_section(TOKEN)))
        deadline = time.monotonic() + 20
        while call(base + "/admin/status", token=TOKEN)[0] != 200:
            assert time.monotonic() < deadline, "the edited policy's token never opened"
            time.sleep(0.1)
        assert call(base + "/admin/status", token=NEW_TOKEN)[0] == 401


def test_without_tokens_only_the_supervisors_loopback_callers_are_admin(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with supervised(tmp_path, args=("--audit-log", str(audit))) as run:
        sim_url = f"http://127.0.0.1:{run.sim_port}"
        status, body = call(
            run.admin_url + "/admin/endpoints/drain",
            method="POST",
            data=json.dumps({"backend": "clf", "endpoint": sim_url}).encode(),
        )
        assert status == 200, body
        entries = [json.loads(line) for line in audit.read_text().splitlines()]
        assert [e["actor"] for e in entries if e["event"] == "endpoint-drain"] == [
            "loopback",
            "loopback",
        ]
        for pid in run.workers():
            w = run.worker_admin_url(pid)
            # the supervisor's secret, as the worker was given it
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            secret = next(
                v.split(b"=", 1)[1].decode()
                for v in env
                if v.startswith(b"TAILGUARD_SUPERVISOR_SECRET=")
            )
            assert len(secret) >= 32
            assert call(w + "/admin/status")[0] == 401  # a local caller, but not vouched for
            for peer, expected in (("127.0.0.1", 200), ("203.0.113.9", 401), ("", 401)):
                vouched = {"x-tailguard-supervisor": secret, "x-tailguard-admin-peer": peer}
                assert call(w + "/admin/status", headers=vouched)[0] == expected, peer
            forged = {"x-tailguard-supervisor": secret[:-1] + "x", "x-tailguard-admin-peer": "::1"}
            assert call(w + "/admin/status", headers=forged)[0] == 401


def test_an_exposed_admin_port_needs_a_token_to_start(tmp_path: Path) -> None:
    port, admin, sim_port = free_port(), free_port(), free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(policy_text(port, admin, sim_port))
    env = {k: v for k, v in os.environ.items() if k != "TAILGUARD_ADMIN_TOKEN"}
    for args in (
        ["--workers", "2", "--admin-listen", f"0.0.0.0:{admin}"],
        ["--admin-listen", f":{admin}"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy), *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
        )  # fmt: skip
        assert r.returncode == 2, (args, r.stderr)
        assert "refusing to start" in r.stderr and "--admin-listen" in r.stderr, r.stderr
        assert "admin.tokens" in r.stderr and "TAILGUARD_ADMIN_TOKEN" in r.stderr
    # the policy's own address is named as such
    policy.write_text(policy_text(port, admin, sim_port, admin_host=""))
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--policy", str(policy)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip
    assert r.returncode == 2 and "gateway.admin_listen" in r.stderr, r.stderr


def test_the_environments_token_opens_the_supervisor_on_every_interface(tmp_path: Path) -> None:
    env = {"TAILGUARD_ADMIN_TOKEN": TOKEN}
    with supervised(tmp_path, env=env, admin_host="0.0.0.0") as run:
        base = run.admin_url
        assert call(base + "/admin/status")[0] == 401  # a token is configured: loopback is no key
        assert call(base + "/admin/status", token="wrong")[0] == 401
        status, body = call(base + "/admin/status", token=TOKEN)
        assert status == 200 and json.loads(body)["ready"], body
        for pid in run.workers():
            assert call(run.worker_admin_url(pid) + "/admin/status", token=TOKEN)[0] == 200


def test_the_supervisors_admin_listener_uses_the_policys_admin_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    tls = f", admin_tls: {{cert: '{cert.name}', key: '{key.name}'}}"  # relative to the policy
    with supervised(
        tmp_path, extra=tokens_section(TOKEN), gateway=tls, context=trusted, args=("--no-watch",)
    ) as run:
        assert run.admin_url.startswith("https://")
        base = run.admin_url
        # the workers are reached over TLS too: readiness and metrics come from them
        assert call(base + "/readyz", context=trusted)[0] == 200
        status, body = call(base + "/metrics", context=trusted)
        assert status == 200 and b'worker="1"' in body
        assert call(base + "/admin/status", context=trusted)[0] == 401
        status, body = call(base + "/admin/status", token=TOKEN, context=trusted)
        assert status == 200 and json.loads(body)["backends"], body
        # an untrusting client, and plain HTTP, get no answer from the admin port
        with contextlib.suppress(URLError, OSError):
            call(base + "/healthz")
            raise AssertionError("the admin port answered without TLS verification")
        head = raw_head(run.admin, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert not head.startswith(b"HTTP/1.1 200"), head

        # without the file watch, SIGHUP is what rotates the token, for workers and supervisor
        run.policy.write_text(
            policy_text(run.port, run.admin, run.sim_port, tokens_section(NEW_TOKEN), tls)
        )
        run.sup.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while call(base + "/admin/status", token=NEW_TOKEN, context=trusted)[0] != 200:
            assert time.monotonic() < deadline, "SIGHUP did not bring the new token in"
            time.sleep(0.1)
        assert call(base + "/admin/status", token=TOKEN, context=trusted)[0] == 401
