"""Streaming: the denoising loop's progress turned into events for the caller.

    for event in eng.stream(input_ids, gen_length=64, block_length=16, steps=64):
        print(event.block, event.text or event.new_tokens)

A "block" event comes when a block is finished: its tokens are final. Concatenating
every block event's new_tokens gives generate()'s answers. With every_step=True a
"step" event also comes after every denoising step with the whole canvas, masks included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import torch

from .loop import Progress


@dataclass
class StreamEvent:
    kind: str                   # "block" or "step"
    block: int                  # index of the block finished ("block") or being denoised ("step")
    nfe: int                    # forwards so far
    tokens: torch.Tensor        # "block": the answers so far [B, upto]; "step": the canvas [B, P + gen_length]
    new_from: int               # "block": tokens[:, new_from:] are new in this event (0 for "step")
    text: Optional[List[str]]   # "block": decoded answers so far (None without a tokenizer)

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.new_from:]


def stream_events(progress: Iterator[Progress], canvas: torch.Tensor, prompt_len: int, block_length: int,
                  every_step: bool, decode: Optional[Callable[[torch.Tensor], List[str]]]) -> Iterator[StreamEvent]:
    """Turn denoise_steps progress on canvas [B, P + gen_length] into StreamEvents.

    The block event that ends the generation (the last block, or early stop) carries the
    rest of the answer, so the events always cover all of it.
    decode: answers so far [B, upto] -> texts, or None for no text.
    Event tokens are CPU copies, whatever the canvas's device.
    """
    gen_length = canvas.shape[1] - prompt_len
    done = 0
    for p in progress:
        if p.kind == "step":
            if every_step:
                yield StreamEvent("step", p.block, p.nfe, canvas.to("cpu", copy=True), 0, None)
            continue
        upto = gen_length if p.last else (p.block + 1) * block_length
        answers = canvas[:, prompt_len:prompt_len + upto].to("cpu", copy=True)
        yield StreamEvent("block", p.block, p.nfe, answers, done, None if decode is None else decode(answers))
        done = upto
