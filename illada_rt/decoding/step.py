"""The denoising step after the forward, written once for every path that runs it.

The eager loop (loop.py), the device-only CUDA-graph step (graph/state.py) and the serving row
batcher (serving/rows.py) differ in how they run the forward and where their per-step values live
(python numbers, device buffers, gathered rows); what follows the forward is StepRule's:

    model_input   the forward's tokens: the canvas, or with CFG the pair [canvas; canvas with the
                  prompt masked] (the unconditional branch of unsupervised classifier-free guidance)
    transfer      split the CFG pair's logits and run the remask op in place: the CFG combine,
                  the token choice and the top-k / threshold transfer (ops remask.h)
    check_finite  the non-finite rule: the remask op flags non-finite logits in its workspace
                  (CUDA kernel, torch twin) or raises at once (compiled CPU kernel); one host read
    end_block     at a block's end: the non-finite check, then the stop-token rule (early stop)

and the stop-token rule itself is fill_after_stop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..model import LLaDAModel
from ..ops import Kernels
from .plan import DenoiseSettings

NON_FINITE = "remask: logits contain NaN or infinity (the model produced non-finite values"


def fill_after_stop(answer: torch.Tensor, upto: int, stop_ids: torch.Tensor, finished: torch.Tensor,
                    fill_id: Optional[int]) -> None:
    """The stop-token rule: rows whose answer[:, :upto] holds a stop token are marked finished and
    everything after their first stop token becomes fill_id (the stop token itself when None)."""
    hit = torch.isin(answer[:, :upto], stop_ids)
    for b in torch.nonzero(hit.any(1) & ~finished).flatten().tolist():
        first = int(hit[b].nonzero()[0])
        answer[b, first + 1:] = answer[b, first] if fill_id is None else fill_id
        finished[b] = True


def answer_lengths(answer: torch.Tensor, stop_token_ids: Sequence[int]) -> torch.Tensor:
    """[B] number of answer tokens before the first stop token (the whole answer if none). An
    answer [B, 0] (the part of one before its first token, when that token is a stop) has length 0."""
    if not stop_token_ids or answer.shape[1] == 0:
        return torch.full((answer.shape[0],), answer.shape[1], dtype=torch.int64)
    hit = torch.isin(answer, torch.tensor(list(stop_token_ids), dtype=torch.int64, device=answer.device))
    first = torch.where(hit.any(1), hit.to(torch.int8).argmax(1), torch.tensor(answer.shape[1], device=answer.device))
    return first.to(torch.int64)


@dataclass(frozen=True)
class StepRule:
    """What follows the forward, for one set of settings on one model (see the module docstring)."""
    kernels: Kernels
    vocab: int
    mask_id: int
    settings: DenoiseSettings

    @classmethod
    def of(cls, model: LLaDAModel, settings: DenoiseSettings) -> "StepRule":
        return cls(model.kernels, model.cfg.vocab_size, model.cfg.mask_token_id, settings)

    @property
    def cfg(self) -> bool:
        return self.settings.cfg_scale > 0

    def model_input(self, tokens: torch.Tensor, prompt_index: Optional[torch.Tensor],
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens [B, L], or with CFG the pair [2B, L]: tokens, then tokens with prompt_index
        [B, L] bool (the given tokens) masked. out: a [2B, L] buffer to write the pair into."""
        if not self.cfg:
            return tokens
        B = tokens.shape[0]
        pair = torch.empty((2 * B, tokens.shape[1]), dtype=tokens.dtype, device=tokens.device) if out is None else out
        pair[:B].copy_(tokens)
        pair[B:].copy_(tokens).masked_fill_(prompt_index, self.mask_id)
        return pair

    def transfer(self, logits: torch.Tensor, tokens: torch.Tensor, block_start: int, *, seeds: torch.Tensor,
                 row_offset: torch.Tensor, step: torch.Tensor, k: Optional[torch.Tensor],
                 masks_left: Optional[torch.Tensor], workspace: Optional[torch.Tensor]) -> None:
        """One step on tokens[:, block_start : block_start + Lb], in place, from the block rows'
        logits [B, Lb, E] (with CFG [2B, Lb, E]: the model_input pair's). k [B]: the top-k rule's
        counts (ignored under the threshold rule). seeds, row_offset, step [B]: the RNG counters
        (position = block_start + i - row_offset, see ops remask.h)."""
        s = self.settings
        B = tokens.shape[0]
        cond, uncond = (logits[:B], logits[B:]) if self.cfg else (logits, None)
        self.kernels.remask_(cond, tokens, block_start, vocab=self.vocab, mask_id=self.mask_id, seeds=seeds,
                             row_offset=row_offset, step=step, uncond=uncond, cfg_scale=s.cfg_scale,
                             temperature=s.temperature, remasking=s.remasking,
                             k=None if s.threshold is not None else k, threshold=s.threshold,
                             masks_left=masks_left, workspace=workspace)

    @staticmethod
    def check_finite(workspace: torch.Tensor, where: str) -> None:
        """Raise if a remask met non-finite logits since the workspace was zeroed (one device read)."""
        if int(workspace[0]) != 0:
            raise RuntimeError(f"{NON_FINITE}; detected {where})")

    def end_block(self, answer: torch.Tensor, upto: int, finished: torch.Tensor, workspace: torch.Tensor,
                  where: str) -> bool:
        """A block's end for answers [B, A] whose first `upto` tokens are final: the non-finite
        check, then (with early stop) the stop-token rule. Returns True when every row has stopped."""
        self.check_finite(workspace, where)
        stops = self.settings.stop_token_ids
        if not len(stops):
            return False
        fill_after_stop(answer, upto, torch.tensor(list(stops), dtype=torch.int64, device=answer.device), finished,
                        self.settings.fill_id)
        return bool(finished.all())
