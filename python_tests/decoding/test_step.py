"""The step rule (decoding/step.py): what follows the forward in every path (the eager loop, the
CUDA-graph step and the serving row batcher all call it), checked piece by piece here; the
paths themselves are checked against the reference in test_generate.py, test_graph_step.py
and test_serving.py."""
import pytest
import torch

from illada_rt.decoding.plan import DenoiseSettings
from illada_rt.decoding.schedule import num_transfer_tokens, scheduled_steps, steps_per_full_block
from illada_rt.decoding.step import StepRule, answer_lengths, fill_after_stop
from illada_rt import ops, reference


def rule(kernels, **settings):
    return StepRule(kernels, vocab=20, mask_id=7, settings=DenoiseSettings(steps_per_block=4, **settings))


def test_model_input_is_the_canvas_or_the_cfg_pair(kernels):
    tokens = torch.tensor([[1, 2, 7, 7], [3, 7, 7, 7]])
    prompt_index = tokens != 7
    assert rule(kernels).model_input(tokens, prompt_index) is tokens
    pair = rule(kernels, cfg_scale=1.0).model_input(tokens, prompt_index)
    assert torch.equal(pair, torch.tensor([[1, 2, 7, 7], [3, 7, 7, 7], [7, 7, 7, 7], [7, 7, 7, 7]]))
    out = torch.full((4, 4), -1)
    assert rule(kernels, cfg_scale=1.0).model_input(tokens, prompt_index, out=out) is out and torch.equal(out, pair)


def test_transfer_splits_the_cfg_pair_and_remasks_in_place(kernels):
    """With CFG the logits [2B, Lb, E] are the pair's: the second half is the unconditional branch."""
    g = torch.Generator().manual_seed(3)
    B, Lb = 2, 5
    tokens = torch.full((B, 3 + Lb), 7)
    logits = torch.randn(2 * B, Lb, 20, generator=g)
    args = dict(seeds=torch.tensor([1, 2]), row_offset=torch.zeros(B, dtype=torch.int64),
                step=torch.zeros(B, dtype=torch.int64), k=torch.tensor([2, 3]), masks_left=torch.empty(B, dtype=torch.int64),
                workspace=ops.remask_workspace(B, Lb, "cpu"))
    got = tokens.clone()
    rule(kernels, cfg_scale=1.5).transfer(logits, got, 3, **args)
    want = tokens.clone()
    kernels.remask_(logits[:B], want, 3, vocab=20, mask_id=7, seeds=args["seeds"], row_offset=args["row_offset"],
                    step=args["step"], uncond=logits[B:], cfg_scale=1.5, k=args["k"])
    assert torch.equal(got, want) and args["masks_left"].tolist() == [3, 2]
    # the threshold rule ignores k
    got = tokens.clone()
    rule(kernels, threshold=1.1).transfer(logits[:B], got, 3, **args)
    assert ((got != 7).sum(1) == 1).all()


def test_check_finite_reads_the_flag():
    workspace = ops.remask_workspace(2, 8, "cpu")
    StepRule.check_finite(workspace, "at the end of block 0")
    workspace[0] = 1
    with pytest.raises(RuntimeError, match="non-finite.*block 3"):
        StepRule.check_finite(workspace, "at the end of block 3")


def test_end_block_applies_the_stop_rule_after_the_check(kernels):
    r = rule(kernels, stop_token_ids=(5,), fill_id=9)
    answer = torch.tensor([[1, 5, 2, 3, 4, 4], [1, 2, 3, 4, 5, 6]])
    finished = torch.zeros(2, dtype=torch.bool)
    workspace = ops.remask_workspace(2, 3, "cpu")
    assert not r.end_block(answer, 3, finished, workspace, "at the end of block 0")
    assert answer.tolist() == [[1, 5, 9, 9, 9, 9], [1, 2, 3, 4, 5, 6]] and finished.tolist() == [True, False]
    assert r.end_block(answer, 6, finished, workspace, "at the end of block 1")           # row 1 stops at 5
    assert answer[1].tolist() == [1, 2, 3, 4, 5, 9]
    workspace[0] = 1
    with pytest.raises(RuntimeError, match="non-finite"):
        r.end_block(answer, 6, finished, workspace, "at the end of block 1")
    assert not rule(kernels).end_block(answer, 6, torch.zeros(2, dtype=torch.bool), ops.remask_workspace(2, 3, "cpu"),
                                       "at the end of block 1")                           # no early stop


def test_fill_after_stop_repeats_the_stop_token_without_a_fill_id():
    answer = torch.tensor([[4, 6, 1, 2]])
    finished = torch.zeros(1, dtype=torch.bool)
    fill_after_stop(answer, 4, torch.tensor([6]), finished, None)
    assert answer.tolist() == [[4, 6, 6, 6]] and bool(finished[0])
    fill_after_stop(answer, 4, torch.tensor([4]), finished, None)        # a finished row is left alone
    assert answer.tolist() == [[4, 6, 6, 6]]


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 8, 13, 32, 64, 100])
def test_num_transfer_tokens_is_llada_schedule(steps):
    """num_transfer_tokens against the reference's own transfer_counts (LLaDA's formula, computed
    apart from the runtime), for every mask count 0..130 at once: fewer masks than steps
    included, where the last steps transfer nothing. Each row sums to its mask count, and the top-k
    rule fills a row in min(masks, steps) steps (zero-transfer steps are skipped)."""
    masks = torch.arange(131)
    counts = num_transfer_tokens(masks, steps)
    assert counts.dtype == torch.int64 and counts.shape == (131, steps)
    assert torch.equal(counts, reference.transfer_counts(masks, steps))
    assert torch.equal(counts.sum(1), masks)
    assert torch.equal(num_transfer_tokens(masks.to(torch.int32), steps), counts)
    for n in (0, 1, steps - 1, steps, steps + 1, 2 * steps + 3, 130):
        row = torch.tensor([n])
        assert scheduled_steps(row, num_transfer_tokens(row, steps)) == min(n, steps)
    batch = torch.tensor([3, 0, 17, 1])                     # rows of one batch: the longest decides
    assert scheduled_steps(batch, num_transfer_tokens(batch, steps)) == min(17, steps)
    assert steps_per_full_block(32, steps) == min(32, steps)


def test_answer_lengths():
    answer = torch.tensor([[1, 2, 3], [3, 2, 1], [5, 5, 5]])
    assert answer_lengths(answer, [3]).tolist() == [2, 0, 3]
    assert answer_lengths(answer, []).tolist() == [3, 3, 3]
