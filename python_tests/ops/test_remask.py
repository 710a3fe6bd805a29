"""ops.remask_ (one denoising step on a block, in place) against reference.choose_tokens +
reference.select_transfer, combined as reference.generate combines them."""
import pytest
import torch

from illada_rt import ops, reference, rng
from remask_steps import generator, make_step

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NEG_INF = float("-inf")


def expected_step(logits, tokens, block_start, *, vocab, mask_id, seeds, row_offset, step, uncond=None,
                  cfg_scale=0.0, temperature=0.0, remasking="low_confidence", k=None, threshold=None):
    """(tokens after the step, x0 [B, Lb] (-1 where not masked), confidence [B, Lb] (-inf where not
    masked), masks_left [B]) from the reference functions on float32 logits of the vocabulary."""
    Lb = logits.shape[1]
    l = logits[..., :vocab].float()
    if uncond is not None:
        un = uncond[..., :vocab].float()
        l = un + (cfg_scale + 1) * (l - un)
    positions = block_start + torch.arange(Lb)[None, :] - row_offset[:, None]  # [B, Lb]
    x0, p = reference.choose_tokens(l, temperature, seeds, positions, step, mask_id)
    conf = rng.remask_uniforms(seeds, positions, step) if remasking == "random" else p
    masked = tokens[:, block_start: block_start + Lb] == mask_id
    confidence = torch.where(masked, conf, torch.tensor(NEG_INF, dtype=torch.float64))
    transfer = reference.select_transfer(confidence, k, threshold)
    after = tokens.clone()
    block = after[:, block_start: block_start + Lb]
    block[transfer] = x0[transfer]
    return after, torch.where(masked, x0, -1), confidence, (masked & ~transfer).sum(1)


def run_step(kernels, case, **options):
    """kernels.remask_ on a copy of the tokens with poisoned optional outputs; returns (tokens, x0, conf, left)."""
    c = dict(case)
    tokens, logits = c.pop("tokens").clone(), c.pop("logits")
    block_start = c.pop("block_start")
    B, Lb = logits.shape[:2]
    x0 = torch.full((B, Lb), -7, dtype=torch.int64)
    conf = torch.full((B, Lb), float("nan"), dtype=torch.float64)
    left = torch.full((B,), -7, dtype=torch.int64)
    result = kernels.remask_(logits, tokens, block_start, x0=x0, conf=conf, masks_left=left, **c, **options)
    assert result is tokens
    return tokens, x0, conf, left


def check_step(kernels, case, conf_tol=1e-12, **options):
    """Kernel vs reference: tokens and x0 exactly, conf to conf_tol, masks_left exactly."""
    got = run_step(kernels, case, **options)
    exp = expected_step(case["logits"], case["tokens"], case["block_start"], vocab=case["vocab"],
                        mask_id=case["mask_id"], seeds=case["seeds"], row_offset=case["row_offset"],
                        step=case["step"], **options)
    tokens, x0, conf, left = got
    assert torch.equal(x0, exp[1])
    assert torch.equal(tokens, exp[0])
    assert torch.equal(conf.isinf(), exp[2].isinf())
    torch.testing.assert_close(conf, exp[2], rtol=conf_tol, atol=conf_tol)
    assert torch.equal(left, exp[3])
    # never a padded column or the mask token as a prediction; only the block's masked rows change
    assert ((x0 < case["vocab"]) & (x0 != case["mask_id"])).all()
    bs, Lb = case["block_start"], x0.shape[1]
    changed = tokens != case["tokens"]
    assert not changed[:, :bs].any() and not changed[:, bs + Lb:].any()
    assert (case["tokens"][changed] == case["mask_id"]).all()
    return got


# ----------------------------------------------------------------------------- choice and transfer

