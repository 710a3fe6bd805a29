"""CUDA-graph capture and replay of the device-only denoising step (state.py).

One graph per (batch, length, block length, padding, settings), built at the first generation
of that shape: a warm-up on the capture stream (cuBLAS handles, kernel attributes, allocator),
then capture of prologue, body and epilogue. All graphs draw their temporaries from one shared
memory pool: nothing they keep lives there (their buffers are the StepState's, allocated before
capture) and they never run concurrently, so any replay order is safe. They are captured on one
shared stream (the pool reuses a freed block only on the stream that freed it); a failed capture
may leave its stream capturing or invalidated, so the next attempt takes a fresh stream.

Two paths, and every CapturedStep says which it took and why (`path`, `why_plain`):
  conditional  the body sits in a CUDA conditional (IF) node keyed on the step's `active` flag: a
               replay on a filled block costs one tiny kernel, and the threshold rule replays its
               step bound without reading the device (replay.py). Needs a torch whose
               CUDAGraph has begin_capture_to_if_node / end_capture_to_conditional_node (absent
               in torch 2.11), built with CUDA >= 12.4, and a driver that accepts the node.
  plain        the body always runs (on a filled block it is a no-op) and the threshold rule reads
               the device once per round.
StepGraphs(conditional=None) probes once (conditional_nodes_unavailable) and takes the conditional
path where the feature is there; where it is not, or where its capture fails, it goes plain with
one warning line and never tries again. True requires it (RuntimeError otherwise); False never
tries it.

The runner (runner.py) takes this path on CUDA for the exact mode (cache=None); the KV-cache
modes, infill, stream and the threshold rule with early stop run the eager loop (loop.py).
"""
from __future__ import annotations

import gc
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from typing import Optional

import torch

from ...model import LLaDAModel
from ..plan import GenerationPlan
from .replay import run_steps
from .state import StepState, denoise_step, graph_key, step_body, step_epilogue, step_prologue

IF_NODE_METHODS = ("begin_capture_to_if_node", "end_capture_to_conditional_node")


def conditional_nodes_unavailable() -> Optional[str]:
    """Why this torch cannot capture a conditional (IF) node, or None where it can try.
    Looks at the installed torch only; a driver that refuses the node shows at capture."""
    if getattr(torch.version, "hip", None):
        return f"torch {torch.__version__} is a ROCm build (no conditional graph nodes)"
    cuda = torch.version.cuda
    if cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    missing = [m for m in IF_NODE_METHODS if not hasattr(torch.cuda.CUDAGraph, m)]
    if missing:
        return f"torch {torch.__version__} has no CUDAGraph.{missing[0]} (conditional nodes need a later torch)"
    try:
        major, minor = (int(part) for part in (cuda.split(".") + ["0"])[:2])
    except ValueError:
        return f"torch {torch.__version__} names its CUDA version {cuda!r}, which is not MAJOR.MINOR"
    if (major, minor) < (12, 4):
        return f"torch {torch.__version__} is built with CUDA {cuda} (conditional nodes need CUDA >= 12.4)"
    return None


@contextmanager
def if_node(graph: "torch.cuda.CUDAGraph", pred: torch.Tensor):
    """Capture the block into an IF node of `graph` (being captured), run at replay where pred
    (0-dim bool on the device) is true. The begin makes a child stream current and only the end
    restores the capture stream, so the end runs whatever the block raises: without it the
    outer capture would end on the wrong stream and the child capture never end."""
    graph.begin_capture_to_if_node(pred)
    try:
        yield
    finally:
        graph.end_capture_to_conditional_node()


def capture_step(st: StepState, pool, stream: "torch.cuda.Stream", conditional: bool) -> "torch.cuda.CUDAGraph":
    """Warm the step up on `stream` (it really runs: reload st afterwards), then capture it there,
    the body inside an IF node on st.active where `conditional`. The caller's stream is current
    again afterwards, even when the capture fails (torch.cuda.graph leaves its stream current
    when capture_end raises)."""
    caller = torch.cuda.current_stream(st.canvas.device)
    try:
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            for _ in range(2):
                denoise_step(st)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            step_prologue(st)
            if conditional:
                with if_node(graph, st.active):
                    step_body(st)
            else:
                step_body(st)
            step_epilogue(st)
    finally:
        torch.cuda.set_stream(caller)
    return graph


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _warn_plain(why: str):
    warnings.warn(f"illada_rt: CUDA graphs without conditional nodes ({why}): a replay on a filled block runs "
                  "the whole step, and the threshold rule reads the device once per block", RuntimeWarning,
                  stacklevel=3)


