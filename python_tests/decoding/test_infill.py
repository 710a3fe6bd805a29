"""Engine.infill / infill_text against the plain reference, token for token (float32, CPU)."""
import pytest
import torch

from checkpoints import write_text_checkpoint
from prompts import random_prompt
from illada_rt import Engine
from illada_rt.reference import tasks as reference_tasks


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, kernel_impl):
    path = tmp_path_factory.mktemp("infill_text")
    write_text_checkpoint(str(path))
    return Engine.from_pretrained(str(path))


def masked_batch(cfg, padded: bool):
    """3 sequences of 14 tokens with different mask layouts (spans, single tokens, edges)."""
    ids = random_prompt(cfg, 3, 14, seed=21)
    m = cfg.mask_token_id
    ids[0, 2:5] = m
    ids[0, 9] = m
    ids[0, 11:13] = m
    ids[1, 0] = m
    ids[1, 6:10] = m
    ids[2, 13] = m
    ids[2, 5] = m
    mask = None
    if padded:
        mask = torch.ones_like(ids)
        mask[2, :3] = 0
        ids[2, :3] = cfg.pad_token_id
    return ids, mask


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("block_length,steps", [(None, 6), (2, 6), (3, 4), (1, 12), (4, 4)])
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.5), dict(temperature=0.9, remasking="random"),
                                     dict(temperature=1.0, seed=5)])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_reference(engines, layout, block_length, steps, options, padded):
    eng, ref = engines[layout]
    ids, mask = masked_batch(eng.cfg, padded)
    kw = {"steps": steps, "block_length": block_length, "seed": 0, **options}
    out = eng.infill(ids, mask, **kw)
    expected, nfe = reference_tasks.infill(ref, ids, mask, mask_id=eng.cfg.mask_token_id, **kw)
    assert torch.equal(out.sequences, expected)
    assert out.nfe == nfe
    kept = ids != eng.cfg.mask_token_id
    assert torch.equal(out.sequences[kept], ids[kept])
    assert not bool((out.sequences == eng.cfg.mask_token_id).any())
    assert out.nfe <= steps or "threshold" in options    # a block whose masks are all filled ends early


@pytest.mark.parametrize("layout", ["llada", "illada"])
@pytest.mark.parametrize("options", [dict(), dict(threshold=0.6), dict(temperature=0.7)])
def test_suffix_infill_is_generation(engines, layout, options):
    """Masks after a (left-padded) prompt, in blocks of block_length masks: generate()'s blocks."""
    eng = engines[layout][0]
    ids = random_prompt(eng.cfg, 2, 6, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    kw = {"steps": 8, "seed": 2, **options}
    out = eng.generate(ids, mask, gen_length=16, block_length=8, **kw)
    canvas = torch.cat([ids, torch.full((2, 16), eng.cfg.mask_token_id)], 1)
    infilled = eng.infill(canvas, torch.cat([mask, torch.ones(2, 16, dtype=torch.int64)], 1), block_length=8, **kw)
    assert torch.equal(infilled.sequences, out.sequences) and infilled.nfe == out.nfe


def test_masks_only_and_default_steps(engines):
    """All masks is a legal input. (Every row then has the same logits: random remasking
    avoids a first step decided by float noise among tied confidences.)"""
    eng, ref = engines["illada"]
    ids = torch.full((1, 10), eng.cfg.mask_token_id)
    kw = dict(block_length=4, temperature=1.0, remasking="random")
    out = eng.infill(ids, **kw)                                # 3 blocks (4, 4, 2 masks), 4 steps each
    expected, nfe = reference_tasks.infill(ref, ids, mask_id=eng.cfg.mask_token_id, steps=12, seed=out.seed, **kw)
    assert torch.equal(out.sequences, expected) and out.nfe == nfe == 10


def test_text_infill(text_model):
    kw = dict(steps=3, seed=1)
    filled = text_model.infill_text("w1 <mask> w3 <mask><mask> w5", **kw)
    words = filled.split()
    assert len(words) == 6 and words[0] == "w1" and words[2] == "w3" and words[5] == "w5"
    assert text_model.infill_text("w1 [?] w3 [?][?] w5", mask_marker="[?]", **kw) == filled
    ids = text_model.codec.encode("w1 <mask> w3 <mask> <mask> w5")
    out = text_model.infill([ids], **kw)
    assert filled == text_model.codec.decode(out.sequences[0].tolist())
    pair = text_model.infill_text(["w1 <mask> w3 <mask><mask> w5", "<mask> w7"], **kw)
    assert pair[0] == filled and len(pair[1].split()) == 2 and pair[1].split()[1] == "w7"


@pytest.mark.parametrize("ids,kw,rule", [
    ([[1, 2, 3]], {}, "holds no mask token"),
    ([[1, "M", 3], [1, 2, 3]], {}, "row 1 holds no mask token"),
    ([[1, "M", "M", 3]], dict(block_length=1, steps=3), "not divisible by the number of blocks 2"),
    ([[1, "M"]], dict(block_length=0), "block_length must be a positive integer"),
    ([[1, "M"]], dict(steps=0), "steps must be a positive integer"),
    ([["M", 1, "M"]], dict(attention_mask=[[0, 1, 1]]), "inside the left padding"),
    ([[1, "M"]], dict(remasking="entropy"), "remasking"),
    ([[1, "M"]], dict(threshold=2.0), "threshold"),
])
def test_bad_infill_arguments(engines, ids, kw, rule):
    eng = engines["llada"][0]
    ids = [[eng.cfg.mask_token_id if t == "M" else t for t in row] for row in ids]
    with pytest.raises(ValueError, match=rule):
        eng.infill(ids, **kw)


def test_text_without_markers_is_refused(text_model):
    with pytest.raises(ValueError, match="no mask token"):
        text_model.infill_text("w1 w2")
