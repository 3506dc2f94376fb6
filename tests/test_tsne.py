"""The t-SNE API: one ``fit``, one schedule and one starting layout for both backends.

Maps are judged by neighbourhood quality (kNN accuracy on separated blobs, trustworthiness),
never by coordinates: the backends give different coordinates of the same quality. The torch
backend runs on CPU tensors here; its CUDA run is tested in ``test_tsne_torch.py``.
"""

import numpy as np
import pytest
import torch
from sklearn.manifold import trustworthiness

from pipelines import tsne
from tests.embedding_checks import blobs, knn_accuracy


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for the torch backend's small problems (see test_tsne_torch.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _options(backend: str) -> dict:
    return {"device": "cpu"} if backend == "torch" else {"cores": 2}


@pytest.mark.parametrize("backend", tsne.BACKENDS)
def test_both_backends_keep_blobs_apart_and_neighbours_close(backend):
    x, labels = blobs()
    wanted = {60: [5.0], 300: [5.0, 30.0]}
    maps = tsne.fit(x, wanted, seed=0, backend=backend, **_options(backend))
    assert set(maps) == {(60, 5.0), (300, 5.0), (300, 30.0)}
    for (n, _), coords in maps.items():
        assert coords.shape == (n, 2) and coords.dtype == np.float32
        assert knn_accuracy(coords, labels[:n]) > 0.95
        assert trustworthiness(x[:n], coords, n_neighbors=10) > 0.9


@pytest.mark.parametrize("backend", tsne.BACKENDS)
def test_fit_is_deterministic_for_a_seed(backend):
    x, _ = blobs(per_class=20)
    first = tsne.fit(x, {100: [10.0]}, seed=3, backend=backend, **_options(backend))
    again = tsne.fit(x, {100: [10.0]}, seed=3, backend=backend, **_options(backend))
    other = tsne.fit(x, {100: [10.0]}, seed=4, backend=backend, **_options(backend))
    np.testing.assert_array_equal(first[(100, 10.0)], again[(100, 10.0)])
    assert not np.array_equal(first[(100, 10.0)], other[(100, 10.0)])


STAGES = {
    "opentsne": ["initial layout", "knn + affinities", "early exaggeration", "main phase"],
    "torch": [
        "initial layout",
        "knn",
        "affinities",
        "compile",
        "early exaggeration",
        "main phase",
        "kl",
    ],
}


@pytest.mark.parametrize("backend", tsne.BACKENDS)
def test_stage_times_name_every_stage_and_change_no_map(backend):
    """The benchmark's per-stage breakdown: every stage of the backend is timed, once per
    subset or map adds up, and timing does not change the maps."""
    x, _ = blobs(per_class=20)
    wanted = {60: [5.0], 100: [5.0, 10.0]}
    untimed = tsne.fit(x, wanted, seed=3, backend=backend, **_options(backend))
    times = tsne.StageTimes()
    timed = tsne.fit(x, wanted, seed=3, backend=backend, times=times, **_options(backend))
    assert list(times.seconds) == STAGES[backend]
    assert all(seconds >= 0 for seconds in times.seconds.values())
    for key, coords in untimed.items():
        np.testing.assert_array_equal(timed[key], coords)


def test_fit_fails_loudly_on_arguments_that_do_not_go_together():
    x, _ = blobs(per_class=10)
    with pytest.raises(ValueError, match="unknown t-SNE backend 'sklearn'; pass one of"):
        tsne.fit(x, {50: [5.0]}, seed=0, backend="sklearn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU only.*backend='torch'"):
        tsne.fit(x, {50: [5.0]}, seed=0, backend="opentsne", device="cuda")
    with pytest.raises(ValueError, match="torch backend takes device"):
        tsne.fit(x, {50: [5.0]}, seed=0, backend="torch", device="cpu", cores=2)
    with pytest.raises(ValueError, match="torch backend's repulsion kernel; pass backend='torch'"):
        tsne.fit(x, {50: [5.0]}, seed=0, backend="opentsne", compile=True)
    with pytest.raises(ValueError, match="needs more than 60 points; subset has 50"):
        tsne.fit(x, {50: [20.0]}, seed=0)
    with pytest.raises(ValueError, match="must lie in"):
        tsne.fit(x, {51: [5.0]}, seed=0)
    assert tsne.fit(x, {50: []}, seed=0) == {}


def test_schedule_momentum_follows_perplexity_over_n():
    schedule = tsne.TSNESchedule()
    assert schedule.momentum(10, 1797) == 0.95  # clipped high: small perplexity / n
    assert schedule.momentum(90, 1797) == pytest.approx(1 - 4 * 90 / 1797)
    assert schedule.momentum(30, 100) == 0.5  # clipped low
    # At maximum momentum the main phase is shorter; elsewhere it is the full length.
    assert schedule.main_iterations(10, 1797) == schedule.fast_main_iter < schedule.main_iter
    assert schedule.main_iterations(90, 1797) == schedule.main_iter


def test_opentsne_defaults_in_schedule_terms():
    """``OPENTSNE_DEFAULTS`` is openTSNE's ``TSNE().fit``: 250 + 500 iterations, learning rate
    n / 12 then n, momentum 0.5 then 0.8, whatever the perplexity."""
    defaults = tsne.OPENTSNE_DEFAULTS
    assert (defaults.early_iter, defaults.early_exaggeration) == (250, 12.0)
    assert defaults.early_learning_rate * 1200 == pytest.approx(100.0)
    assert defaults.learning_rate == 1.0 and defaults.early_momentum == 0.5
    for perplexity, n in [(10, 1797), (90, 1797), (30, 100)]:
        assert defaults.momentum(perplexity, n) == 0.8
        assert defaults.main_iterations(perplexity, n) == 500


def test_schedule_rejects_impossible_values():
    with pytest.raises(ValueError, match="main_iter must be positive"):
        tsne.TSNESchedule(main_iter=-1)
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        tsne.TSNESchedule(learning_rate=0.0)
    with pytest.raises(ValueError, match="early_exaggeration must be positive"):
        tsne.TSNESchedule(early_exaggeration=0.0)


def test_initial_layout_is_scaled_principal_components():
    x, _ = blobs()
    init = tsne.initial_layout(x, seed=0)
    assert init.shape == (x.shape[0], 2) and init.dtype == np.float64
    assert init[:, 0].std() == pytest.approx(tsne.INIT_STD, rel=0.01)
    np.testing.assert_allclose(init.mean(axis=0), 0.0, atol=tsne.INIT_STD * tsne.INIT_JITTER)
    for column in range(2):
        assert np.corrcoef(init[:, column], x[:, column])[0, 1] > 0.999
    # A layer with no spread still gets a finite, seeded start.
    flat = tsne.initial_layout(np.zeros((30, 1), np.float32), seed=0)
    assert np.isfinite(flat).all() and flat.std() > 0
    np.testing.assert_array_equal(flat, tsne.initial_layout(np.zeros((30, 1)), seed=0))
