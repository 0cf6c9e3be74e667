"""`tailguard run` exports its spans over OTLP to a receiver the test runs on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.e2e.test_cli import ROOT, free_port, wait_line

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"


class Received:
    """Every ExportTraceServiceRequest a receiver got."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.arrived = threading.Event()

    def add(
        self, req: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]
    ) -> None:
        self.requests.append(req)
        self.headers.append(headers)
        self.arrived.set()

    def spans(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(service name, span name, attributes) of every span received."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                service = next(
                    a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                )
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {a.key: a.value for a in span.attributes}
                        attrs["trace_id"] = span.trace_id.hex()
                        out.append((service, span.name, attrs))
        return out


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.received.add(request, dict(context.invocation_metadata()))  # type: ignore[arg-type]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(GrpcReceiver(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", received
    server.stop(grace=None)


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            received.add(req, {k.lower(): v for k, v in self.headers.items()})
            out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_spans_reach_an_otlp_receiver(
    protocol: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    endpoint, received = request.getfixturevalue(f"{protocol}_receiver")
    sim_port, port, admin = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TAILGUARD_ADMIN_TOKEN", None)
    tracing = f"{{protocol: {protocol}, headers: {{x-collector-key: k1}}"
    if protocol == "grpc":
        # no endpoint in the policy: the OTEL_* environment says where, and the service name
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
        env["OTEL_SERVICE_NAME"] = "tailguard-e2e"
        tracing += "}"
    else:
        tracing += f", endpoint: '{endpoint}'}}"
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(sim_port), "--model", "classifier"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    gw = None
    try:
        wait_line(sim, "listening")
        policy = tmp_path / "p.yaml"
        policy.write_text(
            "version: 1\n"
            f"telemetry: {{tracing: {tracing}}}\n"
            "backends:\n"
            f"  clf: {{protocol: kserve-v2, endpoints: [{{url: 'http://127.0.0.1:{sim_port}'}}]}}\n"
            "routes:\n"
            "  - {name: classify, match: {model: classifier}, split: [{backend: clf, weight: 100}]}\n"
        )
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--policy", str(policy),
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        wait_line(gw, "listening")
        body = b'{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}'
        req = Request(
            f"http://127.0.0.1:{port}/v2/models/classifier/infer",
            data=body,
            headers={
                "Content-Type": "application/json",
                "traceparent": f"00-{CLIENT_TRACE}-b7ad6b7169203331-01",
            },
        )
        with urlopen(req, timeout=10) as r:
            assert r.status == 200
        # a graceful stop flushes the batch of spans still queued
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=30)
        assert gw.returncode == 0, err
        assert "Traceback" not in err
    finally:
        for p in (gw, sim):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=10)
    assert received.arrived.wait(5)
    spans = received.spans()
    names = sorted(name for _, name, _ in spans)
    assert names == ["POST classify", "attempt clf"]
    assert {s for s, _, _ in spans} == {"tailguard-e2e" if protocol == "grpc" else "tailguard"}
    assert {a["trace_id"] for _, _, a in spans} == {CLIENT_TRACE}
    server = next(a for _, n, a in spans if n == "POST classify")
    assert server["http.response.status_code"].int_value == 200
    assert server["gen_ai.request.model"].string_value == "classifier"
    assert all(h.get("x-collector-key") == "k1" for h in received.headers)
