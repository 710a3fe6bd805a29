"""Serving: one engine shared by concurrent callers (AsyncEngine, SyncEngine), batched on the device."""
from .async_engine import AsyncEngine, SyncEngine
from .requests import (EngineClosedError, QueueFullError, RequestCancelledError, RequestEvent, RequestOutput,
                       RequestTimeoutError)

__all__ = ["AsyncEngine", "SyncEngine", "RequestOutput", "RequestEvent", "QueueFullError", "EngineClosedError",
           "RequestTimeoutError", "RequestCancelledError"]
