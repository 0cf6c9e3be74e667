"""Gateway-made error answers, in the protocol the client speaks.

A client library must raise its normal, typed error when the gateway answers instead of
the backend, so each protocol gets its own body:

- `kserve-v2`: `{"error": "<message>"}`, as the KServe v2 protocol and Triton give it
  (tritonclient formats the string; an object makes it crash);
- `openai`: `{"error": {"message", "type", "param", "code"}}` with the statuses the
  official SDK maps to its exception classes (429 `RateLimitError`, 401
  `AuthenticationError`, 5xx retriable);
- `http`: the gateway's own `{"error": {"code", "message", "request_id"}}`.

Whatever the body, the machine-readable code travels in `x-tailguard-error` and the
request id in `x-request-id`, so tooling reads one place on every protocol.
"""

from __future__ import annotations

import json

from gateway.errors import TailguardError
from gateway.proxy.exchange import LocalAnswer

ERROR_HEADER = "x-tailguard-error"

# OpenAI's error `type` by status, as its API and SDK use them.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def protocol_for_path(path: str) -> str:
    """The protocol a request speaks before any route says so (unknown routes, bad auth)."""
    if path.startswith("/v2/"):
        return "kserve-v2"
    if path.startswith("/v1/"):
        return "openai"
    return "http"


def error_answer(protocol: str, err: TailguardError, request_id: str) -> LocalAnswer:
    """The answer that tells a client of `protocol` what went wrong, and nothing more.

    On `grpc` the body is the message alone: the gRPC edge sends it as the status details,
    with the code (`x-tailguard-error`) and the request id in trailing metadata.
    """
    headers = {ERROR_HEADER: err.code, **err.headers}
    if protocol == "grpc":
        return LocalAnswer(err.status, err.message.encode(), headers)
    if protocol == "kserve-v2":
        payload: object = {"error": err.message}
    elif protocol == "openai":
        kind = _OPENAI_TYPES.get(err.status, "server_error" if err.status >= 500 else "api_error")
        payload = {"error": {"message": err.message, "type": kind, "param": None, "code": err.code}}
    else:
        payload = {"error": {"code": err.code, "message": err.message, "request_id": request_id}}
    headers["Content-Type"] = "application/json"
    return LocalAnswer(err.status, json.dumps(payload).encode(), headers)


def stream_error_event(protocol: str, message: str, request_id: str) -> bytes:
    """The last event of a server-sent stream that broke after it started."""
    if protocol == "openai":
        event: object = {
            "error": {
                "message": message,
                "type": "server_error",
                "param": None,
                "code": "stream_aborted",
            }
        }
    else:
        event = {"error": {"code": "stream_aborted", "message": message, "request_id": request_id}}
    return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"


__all__ = ["ERROR_HEADER", "error_answer", "protocol_for_path", "stream_error_event"]
