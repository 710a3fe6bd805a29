"""The scheduler: one thread that owns the model and serves every request.

Requests wait in a bounded FIFO queue, and the scheduler matches on their kind (requests.py).
Between steps the thread admits waiting RowRequests into the running batch (up to
max_batch_size rows, while the head of the queue shares the batch's sampling settings), runs
one denoising step for all rows, and retires rows whose request completed, failed, timed out
or was cancelled. Rows join and leave at their own block boundaries, so a long answer never
holds back short ones. A CohortRequest or an InfillRequest at the head of the queue waits for
the row batch to drain, then runs: a cohort with the waiting requests of its key (cohort.py),
an infill alone (infill.py).
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Deque, List, Optional

import torch

from ..decoding.step import answer_lengths
from .cohort import run_cohort
from .infill import run_infill
from .metrics import Metrics
from .protocol import ServingEngine
from .requests import (CohortRequest, EngineClosedError, InfillRequest, QueueFullError, Request,
                       RequestCancelledError, RequestEvent, RequestOutput, RequestTimeoutError, RowRequest)
from .rows import Row, RowBatcher


class Scheduler:
    def __init__(self, engine: ServingEngine, max_batch_size: int = 16, max_queue: int = 256):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be at least 1")
        self.engine = engine
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.batcher = RowBatcher(engine)
        self.metrics = Metrics(engine.device)
        self._queue: Deque[Request] = collections.deque()
        self._rows: List[Row] = []
        self._lock = threading.Condition()
        self._closing = False      # no new requests
        self._abort = False        # fail everything pending instead of finishing it
        self._error: Optional[BaseException] = None   # what stopped the thread, if it crashed
        self._alone: Optional[List[Request]] = None   # the cohort or infill running outside the row batch
        self._decode = engine.text.answer_decoder   # stops -> (answers [B, n] -> texts) or None
        self._thread = threading.Thread(target=self._run, name="illada-rt-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ caller side (any thread)

    def submit(self, request: Request):
        with self._lock:
            if self._error is not None:
                raise EngineClosedError(f"the engine's scheduler stopped after an internal error: {self._error!r}")
            if self._closing:
                raise EngineClosedError("the engine is shut down and takes no new requests")
            if sum(not r.cancelled for r in self._queue) >= self.max_queue:   # cancelled ones leave soon
                self.metrics.rejected += 1
                raise QueueFullError(f"the request queue is full ({self.max_queue} waiting); retry later")
            self._queue.append(request)
            self.metrics.submitted += 1
            self._lock.notify()

    def close(self, graceful: bool = True, timeout: Optional[float] = None):
        """Stop taking requests; finish (graceful) or fail every pending one; wait for the thread."""
        with self._lock:
            self._closing = True
            self._abort = self._abort or not graceful
            running = self._alone
            self._lock.notify()
        if running is not None and not graceful:
            for req in running:
                req.cancel()
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        """True once close() was called: new requests are refused."""
        return self._closing

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return len(self._rows)

    # ------------------------------------------------------------ scheduler thread

    def _run(self):
        if self.engine.device.type == "cuda":   # kernels launch on the thread's current device
            torch.cuda.set_device(self.engine.device)
        try:
            while self._serve_once():
                pass
        except BaseException as e:  # a bug must not leave callers waiting forever
            self._crash(e)

    def _serve_once(self) -> bool:
        """Admit, then run one step (or one cohort or infill). False when the thread is done."""
        with self._lock:
            while not self._queue and not self._rows and not self._closing:
                self._lock.wait()
            if self._abort:
                pending = list(self._queue) + [r.request for r in self._rows]
                self._queue.clear()
                self._rows = []
            elif self._closing and not self._queue and not self._rows:
                return False
            else:
                pending = None
                alone, admitted = self._admit()
        if pending is not None:
            for req in pending:
                self._fail(req, EngineClosedError("the engine was shut down before the request finished"))
            return False
        for row in admitted:
            self._guarded(row, self._enter)
        if alone is not None:
            self._run_alone(alone)
        elif self._rows:
            self._step()
        return True

    def _crash(self, error: BaseException):
        """The thread met an unexpected error: fail everything pending and refuse new requests."""
        with self._lock:
            self._closing = True
            self._error = error
            pending = list(self._queue) + [r.request for r in self._rows]
            self._queue.clear()
            self._rows = []
        for req in pending:
            self._fail(req, RuntimeError(f"the engine's scheduler stopped after an internal error: {error!r}"))

    def _admit(self):
        """Take waiting requests (lock held): returns (a cohort or an infill to run alone now that its
        turn came, or None; the rows that join the batch). Cancelled and expired ones leave."""
        now = time.monotonic()
        for req in [r for r in self._queue if r.cancelled or r.expired(now)]:
            self._queue.remove(req)
            self._drop(req, now)
        admitted: List[Row] = []
        while self._queue:
            head = self._queue[0]
            match head:
                case RowRequest():
                    if len(self._rows) + len(admitted) >= self.max_batch_size:
                        break
                    batch = self._rows[0].request if self._rows else admitted[0].request if admitted else None
                    if batch is not None and head.batch_key() != batch.batch_key():
                        break          # head-of-line: the batch drains, then the next settings start
                    self._queue.popleft()
                    self.metrics.wait_seconds.append(now - head.submitted)
                    admitted.append(Row(head, self.engine.cfg.mask_token_id))
                case CohortRequest() | InfillRequest():
                    if self._rows or admitted:
                        break          # it waits for the batch to drain
                    return self._take_alone(self._queue.popleft(), now), admitted
                case _:
                    raise TypeError(f"the scheduler has no rule for a {type(head).__name__}")
        return None, admitted

    def _take_alone(self, head: Request, now: float) -> List[Request]:
        """head, and for a cohort the waiting requests of its key, up to the batch size (lock held)."""
        job = [head]
        match head:
            case CohortRequest(key=key) if key is not None:
                for req in list(self._queue):
                    if len(job) >= self.max_batch_size:
                        break
                    if isinstance(req, CohortRequest) and req.key == key:
                        self._queue.remove(req)
                        job.append(req)
        for req in job:
            self.metrics.wait_seconds.append(now - req.submitted)
        return job

    def _guarded(self, row: Row, action):
        """action(row); an error fails that row's request only."""
        try:
            action(row)
        except Exception as e:
            if row in self._rows:
                self._rows.remove(row)
            self._fail(row.request, e)

    def _enter(self, row: Row):
        """Start the row's next block, finishing any block that needs no step."""
        while True:
            row.begin_block()
            if row.steps_in_block > 0:
                self._rows.append(row)
                return
            if self._end_block(row):
                return

    def _step(self):
        rows = list(self._rows)
        now = time.monotonic()
        for row in rows:
            if row.request.cancelled or row.request.expired(now):
                self._rows.remove(row)
                self._drop(row.request, now)
        rows = list(self._rows)
        if not rows:
            return
        t0 = time.perf_counter()
        try:
            masks_left = self.batcher.step(rows)
        except Exception as e:  # a failed step fails its rows, never the thread
            for row in rows:
                self._rows.remove(row)
                self._fail(row.request, e)
            return
        self.metrics.record_step(len(rows), time.perf_counter() - t0)
        for row, left in zip(rows, masks_left):
            self._guarded(row, lambda r: self._after_step(r, left))

    def _after_step(self, row: Row, masks_left: int):
        if row.request.every_step:
            self._emit(row.request, RequestEvent(kind="step", block=row.block, tokens=self._answer(row).tolist(),
                                                 nfe=row.nfe))
        if row.block_done(masks_left):
            self._rows.remove(row)
            if not self._end_block(row):
                self._enter(row)

    def _end_block(self, row: Row) -> bool:
        """Finish the row's block: a block event, and the done event if the request is over."""
        req = row.request
        over = row.finish_block()
        answer = self._answer(row).cpu()
        upto = answer.shape[0] if over else row.span[1] - req.prompt_len
        text = self._texts(req, answer[None, :upto])
        self._emit(req, RequestEvent(kind="block", block=row.block, tokens=answer[:upto].tolist(),
                                     new_from=row.emitted, text=text, nfe=row.nfe))
        row.emitted = upto
        if over:
            length = int(answer_lengths(answer[None], req.stops)[0])
            out = RequestOutput(answer.tolist(), length, self._texts(req, answer[None, :length]), req.prompt_len,
                                row.nfe, req.seed, "stop" if length < answer.shape[0] else "length")
            self._done(req, out)
        return over

    def _run_alone(self, job: List[Request]):
        """Serve a cohort (cohort.py) or an infill (infill.py) while the row batch is empty."""
        t0 = time.perf_counter()
        self._alone = job            # close(graceful=False) cancels them
        try:
            match job:
                case [InfillRequest() as infill]:
                    results = [run_infill(self.engine, infill)]
                case [CohortRequest(), *_]:
                    results = run_cohort(self.engine, job)
                case _:
                    raise TypeError(f"the scheduler has no rule for a {type(job[0]).__name__}")
        except Exception as e:
            results = [e] * len(job)
        finally:
            self._alone = None
        self.metrics.record_step(len(job), time.perf_counter() - t0)
        for req, res in zip(job, results):
            if isinstance(res, BaseException):
                if isinstance(res, RequestCancelledError):
                    self.metrics.cancelled += 1
                self._fail(req, res)
            else:
                self._done(req, res)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _answer(row: Row) -> torch.Tensor:
        return row.canvas[row.request.prompt_len:]

    def _texts(self, req: RowRequest, answers: torch.Tensor) -> Optional[str]:
        decode = self._decode(req.stops)
        return None if decode is None else decode(answers)[0]

    def _drop(self, req: Request, now: float):
        if req.cancelled:
            self.metrics.cancelled += 1
            self._fail(req, RequestCancelledError("the request was cancelled"))
        else:
            self._fail(req, RequestTimeoutError(f"the request timed out after {now - req.submitted:.1f} s"))

    def _done(self, req: Request, out: RequestOutput):
        """The request completed: count it, send its "done" event."""
        self.metrics.record_done(req, len(out.tokens))
        self._emit(req, RequestEvent(kind="done", block=-1, tokens=out.tokens, text=out.text, nfe=out.nfe, output=out))

    def _emit(self, req: Request, event: RequestEvent):
        try:
            req.sink(event)
        except Exception:  # a broken consumer must not stop the others
            req.cancel()

    def _fail(self, req: Request, exc: BaseException):
        self.metrics.failed += 1
        try:
            req.fail(exc)
        except Exception:
            pass

