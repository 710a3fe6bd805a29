"""ops.embedding against torch's F.embedding: every dtype, odd sizes, poisoned outputs, bad ids."""
import pytest
import torch
import torch.nn.functional as F


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,vocab,dim", [((3, 17), 99, 19), ((1, 1), 5, 8), ((2, 33), 1000, 64), ((7,), 11, 1)])
def test_embedding_matches_torch(kernels, dtype, shape, vocab, dim):
    g = torch.Generator().manual_seed(vocab + dim)
    table = torch.randn(vocab, dim, generator=g).to(dtype)
    tokens = torch.randint(0, vocab, shape, generator=g)
    out = torch.full((*shape, dim), float("nan"), dtype=dtype)
    kernels.embedding(tokens, table, out=out)
    assert torch.equal(out, F.embedding(tokens, table))


def test_embedding_strided_table_rows(kernels):
    base = torch.randn(50, 40)
    table = base[:, 3:27]                # row stride 40, unit stride inside a row
    tokens = torch.tensor([[0, 49, 7, 7]])
    assert torch.equal(kernels.embedding(tokens, table), F.embedding(tokens, table))


@pytest.mark.parametrize("bad", [-1, 20])
def test_embedding_ids_outside_the_table(kernels, bad):
    """The compiled CPU kernel raises; the torch twin poisons the row with NaN on every device, as
    the CUDA kernel does (no host read), and the rows of valid ids are still gathered."""
    table = torch.randn(20, 8)
    tokens = torch.tensor([[1, 2, bad], [bad, 0, 19]])
    if kernels.choice["embedding"] == "custom":
        with pytest.raises(ValueError, match=f"token id {bad} at position 2"):
            kernels.embedding(tokens, table)
        return
    out = kernels.embedding(tokens, table)
    bad_rows = torch.tensor([[False, False, True], [True, False, False]])
    assert out[bad_rows].isnan().all()
    assert torch.equal(out[~bad_rows], table[tokens[~bad_rows]])


def test_embedding_rejects_bad_arguments(kernels):
    table = torch.randn(20, 8)
    with pytest.raises(ValueError, match="int64"):
        kernels.embedding(torch.tensor([1, 2], dtype=torch.int32), table)
    with pytest.raises(ValueError, match="out has shape"):
        kernels.embedding(torch.tensor([1, 2]), table, out=torch.empty(3, 8))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        kernels.embedding(torch.tensor([1, 2]), table.double())
    with pytest.raises(ValueError, match="contiguous in its last dim"):
        kernels.embedding(torch.tensor([1, 2]), table.t())