GRID = [  # (B, Lb, vocab, pad_cols, block_start)
    (1, 1, 50, 0, 0),
    (2, 7, 97, 3, 4),
    (3, 19, 300, 0, 11),
    (5, 13, 128, 8, 2),
    (4, 19, 251, 5, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Lb,vocab,pad_cols,block_start", GRID)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_remask_topk(kernels, dtype, B, Lb, vocab, pad_cols, block_start, temperature, remasking):
    g = generator(dtype, B, Lb, vocab, pad_cols, block_start, temperature, remasking)
    case = make_step(g, B=B, Lb=Lb, vocab=vocab, pad_cols=pad_cols, block_start=block_start, dtype=dtype)
    k = torch.randint(0, 5, (B,), generator=g)  # differs per sequence, 0 included
    check_step(kernels, case, temperature=temperature, remasking=remasking, k=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_remask_threshold(kernels, dtype, threshold, temperature):
    g = generator(dtype, threshold, temperature)
    # logit_scale 6: confidences spread over (0, 1], so a threshold keeps some rows and drops others
    case = make_step(g, B=4, Lb=19, vocab=120, pad_cols=2, dtype=dtype, logit_scale=6.0)
    tokens, *_ = check_step(kernels, case, temperature=temperature, threshold=threshold)
    block = slice(case["block_start"], case["block_start"] + 19)
    masked_before = (case["tokens"][:, block] == case["mask_id"]).sum(1)
    transferred = (tokens[:, block] != case["tokens"][:, block]).sum(1)
    assert (transferred >= (masked_before > 0).long()).all()  # at least one per step while masks remain
    if threshold == 0.0:
        assert torch.equal(transferred, masked_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg_scale", [0.5, 1.0, 2.0, 0.18, 1.3])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_remask_cfg(kernels, dtype, cfg_scale, temperature):
    # l = un + (s + 1) * (cond - un) in float32, as reference.generate combines its two branches.
    # 0.18 and 1.3: s + 1 is not a float32; for 0.18, float32(float32(s) + 1) != float32(s + 1).
    g = generator(dtype, cfg_scale, temperature)
    case = make_step(g, B=3, Lb=11, vocab=200, pad_cols=4, dtype=dtype)
    uncond = (torch.randn(case["logits"].shape, generator=g) * 3).to(dtype)
    check_step(kernels, case, uncond=uncond, cfg_scale=cfg_scale, temperature=temperature, k=torch.tensor([2, 5, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_remask_strided_logits_and_tokens(kernels, dtype):
    # logits: the block's rows of full-sequence logits [B, T, V]; tokens: a column slice of a wider buffer.
    g = generator(dtype, "strided")
    case = make_step(g, B=3, Lb=7, vocab=90, block_start=6, dtype=dtype)
    T = case["tokens"].shape[1]
    full = torch.randn(3, T, 90, generator=g).to(dtype)
    case["logits"] = full[:, 6:13]
    wide = torch.full((3, T + 4), -5, dtype=torch.int64)
    wide[:, 2: 2 + T] = case["tokens"]
    expected = expected_step(case["logits"], case["tokens"], 6, vocab=90, mask_id=case["mask_id"],
                             seeds=case["seeds"], row_offset=case["row_offset"], step=case["step"],
                             temperature=0.5, k=torch.tensor([3, 1, 2]))[0]
    kernels.remask_(case["logits"], wide[:, 2: 2 + T], 6, vocab=90, mask_id=case["mask_id"], seeds=case["seeds"],
                row_offset=case["row_offset"], step=case["step"], temperature=0.5, k=torch.tensor([3, 1, 2]))
    assert torch.equal(wide[:, 2: 2 + T], expected)
    assert (wide[:, :2] == -5).all() and (wide[:, 2 + T:] == -5).all()


# ----------------------------------------------------------------------------- special rows and tokens

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_remask_never_predicts_mask_or_padding(kernels, dtype, temperature):
    g = generator(dtype, temperature, "mask")
    case = make_step(g, B=2, Lb=9, vocab=60, pad_cols=6, dtype=dtype, masked_frac=1.0)
    logits = case["logits"].float()
    logits[..., case["mask_id"]] = 60.0   # the largest vocabulary logit everywhere
    logits[..., 60:] = 1e4                # padded columns larger still
    case["logits"] = logits.to(dtype)
    tokens, x0, conf, _ = check_step(kernels, case, temperature=temperature, k=torch.tensor([9, 9]))
    assert not (tokens[:, 4:13] == case["mask_id"]).any()  # all 9 rows transferred, none to [MASK]
    assert (conf < 1e-6).all()                            # the softmax still counts [MASK]


@pytest.mark.parametrize("dtype", DTYPES)
def test_remask_unmasked_rows_untouched(kernels, dtype):
    # Sequence 0 has no masked row left in the block, sequence 1 one, sequence 2 several.
    g = generator(dtype, "unmasked")
    case = make_step(g, B=3, Lb=8, vocab=70, dtype=dtype, masked_frac=0.0)
    bs, m = case["block_start"], case["mask_id"]
    case["tokens"][1, bs + 5] = m
    case["tokens"][2, [bs + 1, bs + 2, bs + 6]] = m
    tokens, x0, conf, left = check_step(kernels, case, k=torch.tensor([4, 4, 2]))
    assert torch.equal(left, torch.tensor([0, 0, 1]))
    assert (x0[0] == -1).all() and (conf[0] == NEG_INF).all()
    assert torch.equal(x0[1] >= 0, torch.arange(8) == 5)


def test_remask_tie_break_lower_position_first(kernels):
    # Every masked row has the same logits, hence the same confidence: lower positions go first.
    B, Lb, vocab, m = 2, 9, 50, 7
    tokens = torch.full((B, 3 + Lb), m, dtype=torch.int64)
    tokens[:, :3] = 1
    tokens[1, 3 + 1] = 4                      # an unmasked row is skipped, not counted
    row = torch.randn(vocab)
    logits = row.expand(B, Lb, vocab).contiguous()
    args = dict(vocab=vocab, mask_id=m, seeds=torch.tensor([1, 2]), row_offset=torch.zeros(B, dtype=torch.int64),
                step=torch.zeros(B, dtype=torch.int64))
    top = kernels.remask_(logits, tokens.clone(), 3, k=torch.tensor([3, 3]), **args)
    best = int(torch.where(torch.arange(vocab) == m, NEG_INF, row).argmax())
    assert torch.equal(top[0, 3:] != m, torch.arange(Lb) < 3)
    assert torch.equal(top[1, 3:] != m, torch.arange(Lb) < 4)  # rows 0, 2, 3 transferred, row 1 was not masked
    assert (top[0, 3:6] == best).all() and top[1, 4] == 4
    # threshold above the shared confidence: only the single most confident row, the first
    one = kernels.remask_(logits, tokens.clone(), 3, threshold=1.0, **args)
    assert torch.equal(one[0, 3:] != m, torch.arange(Lb) == 0)


def uniform_block_case(logits, *, mask_id, vocab=None, block_start=3, tail=2):
    """A step on `logits` [B, Lb, >= vocab] (vocab: all columns unless given) with every block row masked."""
    B, Lb, width = logits.shape
    vocab = width if vocab is None else vocab
    tokens = torch.full((B, block_start + Lb + tail), mask_id, dtype=torch.int64)
    tokens[:, :block_start] = (mask_id + 1) % vocab
    return dict(tokens=tokens, block_start=block_start, vocab=vocab, mask_id=mask_id, logits=logits,
                seeds=torch.arange(1, B + 1), row_offset=torch.zeros(B, dtype=torch.int64),
                step=torch.zeros(B, dtype=torch.int64))


def block_changes(case, tokens):
    """bool [B, Lb]: the block rows this step changed."""
    bs, Lb = case["block_start"], case["logits"].shape[1]
    return tokens[:, bs: bs + Lb] != case["tokens"][:, bs: bs + Lb]


# 17: past libstdc++'s insertion-sort cutoff (16), where an unstable sort stops looking stable by
# luck; 32 and 64: powers of two (the CUDA bitonic sort's sizes); 8192: the longest CUDA block.
TIE_BLOCKS = [17, 32, 64, 8192]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lb", TIE_BLOCKS)
def test_remask_equal_confidences_take_the_lowest_rows(kernels, dtype, Lb):
    """Bit-identical logits in every row, so one confidence for all: the top k are the k lowest
    masked rows, whatever the block length (an unstable sort picks e.g. rows [8, 15, 16] of 17)."""
    B, vocab, m = 3, 50, 7
    row = (torch.randn(vocab, generator=generator("equal-conf", dtype, Lb)) * 3).to(dtype)
    case = uniform_block_case(row.expand(B, Lb, vocab).contiguous(), mask_id=m)
    bs = case["block_start"]
    case["tokens"][1, bs + 1] = 4                           # sequence 1: row 1 not masked, skipped
    case["tokens"][2, bs: bs + Lb: 2] = 4                   # sequence 2: only the odd rows masked
    tokens, x0, conf, left = check_step(kernels, case, k=torch.tensor([3, 3, 5]))
    masked = case["tokens"][:, bs: bs + Lb] == m
    assert (conf[masked] == conf[0, 0]).all()               # the premise: one confidence for every row
    want = torch.zeros(B, Lb, dtype=torch.bool)
    want[0, [0, 1, 2]] = True
    want[1, [0, 2, 3]] = True
    want[2, [1, 3, 5, 7, 9]] = True
    assert torch.equal(block_changes(case, tokens), want)
    assert left.tolist() == [Lb - 3, Lb - 4, Lb // 2 - 5]
    # the threshold rule: above the shared confidence only the first masked row; at it, every row
    one = run_step(kernels, case, threshold=min(1.0, float(conf[0, 0]) * 1.5))[0]
    assert torch.equal(block_changes(case, one), torch.arange(Lb).expand(B, Lb) == torch.tensor([[0], [0], [1]]))
    every = run_step(kernels, case, threshold=float(conf[0, 0]))[0]
    assert torch.equal(block_changes(case, every), masked)


@pytest.mark.parametrize("dtype", DTYPES)
def test_remask_confidence_equal_to_the_threshold_is_transferred(kernels, dtype):
    """The threshold rule is conf >= threshold, equality included, at confidences that are exact:
    (1) one logit 100 above N(0, 1) others: the softmax saturates to exactly 1.0, so threshold 1.0
    takes every such row (a sequence without one still takes its single most confident row);
    (2) a threshold equal to a row's computed confidence takes that row; (3) rows whose only finite
    logits are n equal ones have confidence exactly 1/n: threshold 0.5 takes the rows with n <= 2."""
    B, Lb, vocab = 2, 19, 300
    case = make_step(generator(dtype, "at-threshold"), B=B, Lb=Lb, vocab=vocab, pad_cols=3, dtype=dtype,
                     masked_frac=1.0, logit_scale=1.0)
    bs, m = case["block_start"], case["mask_id"]
    logits = case["logits"].float()
    saturated = torch.zeros(B, Lb, dtype=torch.bool)
    for i in (2, 5, 11, 18):                                # sequence 0 only
        logits[0, i, 13 * i] = 100.0                        # never the mask id (vocab - 3)
        saturated[0, i] = True
    case["logits"] = logits.to(dtype)
    case["tokens"][0, bs + 5] = (m + 1) % vocab             # a saturated row that is not masked stays
    masked = case["tokens"][:, bs: bs + Lb] == m

    tokens, x0, conf, _ = check_step(kernels, case, threshold=1.0)
    assert (conf[masked & saturated] == 1.0).all() and (conf[masked & ~saturated] < 1.0).all()
    changed = block_changes(case, tokens)
    assert torch.equal(changed[0], masked[0] & saturated[0])       # rows 2, 11, 18
    assert changed[1].sum() == 1 and conf[1][changed[1]].item() == conf[1].max().item()
    assert x0[0, [2, 11, 18]].tolist() == [26, 143, 234]

    # (2) the threshold is a masked row's confidence as the op computed it (the reference's may
    # differ in the last bit, so the transfer is checked against the op's own confidences)
    middle = int(conf[1].argsort()[Lb // 2])                # not sequence 1's most confident row
    threshold = float(conf[1, middle])
    tokens, _, conf_again, _ = run_step(kernels, case, threshold=threshold)
    assert torch.equal(conf_again, conf)
    changed = block_changes(case, tokens)
    assert changed[1, middle]
    assert torch.equal(changed, masked & (conf >= threshold))

    # (3) n equal finite logits, the rest -inf: confidence 1/n exactly, x0 the lowest of the n ids
    ties = [2, 1, 4, 2, 3, 2, 8, 1, 2, 4, 2, 5, 2, 2, 1, 4, 2, 3, 2]  # n for each of the 19 rows
    exact = torch.full((B, Lb, vocab + 3), NEG_INF)
    exact[..., vocab:] = 1e4                                # padded columns: never read
    for i, n in enumerate(ties):
        exact[:, i, [10 + 7 * j for j in range(n)]] = 0.5
    exact_case = dict(case, logits=exact.to(dtype))
    tokens, x0, conf, _ = check_step(kernels, exact_case, threshold=0.5)
    n = torch.tensor(ties, dtype=torch.float64).expand(B, Lb)
    assert torch.equal(conf[masked], (1.0 / n)[masked])
    assert (x0[masked] == 10).all()
    assert torch.equal(block_changes(exact_case, tokens), masked & (n <= 2))


# Vocabulary ids on both sides of the CUDA row kernel's splits (csrc/cuda/remask.cu): 8 consecutive
# ids per thread (7 | 8), 32 threads a warp (255 | 256), 512 threads a sweep of 4096 ids (4095 | 4096,
# 8191 | 8192); the first id of a row and the last (9000 of a 9001-entry vocabulary).
TIE_IDS = [0, 7, 8, 255, 256, 4095, 4096, 8191, 8192, 9000]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad_cols", [0, 7])
def test_remask_equal_logits_lowest_id_wins(kernels, dtype, pad_cols):
    """Row r has its maximum logit at every id of TIE_IDS[r:] and at the mask id (3, never chosen):
    x0 is TIE_IDS[r], the lowest tied id that is not [MASK], wherever the others lie."""
    vocab, m, Lb = 9001, 3, len(TIE_IDS)
    g = generator("tie-ids", dtype, pad_cols)
    logits = torch.randn(2, Lb, vocab + pad_cols, generator=g).clamp(-4.0, 4.0)
    logits[..., vocab:] = 1e4
    logits[..., m] = 8.0
    for r in range(Lb):
        logits[:, r, TIE_IDS[r:]] = 8.0
    case = uniform_block_case(logits.to(dtype), mask_id=m, vocab=vocab)
    tokens, x0, conf, left = check_step(kernels, case, k=torch.tensor([Lb, 4]))
    assert x0.tolist() == [TIE_IDS, TIE_IDS]
    assert (conf[0, 1:] > conf[0, :-1]).all()               # fewer tied maxima, higher confidence
    bs = case["block_start"]
    assert tokens[0, bs: bs + Lb].tolist() == TIE_IDS
    # sequence 1 takes its 4 most confident rows: the last four (fewest ties)
    assert tokens[1, bs: bs + Lb].tolist() == [m] * (Lb - 4) + TIE_IDS[-4:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_remask_row_offset_left_padding(kernels, dtype, remasking):
    # A sequence left-padded by 3 draws the same noise as the unpadded one: positions exclude padding.
    g = generator(dtype, remasking, "offset")
    case = make_step(g, B=1, Lb=10, vocab=150, block_start=5, dtype=dtype)
    options = dict(temperature=1.5, remasking=remasking, k=torch.tensor([4]))
    plain = check_step(kernels, case, **options)
    padded = dict(case, tokens=torch.cat([torch.full((1, 3), 0), case["tokens"]], 1), block_start=8,
                  row_offset=torch.tensor([3]))
    shifted = check_step(kernels, padded, **options)
    assert torch.equal(shifted[0][:, 3:], plain[0])
    for a, b in zip(shifted[1:], plain[1:]):
        assert torch.equal(a, b)
    # and the noise matters: without the offset the padded row would draw other numbers
    other = run_step(kernels, dict(padded, row_offset=torch.tensor([0])), **options)
    assert not torch.equal(other[2], plain[2])


def test_remask_noise_depends_on_seed_and_step(kernels):
    g = generator("seed-step")
    case = make_step(g, B=1, Lb=19, vocab=200, masked_frac=1.0, logit_scale=0.5)
    options = dict(temperature=5.0, k=torch.tensor([19]))
    base = check_step(kernels, case, **options)[1]
    assert not torch.equal(check_step(kernels, dict(case, seeds=case["seeds"] + 2**32), **options)[1], base)  # seed hi word
    assert not torch.equal(check_step(kernels, dict(case, step=case["step"] + 1), **options)[1], base)


def test_remask_allocation_free_call_without_outputs(kernels):
    g = generator("plain")
    case = make_step(g, B=2, Lb=5, vocab=64)
    c = dict(case)
    tokens = c.pop("tokens").clone()
    kernels.remask_(c.pop("logits"), tokens, c.pop("block_start"), k=torch.tensor([2, 1]), **c)
    expected = expected_step(case["logits"], case["tokens"], case["block_start"], vocab=64, mask_id=case["mask_id"],
                             seeds=case["seeds"], row_offset=case["row_offset"], step=case["step"],
                             k=torch.tensor([2, 1]))[0]
    assert torch.equal(tokens, expected)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_remask_non_finite_logits_raise(kernels, dtype, bad):
    g = generator(dtype, bad, "nonfinite")
    case = make_step(g, B=2, Lb=6, vocab=80, dtype=dtype, masked_frac=1.0)
    case["logits"][1, 4, 17] = bad
    tokens = case["tokens"].clone()
    with pytest.raises(RuntimeError):
        kernels.remask_(case["logits"], tokens, case["block_start"], vocab=80, mask_id=case["mask_id"],
                    seeds=case["seeds"], row_offset=case["row_offset"], step=case["step"], k=torch.tensor([1, 1]))
    assert torch.equal(tokens, case["tokens"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_remask_non_finite_logits_with_a_workspace_flag_it(kernels, bad):
    """Given a workspace, the torch twin does what the CUDA kernel does on every device: word 0
    turns non-zero (and stays so), nothing is transferred while it is set, no host read. The
    compiled CPU kernel raises instead."""
    g = generator(bad, "workspace")
    case = make_step(g, B=2, Lb=6, vocab=80, masked_frac=1.0)
    case["logits"][1, 4, 17] = bad
    workspace = ops.remask_workspace(2, 6, "cpu")
    c = dict(case)
    tokens = c.pop("tokens").clone()
    call = (lambda logits: kernels.remask_(logits, tokens, case["block_start"], vocab=80, mask_id=case["mask_id"],
                                           seeds=case["seeds"], row_offset=case["row_offset"], step=case["step"],
                                           k=torch.tensor([1, 1]), workspace=workspace))
    if kernels.choice["remask"] == "custom":
        with pytest.raises(RuntimeError, match="NaN or infinity"):
            call(case["logits"])
        return
    call(case["logits"])
    assert int(workspace[0]) != 0 and torch.equal(tokens, case["tokens"])
    call(torch.randn(2, 6, 80, generator=g))           # finite logits, but the flag is sticky
    assert int(workspace[0]) != 0 and torch.equal(tokens, case["tokens"])
    workspace.zero_()
    call(torch.randn(2, 6, 80, generator=g))
    assert int((tokens != case["tokens"]).sum()) == 2
    with pytest.raises(ValueError, match="workspace"):   # the compiled CUDA op's size rule
        kernels.remask_(case["logits"], tokens, case["block_start"], vocab=80, mask_id=case["mask_id"],
                        seeds=case["seeds"], row_offset=case["row_offset"], step=case["step"],
                        k=torch.tensor([1, 1]), workspace=torch.zeros(3, dtype=torch.int64))


def test_remask_non_finite_logits_of_unmasked_rows_are_not_read(kernels):
    # Only masked rows are chosen from; the reference likewise gives unmasked rows confidence -inf.
    g = generator("nonfinite-unmasked")
    case = make_step(g, B=2, Lb=6, vocab=80, masked_frac=1.0)
    case["tokens"][1, case["block_start"] + 4] = 3
    case["logits"][1, 4, 17] = float("nan")
    check_step(kernels, case, k=torch.tensor([2, 2]))


def remask_args(**bad):
    B, Lb, vocab = 2, 4, 32  # tokens [2, 10], all masked, block [3, 7)
    args = dict(logits=torch.randn(B, Lb, vocab), tokens=torch.full((B, 10), 31), block_start=3, vocab=vocab,
                mask_id=31, seeds=torch.zeros(B, dtype=torch.int64), row_offset=torch.zeros(B, dtype=torch.int64),
                step=torch.zeros(B, dtype=torch.int64), k=torch.ones(B, dtype=torch.int64))
    args.update(bad)
    return args


@pytest.mark.parametrize("bad", [
    dict(k=None),                                              # neither k nor threshold
    dict(threshold=0.5),                                       # both
    dict(block_start=7),                                       # block [7, 11) beyond 10 tokens
    dict(block_start=-1),
    dict(vocab=33), dict(vocab=0),                             # vocab beyond the logits' columns
    dict(tokens=torch.full((2, 10), 31, dtype=torch.int32)),   # tokens dtype
    dict(tokens=torch.full((3, 10), 31)),                      # tokens batch
    dict(tokens=torch.full((10, 2), 31).t()),                  # tokens not contiguous in a row
    dict(logits=torch.randn(2, 4, 32, dtype=torch.float64)),   # logits dtype
    dict(logits=torch.randn(2, 4, 64)[..., ::2]),              # logits not contiguous in the vocab
    dict(logits=torch.randn(8, 32)),                           # logits not 3-D
    dict(seeds=torch.zeros(2, dtype=torch.int32)),             # seeds dtype
    dict(seeds=torch.zeros(3, dtype=torch.int64)),             # seeds shape
    dict(row_offset=torch.zeros(2, 1, dtype=torch.int64)),
    dict(step=torch.zeros(2)),
    dict(k=torch.ones(2, dtype=torch.int32)),                  # k dtype
    dict(k=torch.ones(3, dtype=torch.int64)),                  # k shape
    dict(uncond=torch.randn(2, 4, 31)),                        # uncond shape
    dict(uncond=torch.randn(2, 4, 32, dtype=torch.bfloat16)),  # uncond dtype
    dict(uncond=torch.randn(2, 4, 40)[..., :32]),              # uncond strides differ from logits
    dict(remasking="topk"),
    dict(temperature=-0.5),
    dict(x0=torch.empty(2, 4, dtype=torch.int32)),             # optional outputs: dtype and shape
    dict(x0=torch.empty(2, 5, dtype=torch.int64)),
    dict(conf=torch.empty(2, 4, dtype=torch.float32)),
    dict(conf=torch.empty(4, 2, dtype=torch.float64).t()),
    dict(masks_left=torch.empty(2, dtype=torch.int32)),
    dict(masks_left=torch.empty(3, dtype=torch.int64)),
])
def test_remask_bad_input(kernels, bad):
    args = remask_args(**bad)
    tokens = args.pop("tokens")
    before = tokens.clone()
    with pytest.raises(ValueError):
        kernels.remask_(args.pop("logits"), tokens, args.pop("block_start"), **args)
    assert torch.equal(tokens, before)  # a refused call writes nothing
