"""Every rank runs the engine's API in lockstep: rank 0 (the leader, which owns the API) announces
each call to the other ranks (the followers), then every rank runs the same method on its own
shard. The host logic (argument checks, schedules, loop control, host reads) is deterministic and
every rank computes the same tokens, so the ranks meet at the same collectives in the same order.

    leader                                   follower (follow(engine, mirror))
    mirror.call("generate", args, kwargs)    -> engine.generate(*args, **kwargs)
    mirror.iterate("stream", ...)            -> the same generator, one step per "next" the leader's
                                                consumer asks for; "stop" (or any other message)
                                                closes it early
    mirror.close()                           -> the follower's loop ends

Messages travel as torch.distributed.broadcast_object_list from rank 0 (the process group of
group.py: gloo or NCCL), tensors in them on the CPU. A follower that fails where the leader
does not leaves the leader waiting at its next collective until the group's timeout: the
leader's call raises, never hangs.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import threading
import traceback
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import torch.distributed as dist

from .group import TensorGroup


class RankFailure(RuntimeError):
    """A rank died, hung or left: the tensor-parallel engine cannot go on."""


def _to_cpu(value):
    """Tensors (at any depth of lists, tuples, named tuples, dicts and dataclasses) on the CPU, for
    pickling to other ranks."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _to_cpu(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, tuple) and hasattr(value, "_fields"):       # a NamedTuple
        return type(value)(*(_to_cpu(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


class Mirror:
    """The leader's side (or, on a follower, the receiving end used by follow)."""

    def __init__(self, group: TensorGroup, check_alive: Optional[Callable[[], None]] = None):
        self.group = group
        self.check_alive = check_alive      # raises when a spawned rank has died (launch.py)
        self.closed = False
        self._lock = threading.RLock()
        self._open_iteration: Optional[object] = None   # the leader's generator that followers are inside

    # ------------------------------------------------------------ transport

    def _send(self, message: Tuple) -> None:
        if self.closed:
            raise RuntimeError("the tensor-parallel engine is closed")
        if self.check_alive is not None:
            self.check_alive()
        box = [_to_cpu(message)]
        try:
            dist.broadcast_object_list(box, src=0)
        except Exception as e:
            raise RankFailure(f"tensor parallelism: a rank did not take the next call ({e})") from e

    def receive(self) -> Tuple:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------ leader

    def call(self, name: str, args: tuple, kwargs: dict, run: Callable[[], Any]) -> Any:
        """Announce engine.<name>(*args, **kwargs) to the followers, then run it here."""
        with self._lock:
            self._open_iteration = None
            self._send(("call", name, args, kwargs))
            return run()

    def iterate(self, name: str, args: tuple, kwargs: dict, make: Callable[[], Iterator]) -> Iterator:
        """The generator engine.<name>(...) on every rank, advanced in step with the consumer here.
        make() runs now (its argument checks raise here); the events come as they are asked for."""
        with self._lock:
            self._open_iteration = token = object()
            self._send(("iter", name, args, kwargs))
            it = make()
        return self._advance(it, token)

    def _advance(self, it: Iterator, token: object) -> Iterator:
        done = False
        try:
            while True:
                with self._lock:
                    if self._open_iteration is not token:
                        raise RuntimeError("this stream was interrupted by another call on the tensor-parallel engine")
                    self._send(("next",))
                    try:
                        event = next(it)
                    except StopIteration:
                        done = True
                        self._open_iteration = None
                        return
                yield event
        finally:
            with self._lock:
                if not done and self._open_iteration is token and not self.closed:
                    self._open_iteration = None
                    self._send(("stop",))

    def close(self) -> None:
        """Release the followers (their loops end); idempotent."""
        with self._lock:
            if self.closed:
                return
            try:
                self._send(("close",))
            finally:
                self.closed = True


def follow(engine, mirror: Mirror) -> None:
    """A follower's life: run what the leader announces until it closes. Errors raised by a call
    are the leader's to report (it meets the same ones); they end nothing here."""
    message = mirror.receive()
    while message[0] != "close":
        kind = message[0]
        if kind == "call":
            _, name, args, kwargs = message
            try:
                getattr(engine, name)(*args, **kwargs)
            except Exception:
                _report(mirror, name)
            message = mirror.receive()
        elif kind == "iter":
            _, name, args, kwargs = message
            try:
                it = getattr(engine, name)(*args, **kwargs)
            except Exception:
                _report(mirror, name)
                it = iter(())
            message = mirror.receive()
            while message[0] == "next":
                try:
                    next(it)
                except StopIteration:
                    message = mirror.receive()
                    break
                except Exception:
                    _report(mirror, name)
                message = mirror.receive()
            if hasattr(it, "close"):
                it.close()
            if message[0] == "stop":
                message = mirror.receive()
        else:       # a "stop" or "next" with nothing open: nothing to do
            message = mirror.receive()


def _report(mirror: Mirror, name: str) -> None:
    """A follower's failure, on its stderr: where the leader fails too (bad arguments) it says the
    same; where the leader does not, it waits at its next collective until the group's timeout."""
    print(f"illada-rt rank {mirror.group.rank}: {name} raised\n{traceback.format_exc()}", file=sys.stderr,
          flush=True)


def _announced(method, announce):
    """method, run by every rank: on the leader, announce (Mirror.call or Mirror.iterate) first."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.closed:
            raise RuntimeError("the engine is closed")
        if self.mirror is None or not self.mirror.group.leader:
            return method(self, *args, **kwargs)
        return self._ranks_together(lambda: announce(self.mirror, method.__name__, args, kwargs,
                                                     lambda: method(self, *args, **kwargs)))
    return call


def mirrored(method):
    """An engine API method every tensor-parallel rank runs: the leader announces the call first;
    without tensor parallelism (engine.mirror None), or on a follower, the method itself. The
    engine's _ranks_together turns a rank's failure into a closed engine and a clear error."""
    return _announced(method, Mirror.call)


def mirrored_stream(method):
    """mirrored, for a method that returns an iterator: every rank advances it in step."""
    return _announced(method, Mirror.iterate)
