import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from checkpoints import write_checkpoint  # noqa: E402

from illada_rt import Engine, ModelConfig  # noqa: E402
from illada_rt.loader import load_state_dict  # noqa: E402
from illada_rt.reference import ReferenceModel  # noqa: E402


@pytest.fixture(scope="session", params=["llada", "illada"])
def checkpoint(request, tmp_path_factory):
    """(layout, model_dir) for each tiny layout, written once per session."""
    path = tmp_path_factory.mktemp(request.param)
    write_checkpoint(str(path), request.param)
    return request.param, str(path)


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    """layout -> (engine, reference model) in float32 on the CPU."""
    out = {}
    for layout in ("llada", "illada"):
        path = str(tmp_path_factory.mktemp(f"{layout}_eng"))
        write_checkpoint(path, layout)
        cfg = ModelConfig.from_dir(path)
        out[layout] = (Engine.from_pretrained(path), ReferenceModel(cfg, load_state_dict(path, cfg)))
    return out


def random_prompt(cfg, batch, length, seed):
    """Prompt tokens avoiding the mask id."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
    return torch.where(ids == cfg.mask_token_id, (ids + 1) % cfg.vocab_size, ids)
