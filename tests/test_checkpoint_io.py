"""The streaming safetensors writer, chunked finiteness checks and chunked float64 inner products."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from safety_subspaces import linalg
from safety_subspaces.checkpoints import read_safetensors_header, write_safetensors
from safety_subspaces.linalg import all_finite


def test_streamed_file_reads_back_with_safetensors(tmp_path):
    """Every dtype the engine writes, empty and 0-d tensors included, round-trips through the reference loader."""
    tensors = {
        "weight": torch.randn(5, 3).to(torch.bfloat16),
        "half": torch.randn(2, 2, 2).half(),
        "empty": torch.zeros(4, 0),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(7),
        "strided": torch.randn(6, 4)[:, ::2],
    }
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, {"total": "1.0"})
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"total": "1.0"}
    assert set(read_safetensors_header(path, role="test")) == set(tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary left behind


def test_failed_write_leaves_nothing(tmp_path):
    """A tensor that cannot be written aborts the file: neither it nor a temporary remains."""
    with pytest.raises(ValueError, match="b as torch.complex64"):
        write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.complex64)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("position", [0, 9, 10, 31])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_checks_every_chunk(position, value):
    """A single bad entry is found wherever it falls relative to the chunk boundaries."""
    tensor = torch.ones(4, 8, dtype=torch.bfloat16)
    assert all_finite(tensor, chunk=10)
    tensor.view(-1)[position] = value
    assert not all_finite(tensor, chunk=10)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_chunked_inner_matches_numpy(chunk):
    """The chunked float64 inner product equals numpy's on the same float32 data, for any chunk size."""
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(13, 11, generator=generator), torch.randn(13, 11, generator=generator)
    expected = float(np.dot(a.numpy().astype(np.float64).ravel(), b.numpy().astype(np.float64).ravel()))
    assert linalg.inner(a, b, chunk=chunk) == pytest.approx(expected, rel=1e-12)
    assert linalg.frobenius_sq(a) == pytest.approx(float((a.double() ** 2).sum()), rel=1e-12)
    with pytest.raises(ValueError):
        linalg.inner(a, b.T)


def test_flat_chunks_are_matching_views():
    """Slices cover every element once, in order, as views of contiguous tensors; sizes must agree."""
    a, b = torch.arange(10.0).reshape(2, 5), torch.zeros(10)
    for out, part in linalg.flat_chunks(b, a, chunk=3):
        out += part
    assert torch.equal(b, torch.arange(10.0))
    assert [len(x) for (x,) in linalg.flat_chunks(torch.tensor(1.0), chunk=3)] == [1]
    with pytest.raises(ValueError):
        next(linalg.flat_chunks(a, torch.zeros(9)))
