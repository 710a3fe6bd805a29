"""The part of an Engine that serving uses: the scheduler, the request builder, the cohort and
infill runners, AsyncEngine/SyncEngine and the HTTP app depend on this and on nothing else of it.

illada_rt.Engine satisfies it; a test checks that serving touches no other member.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch

from ..config import ModelConfig
from ..decoding.infill import InfillOutput
from ..decoding.plan import GenerationPlan
from ..decoding.runner import Runner
from ..model import LLaDAModel
from ..text import TextFrontend


@runtime_checkable
class ServingEngine(Protocol):
    model: LLaDAModel        # the row batcher's forward (rows.py)
    cfg: ModelConfig         # mask, pad and EOS ids
    device: torch.device     # where the scheduler thread runs and what its metrics report
    runner: Runner           # runner.steps(plan): a cohort's eager progress (cohort.py)
    text: TextFrontend       # prompts encoded, answers decoded, masked texts (HTTP infill)

    def plan_generation(self, input_ids, attention_mask, **options) -> GenerationPlan:
        """generate()'s arguments checked and laid out on a canvas (decoding/plan.py)."""
        ...

    def infill(self, input_ids, attention_mask=None, steps: Optional[int] = None,
               block_length: Optional[int] = None, temperature: float = 0.0, remasking: str = "low_confidence",
               threshold: Optional[float] = None, seed: Optional[int] = None) -> InfillOutput:
        """Fill the masks of input_ids [B, L] (decoding/infill.py)."""
        ...

