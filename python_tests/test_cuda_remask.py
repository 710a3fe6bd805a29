"""CUDA remask (ops.remask_ on device tensors) against reference.choose_tokens +
reference.select_transfer on the CPU (skipped without a GPU or a CUDA build).

x0 must match the reference exactly (float64 Gumbel scores with the CPU's rounding; argmax ties
to the lowest id). conf sums float32 exp terms in float64, so it agrees to ~1e-7 relative; the
transfer is therefore checked as the reference rule applied to the kernel's own confidences
(a near-tie between two rows could otherwise flip), after checking those against the reference.
"""
import pytest
import torch

from illada_rt import build_info, ops, reference, rng
from test_remask import generator, make_step  # the CPU tests' random step inputs

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                reason="needs a CUDA device and a CUDA build")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NEG_INF = float("-inf")


def reference_step(case, *, uncond=None, cfg_scale=0.0, temperature=0.0, remasking="low_confidence", k=None,
                   threshold=None, select_conf=None):
    """(tokens after, x0 (-1 unmasked), confidence (-inf unmasked), masks_left) from the reference.
    select_conf [B, Lb]: transfer by these confidences instead of the reference's own."""
    logits, tokens, bs = case["logits"], case["tokens"], case["block_start"]
    Lb, vocab = logits.shape[1], case["vocab"]
    l = logits[..., :vocab].float()
    if uncond is not None:
        un = uncond[..., :vocab].float()
        l = un + (cfg_scale + 1) * (l - un)
    positions = bs + torch.arange(Lb)[None, :] - case["row_offset"][:, None]
    x0, p = reference.choose_tokens(l, temperature, case["seeds"], positions, case["step"], case["mask_id"])
    conf = rng.remask_uniforms(case["seeds"], positions, case["step"]) if remasking == "random" else p
    masked = tokens[:, bs: bs + Lb] == case["mask_id"]
    confidence = torch.where(masked, conf, torch.tensor(NEG_INF, dtype=torch.float64))
    chosen_by = confidence if select_conf is None else torch.where(masked, select_conf, torch.tensor(NEG_INF, dtype=torch.float64))
    transfer = reference.select_transfer(chosen_by, k, threshold)
    after = tokens.clone()
    after[:, bs: bs + Lb][transfer] = x0[transfer]
    return after, torch.where(masked, x0, -1), confidence, (masked & ~transfer).sum(1)


def run_cuda(case, *, uncond=None, k=None, workspace=None, logits=None, **options):
    """ops.remask_ on device copies with poisoned optional outputs; returns CPU (tokens, x0, conf, left)."""
    dev = "cuda"
    logits = (case["logits"] if logits is None else logits).to(dev)
    B, Lb = logits.shape[:2]
    tokens = case["tokens"].to(dev)
    x0 = torch.full((B, Lb), -7, dtype=torch.int64, device=dev)
    conf = torch.full((B, Lb), float("nan"), dtype=torch.float64, device=dev)
    left = torch.full((B,), -7, dtype=torch.int64, device=dev)
    result = ops.remask_(logits, tokens, case["block_start"], vocab=case["vocab"], mask_id=case["mask_id"],
                         seeds=case["seeds"].to(dev), row_offset=case["row_offset"].to(dev), step=case["step"].to(dev),
                         uncond=None if uncond is None else uncond.to(dev), k=None if k is None else k.to(dev),
                         x0=x0, conf=conf, masks_left=left, workspace=workspace, **options)
    torch.cuda.synchronize()
    assert result is tokens
    return tokens.cpu(), x0.cpu(), conf.cpu(), left.cpu()


