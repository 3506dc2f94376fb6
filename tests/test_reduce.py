"""Per-layer reduction: nested subsets, PCA and the t-SNE / PCA maps.

Embeddings are judged by neighbourhood quality (kNN accuracy on separated blobs,
trustworthiness, KL divergence against openTSNE's defaults), never by coordinates.
"""

import numpy as np
import pytest
from openTSNE import TSNE
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness

from pipelines import reduce, tsne
from pipelines.errors import UserError
from pipelines.reduce import (
    embed_layer,
    kl_divergence,
    knn_preservation,
    nested_subset_order,
    pca_reduce,
    resolve_perplexities,
    resolve_subset_sizes,
)
from tests.embedding_checks import blobs, knn_accuracy

# --------------------------------------------------------------------------------------------
# nested, class-balanced subsets
# --------------------------------------------------------------------------------------------


def _imbalanced_labels() -> np.ndarray:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.array([7, 0, 3, 9], dtype=np.int64), [5, 50, 200, 31])
    return labels[rng.permutation(labels.shape[0])]


def test_subset_order_is_a_permutation_and_nested():
    labels = _imbalanced_labels()
    order = nested_subset_order(labels, seed=0)
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(labels.shape[0]))
    small, large = set(order[:20].tolist()), set(order[:100].tolist())
    assert small < large


def test_subset_order_is_class_balanced_at_every_prefix():
    labels = _imbalanced_labels()
    classes, totals = np.unique(labels, return_counts=True)
    order = nested_subset_order(labels, seed=1)
    for n in range(1, labels.shape[0] + 1):
        counts = np.array([(labels[order[:n]] == c).sum() for c in classes])
        exhausted = counts == totals
        # classes that still have samples are dealt evenly and no class is ahead of them by more
        # than one round; exhausted classes stop
        remaining = counts[~exhausted]
        if remaining.size:
            assert counts.max() - remaining.min() <= 1, n


