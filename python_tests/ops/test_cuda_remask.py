"""CUDA remask against reference.choose_tokens + reference.select_transfer on the CPU, for both
implementations of the pass (the `kernels` fixture: the compiled kernel, then the torch twin, on
device tensors); skipped without a GPU or a CUDA build.

x0 must match the reference exactly (float64 Gumbel scores with the CPU's rounding; argmax ties
to the lowest id). conf sums float32 exp terms in float64, so it agrees to ~1e-7 relative; the
transfer is therefore checked as the reference rule applied to the kernel's own confidences
(a near-tie between two rows could otherwise flip), after checking those against the reference.

Logits (the big input) are drawn on the device from CUDA generators and the reference reads a CPU
copy; the small integer inputs (tokens, seeds, steps) come from remask_steps.make_step on the CPU.
"""
import zlib

import pytest
import torch

from illada_rt import build_info, ops, reference, rng
from remask_steps import generator, make_step  # the CPU tests' random step inputs

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                 reason="needs a CUDA device and a CUDA build")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NEG_INF = float("-inf")
MAX_BLOCK_CUDA = 8192  # kRemaskMaxBlockCuda (csrc/include/remask.h): the select kernel sorts in shared memory


def cuda_generator(*case):
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(case).encode()))


def make_case(*key, dtype=torch.float32, logit_scale=3.0, **shape):
    """make_step's inputs (seeded by key) with the logits redrawn on the device: N(0, logit_scale^2)
    over the vocabulary, 1e4 in the padded columns (never chosen), in dtype."""
    case = make_step(generator(*key), dtype=dtype, logit_scale=logit_scale, **shape)
    logits = torch.randn(case["logits"].shape, device="cuda", generator=cuda_generator(*key)) * logit_scale
    logits[..., case["vocab"]:] = 1e4
    case["logits"] = logits.to(dtype)
    return case


def reference_step(case, *, uncond=None, cfg_scale=0.0, temperature=0.0, remasking="low_confidence", k=None,
                   threshold=None, select_conf=None):
    """(tokens after, x0 (-1 unmasked), confidence (-inf unmasked), masks_left) from the reference on
    CPU copies of the inputs. select_conf [B, Lb]: transfer by these confidences instead of the
    reference's own."""
    logits, tokens, bs = case["logits"].cpu(), case["tokens"], case["block_start"]
    Lb, vocab = logits.shape[1], case["vocab"]
    l = logits[..., :vocab].float()
    if uncond is not None:
        un = uncond.cpu()[..., :vocab].float()
        l = un + (cfg_scale + 1) * (l - un)
    positions = bs + torch.arange(Lb)[None, :] - case["row_offset"][:, None]
    x0, p = reference.choose_tokens(l, temperature, case["seeds"], positions, case["step"], case["mask_id"])
    conf = rng.remask_uniforms(case["seeds"], positions, case["step"]) if remasking == "random" else p
    masked = tokens[:, bs: bs + Lb] == case["mask_id"]
    confidence = torch.where(masked, conf, torch.tensor(NEG_INF, dtype=torch.float64))
    chosen_by = confidence if select_conf is None else torch.where(masked, select_conf, NEG_INF)
    transfer = reference.select_transfer(chosen_by, None if k is None else k.cpu(), threshold)
    after = tokens.clone()
    after[:, bs: bs + Lb][transfer] = x0[transfer]
    return after, torch.where(masked, x0, -1), confidence, (masked & ~transfer).sum(1)


