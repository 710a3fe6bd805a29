"""Runs plans on one model: CUDA-graph replays where the device-only step applies, the eager loop
otherwise. The one place that decides between the two.

    runner = Runner(model, use_cuda_graphs=True)
    nfe = runner.run(plan)                    # plan.canvas filled in place
    for progress in runner.steps(plan): ...   # the eager loop, step by step (stream, cohorts)
"""
from __future__ import annotations

from typing import Iterator, Optional

from ..model import LLaDAModel
from .graph.capture import StepGraphs
from .loop import Progress, denoise, denoise_steps
from .plan import GenerationPlan


def graph_step_runs(plan: GenerationPlan) -> bool:
    """Whether the device-only step (graph/state.py) computes this plan: the exact mode over answer
    blocks (not an infill), and no early stop under the threshold rule (it needs block boundaries)."""
    s = plan.settings
    return s.cache is None and not plan.is_infill and not (s.threshold is not None and len(s.stop_token_ids))


class Runner:
    def __init__(self, model: LLaDAModel, use_cuda_graphs: bool = True):
        self.model = model
        # CUDA: replay one captured step per shape (graph/capture.py); elsewhere, or False: eager
        self.graphs: Optional[StepGraphs] = StepGraphs(model) if use_cuda_graphs and model.device.type == "cuda" \
            else None

    def run(self, plan: GenerationPlan) -> int:
        """Denoise the plan to the end (canvas in place); returns the forward count."""
        if self.graphs is not None and graph_step_runs(plan):
            return self.graphs.run(plan)
        return denoise(self.model, plan)

    def steps(self, plan: GenerationPlan) -> Iterator[Progress]:
        """The eager loop's progress, step by step and block by block."""
        return denoise_steps(self.model, plan)
