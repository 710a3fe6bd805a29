"""The vocab-parallel remask's reduction (parallel/remask.py) against the single-process choice:
each "rank" reduces its vocabulary slice to five numbers a row, combine() joins them. Pure
functions, no process group: the slices are cut here. The end-to-end tensor-parallel engine is
tested in test_tensor_parallel.py."""
import pytest
import torch

from illada_rt.ops.native.remask import _choose_rows
from illada_rt.parallel.remask import combine, slice_stats


def split_choose(l, cuts, mask_id, temperature, seeds, positions, step):
    """(x0, conf, finite) of rows l [R, V] cut into slices at `cuts` (vocab offsets), combined."""
    bounds = [0] + list(cuts) + [l.shape[1]]
    stats = [slice_stats(l[:, a:b], a, mask_id, temperature, seeds, positions, step)
             for a, b in zip(bounds[:-1], bounds[1:])]
    return combine(torch.stack(stats))


def rows(R, V, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(R, V, generator=g) * 3, torch.randint(0, 2 ** 40, (R,), generator=g),
            torch.randint(0, 50, (R,), generator=g), torch.randint(0, 20, (R,), generator=g))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("V,cuts,mask_id", [(101, [50], 7), (101, [33, 66], 66), (97, [1, 96], 0), (64, [16, 32, 48], 63),
                                            (50, [50], 3)])   # the last: an empty final slice
def test_combined_slices_choose_what_one_rank_chooses(temperature, V, cuts, mask_id):
    l, seeds, positions, step = rows(13, V, V + len(cuts))
    want = _choose_rows(l, mask_id, temperature, seeds, positions, step, random=False)
    got = split_choose(l, cuts, mask_id, temperature, seeds, positions, step)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=0)
    assert torch.equal(got[2], want[2]) and bool(got[2].all())


def test_ties_across_slices_go_to_the_lowest_id():
    """Equal largest logits at the end of one slice and the start of the next: the lower id wins,
    as torch's argmax over the whole row (first maximum) and the kernels do."""
    V, cut = 40, 20
    l = torch.zeros(4, V)
    l[0, [19, 20]] = 5.0                 # straddling the cut
    l[1, [20, 39]] = 5.0                 # both in the second slice
    l[2, [0, 39]] = 5.0                  # first and last of the row
    l[3, [19, 20]] = 5.0                 # with the mask id on the lower one: the higher wins
    seeds, positions, step = torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    for mask_id, want in ((30, [19, 20, 0, 19]), (19, [20, 20, 0, 20])):
        x0, conf, _ = split_choose(l, [cut], mask_id, 0.0, seeds, positions, step)
        assert x0.tolist() == want
        assert torch.equal(x0, _choose_rows(l, mask_id, 0.0, seeds, positions, step, False)[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_logit_in_any_slice_is_not_finite_overall(bad):
    l, seeds, positions, step = rows(3, 30, 1)
    l[1, 25] = bad
    _, _, finite = split_choose(l, [10], 5, 0.0, seeds, positions, step)
    assert finite.tolist() == [True, False, True]
