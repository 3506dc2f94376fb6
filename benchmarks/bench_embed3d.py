"""Benchmark the dashboard's on-demand 3-D t-SNE (``pipelines.embed3d.tsne_3d``).

    python benchmarks/bench_embed3d.py              # digits (1,797) and 10,000 random points
    python benchmarks/bench_embed3d.py --sklearn    # also scikit-learn's TSNE(n_components=3)

One map at perplexity 30 on one thread, as the dashboard's background job computes it, on the
PCA scores keeping 90% of the variance (digits) or on 10,000 standard-normal points in 30-D
(random). Prints the seconds, and on digits the leave-one-out 10-NN accuracy on the labels.
``--sklearn`` times scikit-learn's Barnes-Hut ``TSNE(n_components=3)`` (its defaults) on digits
for comparison: the option rejected for 3-D (about 20x slower).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.embed3d import tsne_3d  # noqa: E402
from pipelines.reduce import pca_fit  # noqa: E402
from tests.embedding_checks import knn_accuracy  # noqa: E402

PERPLEXITY = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sklearn", action="store_true", help="also time scikit-learn's TSNE")
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    print(f"{platform.node()} · {os.cpu_count()} cores · load {os.getloadavg()}")
    x, labels = load_digits(return_X_y=True)
    scores = pca_fit(x.astype(np.float32), variance=0.9, seed=0).scores
    started = time.perf_counter()
    coords = tsne_3d(scores, PERPLEXITY, seed=0)
    seconds = time.perf_counter() - started
    print(
        f"digits {scores.shape}: tsne_3d {seconds:.1f} s, "
        f"10-NN accuracy {knn_accuracy(coords, labels, 10):.4f}"
    )
    if args.sklearn:
        from sklearn.manifold import TSNE

        started = time.perf_counter()
        other = TSNE(3, perplexity=PERPLEXITY, init="pca", random_state=0).fit_transform(scores)
        seconds = time.perf_counter() - started
        print(
            f"digits {scores.shape}: sklearn TSNE(3) {seconds:.1f} s, "
            f"10-NN accuracy {knn_accuracy(other, labels, 10):.4f}"
        )
    random = np.random.default_rng(0).standard_normal((10_000, 30)).astype(np.float32)
    started = time.perf_counter()
    tsne_3d(random, PERPLEXITY, seed=0)
    print(f"random {random.shape}: tsne_3d {time.perf_counter() - started:.1f} s")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
