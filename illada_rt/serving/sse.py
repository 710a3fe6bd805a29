"""Server-sent events: one `data: <json>` event per chunk, then `data: [DONE]`; and the JSON error body."""
from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_body(message: str, kind: str, code=None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "code"}}."""
    return {"error": {"message": message, "type": kind, "code": code}}
