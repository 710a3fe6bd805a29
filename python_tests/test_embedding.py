"""ops.embedding (the token gather) against F.embedding: exact in every dtype, odd shapes, strided
tables and outputs, and tokens outside the table."""
import zlib

import pytest
import torch
import torch.nn.functional as F

from illada_rt import ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CASES = [((1,), 1, 1), ((7,), 19, 5), ((3, 11), 99, 64), ((2, 5), 300, 111), ((4, 33), 1000, 256), ((0,), 5, 8)]


def generator(*case):
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("token_shape,vocab,dim", CASES)
def test_embedding_matches_torch(dtype, token_shape, vocab, dim):
    g = generator(dtype, token_shape, vocab, dim)
    table = torch.randn(vocab, dim, generator=g).to(dtype)
    tokens = torch.randint(0, vocab, token_shape, generator=g)
    out = torch.full(token_shape + (dim,), float("nan"), dtype=dtype)
    got = ops.embedding(tokens, table, out=out)
    assert got.data_ptr() == out.data_ptr() or out.numel() == 0
    assert torch.equal(got, F.embedding(tokens, table))
    assert torch.equal(ops.embedding(tokens, table), F.embedding(tokens, table))


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_strided(dtype):
    g = generator(dtype, "strided")
    wide = torch.randn(50, 40, generator=g).to(dtype)
    table = wide[:, 3:33]                                  # row stride 40
    tokens = torch.randint(0, 50, (6, 9), generator=g)[:, ::2]  # non-contiguous tokens
    out_wide = torch.full((5, 37), float("nan"), dtype=dtype)
    out = out_wide[:, 2:32]
    ops.embedding(tokens.reshape(-1)[:5], table, out=out)
    assert torch.equal(out, F.embedding(tokens.reshape(-1)[:5], table))
    assert out_wide[:, :2].isnan().all() and out_wide[:, 32:].isnan().all()
    assert torch.equal(ops.embedding(tokens, table), F.embedding(tokens, table))


def test_embedding_rejects_bad_input():
    table = torch.randn(10, 4)
    out = torch.full((3, 4), float("nan"))
    for bad in (10, -1):
        with pytest.raises(ValueError, match="outside"):
            ops.embedding(torch.tensor([1, bad, 2]), table, out=out)
    assert out.isnan().all()  # checked before anything is written
    with pytest.raises(ValueError, match="int64"):
        ops.embedding(torch.tensor([1, 2], dtype=torch.int32), table)
    with pytest.raises(ValueError, match="shape"):
        ops.embedding(torch.tensor([1, 2]), table, out=torch.empty(2, 5))
    with pytest.raises(ValueError):
        ops.embedding(torch.tensor([1, 2]), torch.randn(10, 4, dtype=torch.float64))
