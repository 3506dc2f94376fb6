"""PCA in PyTorch: the GPU path's ``reduce.pca_fit``, with the same contract and method choice.

On the GPU path the embeddings stage runs in the precompute's own process, one layer after
another; there, the covariance eigenproblem of a (13k, 2048) layer is a few milliseconds on the
device instead of about a second of LAPACK on the host. Same forms as the numpy version (never a
full SVD of the data): the D x D covariance eigenproblem when D <= N, the N x N Gram one when
N < D, and a randomized SVD (Halko, Martinsson & Tropp, "Finding structure with randomness",
SIAM Review 53, 2011) when both sides are large. The choice of form and of k, the sign
convention and the info dict are ``reduce``'s own (``pca_of_centred``), so the two paths cannot
drift apart.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines import reduce


def pca_fit_torch(
    features: np.ndarray, variance: float = 0.9, seed: int = 0, device: str = "cuda"
) -> reduce.PCAFit:
    """``reduce.pca_fit`` computed on ``device``.

    features: (N, D) float (float32 expected). Returns a ``reduce.PCAFit`` of float32 numpy
    arrays exactly as ``reduce.pca_fit`` documents it.
    """
    matrix = reduce.as_feature_matrix(features)
    reduce.check_variance(variance)
    x = torch.from_numpy(matrix).to(device)
    mean = x.mean(dim=0, dtype=torch.float64).float()
    centred = x - mean
    total = float(torch.linalg.vector_norm(centred, dtype=torch.float64) ** 2)
    return reduce.pca_of_centred(centred, mean.cpu().numpy(), total, variance, seed, TORCH_FORMS)


def _descending_eigh(matrix: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Eigenpairs of a symmetric PSD (m, m) float32 matrix, largest first: (values (m,) float64
    numpy, clipped at 0, and vectors (m, m) float32 on the matrix's device)."""
    values, vectors = torch.linalg.eigh(matrix)
    values = values.flip(0).double().clamp_min(0.0).cpu().numpy()  # negatives are rounding
    return values, vectors.flip(1)


def _covariance_eig(centred: torch.Tensor) -> tuple[np.ndarray, reduce.ComponentsFor]:
    """D x D eigenproblem of X^T X; components V^T, scores X V. centred: (N, D) float32."""
    values, vectors = _descending_eigh(centred.T @ centred)

    def components_for(k: int) -> tuple[np.ndarray, np.ndarray]:
        top = vectors[:, :k]
        return top.T.contiguous().cpu().numpy(), (centred @ top).cpu().numpy()

    return values, components_for


def _gram_eig(centred: torch.Tensor) -> tuple[np.ndarray, reduce.ComponentsFor]:
    """N x N eigenproblem of X X^T; components S^-1 U^T X, scores X V (as ``reduce._gram_eig``).
    centred: (N, D) float32."""
    values, vectors = _descending_eigh(centred @ centred.T)

    def components_for(k: int) -> tuple[np.ndarray, np.ndarray]:
        singular = torch.from_numpy(np.sqrt(values[:k])).float().to(vectors.device)
        inverse = torch.where(singular > 0, 1.0 / singular, torch.zeros_like(singular))
        components = (vectors[:, :k].T @ centred) * inverse[:, None]
        return components.cpu().numpy(), (centred @ components.T).cpu().numpy()

    return values, components_for


def _randomized_eig(
    centred: torch.Tensor, total: float, variance: float, seed: int
) -> tuple[np.ndarray, reduce.ComponentsFor]:
    """Leading singular triplets, widening the rank until ``variance`` is explained (as
    ``reduce._randomized_eig`` does with scikit-learn's randomized SVD)."""
    rank, full = reduce.RANDOMIZED_FIRST_RANK, min(centred.shape)
    while True:
        rank = min(rank, full)
        _, s, vh = randomized_svd(centred, rank, reduce.RANDOMIZED_POWER_ITERATIONS, seed)
        values = s.double().cpu().numpy() ** 2
        if values.sum() >= variance * total or rank == full:
            break
        rank *= 2

    def components_for(k: int) -> tuple[np.ndarray, np.ndarray]:
        components = vh[:k].contiguous()
        return components.cpu().numpy(), (centred @ components.T).cpu().numpy()

    return values, components_for


def randomized_svd(
    x: torch.Tensor, rank: int, power_iterations: int, seed: int, oversample: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left singular vectors (N, rank), singular values (rank,) and right singular vectors as
    rows (rank, D) of x: (N, D) float32.

    The Gaussian test matrix is drawn on the CPU from ``seed``, so a seed gives the same result
    on every device; QR between the power iterations keeps float32 from losing the small
    directions (the scheme scikit-learn's ``randomized_svd`` uses).
    """
    width = min(rank + oversample, min(x.shape))
    generator = torch.Generator().manual_seed(seed)
    test = torch.randn(x.shape[1], width, generator=generator).to(x.device)
    basis, _ = torch.linalg.qr(x @ test)
    for _ in range(power_iterations):
        basis, _ = torch.linalg.qr(x.T @ basis)
        basis, _ = torch.linalg.qr(x @ basis)
    small_u, singular, right = torch.linalg.svd(basis.T @ x, full_matrices=False)
    return (basis @ small_u)[:, :rank], singular[:rank], right[:rank]


TORCH_FORMS = reduce.PCAForms(
    covariance=_covariance_eig, gram=_gram_eig, randomized=_randomized_eig
)
