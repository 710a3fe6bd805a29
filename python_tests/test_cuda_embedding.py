"""CUDA ops.embedding against F.embedding (skipped without a GPU or a CUDA build)."""
import pytest
import torch
import torch.nn.functional as F

from illada_rt import build_info, ops

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                reason="needs a CUDA device and a CUDA build")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("token_shape,vocab,dim", [((1,), 1, 1), ((7,), 19, 5), ((3, 11), 99, 64),
                                                   ((2, 5), 300, 111), ((4, 33), 1000, 4096)])
@pytest.mark.parametrize("strided", [False, True])
def test_cuda_embedding_matches_torch(dtype, token_shape, vocab, dim, strided):
    g = torch.Generator(device="cuda").manual_seed(vocab * dim)
    wide = torch.randn(vocab, dim + 3, device="cuda", generator=g).to(dtype)
    table = wide[:, 1:1 + dim] if strided else wide[:, :dim].contiguous()   # strided: unaligned rows
    tokens = torch.randint(0, vocab, token_shape, device="cuda", generator=g)
    out = torch.full(token_shape + (dim,), float("nan"), device="cuda", dtype=dtype)
    ops.embedding(tokens, table, out=out)
    torch.cuda.synchronize()
    assert torch.equal(out, F.embedding(tokens, table))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_embedding_out_of_range_rows_are_nan(dtype):
    table = torch.randn(10, 64, device="cuda").to(dtype)
    tokens = torch.tensor([3, 10, -1, 9], device="cuda")
    out = ops.embedding(tokens, table)
    torch.cuda.synchronize()
    assert torch.equal(out[[0, 3]], table[[3, 9]])
    assert out[1:3].isnan().all()
