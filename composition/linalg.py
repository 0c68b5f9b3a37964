"""Linear algebra that does not give up on the matrices merging produces.

LoRA deltas have rank r far below their size, so most of their singular values are zero or
nearly equal, and their stacked singular vectors are close to degenerate. LAPACK's
divide-and-conquer SVD (``gesdd``, torch's CPU driver) can then fail to converge in float32:
measured with MKL on one thread, Iso-CTS on the bundled audio, video and point experts
stopped with "linalg.svd: The algorithm failed to converge" on a 576x576 matrix that float64
decomposes at once (and float32 with two threads too). ``thin_svd`` retries in float64.
"""
from __future__ import annotations

import torch


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(matrix, full_matrices=False)``, retried in float64 when float32 fails to converge.

    Returns:
        ``(U, S, Vh)`` in ``matrix``'s dtype.
    """
    try:
        return torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        if matrix.dtype == torch.float64:
            raise
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        return u.to(matrix.dtype), s.to(matrix.dtype), vh.to(matrix.dtype)