class CapturedStep:
    """A StepState and the graph of one step on its buffers.

    conditional: the body sits in an IF node on state.active; why_plain: why it does not (None
    where it does)."""

    def __init__(self, state: StepState, graph: "torch.cuda.CUDAGraph", conditional: bool,
                 why_plain: Optional[str] = None):
        self.state, self.graph, self.conditional = state, graph, conditional
        # the RoPE tables the graph reads: a later growth replaces the model's, never these
        self.rope_tables = (state.model.rope_cos, state.model.rope_sin)
        self.why_plain = None if conditional else (why_plain or "unknown")

    @property
    def path(self) -> str:
        """One line for reports: "conditional (...)" or "plain (why)"."""
        if self.conditional:
            return "conditional (the step body in an IF node on the step's active flag)"
        return f"plain ({self.why_plain})"

    def replay(self):
        self.graph.replay()


class StepGraphs:
    """The captured steps of one model, by shape (at most max_graphs, oldest dropped first).

    conditional: None takes IF nodes where they work; True requires them; False never tries them.
    why_plain: why the next capture is plain (None: it tries the IF node), from the probe at
    construction, the caller's choice, or the failed capture that turned IF nodes off."""

    def __init__(self, model: LLaDAModel, max_graphs: int = 16, conditional: Optional[bool] = None):
        self.model = model
        self.max_graphs = max_graphs
        self.require_conditional = conditional is True
        if conditional is False:
            self.why_plain: Optional[str] = "conditional nodes turned off (StepGraphs(conditional=False))"
        else:
            self.why_plain = conditional_nodes_unavailable()   # probed once, for this cache
            if self.why_plain is not None:
                if self.require_conditional:
                    raise RuntimeError(f"CUDA graph conditional nodes were required, but {self.why_plain}")
                _warn_plain(self.why_plain)
        self.pool = None                        # shared memory pool handle, made at the first capture
        self.stream: Optional["torch.cuda.Stream"] = None   # capture stream, replaced after a failure
        self.steps: "OrderedDict[tuple, CapturedStep]" = OrderedDict()

    @property
    def conditional(self) -> bool:
        """Whether the next capture tries the IF node."""
        return self.why_plain is None

    def _capture(self, st: StepState, conditional: bool) -> "torch.cuda.CUDAGraph":
        if self.stream is None:
            self.stream = torch.cuda.Stream(st.canvas.device)
        try:
            return capture_step(st, self.pool, self.stream, conditional)
        except BaseException:
            self.stream = None   # it may be left capturing or invalidated: the next attempt takes a new one
            raise

    def _get(self, plan: GenerationPlan) -> CapturedStep:
        key = graph_key(plan)
        step = self.steps.get(key)
        if step is not None:
            self.steps.move_to_end(key)   # least recently used leaves first
            return step
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        self.model.ensure_positions(plan.canvas.shape[1])   # the RoPE tables never grow inside a capture
        st = StepState.for_plan(self.model, plan)
        st.load(plan)  # the warm-up runs real steps: give it real inputs
        graph, conditional = None, self.conditional
        if conditional:
            caller = torch.cuda.current_stream(st.canvas.device)
            try:
                graph = self._capture(st, conditional=True)
            except RuntimeError as e:
                if self.require_conditional:
                    raise RuntimeError(f"CUDA graph capture with a conditional node failed ({e}); "
                                       "StepGraphs(conditional=None) falls back to plain graphs") from e
                self.why_plain = f"the capture with a conditional node failed: {_first_line(e)}"
                conditional = False
                _warn_plain(self.why_plain)
            if graph is None:
                # Where end_capture_to_conditional_node itself failed, the failed graph still holds the
                # IF node's stream guard, which makes the capture stream current when the graph is
                # freed. The except block dropped the traceback that held it; collect in case a cycle
                # still does (not at some later collection, mid-generation), then make the caller's
                # stream current again.
                gc.collect()
                torch.cuda.set_stream(caller)
                torch.cuda.synchronize()
                st.load(plan)
        if graph is None:
            try:
                graph = self._capture(st, conditional=False)
            except RuntimeError as e:
                raise RuntimeError(f"CUDA graph capture of the denoising step failed ({e}); "
                                   "Engine.from_pretrained(..., use_cuda_graphs=False) runs it eagerly") from e
        step = CapturedStep(st, graph, conditional, self.why_plain)
        self.steps[key] = step
        while len(self.steps) > self.max_graphs:
            self.steps.popitem(last=False)
        return step

    def run(self, plan: GenerationPlan) -> int:
        """Denoise the plan by graph replays (capturing its step at the first plan of its shape):
        plan.canvas filled in place, returns nfe. The plan must be one the graph step runs (see
        runner.py: the exact mode, answer blocks, no early stop under the threshold rule)."""
        step = self._get(plan)
        step.state.load(plan)
        nfe = run_steps(step.state, step.replay, plan, noop_is_cheap=step.conditional)
        plan.canvas.copy_(step.state.canvas)
        return nfe
