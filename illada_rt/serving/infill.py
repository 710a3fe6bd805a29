"""An InfillRequest served: Engine.infill on its one sequence, while nothing else runs."""
from __future__ import annotations

import torch

from .protocol import ServingEngine
from .requests import InfillRequest, RequestOutput


def run_infill(engine: ServingEngine, request: InfillRequest) -> RequestOutput:
    """The filled sequence (tokens: all of it, answer_length its length); errors raise."""
    out = engine.infill(request.input_ids[None], **request.options)
    tokens = out.sequences[0].tolist()
    decode = engine.text.answer_decoder([])
    text = None if decode is None else decode(torch.tensor([tokens]))[0]
    return RequestOutput(tokens, len(tokens), text, 0, out.nfe, out.seed, "length")
