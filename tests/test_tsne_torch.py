"""Tests for the PyTorch t-SNE: exact values against openTSNE's own stages and dense autograd,
invariants of the blocked and batched computation, and embedding quality judged by
neighbourhoods, never by coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from openTSNE import TSNE
from openTSNE.affinity import joint_probabilities_nn
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from pipelines import reduce
from pipelines import tsne_torch as T
from pipelines.errors import UserError
from pipelines.reduce import knn_preservation
from pipelines.tsne import TSNESchedule


def short(early: int, main: int) -> TSNESchedule:
    """The shared schedule, cut to ``early`` + ``main`` iterations for tests of invariants."""
    return TSNESchedule(early_iter=early, main_iter=main, fast_main_iter=main)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run these small problems on one intra-op thread. Each t-SNE iteration is a few hundred
    sub-millisecond ops; on a shared 2-core machine a second thread that loses its time slice
    stalls every op's join, which made this file 5-10x slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_1000() -> np.ndarray:
    """(1000, 64) float32: a fixed random subset of scikit-learn's digits."""
    data = load_digits().data.astype(np.float32)
    return data[np.random.default_rng(0).permutation(len(data))[:1000]]


def blobs(n_per_class: int, n_classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: (n, dim) float32 points and (n,) int64 labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    points = centres[labels] + rng.normal(size=(len(labels), dim))
    return points.astype(np.float32), labels


def knn_accuracy(embedding: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour majority vote in the embedding."""
    neighbours = NearestNeighbors(n_neighbors=k).fit(embedding).kneighbors(return_distance=False)
    votes = np.apply_along_axis(np.bincount, 1, labels[neighbours], minlength=labels.max() + 1)
    return float((votes.argmax(axis=1) == labels).mean())


def dense_kl(y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) of one (N, 2) float64 embedding against a dense (N, N) float64 P."""
    d2 = torch.cdist(y, y).square()
    w = 1.0 / (1.0 + d2)
    w = w - torch.diag(torch.diag(w))
    q = w / w.sum()
    mask = p > 0
    return (p[mask] * torch.log(p[mask] / q[mask])).sum()


def small_problem(n: int = 120, perplexity: float = 10.0, seed: int = 0):
    """A tiny real problem: blob data, its affinity graph and a spread-out layout."""
    x, _ = blobs(n // 4, 4, 6, seed)
    x_t = torch.from_numpy(x)
    indices, distances = T.knn_blocked(x_t, int(3 * perplexity))
    conditional = T.conditional_probabilities(distances.square(), perplexity)
    csr = T.joint_probabilities(indices, conditional)
    y = torch.randn(1, n, 2, generator=torch.Generator().manual_seed(seed)) * 3
    return x_t, csr, T.stack_graphs([csr]), y


def test_knn_blocked_equals_brute_force() -> None:
    x = np.random.default_rng(1).normal(size=(301, 9)).astype(np.float32)
    indices, distances = T.knn_blocked(torch.from_numpy(x), 12, block_rows=7)
    d = np.linalg.norm(x[:, None, :].astype(np.float64) - x[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_allclose(
        distances.numpy(), np.take_along_axis(d, expected, 1), rtol=1e-5, atol=1e-5
    )


def test_knn_excludes_self_even_for_duplicates() -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [9.0, 9.0]])
    indices, distances = T.knn_blocked(x, 2, block_rows=1)
    assert indices[0, 0] == 1 and indices[1, 0] == 0
    assert distances[0, 0] == 0
    assert all(i not in row for i, row in enumerate(indices.tolist()))


def test_affinities_equal_opentsne() -> None:
    """Bandwidth search, symmetrisation and normalisation give openTSNE's P to float precision."""
    x, _ = blobs(50, 4, 8, seed=2)
    indices, distances = T.knn_blocked(torch.from_numpy(x), 60)
    conditional = T.conditional_probabilities(distances.square(), 20.0)
    row = conditional.double()
    entropy = -torch.special.xlogy(row, row).sum(dim=1)
    np.testing.assert_allclose(torch.exp(entropy).numpy(), 20.0, rtol=1e-5)
    ours = T.joint_probabilities(indices, conditional).to_dense().numpy()
    theirs = joint_probabilities_nn(indices.numpy(), distances.numpy(), [20.0]).toarray()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ours, ours.T, atol=1e-9)
    assert ours.sum() == pytest.approx(1.0, abs=1e-6)


def test_gradient_is_the_kl_gradient() -> None:
    """The optimiser's gradient is autograd's dKL/dy of the dense problem, divided by 4."""
    _, csr, graph, y = small_problem()
    y64 = y[0].double().requires_grad_(True)
    dense_kl(y64, csr.to_dense().double()).backward()
    ours = T.gradient(y, graph, exaggeration=1.0, block_size=17)[0]
    np.testing.assert_allclose(ours.numpy(), y64.grad.numpy() / 4, rtol=1e-4, atol=1e-7)


def test_kl_divergence_equals_dense() -> None:
    _, csr, graph, y = small_problem()
    ours = T.kl_divergence(y, graph, block_size=17)
    expected = dense_kl(y[0].double(), csr.to_dense().double())
    assert float(ours[0]) == pytest.approx(float(expected), rel=1e-5)


def test_blocked_repulsion_equals_unblocked() -> None:
    y = torch.randn(2, 257, 2, generator=torch.Generator().manual_seed(3)) * 5
    small_forces, small_z = T.repulsive_forces(y, block_size=7)
    big_forces, big_z = T.repulsive_forces(y, block_size=257)
    np.testing.assert_allclose(small_forces.numpy(), big_forces.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(small_z.numpy(), big_z.numpy(), rtol=1e-6)


def test_blocked_run_equals_unblocked_run() -> None:
    x, _ = blobs(60, 4, 8, seed=4)
    runs = [
        T.tsne_torch(
            torch.from_numpy(x),
            [15.0],
            seed=0,
            schedule=short(60, 60),
            block_size=size,
        )[15.0][0]
        for size in (13, 240)
    ]
    np.testing.assert_allclose(runs[0].numpy(), runs[1].numpy(), atol=1e-5)


def test_batched_perplexities_equal_separate_runs() -> None:
    """Stacking perplexities into one problem changes nothing but speed, also when their main
    phases differ in momentum and length (perplexity 5 stops early: its momentum is maximal)."""
    x, _ = blobs(50, 4, 8, seed=5)
    x_t = torch.from_numpy(x)
    schedule = TSNESchedule(early_iter=30, main_iter=50, fast_main_iter=20, max_momentum=0.85)
    assert schedule.main_iterations(5.0, 200) == 20 and schedule.main_iterations(20.0, 200) == 50
    together = T.tsne_torch(x_t, [5.0, 20.0], seed=1, schedule=schedule)
    for perplexity in (5.0, 20.0):
        alone = T.tsne_torch(x_t, [perplexity], seed=1, schedule=schedule)
        np.testing.assert_allclose(
            together[perplexity][0].numpy(), alone[perplexity][0].numpy(), atol=1e-5
        )
        assert together[perplexity][1] == pytest.approx(alone[perplexity][1], rel=1e-5)


def test_deterministic_for_a_seed() -> None:
    x, _ = blobs(40, 3, 5, seed=6)
    x_t = torch.from_numpy(x)
    first = T.tsne_torch(x_t, [10.0], seed=7, schedule=short(50, 50))[10.0]
    second = T.tsne_torch(x_t, [10.0], seed=7, schedule=short(50, 50))[10.0]
    other = T.tsne_torch(x_t, [10.0], seed=8, schedule=short(50, 50))[10.0]
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert not torch.equal(first[0], other[0])


def test_precomputed_knn_gives_the_same_embedding() -> None:
    x, _ = blobs(40, 3, 5, seed=9)
    x_t = torch.from_numpy(x)
    knn = T.knn_blocked(x_t, 30)
    given = T.tsne_torch(x_t, [10.0], seed=0, schedule=short(30, 30), knn=knn)[10.0][0]
    computed = T.tsne_torch(x_t, [10.0], seed=0, schedule=short(30, 30))[10.0][0]
    assert torch.equal(given, computed)


def test_separated_blobs_stay_separated() -> None:
    x, labels = blobs(100, 5, 20, seed=10)
    result = T.tsne_torch(torch.from_numpy(x), [10.0, 30.0], seed=0)
    for embedding, kl in result.values():
        assert embedding.shape == (500, 2) and embedding.dtype == torch.float32
        assert np.isfinite(kl) and kl > 0
        assert knn_accuracy(embedding.numpy(), labels) > 0.95


def test_quality_matches_opentsne_on_digits(digits_1000: np.ndarray) -> None:
    """The issue's acceptance test, for the shared schedule on this backend: KL within 5% and
    10-NN preservation within 0.02 of openTSNE's defaults."""
    reference = TSNE(perplexity=30, random_state=0, n_jobs=2).fit(digits_1000)
    embedding, kl = T.tsne_torch(torch.from_numpy(digits_1000), [30.0], seed=0)[30.0]
    assert kl == pytest.approx(reference.kl_divergence, rel=0.05)
    ours = knn_preservation(digits_1000, embedding.numpy())
    theirs = knn_preservation(digits_1000, np.asarray(reference))
    assert abs(ours - theirs) <= 0.02
    # Guard against both being equally bad: digits' neighbourhoods are well kept by t-SNE.
    assert ours > 0.5


def test_pca_init_is_scaled_principal_components(digits_1000: np.ndarray) -> None:
    init = T.pca_init(torch.from_numpy(digits_1000), seed=0).double().numpy()
    assert init[:, 0].std() == pytest.approx(1e-4, rel=0.01)
    reference = PCA(n_components=2).fit_transform(digits_1000)
    for column in range(2):
        correlation = np.corrcoef(init[:, column], reference[:, column])[0, 1]
        assert abs(correlation) > 0.999


def test_randomised_pca_finds_the_exact_axes(digits_1000: np.ndarray) -> None:
    x = torch.from_numpy(digits_1000)
    exact = T.principal_axes(x, 2, torch.Generator().manual_seed(0))
    randomised = T.principal_axes(x, 2, torch.Generator().manual_seed(0), exact_max_dim=0)
    np.testing.assert_allclose(randomised.numpy(), exact.numpy(), atol=1e-6)


def test_tiny_subset_lowers_the_perplexity_like_opentsne() -> None:
    x, _ = blobs(5, 4, 6, seed=11)
    result = T.tsne_torch(torch.from_numpy(x), [30.0, 90.0], seed=0, schedule=short(50, 50))
    assert set(result) == {30.0, 90.0}
    assert all(np.isfinite(kl) for _, kl in result.values())
    assert T.effective_perplexity(30.0, 19) == pytest.approx(19 / 3)
    assert T.effective_perplexity(10.0, 30) == 10.0


@pytest.mark.parametrize(
    ("x", "perplexities", "message"),
    [
        (torch.zeros(10, 3), [0.0], "perplexity must be a positive"),
        (torch.zeros(10, 3), [], "no perplexity"),
        (torch.zeros(2, 3), [5.0], "at least 3 samples"),
        (torch.full((10, 3), float("nan")), [5.0], "NaN"),
    ],
)
def test_user_errors_say_what_to_do(x: torch.Tensor, perplexities: list, message: str) -> None:
    with pytest.raises(UserError, match=message):
        T.tsne_torch(x, perplexities, seed=0)


def test_identical_points_do_not_break_it() -> None:
    x = torch.ones(30, 4)
    embedding, kl = T.tsne_torch(x, [5.0], seed=0, schedule=short(25, 25))[5.0]
    assert torch.isfinite(embedding).all() and np.isfinite(kl)


def fell_back(capsys: pytest.CaptureFixture[str]) -> bool:
    """Whether the fallback to eager PyTorch was announced (one warning line) since last asked."""
    lines = capsys.readouterr().err.splitlines()
    said = [line for line in lines if "using eager PyTorch" in line]
    assert all(line.startswith("warning: torch.compile of the t-SNE") for line in said), said
    return len(said) == 1


def test_compiler_failure_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(y_rows: torch.Tensor, y_all: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(T, "_compiled_repulsion_tile", lambda: broken)
    assert T.repulsion_tile_function(torch.device("cpu"), compile=True) is T.repulsion_tile
    assert fell_back(capsys)
    # A compiler failure after the trial call (a recompilation) also ends in the eager tile.
    guarded = T._GuardedTile(broken)
    y = torch.randn(1, 40, 2, generator=torch.Generator().manual_seed(15))
    forces, z = T.repulsive_forces(y, 16, guarded)
    assert fell_back(capsys)
    expected_forces, expected_z = T.repulsive_forces(y, 16)
    assert torch.equal(forces, expected_forces) and torch.equal(z, expected_z)


@pytest.mark.slow
def test_compiled_tile_equals_eager(capsys: pytest.CaptureFixture[str]) -> None:
    """The fused kernel used on CUDA, compiled here for the CPU, computes the same forces."""
    tile = T.repulsion_tile_function(torch.device("cpu"), compile=True)
    assert not fell_back(capsys)  # a fallback to eager would hide a bug
    assert tile is not T.repulsion_tile
    y = torch.randn(3, 501, 2, generator=torch.Generator().manual_seed(14)) * 10
    for block in (501, 64):
        compiled, compiled_z = T.repulsive_forces(y, block, tile)
        eager, eager_z = T.repulsive_forces(y, block)
        np.testing.assert_allclose(compiled.numpy(), eager.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(compiled_z.numpy(), eager_z.numpy(), rtol=1e-6)
    x, labels = blobs(60, 4, 8, seed=16)
    runs = [
        T.tsne_torch(torch.from_numpy(x), [15.0, 30.0], seed=0, compile=flag)
        for flag in (True, False)
    ]
    # Rounding differences grow over 200 iterations into a different but equally good layout,
    # so the runs are compared by the quality criterion, not coordinates.
    for perplexity in (15.0, 30.0):
        assert runs[0][perplexity][1] == pytest.approx(runs[1][perplexity][1], rel=0.05)
        assert knn_accuracy(runs[0][perplexity][0].numpy(), labels) > 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_is_deterministic(digits_1000: np.ndarray) -> None:
    x = torch.from_numpy(digits_1000)
    cpu_embedding, cpu_kl = T.tsne_torch(x, [30.0], seed=0)[30.0]
    first = T.tsne_torch(x.cuda(), [30.0], seed=0)[30.0]
    second = T.tsne_torch(x.cuda(), [30.0], seed=0)[30.0]
    assert first[0].device.type == "cuda"
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert first[1] == pytest.approx(cpu_kl, rel=0.05)
    cpu_quality = knn_preservation(digits_1000, cpu_embedding.numpy())
    cuda_quality = knn_preservation(digits_1000, first[0].cpu().numpy())
    assert abs(cuda_quality - cpu_quality) <= 0.02


def test_gpu_path_of_the_embeddings_stage_runs_the_same_code_on_cpu(tmp_path):
    """The LayerJob the precompute uses on CUDA, pointed at the CPU: the same maps (keys,
    shapes) as the openTSNE path, and well-separated blobs stay separated."""
    from pipelines.layer_jobs import LayerJob
    from pipelines.store import RunStore, embedding_key

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(3, 20))
    labels = np.repeat(np.arange(3), 40)[rng.permutation(120)]
    features = (centres[labels] + rng.normal(size=(120, 20))).astype(np.float32)
    store = RunStore(tmp_path / "run")
    store.save_array("features", features, layer="fc", chunk=0)
    settings = dict(
        run_dir=str(store.run_dir),
        num_chunks=1,
        subsets=[60, 120],
        perplexities={60: [5.0], 120: [5.0, 10.0]},
        seed=0,
        n_jobs=1,
    )
    cpu_keys = set(LayerJob(**settings).maps(features))
    assert LayerJob(**settings, torch_device="cpu")("fc") == "fc"
    # The PCA ran in PyTorch too, and kept what the numpy PCA keeps; the backend is recorded.
    info = store.load_json("reduction", layer="fc")
    assert (info["tsne_backend"], info["tsne_device"]) == ("torch", "cpu")
    numpy_info = reduce.pca_reduce(features)[1]
    assert info["kept_dims"] == numpy_info["kept_dims"] and info["method"] == "covariance"
    # Its placement data too, written before the reduction: the basis projects the samples onto
    # their stored scores, whose first two columns are the PCA map.
    basis = store.load_arrays("projection", layer="fc")
    scores = store.load_array("pca_scores", layer="fc")
    assert basis["components"].shape == (info["kept_dims"], 20) and basis["mean"].shape == (20,)
    projected = reduce.project(features, basis["mean"], basis["components"])
    np.testing.assert_allclose(projected, scores, atol=1e-5 * np.abs(scores).max())
    pca_map = store.load_array("embedding", **embedding_key("fc", 120, "pca", None))
    np.testing.assert_array_equal(pca_map, scores[:, :2])
    for size, method, perplexity in cpu_keys:
        coords = store.load_array("embedding", **embedding_key("fc", size, method, perplexity))
        assert coords.shape == (size, 2) and np.isfinite(coords).all()
    tsne = store.load_array("embedding", **embedding_key("fc", 120, "tsne", 10.0))
    predicted = KNeighborsClassifier(5).fit(tsne, labels).predict(tsne)
    assert (predicted == labels).mean() > 0.95
