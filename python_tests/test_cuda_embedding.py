"""ops.embedding on CUDA against F.embedding (skips without a GPU and a CUDA build)."""
import pytest
import torch
import torch.nn.functional as F

from illada_rt import ops
from test_cuda_engine import needs_cuda


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,vocab,dim", [((3, 17), 99, 19), ((2, 33), 1000, 64), ((4, 5), 126464, 4096)])
def test_cuda_embedding_matches_torch(dtype, shape, vocab, dim):
    g = torch.Generator().manual_seed(dim)
    table = torch.randn(vocab, dim, generator=g).to(dtype).cuda()
    tokens = torch.randint(0, vocab, shape, generator=g).cuda()
    out = torch.full((*shape, dim), float("nan"), dtype=dtype, device="cuda")
    ops.embedding(tokens, table, out=out)
    assert torch.equal(out, F.embedding(tokens, table))
    unaligned = table[:, 1:]            # 16-byte vectors impossible: the element path
    assert torch.equal(ops.embedding(tokens, unaligned), F.embedding(tokens, unaligned))


@needs_cuda
def test_cuda_embedding_poisons_ids_outside_the_table():
    table = torch.randn(20, 8, device="cuda")
    out = ops.embedding(torch.tensor([1, 25, -3], device="cuda"), table)
    assert torch.equal(out[0], table[1]) and bool(out[1:].isnan().all())
