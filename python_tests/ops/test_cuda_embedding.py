"""Embedding on CUDA against F.embedding, for both implementations of the pass (the `kernels`
fixture: the compiled kernel, then the torch twin, on device tensors); skipped without a GPU or a
CUDA build. Tables and ids are drawn on the device (the largest table is 2 GB in float32)."""
import pytest
import torch
import torch.nn.functional as F

from illada_rt import build_info, ops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() and build_info()["cuda"] and ops.cuda_devices()[0] > 0),
                                 reason="needs a CUDA device and a CUDA build")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,vocab,dim", [((3, 17), 99, 19), ((2, 33), 1000, 64), ((4, 5), 126464, 4096)])
def test_cuda_embedding_matches_torch(kernels, dtype, shape, vocab, dim):
    g = torch.Generator(device="cuda").manual_seed(dim)
    table = torch.randn(vocab, dim, device="cuda", generator=g).to(dtype)
    tokens = torch.randint(0, vocab, shape, device="cuda", generator=g)
    tokens.view(-1)[:2] = torch.tensor([0, vocab - 1], device="cuda")   # the first and the last row
    out = torch.full((*shape, dim), float("nan"), dtype=dtype, device="cuda")
    result = kernels.embedding(tokens, table, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.equal(out, F.embedding(tokens, table))
    unaligned = table[:, 1:]            # 16-byte vectors impossible: the element path
    out_unaligned = torch.full((*shape, dim - 1), float("nan"), dtype=dtype, device="cuda")
    kernels.embedding(tokens, unaligned, out=out_unaligned)
    assert torch.equal(out_unaligned, F.embedding(tokens, unaligned))


def test_cuda_embedding_poisons_ids_outside_the_table(kernels):
    # Both implementations on CUDA: NaN rows for ids outside [0, V) (no host read), valid rows gathered.
    table = torch.randn(20, 8, device="cuda", generator=torch.Generator(device="cuda").manual_seed(20))
    out = torch.full((3, 8), 7.0, device="cuda")   # a sentinel, not NaN: the NaN rows must be written
    kernels.embedding(torch.tensor([1, 25, -3], device="cuda"), table, out=out)
    assert torch.equal(out[0], table[1]) and bool(out[1:].isnan().all())