def test_subset_order_is_seeded_and_random_within_classes():
    labels = load_digits().target.astype(np.int64)
    a, b, c = (nested_subset_order(labels, s) for s in (5, 5, 6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # the first ten cover all ten digits, in a random class order
    assert sorted(labels[a[:10]].tolist()) == list(range(10))
    # within a class, the order is not just the dataset's order
    zeros = a[labels[a] == 0]
    assert not np.array_equal(zeros, np.sort(zeros))


# --------------------------------------------------------------------------------------------
# resolving the command-line options
# --------------------------------------------------------------------------------------------


def test_resolve_subset_sizes():
    assert resolve_subset_sizes(["100", "1000", "all"], 1797) == [100, 1000, 1797]
    assert resolve_subset_sizes(["all", "100", "100"], 1797) == [100, 1797]
    assert resolve_subset_sizes(["5000", "ALL"], 1797) == [1797]
    assert resolve_subset_sizes([" 50 "], 40) == [40]


@pytest.mark.parametrize("bad", [["0"], ["-5"], ["abc"], ["1.5"], ["100", "lots"], []])
def test_resolve_subset_sizes_errors_say_the_accepted_form(bad):
    with pytest.raises(UserError, match="e.g. --subsets 100,1000,all"):
        resolve_subset_sizes(bad, 1797)


def test_resolve_perplexities_drops_what_small_subsets_cannot_use():
    got = resolve_perplexities([90, 10, 30], [100, 1000, 1797])
    assert got == {100: [10.0, 30.0], 1000: [10.0, 30.0, 90.0], 1797: [10.0, 30.0, 90.0]}
    # 3 * 33 = 99 < 100 is allowed; 34 is not
    assert resolve_perplexities([33, 34], [100, 200]) == {100: [33.0], 200: [33.0, 34.0]}


def test_resolve_perplexities_errors_name_the_largest_usable_value():
    with pytest.raises(UserError, match="--perplexities 600 .*up to 598"):
        resolve_perplexities([10, 600], [100, 1797])
    with pytest.raises(UserError, match="up to 33"):
        resolve_perplexities([34], [100])
    for bad in (0, -3, "ten", float("nan")):
        with pytest.raises(UserError, match="positive"):
            resolve_perplexities([bad], [1797])
    with pytest.raises(UserError, match="too few"):
        resolve_perplexities([1], [3])


# --------------------------------------------------------------------------------------------
# PCA
# --------------------------------------------------------------------------------------------


def _structured(n: int, d: int, seed: int) -> np.ndarray:
    """Low-rank ReLU features plus noise: a spectrum like a CNN layer's. (n, d) float32."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 12)).astype(np.float32)
    weights = rng.standard_normal((12, d)).astype(np.float32)
    noise = 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return np.maximum(latent @ weights, 0) + noise


def _sklearn_count(x: np.ndarray, variance: float) -> tuple[int, float, np.ndarray]:
    model = PCA(svd_solver="full").fit(x)
    ratios = model.explained_variance_ratio_
    k = int(np.searchsorted(np.cumsum(ratios), variance) + 1)
    return k, float(ratios[:k].sum()), model.transform(x)[:, :k]


@pytest.mark.parametrize(("n", "d", "method"), [(400, 60, "covariance"), (80, 300, "gram")])
def test_pca_keeps_the_fewest_components_for_90_percent_like_sklearn(n, d, method):
    x = _structured(n, d, seed=n)
    scores, info = pca_reduce(x, variance=0.9)
    k, explained, sk_scores = _sklearn_count(x, 0.9)
    assert info["method"] == method
    assert info["input_dims"] == d
    assert info["kept_dims"] == k == scores.shape[1]
    assert info["explained_variance"] >= 0.9
    assert info["explained_variance"] == pytest.approx(explained, abs=1e-5)
    # k - 1 components would not have been enough (the count definition)
    ratios = np.var(sk_scores, axis=0) / np.var(x, axis=0).sum()
    assert ratios[: k - 1].sum() < 0.9
    assert scores.dtype == np.float32 and scores.shape == (n, k)
    # the same scores as sklearn, up to each component's sign
    np.testing.assert_allclose(np.abs(scores), np.abs(sk_scores), rtol=2e-3, atol=2e-3)


def test_pca_randomized_form_agrees_on_the_count(monkeypatch):
    monkeypatch.setattr(reduce, "RANDOMIZED_MIN_SIDE", 100)
    monkeypatch.setattr(reduce, "RANDOMIZED_FIRST_RANK", 8)  # forces the rank to grow
    x = _structured(500, 400, seed=7)
    scores, info = pca_reduce(x, variance=0.9, seed=0)
    k, explained, _ = _sklearn_count(x, 0.9)
    assert info["method"] == "randomized"
    assert info["kept_dims"] == k == scores.shape[1]
    assert info["explained_variance"] == pytest.approx(explained, abs=1e-4)


def test_pca_of_a_dead_layer_is_zeros_without_nans():
    for features in (np.zeros((50, 128), np.float32), np.full((50, 128), 3.5, np.float32)):
        scores, info = pca_reduce(features)
        assert scores.shape == (50, 2) and scores.dtype == np.float32
        assert np.all(scores == 0)
        assert info["method"] == "constant"
        assert info["explained_variance"] == 1.0


def test_pca_with_dead_channels_and_a_single_feature():
    x = _structured(200, 40, seed=1)
    x[:, ::3] = 0.0  # dead ReLU channels
    scores, info = pca_reduce(x)
    assert np.isfinite(scores).all() and info["explained_variance"] >= 0.9
    one = np.random.default_rng(0).standard_normal((30, 1)).astype(np.float32)
    scores, info = pca_reduce(one)
    assert scores.shape == (30, 2)  # padded so the 2-D view has two axes
    assert info["explained_variance"] == pytest.approx(1.0)
    np.testing.assert_allclose(np.abs(scores[:, 0]), np.abs(one[:, 0] - one.mean()), atol=1e-5)


def test_pca_rejects_non_finite_activations():
    x = _structured(20, 10, seed=2)
    x[3, 4] = np.nan
    with pytest.raises(UserError, match="NaN"):
        pca_reduce(x)


def test_pca_method_picks_the_smaller_eigenproblem():
    assert reduce.pca_method(13000, 2048) == "covariance"
    assert reduce.pca_method(1797, 2048) == "gram"
    assert reduce.pca_method(13000, 25088) == "randomized"


@pytest.mark.parametrize(
    ("n", "d", "method"), [(400, 60, "covariance"), (80, 300, "gram"), (500, 400, "randomized")]
)
def test_pca_basis_projects_the_samples_onto_their_signed_scores(monkeypatch, n, d, method):
    # What image placement relies on: a sample's features, projected with the stored mean and
    # components, give back its stored scores, signs included, whatever the form.
    monkeypatch.setattr(reduce, "RANDOMIZED_MIN_SIDE", 100)
    x = _structured(n, d, seed=n)
    fit = reduce.pca_fit(x)
    assert fit.info["method"] == method
    k = fit.scores.shape[1]
    assert fit.mean.shape == (d,) and fit.components.shape == (k, d)
    assert fit.mean.dtype == fit.components.dtype == np.float32
    np.testing.assert_allclose(fit.components @ fit.components.T, np.eye(k), atol=1e-4)
    scale = np.abs(fit.scores).max()
    np.testing.assert_allclose(fit.project(x), fit.scores, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(fit.project(x[7:8]), fit.scores[7:8], rtol=0, atol=1e-5 * scale)
    assert (fit.scores[np.abs(fit.scores).argmax(axis=0), np.arange(k)] > 0).all()


def test_pca_basis_of_constant_and_one_dimensional_features():
    dead = reduce.pca_fit(np.full((50, 8), 2.0, np.float32))
    assert not dead.components.any() and dead.components.shape == (2, 8)
    np.testing.assert_array_equal(dead.project(np.ones((3, 8), np.float32)), np.zeros((3, 2)))
    one = np.random.default_rng(0).standard_normal((30, 1)).astype(np.float32)
    fit = reduce.pca_fit(one)
    assert fit.components.shape == (2, 1) and fit.components[1, 0] == 0.0
    np.testing.assert_allclose(fit.project(one), fit.scores, atol=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        fit.project(np.ones((2, 3), np.float32))


# --------------------------------------------------------------------------------------------
# 2-D maps
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob_maps():
    x, labels = blobs()
    sizes = resolve_subset_sizes(["60", "all"], x.shape[0])
    perplexities = resolve_perplexities([5, 30], sizes)
    return x, labels, sizes, perplexities, embed_layer(x, sizes, perplexities, seed=0)


def test_embed_layer_returns_every_map(blob_maps):
    x, _, sizes, perplexities, maps = blob_maps
    expected = {(n, "pca", None) for n in sizes} | {
        (n, "tsne", p) for n in sizes for p in perplexities[n]
    }
    assert set(maps) == expected
    assert perplexities[60] == [5.0]  # 30 needs more than 90 points
    for (n, _, _), coords in maps.items():
        assert coords.shape == (n, 2) and coords.dtype == np.float32
        assert np.isfinite(coords).all()
    # the PCA view is the first two components, the same rows in every subset
    np.testing.assert_array_equal(maps[(300, "pca", None)], x[:, :2])
    np.testing.assert_array_equal(maps[(60, "pca", None)], x[:60, :2])


def test_embed_layer_tsne_keeps_blobs_apart_and_neighbours_close(blob_maps):
    x, labels, _, _, maps = blob_maps
    for (n, method, _), coords in maps.items():
        if method != "tsne":
            continue
        assert knn_accuracy(coords, labels[:n]) > 0.95
        assert trustworthiness(x[:n], coords, n_neighbors=10) > 0.9


def test_embed_layer_is_deterministic_for_a_seed(blob_maps):
    x, _, sizes, perplexities, maps = blob_maps
    again = embed_layer(x, sizes, perplexities, seed=0, n_jobs=1)  # thread count: same maps
    other = embed_layer(x, sizes, perplexities, seed=1)
    for key, coords in maps.items():
        np.testing.assert_array_equal(again[key], coords)
        if key[1] == "tsne":
            assert not np.array_equal(other[key], coords)


def test_embed_layer_on_a_dead_layer_stays_finite():
    maps = embed_layer(np.zeros((40, 2), np.float32), [40], {40: [5.0]}, seed=0)
    assert np.isfinite(maps[(40, "tsne", 5.0)]).all()
    assert np.all(maps[(40, "pca", None)] == 0)


def test_embed_layer_rejects_bad_subsets_and_perplexities():
    x, _ = blobs(per_class=10)
    with pytest.raises(ValueError, match="needs more than"):
        embed_layer(x, [20], {20: [10.0]}, seed=0)
    with pytest.raises(ValueError, match="must lie in"):
        embed_layer(x, [10, 51], {}, seed=0)


# --------------------------------------------------------------------------------------------
# quality metrics, and quality against openTSNE's defaults
# --------------------------------------------------------------------------------------------


def test_knn_preservation_bounds():
    x, _ = blobs(per_class=30)
    assert knn_preservation(x, x, k=10) == 1.0
    noise = np.random.default_rng(0).standard_normal((x.shape[0], 2))
    assert knn_preservation(x, noise, k=10) < 0.15


def test_kl_divergence_ranks_a_tsne_map_above_noise():
    x, _ = blobs(per_class=40)
    fitted = TSNE(perplexity=20, neighbors="exact", random_state=0).fit(x)
    good = kl_divergence(x, np.asarray(fitted), 20)
    noise = kl_divergence(x, np.random.default_rng(0).standard_normal((x.shape[0], 2)), 20)
    # the value openTSNE reported for its own map, up to its Barnes-Hut approximation
    assert good == pytest.approx(fitted.kl_divergence, rel=0.05)
    assert good < 0.5 * noise


@pytest.mark.slow
@pytest.mark.parametrize("backend", tsne.BACKENDS)
def test_quality_matches_opentsne_defaults_on_digits(backend):
    digits = load_digits()
    order = nested_subset_order(digits.target.astype(np.int64), seed=0)
    scores, _ = pca_reduce(digits.data.astype(np.float32)[order])
    n = scores.shape[0]
    perplexities = [10.0, 30.0, 90.0]
    device = "cpu" if backend == "torch" else None
    maps = embed_layer(scores, [n], {n: perplexities}, seed=0, backend=backend, device=device)
    for p in perplexities:
        reference = np.asarray(TSNE(perplexity=p, n_jobs=-1, random_state=0).fit(scores))
        ours = maps[(n, "tsne", p)]
        assert kl_divergence(scores, ours, p) <= 1.05 * kl_divergence(scores, reference, p), p
        assert knn_preservation(scores, ours) >= knn_preservation(scores, reference) - 0.02, p