def check_step(case, conf_rtol=2e-6, workspace=None, **options):
    """Kernel vs reference: x0 exactly, conf to conf_rtol, the transfer and masks_left exactly."""
    tokens, x0, conf, left = got = run_cuda(case, workspace=workspace, **options)
    _, want_x0, want_conf, _ = reference_step(case, **options)
    assert torch.equal(x0, want_x0)
    assert torch.equal(conf.isinf(), want_conf.isinf())
    torch.testing.assert_close(conf, want_conf, rtol=conf_rtol, atol=1e-12)
    want_tokens, _, _, want_left = reference_step(case, select_conf=conf, **options)
    assert torch.equal(tokens, want_tokens)
    assert torch.equal(left, want_left)
    assert ((x0 < case["vocab"]) & (x0 != case["mask_id"])).all()
    return got


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
def test_cuda_remask_topk(dtype, B, Lb, vocab, pad_cols, block_start, temperature, remasking):
    g = generator(dtype, B, Lb, vocab, pad_cols, block_start, temperature, remasking)
    case = make_step(g, B=B, Lb=Lb, vocab=vocab, pad_cols=pad_cols, block_start=block_start, dtype=dtype)
    k = torch.randint(0, 6, (B,), generator=g)  # differs per sequence, 0 included
    check_step(case, temperature=temperature, remasking=remasking, k=k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab,pad_cols,mask_id", [(126464, 0, 126336), (126464, 3, 126336), (155136, 0, 155000)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_remask_full_vocabulary_rows(dtype, vocab, pad_cols, mask_id, temperature):
    # LLaDA- and iLLaDA-sized rows; 3 padded columns put rows off 16-byte boundaries (scalar loads).
    g = generator(dtype, vocab, pad_cols, temperature)
    case = make_step(g, B=2, Lb=9, vocab=vocab, pad_cols=pad_cols, mask_id=mask_id, dtype=dtype, masked_frac=0.8)
    check_step(case, temperature=temperature, k=torch.tensor([2, 4]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_remask_threshold(dtype, threshold, temperature):
    g = generator(dtype, threshold, temperature)
    case = make_step(g, B=4, Lb=19, vocab=120, pad_cols=2, dtype=dtype, logit_scale=6.0)
    tokens, *_ = check_step(case, temperature=temperature, threshold=threshold)
    block = slice(case["block_start"], case["block_start"] + 19)
    masked_before = (case["tokens"][:, block] == case["mask_id"]).sum(1)
    transferred = (tokens[:, block] != case["tokens"][:, block]).sum(1)
    assert (transferred >= (masked_before > 0).long()).all()
    if threshold == 0.0:
        assert torch.equal(transferred, masked_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg_scale", [0.5, 0.18, 1.3])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_cuda_remask_cfg(dtype, cfg_scale, temperature):
    g = generator(dtype, cfg_scale, temperature)
    case = make_step(g, B=3, Lb=11, vocab=4097, pad_cols=4, dtype=dtype)
    uncond = (torch.randn(case["logits"].shape, generator=g) * 3).to(dtype)
    check_step(case, uncond=uncond, cfg_scale=cfg_scale, temperature=temperature, k=torch.tensor([2, 5, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_remask_strided_logits_and_row_offset(dtype):
    # logits: block rows of full-sequence logits [B, T, V]; sequence 1 left-padded by 2.
    g = generator(dtype, "strided")
    case = make_step(g, B=3, Lb=7, vocab=901, block_start=6, dtype=dtype)
    T = case["tokens"].shape[1]
    full = (torch.randn(3, T, 901, generator=g) * 3).to(dtype)
    case["logits"] = full[:, 6:13]
    case["row_offset"] = torch.tensor([0, 2, 0])
    check_step(case, temperature=0.5, k=torch.tensor([3, 1, 2]))


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_cuda_remask_matches_cpu_kernel(remasking):
    g = generator("cpu-twin", remasking)
    case = make_step(g, B=3, Lb=19, vocab=5000, pad_cols=8, dtype=torch.bfloat16)
    k = torch.tensor([4, 0, 19])
    cpu_tokens = case["tokens"].clone()
    ops.remask_(case["logits"], cpu_tokens, case["block_start"], vocab=5000, mask_id=case["mask_id"],
                seeds=case["seeds"], row_offset=case["row_offset"], step=case["step"], temperature=0.8,
                remasking=remasking, k=k)
    assert torch.equal(check_step(case, temperature=0.8, remasking=remasking, k=k)[0], cpu_tokens)


# ----------------------------------------------------------------------------- ties and long blocks

def test_cuda_remask_tie_break_lower_position_first():
    # Every masked row has the same logits, hence bit-identical confidences: lower positions go first.
    B, Lb, vocab, m = 3, 9, 50, 7
    tokens = torch.full((B, 3 + Lb), m, dtype=torch.int64)
    tokens[:, :3] = 1
    tokens[1, 3 + 1] = 4  # an unmasked row is skipped, not counted
    row = torch.randn(vocab)
    case = dict(tokens=tokens, block_start=3, vocab=vocab, mask_id=m, logits=row.expand(B, Lb, vocab).contiguous(),
                seeds=torch.tensor([1, 2, 3]), row_offset=torch.zeros(B, dtype=torch.int64),
                step=torch.zeros(B, dtype=torch.int64))
    top, x0, conf, left = check_step(case, k=torch.tensor([3, 3, 0]))  # k differs per sequence
    assert torch.equal(top[0, 3:] != m, torch.arange(Lb) < 3)
    assert torch.equal(top[1, 3:] != m, torch.arange(Lb) < 4)  # rows 0, 2, 3; row 1 was not masked
    assert (top[2, 3:] == m).all() and left.tolist() == [6, 5, 9]
    one = run_cuda(case, threshold=1.0)[0]  # above the shared confidence: only the first row
    assert torch.equal(one[0, 3:] != m, torch.arange(Lb) == 0)
    everything = run_cuda(case, threshold=0.0)[0]
    assert not (everything[:, 3:] == m).any()


@pytest.mark.parametrize("Lb", [4096, 5000, 8192])
@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_cuda_remask_long_blocks(Lb, mode):
    # The per-sequence sort runs in shared memory up to 8192 rows; few distinct logits make many ties.
    g = generator("long", Lb, mode)
    case = make_step(g, B=2, Lb=Lb, vocab=40, block_start=1, tail=2, masked_frac=0.9)
    case["logits"] = torch.randint(0, 4, case["logits"].shape, generator=g).float() * 2  # conf ~ 1 / #(max entries)
    if mode == "topk":
        check_step(case, k=torch.tensor([Lb // 3, Lb]))
    else:
        check_step(case, threshold=0.1)


def test_cuda_remask_block_too_long_is_refused():
    case = make_step(generator("too-long"), B=1, Lb=8193, vocab=10, block_start=0, tail=0)
    with pytest.raises(ValueError, match="block length"):
        run_cuda(case, k=torch.tensor([1]))


# ----------------------------------------------------------------------------- errors, workspace, graphs

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_cuda_remask_non_finite_logits_set_the_sticky_flag(dtype, bad):
    g = generator(dtype, bad, "nonfinite")
    case = make_step(g, B=2, Lb=6, vocab=80, dtype=dtype, masked_frac=1.0)
    clean = case["logits"]
    bad_logits = clean.clone()
    bad_logits[1, 4, 17] = bad
    workspace = ops.remask_workspace(2, 6, "cuda")
    tokens, _, _, left = run_cuda(case, logits=bad_logits, k=torch.tensor([1, 1]), workspace=workspace)
    assert workspace[0].item() != 0
    assert torch.equal(tokens, case["tokens"])  # nothing transferred
    assert torch.equal(left, torch.tensor([6, 6]))
    # sticky: a clean step on the same workspace transfers nothing; a fresh workspace works
    assert torch.equal(run_cuda(case, k=torch.tensor([1, 1]), workspace=workspace)[0], case["tokens"])
    check_step(case, k=torch.tensor([1, 1]))


def test_cuda_remask_non_finite_logits_elsewhere_are_ignored():
    # NaN in an unmasked row is never read; -inf in a masked row is a valid logit (as on the CPU).
    g = generator("nonfinite-ok")
    case = make_step(g, B=2, Lb=6, vocab=80, masked_frac=1.0)
    case["tokens"][1, case["block_start"] + 4] = 3
    case["logits"][1, 4, 17] = float("nan")
    case["logits"][0, 2, 5] = NEG_INF
    workspace = ops.remask_workspace(2, 6, "cuda")
    check_step(case, k=torch.tensor([2, 2]), workspace=workspace)
    assert workspace[0].item() == 0


def test_cuda_remask_refuses_host_tensors_and_small_workspace():
    case = make_step(generator("devices"), B=2, Lb=5, vocab=64)
    logits, tokens = case["logits"].cuda(), case["tokens"].cuda()
    args = dict(vocab=64, mask_id=case["mask_id"], seeds=case["seeds"].cuda(), row_offset=case["row_offset"].cuda(),
                step=case["step"].cuda())
    with pytest.raises(ValueError, match="same device"):
        ops.remask_(logits, tokens, case["block_start"], k=torch.tensor([1, 1]), **args)  # k on the host
    with pytest.raises(ValueError, match="workspace"):
        ops.remask_(logits, tokens, case["block_start"], k=torch.tensor([1, 1]).cuda(),
                    workspace=torch.zeros(3, dtype=torch.int64, device="cuda"), **args)


def test_cuda_remask_replays_in_a_cuda_graph():
    # No host synchronisation and no allocation: the step captures into a CUDA graph.
    g = generator("graph")
    case = make_step(g, B=3, Lb=19, vocab=4097, dtype=torch.bfloat16)
    k = torch.tensor([3, 1, 4])
    want = run_cuda(case, temperature=0.6, k=k)
    dev = "cuda"
    logits, tokens0 = case["logits"].to(dev), case["tokens"].to(dev)
    tokens = tokens0.clone()
    static = dict(vocab=case["vocab"], mask_id=case["mask_id"], seeds=case["seeds"].to(dev),
                  row_offset=case["row_offset"].to(dev), step=case["step"].to(dev), temperature=0.6, k=k.to(dev),
                  x0=torch.empty(3, 19, dtype=torch.int64, device=dev),
                  conf=torch.empty(3, 19, dtype=torch.float64, device=dev),
                  masks_left=torch.empty(3, dtype=torch.int64, device=dev),
                  workspace=ops.remask_workspace(3, 19, dev))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        ops.remask_(logits, tokens, case["block_start"], **static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.remask_(logits, tokens, case["block_start"], **static)
    for _ in range(2):
        tokens.copy_(tokens0)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(tokens.cpu(), want[0])
        assert torch.equal(static["x0"].cpu(), want[1]) and torch.equal(static["masks_left"].cpu(), want[3])