def run_cuda(kernels, case, *, uncond=None, k=None, workspace=None, logits=None, **options):
    """kernels.remask_ on device copies with poisoned optional outputs; returns CPU (tokens, x0, conf, left)."""
    dev = "cuda"
    logits = (case["logits"] if logits is None else logits).to(dev)
    B, Lb = logits.shape[:2]
    tokens = case["tokens"].to(dev, copy=True)  # the case keeps its tokens for the reference
    x0 = torch.full((B, Lb), -7, dtype=torch.int64, device=dev)
    conf = torch.full((B, Lb), float("nan"), dtype=torch.float64, device=dev)
    left = torch.full((B,), -7, dtype=torch.int64, device=dev)
    result = kernels.remask_(logits, tokens, case["block_start"], vocab=case["vocab"], mask_id=case["mask_id"],
                             seeds=case["seeds"].to(dev), row_offset=case["row_offset"].to(dev),
                             step=case["step"].to(dev), uncond=None if uncond is None else uncond.to(dev),
                             k=None if k is None else k.to(dev), x0=x0, conf=conf, masks_left=left,
                             workspace=workspace, **options)
    torch.cuda.synchronize()
    assert result is tokens
    return tokens.cpu(), x0.cpu(), conf.cpu(), left.cpu()


def check_step(kernels, case, conf_rtol=2e-6, workspace=None, **options):
    """Kernel vs reference: x0 exactly, conf to conf_rtol, the transfer and masks_left exactly."""
    tokens, x0, conf, left = got = run_cuda(kernels, case, workspace=workspace, **options)
    _, want_x0, want_conf, _ = reference_step(case, **options)
    assert torch.equal(x0, want_x0)
    assert torch.equal(conf.isinf(), want_conf.isinf())
    torch.testing.assert_close(conf, want_conf, rtol=conf_rtol, atol=1e-12)
    want_tokens, _, _, want_left = reference_step(case, select_conf=conf, **options)
    assert torch.equal(tokens, want_tokens)
    assert torch.equal(left, want_left)
    assert ((x0 < case["vocab"]) & (x0 != case["mask_id"])).all()
    return got


def block_changes(case, tokens):
    """bool [B, Lb]: the block rows this step changed."""
    bs, Lb = case["block_start"], case["logits"].shape[1]
    return tokens[:, bs: bs + Lb] != case["tokens"][:, bs: bs + Lb]


# ----------------------------------------------------------------------------- choice and transfer

