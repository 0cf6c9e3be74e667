"""OpenAI-style chat completions, simulated: request bytes in, answer or SSE events out, no I/O.

The "model" echoes the last user message word by word, so answers are
deterministic and a test can predict them. `max_tokens` (or
`max_completion_tokens`) sets the exact number of tokens — the echo is cut or
cycled to that length — so tests and load tests choose how long a stream is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 100_000  # a bound, so one request cannot make the simulator stream forever
_DUMP = json.JSONEncoder(separators=(",", ":")).encode


class ChatError(Exception):
    """The request is not a valid chat completion request (answered 400)."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    stream: bool
    tokens: tuple[str, ...]  # the reply, one entry per streamed token
    finish_reason: str
    prompt_tokens: int
    include_usage: bool


def _text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    raise ChatError(f"message content must be a string or a list of parts, got {content!r}")


def parse_chat(body: bytes) -> ChatRequest:
    """Validate a `/v1/chat/completions` body and decide the reply; raises ChatError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ChatError(f"invalid JSON body: {e}") from None
    if not isinstance(data, dict):
        raise ChatError("the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ChatError("'model' is required and must be a string")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' is required and must be a non-empty list")
    prompt_tokens = 0
    last_user = ""
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatError("each message must be an object with a 'role'")
        text = _text(m.get("content"))
        prompt_tokens += len(text.split())
        if m["role"] == "user":
            last_user = text
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ChatError("'stream' must be true or false")
    words = last_user.split() or ["ok"]
    limit = data.get("max_completion_tokens", data.get("max_tokens"))
    finish = "stop"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TOKENS:
            raise ChatError(f"'max_tokens' must be an integer from 1 to {MAX_TOKENS}")
        if limit != len(words):
            finish = "length"
            words = [words[i % len(words)] for i in range(limit)]
    options = data.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    tokens = tuple(w if i == 0 else " " + w for i, w in enumerate(words))
    return ChatRequest(model, stream, tokens, finish, prompt_tokens, include_usage)


def _usage(chat: ChatRequest) -> dict[str, int]:
    n = len(chat.tokens)
    return {
        "prompt_tokens": chat.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": chat.prompt_tokens + n,
    }


def completion(chat: ChatRequest, completion_id: str, created: int) -> dict[str, Any]:
    """The non-streamed `chat.completion` answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(chat.tokens)},
                "finish_reason": chat.finish_reason,
            }
        ],
        "usage": _usage(chat),
    }


def stream_events(chat: ChatRequest, completion_id: str, created: int) -> list[bytes]:
    """The SSE events of a streamed answer, each a complete `data: ...\\n\\n` frame.

    Order: a role chunk, one chunk per token, a chunk with the finish reason,
    a usage chunk if `stream_options.include_usage`, then `data: [DONE]`.
    """
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
    model = chat.model

    def frame(delta: dict[str, str], finish: str | None = None) -> bytes:
        chunk = {
            **head,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + _DUMP(chunk).encode() + b"\n\n"

    events = [frame({"role": "assistant", "content": ""})]
    events.extend(frame({"content": token}) for token in chat.tokens)
    events.append(frame({}, chat.finish_reason))
    if chat.include_usage:
        usage = {**head, "model": model, "choices": [], "usage": _usage(chat)}
        events.append(b"data: " + _DUMP(usage).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def error_body(message: str, kind: str, code: int | str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, so OpenAI clients raise their usual exceptions."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def models_list(models: tuple[str, ...]) -> dict[str, Any]:
    """`GET /v1/models`."""
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "tailguard-sim"} for m in models
        ],
    }
