"""ops.embedding against torch's F.embedding: every dtype, odd sizes, poisoned outputs, bad ids."""
import pytest
import torch
import torch.nn.functional as F

from illada_rt import ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,vocab,dim", [((3, 17), 99, 19), ((1, 1), 5, 8), ((2, 33), 1000, 64), ((7,), 11, 1)])
def test_embedding_matches_torch(dtype, shape, vocab, dim):
    g = torch.Generator().manual_seed(vocab + dim)
    table = torch.randn(vocab, dim, generator=g).to(dtype)
    tokens = torch.randint(0, vocab, shape, generator=g)
    out = torch.full((*shape, dim), float("nan"), dtype=dtype)
    ops.embedding(tokens, table, out=out)
    assert torch.equal(out, F.embedding(tokens, table))


def test_embedding_strided_table_rows():
    base = torch.randn(50, 40)
    table = base[:, 3:27]                # row stride 40, unit stride inside a row
    tokens = torch.tensor([[0, 49, 7, 7]])
    assert torch.equal(ops.embedding(tokens, table), F.embedding(tokens, table))


@pytest.mark.parametrize("bad", [-1, 20])
def test_embedding_rejects_ids_outside_the_table(bad):
    table = torch.randn(20, 8)
    with pytest.raises(ValueError, match=f"token id {bad} at position 2"):
        ops.embedding(torch.tensor([1, 2, bad]), table)


def test_embedding_rejects_bad_arguments():
    table = torch.randn(20, 8)
    with pytest.raises(ValueError, match="int64"):
        ops.embedding(torch.tensor([1, 2], dtype=torch.int32), table)
    with pytest.raises(ValueError, match="out has shape"):
        ops.embedding(torch.tensor([1, 2]), table, out=torch.empty(3, 8))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        ops.embedding(torch.tensor([1, 2]), table.double())
    with pytest.raises(ValueError, match="contiguous in its last dim"):
        ops.embedding(torch.tensor([1, 2]), table.t())
