"""thin_svd: the SVD every merge method uses does not give up where float32 LAPACK does."""
from __future__ import annotations

import pytest
import torch

from composition import linalg
from composition.linalg import thin_svd


def test_a_float32_convergence_failure_is_retried_in_float64(monkeypatch):
    real = torch.linalg.svd
    calls = []

    def gesdd_gives_up_in_float32(matrix, full_matrices=True):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:  # what MKL did on one thread for Iso-CTS's stacked bases
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(matrix, full_matrices=full_matrices)

    monkeypatch.setattr(linalg.torch.linalg, "svd", gesdd_gives_up_in_float32)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    u, s, vh = thin_svd(x)
    assert calls == [torch.float32, torch.float64]
    assert u.dtype == s.dtype == vh.dtype == torch.float32 and u.shape == (7, 5) and vh.shape == (5, 5)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, x, rtol=1e-5, atol=1e-5)


def test_a_float64_failure_is_not_hidden(monkeypatch):
    def gives_up(matrix, full_matrices=True):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(linalg.torch.linalg, "svd", gives_up)
    with pytest.raises(torch.linalg.LinAlgError):
        thin_svd(torch.zeros(3, 3, dtype=torch.float64))


def test_it_is_the_thin_svd():
    x = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u, s, vh = thin_svd(x)
    ref = torch.linalg.svd(x, full_matrices=False)
    assert torch.equal(s, ref.S) and u.shape == (9, 4)