GRID = [  # (B, Lb, vocab, pad_cols, block_start)
    (1, 1, 50, 0, 0),
    (2, 7, 97, 3, 4),
    (3, 19, 4097, 0, 11),
    (4, 19, 111, 5, 0),
    (2, 99, 1000, 24, 3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Lb,vocab,pad_cols,block_start", GRID)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_cuda_remask_topk(kernels, dtype, B, Lb, vocab, pad_cols, block_start, temperature, remasking):
    key = (dtype, B, Lb, vocab, pad_cols, block_start, temperature, remasking)
    case = make_case(*key, B=B, Lb=Lb, vocab=vocab, pad_cols=pad_cols, block_start=block_start, dtype=dtype)
    k = torch.randint(0, 6, (B,), generator=generator(*key, "k"))  # differs per sequence, 0 included
    check_step(kernels, case, temperature=temperature, remasking=remasking, k=k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab,pad_cols,mask_id", [(126464, 0, 126336), (126464, 3, 126336), (155136, 0, 155000)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_remask_full_vocabulary_rows(kernels, dtype, vocab, pad_cols, mask_id, temperature):
    # LLaDA- and iLLaDA-sized rows; 3 padded columns put rows off 16-byte boundaries (scalar loads).
    case = make_case(dtype, vocab, pad_cols, temperature, B=2, Lb=9, vocab=vocab, pad_cols=pad_cols,
                     mask_id=mask_id, dtype=dtype, masked_frac=0.8)
    check_step(kernels, case, temperature=temperature, k=torch.tensor([2, 4]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_remask_threshold(kernels, dtype, threshold, temperature):
    case = make_case(dtype, threshold, temperature, B=4, Lb=19, vocab=120, pad_cols=2, dtype=dtype, logit_scale=6.0)
    tokens, *_ = check_step(kernels, case, temperature=temperature, threshold=threshold)
    block = slice(case["block_start"], case["block_start"] + 19)
    masked_before = (case["tokens"][:, block] == case["mask_id"]).sum(1)
    transferred = (tokens[:, block] != case["tokens"][:, block]).sum(1)
    assert (transferred >= (masked_before > 0).long()).all()
    if threshold == 0.0:
        assert torch.equal(transferred, masked_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg_scale", [0.5, 0.18, 1.3])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_cuda_remask_cfg(kernels, dtype, cfg_scale, temperature):
    case = make_case(dtype, cfg_scale, temperature, B=3, Lb=11, vocab=4097, pad_cols=4, dtype=dtype)
    g = cuda_generator(dtype, cfg_scale, temperature, "uncond")
    uncond = (torch.randn(case["logits"].shape, device="cuda", generator=g) * 3).to(dtype)
    check_step(kernels, case, uncond=uncond, cfg_scale=cfg_scale, temperature=temperature, k=torch.tensor([2, 5, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_remask_strided_logits_and_row_offset(kernels, dtype):
    # logits: block rows of full-sequence logits [B, T, V]; sequence 1 left-padded by 2.
    case = make_case(dtype, "strided", B=3, Lb=7, vocab=901, block_start=6, dtype=dtype)
    T = case["tokens"].shape[1]
    full = (torch.randn(3, T, 901, device="cuda", generator=cuda_generator(dtype, "strided", "full")) * 3).to(dtype)
    case["logits"] = full[:, 6:13]
    case["row_offset"] = torch.tensor([0, 2, 0])
    check_step(kernels, case, temperature=0.5, k=torch.tensor([3, 1, 2]))


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_cuda_remask_matches_cpu_kernel(kernels, remasking):
    # The compiled CPU kernel (ops.remask_ on CPU copies of the same inputs) is a second reference.
    case = make_case("cpu-twin", remasking, B=3, Lb=19, vocab=5000, pad_cols=8, dtype=torch.bfloat16)
    k = torch.tensor([4, 0, 19])
    cpu_tokens = case["tokens"].clone()
    ops.remask_(case["logits"].cpu(), cpu_tokens, case["block_start"], vocab=5000, mask_id=case["mask_id"],
                seeds=case["seeds"], row_offset=case["row_offset"], step=case["step"], temperature=0.8,
                remasking=remasking, k=k)
    assert torch.equal(check_step(kernels, case, temperature=0.8, remasking=remasking, k=k)[0], cpu_tokens)


# ----------------------------------------------------------------------------- ties and long blocks

def uniform_block_case(logits, *, mask_id, vocab=None, block_start=3, tail=2):
    """A step on `logits` [B, Lb, >= vocab] (on the device; vocab: all columns unless given) with
    every block row masked."""
    B, Lb, width = logits.shape
    vocab = width if vocab is None else vocab
    tokens = torch.full((B, block_start + Lb + tail), mask_id, dtype=torch.int64)
    tokens[:, :block_start] = (mask_id + 1) % vocab
    return dict(tokens=tokens, block_start=block_start, vocab=vocab, mask_id=mask_id, logits=logits,
                seeds=torch.arange(1, B + 1), row_offset=torch.zeros(B, dtype=torch.int64),
                step=torch.zeros(B, dtype=torch.int64))


def test_cuda_remask_tie_break_lower_position_first(kernels):
    # Every masked row has the same logits, hence bit-identical confidences: lower positions go first.
    B, Lb, vocab, m = 3, 9, 50, 7
    row = torch.randn(vocab, device="cuda", generator=cuda_generator("tie-rows"))
    case = uniform_block_case(row.expand(B, Lb, vocab).contiguous(), mask_id=m)
    case["tokens"][1, 3 + 1] = 4  # an unmasked row is skipped, not counted
    top, x0, conf, left = check_step(kernels, case, k=torch.tensor([3, 3, 0]))  # k differs per sequence
    assert torch.equal(top[0, 3:3 + Lb] != m, torch.arange(Lb) < 3)
    assert torch.equal(top[1, 3:3 + Lb] != m, torch.arange(Lb) < 4)  # rows 0, 2, 3; row 1 was not masked
    assert (top[2, 3:3 + Lb] == m).all() and left.tolist() == [6, 5, 9]
    one = run_cuda(kernels, case, threshold=1.0)[0]  # above the shared confidence: only the first row
    assert torch.equal(one[0, 3:3 + Lb] != m, torch.arange(Lb) == 0)
    everything = run_cuda(kernels, case, threshold=0.0)[0]
    assert not (everything[:, 3:3 + Lb] == m).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lb", [17, 32, 64, MAX_BLOCK_CUDA])
def test_cuda_remask_equal_confidences_take_the_lowest_rows(kernels, dtype, Lb):
    """Bit-identical logits in every row, so one confidence for all: the top 3 are rows 0, 1, 2
    (lower position first) through the CUDA bitonic sort at 17 rows (padded to 32), at exact powers
    of two, and at the longest block the CUDA kernel takes (96 KiB of shared memory: one sequence)."""
    B, vocab, m = (1 if Lb == MAX_BLOCK_CUDA else 2), 50, 7
    row = torch.randn(vocab, device="cuda", generator=cuda_generator("equal-conf", dtype, Lb)) * 3
    case = uniform_block_case(row.to(dtype).expand(B, Lb, vocab).contiguous(), mask_id=m)
    tokens, x0, conf, left = check_step(kernels, case, k=torch.full((B,), 3))
    assert (conf == conf[0, 0]).all()                       # the premise: every row has the same confidence
    assert torch.equal(block_changes(case, tokens), (torch.arange(Lb) < 3).expand(B, Lb))
    assert left.tolist() == [Lb - 3] * B


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_remask_confidence_equal_to_the_threshold_is_transferred(kernels, dtype):
    """The threshold rule is conf >= threshold, equality included. (1) One logit 100 above N(0, 1)
    others: the softmax saturates to exactly 1.0, so threshold 1.0 takes exactly those rows (a
    sequence without one still takes its single most confident row). (2) A threshold equal to a
    row's computed confidence takes that row and every row at least as confident."""
    B, Lb, vocab = 2, 19, 4097
    case = make_case(dtype, "at-threshold", B=B, Lb=Lb, vocab=vocab, pad_cols=3, dtype=dtype, masked_frac=1.0,
                     logit_scale=1.0)
    bs, m = case["block_start"], case["mask_id"]
    saturated = torch.zeros(B, Lb, dtype=torch.bool)
    saturated[0, [2, 5, 11, 18]] = True                     # sequence 1: none
    for i in (2, 5, 11, 18):
        case["logits"][0, i, 37 * i] = 100.0                # never the mask id (vocab - 3)
    case["tokens"][0, bs + 5] = (m + 1) % vocab             # a saturated row that is not masked stays
    masked = case["tokens"][:, bs: bs + Lb] == m

    tokens, x0, conf, _ = check_step(kernels, case, threshold=1.0)
    assert (conf[masked & saturated] == 1.0).all() and (conf[masked & ~saturated] < 1.0).all()
    changed = block_changes(case, tokens)
    assert torch.equal(changed[0], masked[0] & saturated[0])       # rows 2, 11, 18
    assert changed[1].sum() == 1 and conf[1][changed[1]].item() == conf[1].max().item()
    assert torch.equal(x0[0, [2, 11, 18]], torch.tensor([74, 407, 666]))

    middle = int(conf[1].argsort()[Lb // 2])                # a masked row of sequence 1, not its most confident
    threshold = conf[1, middle].item()
    tokens, _, conf_again, _ = check_step(kernels, case, threshold=threshold)
    assert torch.equal(conf_again, conf)                    # the same confidences, so the same comparison
    changed = block_changes(case, tokens)
    assert changed[1, middle]
    assert torch.equal(changed, masked & (conf >= threshold))


# Vocabulary ids on both sides of the CUDA row kernel's split (csrc/cuda/remask.cu): 8 consecutive ids
# per thread (7 | 8), 32 threads a warp (255 | 256), 512 threads a sweep of 4096 ids (4095 | 4096,
# 8191 | 8192), the first id and the last (9000, in the scalar tail of a 9001-entry row).
TIE_IDS = [0, 7, 8, 255, 256, 4095, 4096, 8191, 8192, 9000]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad_cols", [0, 7])
def test_cuda_remask_equal_logits_lowest_id_wins(kernels, dtype, pad_cols):
    """Row r has its maximum logit at every id of TIE_IDS[r:] and at the mask id (3, never chosen):
    x0 is TIE_IDS[r], the lowest tied id, whichever thread, warp or sweep holds the others. pad_cols 7
    gives 16-byte aligned rows (vector loads), 0 mostly unaligned ones (scalar loads)."""
    vocab, m, Lb = 9001, 3, len(TIE_IDS)
    g = cuda_generator("tie-ids", dtype, pad_cols)
    logits = torch.randn(2, Lb, vocab + pad_cols, device="cuda", generator=g).clamp(-4.0, 4.0)
    logits[..., vocab:] = 1e4
    logits[..., m] = 8.0
    for r in range(Lb):
        logits[:, r, TIE_IDS[r:]] = 8.0
    case = uniform_block_case(logits.to(dtype), mask_id=m, vocab=vocab)
    tokens, x0, conf, left = check_step(kernels, case, k=torch.tensor([Lb, 4]))
    assert x0.tolist() == [TIE_IDS, TIE_IDS]
    bs = case["block_start"]
    assert tokens[0, bs: bs + Lb].tolist() == TIE_IDS


@pytest.mark.parametrize("Lb", [4096, 5000, 8192])
@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_cuda_remask_long_blocks(kernels, Lb, mode):
    # The per-sequence sort runs in shared memory up to 8192 rows; few distinct logits make many ties.
    case = make_step(generator("long", Lb, mode), B=2, Lb=Lb, vocab=40, block_start=1, tail=2, masked_frac=0.9)
    g = cuda_generator("long", Lb, mode)
    # few distinct values: conf ~ 1 / #(max entries), many rows tie
    case["logits"] = torch.randint(0, 4, case["logits"].shape, device="cuda", generator=g).float() * 2
    if mode == "topk":
        check_step(kernels, case, k=torch.tensor([Lb // 3, Lb]))
    else:
        check_step(kernels, case, threshold=0.1)


def test_cuda_remask_block_too_long_is_refused(kernels):
    # The CUDA kernel's limit; the torch twin has none and must still match the reference there.
    case = make_step(generator("too-long"), B=1, Lb=MAX_BLOCK_CUDA + 1, vocab=10, block_start=0, tail=0)
    if kernels.choice["remask"] == "custom":
        with pytest.raises(ValueError, match="block length"):
            run_cuda(kernels, case, k=torch.tensor([1]))
    else:
        check_step(kernels, case, k=torch.tensor([5]))


# ----------------------------------------------------------------------------- errors, workspace, graphs

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_cuda_remask_non_finite_logits_set_the_sticky_flag(kernels, dtype, bad):
    case = make_case(dtype, bad, "nonfinite", B=2, Lb=6, vocab=80, dtype=dtype, masked_frac=1.0)
    clean = case["logits"]
    bad_logits = clean.clone()
    bad_logits[1, 4, 17] = bad
    workspace = ops.remask_workspace(2, 6, "cuda")
    tokens, _, _, left = run_cuda(kernels, case, logits=bad_logits, k=torch.tensor([1, 1]), workspace=workspace)
    assert workspace[0].item() != 0
    assert torch.equal(tokens, case["tokens"])  # nothing transferred
    assert torch.equal(left, torch.tensor([6, 6]))
    # sticky: a clean step on the same workspace transfers nothing; a fresh workspace works
    assert torch.equal(run_cuda(kernels, case, k=torch.tensor([1, 1]), workspace=workspace)[0], case["tokens"])
    check_step(kernels, case, k=torch.tensor([1, 1]))


def test_cuda_remask_non_finite_logits_elsewhere_are_ignored(kernels):
    # NaN in an unmasked row is never read; -inf in a masked row is a valid logit (as on the CPU).
    case = make_case("nonfinite-ok", B=2, Lb=6, vocab=80, masked_frac=1.0)
    case["tokens"][1, case["block_start"] + 4] = 3
    case["logits"][1, 4, 17] = float("nan")
    case["logits"][0, 2, 5] = NEG_INF
    workspace = ops.remask_workspace(2, 6, "cuda")
    check_step(kernels, case, k=torch.tensor([2, 2]), workspace=workspace)
    assert workspace[0].item() == 0


def device_args(case):
    return dict(vocab=case["vocab"], mask_id=case["mask_id"], seeds=case["seeds"].cuda(),
                row_offset=case["row_offset"].cuda(), step=case["step"].cuda())


def test_cuda_remask_refuses_host_tensors(kernels):
    case = make_case("devices", B=2, Lb=5, vocab=64)
    tokens = case["tokens"].cuda()
    with pytest.raises(ValueError, match="same device"):
        kernels.remask_(case["logits"], tokens, case["block_start"], k=torch.tensor([1, 1]),  # k on the host
                        **device_args(case))
    assert torch.equal(tokens.cpu(), case["tokens"])  # a refused call writes nothing


def test_cuda_remask_refuses_a_small_workspace(kernels):
    case = make_case("devices", B=2, Lb=5, vocab=64)
    tokens = case["tokens"].cuda()
    with pytest.raises(ValueError, match="workspace"):
        kernels.remask_(case["logits"], tokens, case["block_start"], k=torch.tensor([1, 1]).cuda(),
                        workspace=torch.zeros(3, dtype=torch.int64, device="cuda"), **device_args(case))
    assert torch.equal(tokens.cpu(), case["tokens"])


def test_cuda_remask_replays_in_a_cuda_graph(kernels):
    # No host synchronisation and no allocation outside the graph's pool: the step captures into a
    # CUDA graph (the torch twin too, given a workspace).
    case = make_case("graph", B=3, Lb=19, vocab=4097, dtype=torch.bfloat16)
    k = torch.tensor([3, 1, 4])
    want = run_cuda(kernels, case, temperature=0.6, k=k)
    check_step(kernels, case, temperature=0.6, k=k)  # the eager result is the reference's
    dev = "cuda"
    logits, tokens0 = case["logits"], case["tokens"].to(dev)
    tokens = tokens0.clone()
    static = dict(vocab=case["vocab"], mask_id=case["mask_id"], seeds=case["seeds"].to(dev),
                  row_offset=case["row_offset"].to(dev), step=case["step"].to(dev), temperature=0.6, k=k.to(dev),
                  x0=torch.full((3, 19), -7, dtype=torch.int64, device=dev),
                  conf=torch.full((3, 19), float("nan"), dtype=torch.float64, device=dev),
                  masks_left=torch.full((3,), -7, dtype=torch.int64, device=dev),
                  workspace=ops.remask_workspace(3, 19, dev))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        kernels.remask_(logits, tokens, case["block_start"], **static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels.remask_(logits, tokens, case["block_start"], **static)
    for _ in range(2):
        tokens.copy_(tokens0)
        static["x0"].fill_(-7)
        static["masks_left"].fill_(-7)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(tokens.cpu(), want[0])
        assert torch.equal(static["x0"].cpu(), want[1]) and torch.equal(static["masks_left"].cpu(), want[3])
