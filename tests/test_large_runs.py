"""The paths a 60,000-sample run takes, taken here on a few thousand points by lowering the size
thresholds (``tsne_opentsne.SizeMethods``): approximate neighbours against the exact ones by
recall, FFT-interpolated repulsion by map quality, and the choice recorded with each layer."""

from __future__ import annotations

import numpy as np
import openTSNE
import pytest
from openTSNE import TSNEEmbedding
from sklearn.manifold import trustworthiness

from pipelines import tsne, tsne_opentsne
from pipelines.layer_jobs import LayerJob
from pipelines.tsne_opentsne import SIZE_METHODS, SizeMethods, shared_affinities
from tests.embedding_checks import blobs, knn_accuracy

LARGE_PATHS = SizeMethods(exact_knn_max=1000, fft_min_points=1000)


def test_sizes_choose_the_methods():
    assert SIZE_METHODS.knn(60_000) == "exact" and SIZE_METHODS.gradient(60_000) == "fft"
    assert SIZE_METHODS.knn(SIZE_METHODS.exact_knn_max + 1) == "annoy"
    assert SIZE_METHODS.gradient(9_999) == "bh"
    assert SIZE_METHODS.gradient(60_000, dims=3) == "bh"  # FFT interpolation is 1-2-D only
    assert LARGE_PATHS.knn(3000) == "annoy" and LARGE_PATHS.gradient(3000) == "fft"


def edges(affinities) -> set[tuple[int, int]]:
    rows, cols = affinities.P.nonzero()
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


def test_approximate_neighbours_find_the_exact_ones():
    x, _ = blobs(per_class=600, dims=20)  # 3,000 points
    approximate = shared_affinities(x, 30.0, seed=0, n_jobs=1, methods=LARGE_PATHS)
    exact = shared_affinities(x, 30.0, seed=0, n_jobs=1)
    assert type(approximate.knn_index).__name__ == "Annoy"
    assert type(exact.knn_index).__name__ == "Sklearn"
    found, wanted = edges(approximate), edges(exact)
    assert len(found & wanted) / len(wanted) > 0.95
    # P is a distribution over pairs (it sums to one) whichever search found the neighbours.
    np.testing.assert_allclose(approximate.P.sum(), exact.P.sum(), rtol=1e-6)


def test_large_paths_make_maps_as_good_as_the_small_ones(monkeypatch):
    x, labels = blobs(per_class=600, dims=20)
    used = []

    class Recording(TSNEEmbedding):
        def __new__(cls, embedding, affinities, **options):
            used.append(options["negative_gradient_method"])
            return TSNEEmbedding.__new__(cls, embedding, affinities, **options)

    # tsne_opentsne imports it from openTSNE when it computes, so it is replaced there.
    monkeypatch.setattr(openTSNE, "TSNEEmbedding", Recording)
    n = len(x)
    subsets = [tsne.SubsetMaps(n, (30.0,), tsne.initial_layout(x, seed=0))]
    for methods, gradient in ((LARGE_PATHS, "fft"), (SIZE_METHODS, "bh")):
        used.clear()
        coords = tsne_opentsne.fit_subsets(x, subsets, seed=0, cores=2, methods=methods)[(n, 30.0)]
        assert used == [gradient]
        assert knn_accuracy(coords, labels) > 0.95
        assert trustworthiness(x, coords, n_neighbors=10) > 0.9


@pytest.mark.parametrize(
    ("subsets", "perplexities", "backend", "recorded"),
    [
        (
            [100, 1000],
            {100: [10.0], 1000: [30.0]},
            None,
            {"tsne_knn": "exact", "tsne_gradient": "bh"},
        ),
        (
            [1000, 60_000],
            {1000: [30.0], 60_000: [30.0]},
            None,
            {"tsne_knn": "exact", "tsne_gradient": "fft"},
        ),
        ([300_000], {300_000: [30.0]}, None, {"tsne_knn": "annoy", "tsne_gradient": "fft"}),
        ([60_000], {60_000: [30.0]}, "cuda", {"tsne_knn": "exact", "tsne_gradient": "exact"}),
        ([60_000], {60_000: []}, None, {}),
    ],
)
def test_each_layer_records_how_its_largest_maps_were_made(
    subsets, perplexities, backend, recorded
):
    job = LayerJob("run", 1, subsets, perplexities, seed=0, n_jobs=1, torch_device=backend)
    assert job.tsne_methods() == recorded
