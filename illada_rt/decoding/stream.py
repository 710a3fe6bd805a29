"""Streaming: the denoising loop's progress turned into events for the caller.

    for event in eng.stream(input_ids, gen_length=64, block_length=16, steps=64):
        print(event.block, event.text or event.new_tokens)

A "block" event comes when a block is finished: its tokens are final. Concatenating
every block event's new_tokens gives generate()'s answers. With every_step=True a
"step" event also comes after every denoising step with the whole canvas, masks included.

StreamEvent is the one event type of illada_rt: Engine.stream yields it for a batch (tokens a
tensor, text a list), and serving (illada_rt.serving.RequestEvent, the same class) sends it for
one request (tokens a list of ids, text a str, and a last "done" event with the output).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Union

import torch

from .loop import Progress


@dataclass
class StreamEvent:
    kind: str       # "block": a block is final; "step": a denoising step ran; "done" (serving): the request ended
    block: int      # index of the block finished ("block") or being denoised ("step"); -1 for "done"
    # Engine.stream: "block": the answers so far [B, upto]; "step": the canvas [B, P + gen_length] (CPU tensors).
    # serving: "block": the answer so far; "step" and "done": the whole answer (a list of ids, masks included)
    tokens: Union[torch.Tensor, List[int]]
    new_from: int = 0                         # "block": tokens[..., new_from:] are new in this event
    text: Union[None, str, List[str]] = None  # "block": the answers so far decoded (None without a tokenizer)
    nfe: int = 0                              # forwards so far
    output: Optional[object] = None           # serving's "done" event: the request's RequestOutput

    @property
    def new_tokens(self) -> Union[torch.Tensor, List[int]]:
        """The tokens this event adds: the last axis from new_from."""
        if isinstance(self.tokens, torch.Tensor):
            return self.tokens[:, self.new_from:]
        return self.tokens[self.new_from:]


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
                yield StreamEvent(kind="step", block=p.block, tokens=canvas.to("cpu", copy=True), nfe=p.nfe)
            continue
        upto = gen_length if p.last else (p.block + 1) * block_length
        answers = canvas[:, prompt_len:prompt_len + upto].to("cpu", copy=True)
        yield StreamEvent(kind="block", block=p.block, tokens=answers, new_from=done,
                          text=None if decode is None else decode(answers), nfe=p.nfe)
        done = upto
