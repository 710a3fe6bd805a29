"""The part of an Engine that serving uses: the scheduler, the request builder, the cohort and
infill runners, AsyncEngine/SyncEngine and the HTTP app depend on this and on nothing else of it.

illada_rt.Engine satisfies it; a test checks that serving touches no other member.
"""
from __future__ import annotations

from typing import Iterator, List, Protocol, runtime_checkable

import torch

from ..config import ModelConfig
from ..decoding.loop import Progress
from ..decoding.plan import DenoiseSettings, GenerationPlan
from ..decoding.row_step import RowState
from ..text import TextFrontend


@runtime_checkable
class ServingEngine(Protocol):
    cfg: ModelConfig         # mask, pad and EOS ids
    device: torch.device     # where the scheduler thread runs and what its metrics report
    text: TextFrontend       # prompts encoded, answers decoded, masked texts (HTTP infill)

    def plan_generation(self, input_ids, attention_mask, **options) -> GenerationPlan:
        """generate()'s arguments checked and laid out on a canvas (decoding/plan.py)."""
        ...

    def step_rows(self, rows: List[RowState], settings: DenoiseSettings) -> List[int]:
        """One step over rows on their own blocks (decoding/row_step.py): the row batcher's step."""
        ...

    def denoise_steps(self, plan: GenerationPlan) -> Iterator[Progress]:
        """The eager loop's progress over a plan, step by step (cohorts, infills)."""
        ...

