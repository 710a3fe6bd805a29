"""CUDA-graph capture and replay of the device-only denoising step (graph_step.py).

One graph per (batch, length, block length, padding, settings), built at the first generation
of that shape: a warm-up on a side stream (cuBLAS handles, kernel attributes, allocator), then
capture of prologue, body and epilogue. All graphs draw their temporaries from one shared
memory pool: nothing they keep lives there (their buffers are the StepState's, allocated before
capture) and they never run concurrently, so any replay order is safe.

The body is captured inside a CUDA conditional (IF) node keyed on the step's `active` flag,
where torch and the driver offer it (CUDA >= 12.4): a replay on a filled block then costs one
tiny kernel, and the threshold rule replays its step bound without reading the device
(graph_loop.py). Where that capture fails, the step is captured plainly (the body always
runs; on a filled block it is a no-op) and the threshold rule reads the device once per round.

Used by Engine.generate on CUDA for the exact mode (cache=None); the KV-cache modes, infill,
stream and the threshold rule with early stop run the eager loop (denoise.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional

import torch

from .denoise import Block, DenoiseSettings, denoise
from .graph_loop import run_steps
from .graph_step import StepState, denoise_step, graph_key, step_body, step_epilogue, step_prologue
from .model import LLaDAModel


class CapturedStep:
    """A StepState and the graph of one step on its buffers."""

    def __init__(self, state: StepState, graph: "torch.cuda.CUDAGraph", conditional: bool):
        self.state, self.graph, self.conditional = state, graph, conditional

    def replay(self):
        self.graph.replay()


def capture_step(st: StepState, pool, conditional: bool) -> "torch.cuda.CUDAGraph":
    """Warm the step up on a side stream (it really runs: reload st afterwards), then capture it."""
    side = torch.cuda.Stream(st.canvas.device)
    side.wait_stream(torch.cuda.current_stream(st.canvas.device))
    with torch.cuda.stream(side):
        for _ in range(2):
            denoise_step(st)
    torch.cuda.current_stream(st.canvas.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step_prologue(st)
        if conditional:
            graph.begin_capture_to_if_node(st.active)
        step_body(st)
        if conditional:
            graph.end_capture_to_conditional_node()
        step_epilogue(st)
    return graph


class GraphCache:
    """The captured steps of one model, by shape (at most max_graphs, oldest dropped first)."""

    def __init__(self, model: LLaDAModel, max_graphs: int = 16, conditional: bool = True):
        self.model = model
        self.max_graphs = max_graphs
        self.conditional = conditional          # try IF nodes; turned off after a failed capture
        self.pool = None                        # shared memory pool handle, made at the first capture
        self.steps: "OrderedDict[tuple, CapturedStep]" = OrderedDict()

    @staticmethod
    def supports(s: DenoiseSettings) -> bool:
        return s.cache is None and not (s.threshold is not None and len(s.stop_token_ids))

    def _get(self, key: tuple, st_args: tuple, inputs: tuple) -> CapturedStep:
        step = self.steps.get(key)
        if step is not None:
            self.steps.move_to_end(key)   # least recently used leaves first
            return step
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        st = StepState(self.model, *st_args)
        st.load(*inputs)  # the warm-up runs real steps: give it real inputs
        graph, conditional = None, self.conditional
        if conditional:
            try:
                graph = capture_step(st, self.pool, conditional=True)
            except (RuntimeError, AttributeError):
                self.conditional = conditional = False  # no IF nodes here: plain graphs from now on
                torch.cuda.synchronize()
                st.load(*inputs)
        if graph is None:
            try:
                graph = capture_step(st, self.pool, conditional=False)
            except RuntimeError as e:
                raise RuntimeError(f"CUDA graph capture of the denoising step failed ({e}); "
                                   "Engine.from_pretrained(..., use_cuda_graphs=False) runs it eagerly") from e
        step = CapturedStep(st, graph, conditional)
        self.steps[key] = step
        while len(self.steps) > self.max_graphs:
            self.steps.popitem(last=False)
        return step

    def denoise(self, model: LLaDAModel, canvas: torch.Tensor, key_mask: Optional[torch.Tensor], blocks: List[Block],
                prompt_len: int, seeds: torch.Tensor, row_offset: torch.Tensor, s: DenoiseSettings) -> int:
        """denoise.denoise's contract (canvas filled in place, returns nfe) by graph replays;
        the eager loop where the graph step does not apply (see supports)."""
        assert model is self.model
        if not self.supports(s) or any(b.owns is not None for b in blocks):  # owns: infill blocks
            return denoise(model, canvas, key_mask, blocks, prompt_len, seeds, row_offset, s)
        B, L = canvas.shape
        block_length = blocks[0].hi - blocks[0].lo
        inputs = (canvas, key_mask, seeds, row_offset, prompt_len)
        step = self._get(graph_key(B, L, block_length, key_mask is not None, s),
                         (B, L, block_length, key_mask is not None, s), inputs)
        step.state.load(*inputs)
        nfe = run_steps(step.state, step.replay, prompt_len, blocks[-1].hi - prompt_len, s.stop_token_ids,
                        s.fill_id, noop_is_cheap=step.conditional)
        canvas.copy_(step.state.canvas)
        return nfe
