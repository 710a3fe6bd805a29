"""Errors as HTTP answers: exception -> (status, error type), and OpenAI's JSON error body."""
from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from ..requests import EngineClosedError, QueueFullError, RequestCancelledError, RequestTimeoutError
from .schema import UnknownModelError

log = logging.getLogger("illada_rt.serve")


MAX_MESSAGE = 1000   # characters of an error message sent back (one may quote a whole prompt)


def error_body(message: str, kind: str, code=None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "code"}}."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 3] + "..."
    return {"error": {"message": message, "type": kind, "code": code}}


def error_status(exc: BaseException):
    """An exception -> (HTTP status, error type). Order matters: the engine errors subclass builtins."""
    if isinstance(exc, QueueFullError):
        return 429, "queue_full"
    if isinstance(exc, RequestTimeoutError):
        return 504, "timeout"
    if isinstance(exc, EngineClosedError):
        return 503, "unavailable"
    if isinstance(exc, RequestCancelledError):
        return 499, "cancelled"
    if isinstance(exc, UnknownModelError):
        return 404, "not_found_error"
    if isinstance(exc, ValueError):
        return 400, "invalid_request_error"
    return 500, "internal_error"


RETRY_AFTER = "1"   # seconds: 429 (queue full) and 503 (stopping, too many connections) say when to retry


def retry_headers(status: int) -> dict:
    return {"Retry-After": RETRY_AFTER} if status in (429, 503) else {}


def error_response(exc: BaseException) -> JSONResponse:
    status, kind = error_status(exc)
    if status == 500:
        log.exception("request failed", exc_info=exc)
    return JSONResponse(error_body(str(exc) or type(exc).__name__, kind, status), status_code=status,
                        headers=retry_headers(status))
