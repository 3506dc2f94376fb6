"""The PyTorch PCA (the GPU path's) against the numpy one, run on the CPU branch of the same code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import reduce
from pipelines.errors import UserError
from pipelines.pca_torch import pca_fit_torch, randomized_svd
from tests.test_reduce import _structured

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n", "d", "method"), [(400, 60, "covariance"), (80, 300, "gram")])
def test_torch_pca_equals_the_numpy_pca(n, d, method, device):
    x = _structured(n, d, seed=n)
    expected, expected_info = reduce.pca_reduce(x, variance=0.9)
    fit = pca_fit_torch(x, variance=0.9, device=device)
    scores, info = fit.scores, fit.info
    assert info["method"] == method
    assert info["kept_dims"] == expected_info["kept_dims"] == scores.shape[1]
    assert info["explained_variance"] == pytest.approx(
        expected_info["explained_variance"], abs=1e-5
    )
    assert info["total_variance"] == pytest.approx(expected_info["total_variance"], rel=1e-6)
    assert scores.dtype == np.float32 and isinstance(scores, np.ndarray)
    # Same signs too: both fix each component's largest score positive.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(scores, expected, atol=2e-3 * scale)
    # The basis reproduces the scores, as the numpy one does (what image placement relies on).
    np.testing.assert_allclose(fit.project(x), scores, atol=1e-5 * scale)
    assert fit.components.dtype == np.float32 and fit.components.shape == (scores.shape[1], d)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_randomized_pca_finds_the_same_components(monkeypatch, device):
    monkeypatch.setattr(reduce, "RANDOMIZED_MIN_SIDE", 100)
    monkeypatch.setattr(reduce, "RANDOMIZED_FIRST_RANK", 8)  # forces the rank to grow
    x = _structured(500, 400, seed=7)
    expected, expected_info = reduce.pca_reduce(x, variance=0.9)
    fit = pca_fit_torch(x, variance=0.9, seed=0, device=device)
    scores, info = fit.scores, fit.info
    assert info["method"] == expected_info["method"] == "randomized"
    assert info["kept_dims"] == expected_info["kept_dims"]
    assert info["explained_variance"] == pytest.approx(
        expected_info["explained_variance"], abs=1e-4
    )
    # The leading components (well separated from the noise) agree score for score.
    leading = 5
    scale = np.abs(expected[:, :leading]).max()
    np.testing.assert_allclose(scores[:, :leading], expected[:, :leading], atol=5e-3 * scale)
    np.testing.assert_allclose(fit.project(x), scores, atol=1e-5 * np.abs(scores).max())


def test_randomized_svd_recovers_a_low_rank_matrix_and_is_seeded():
    rng = np.random.default_rng(3)
    left, _ = np.linalg.qr(rng.standard_normal((300, 6)))
    right, _ = np.linalg.qr(rng.standard_normal((200, 6)))
    singular = np.array([50.0, 20.0, 10.0, 5.0, 2.0, 1.0])
    x = torch.from_numpy((left * singular) @ right.T).float()
    u, s, vh = randomized_svd(x, rank=6, power_iterations=2, seed=0)
    np.testing.assert_allclose(s.numpy(), singular, rtol=1e-4)
    np.testing.assert_allclose(((u * s) @ vh).numpy(), x.numpy(), atol=1e-4)
    # Orthonormal columns spanning the same space as the true left singular vectors.
    np.testing.assert_allclose(u.T.numpy() @ u.numpy(), np.eye(6), atol=1e-4)
    np.testing.assert_allclose(np.abs(left.T @ u.numpy().astype(np.float64)), np.eye(6), atol=1e-3)
    again, _, _ = randomized_svd(x, rank=6, power_iterations=2, seed=0)
    assert torch.equal(u, again)


def test_torch_pca_edge_cases_match_the_numpy_pca():
    for features in (np.zeros((50, 128), np.float32), np.full((50, 128), 3.5, np.float32)):
        fit = pca_fit_torch(features, device="cpu")
        scores, info = fit.scores, fit.info
        assert not fit.components.any() and fit.components.shape == (2, 128)
        assert info == reduce.pca_reduce(features)[1] and info["method"] == "constant"
        assert scores.shape == (50, 2) and np.all(scores == 0)
    one = np.random.default_rng(0).standard_normal((30, 1)).astype(np.float32)
    fit = pca_fit_torch(one, device="cpu")
    scores, info = fit.scores, fit.info
    assert scores.shape == (30, 2) and info["explained_variance"] == pytest.approx(1.0)
    np.testing.assert_allclose(scores, reduce.pca_reduce(one)[0], atol=1e-5)
    bad = _structured(20, 10, seed=2)
    bad[3, 4] = np.inf
    with pytest.raises(UserError, match="NaN or infinity"):
        pca_fit_torch(bad, device="cpu")
    with pytest.raises(ValueError, match="variance"):
        pca_fit_torch(_structured(20, 10, seed=2), variance=1.5, device="cpu")
